"""The local engine serving many requests at once (tiny random-weight model in fp32 on CPU: its text is
meaningless, so answers are compared with the same request run alone through ``GarPipeline.generate``)."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gar_tools.engine import local
from gar_tools.engine.local import LocalEngine, build_job
from gar_tools.errors import EngineBusyError
from gar_tools.images import ImagePolicy
from gar_tools.toolkit import GarToolkit, coerce_request

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "gar_tools" / "assets"
BENCH = ROOT / "tests" / "data" / "gar-bench-sample"
IMAGE1, MASK1, IMAGE3 = (
    str(ASSETS / "demo_image_1.png"),
    str(ASSETS / "demo_mask_1.png"),
    str(ASSETS / "demo_image_3.png"),
)
MASKS3 = [str(ASSETS / f"demo_mask_3_{i}.png") for i in range(3)]

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _requests() -> list[tuple[str, dict]]:
    """Ten mixed calls: three tools, four images, 1–4 regions, different lengths."""
    items = json.loads((BENCH / "items.json").read_text())[:4]
    calls: list[tuple[str, dict]] = [
        ("describe_region", {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 9}),
        ("describe_region", {"image": IMAGE1, "region": {"box": [100, 100, 300, 260]}, "max_new_tokens": 3}),
        ("compare_regions", {"image": IMAGE3, "regions": [{"mask": m} for m in MASKS3[:2]], "max_new_tokens": 6}),
        (
            "answer_about_regions",
            {"image": IMAGE3, "regions": [{"mask": m} for m in MASKS3], "question": "Is <r0> near <r1> or <r2>?"},
        ),
    ]
    calls[-1][1]["max_new_tokens"] = 5
    for k, item in enumerate(items):
        request = {
            "image": str(BENCH / item["image"]),
            "regions": [{"rle": rle} for rle in item["mask_rles"][:4]],
            "question": item["question"] if len(item["mask_rles"]) <= 4 else "What is <r0>? <r1> <r2> <r3>",
            "max_new_tokens": 2 + 3 * k,
        }
        calls.append(("answer_about_regions", request))
    calls.append(("describe_region", {"image": IMAGE3, "region": {"mask": MASKS3[2]}, "max_new_tokens": 12}))
    calls.append(("compare_regions", {"image": IMAGE1, "regions": [{"mask": MASK1}, {"box": [0, 0, 50, 50]}]}))
    calls[-1][1]["max_new_tokens"] = 4
    return calls


async def _until(engine: LocalEngine, key: str, value: int) -> None:
    """Wait (at most a minute) until the engine's info reports ``key == value``."""
    deadline = time.monotonic() + 60
    while getattr(await engine.info(), key) != value:
        assert time.monotonic() < deadline, f"{key} never became {value}"
        await asyncio.sleep(0.01)


def _alone(pipeline, tool: str, request: dict) -> tuple[str, int]:
    """Text and token count of the request run alone through the batch-1 ``generate`` path."""
    job = build_job(tool, coerce_request(tool, request), ImagePolicy())
    prepared = pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)
    generation = pipeline.generate(prepared, max_new_tokens=request["max_new_tokens"])
    return generation.text, len(generation.token_ids)


async def test_concurrent_requests_answer_as_alone(tiny_pipeline) -> None:
    calls = _requests()
    expected = [_alone(tiny_pipeline, tool, request) for tool, request in calls]
    engine = LocalEngine(pipeline=tiny_pipeline, max_batch_size=4)
    toolkit = GarToolkit(engine)
    try:
        first = [asyncio.ensure_future(toolkit.arun(tool, request)) for tool, request in calls[:6]]
        await asyncio.sleep(0.05)  # the rest arrive while the first ones generate
        rest = [asyncio.ensure_future(toolkit.arun(tool, request)) for tool, request in calls[6:]]
        results = await asyncio.gather(*first, *rest)
        info = await toolkit.ainfo()
    finally:
        await toolkit.aclose()
    assert [(r.text, r.timings.tokens_generated) for r in results] == expected
    assert info.max_batch_size == 4 and info.kv_budget_tokens and info.kv_cache_bytes
    assert info.tile_cache_max_bytes and info.tile_cache_bytes  # untouched tiles were cached
    assert 0 < info.image_cache_bytes <= info.image_cache_max_bytes  # so were the decoded images
    assert info.running == 0 and info.queued == 0


async def test_a_second_question_about_the_same_regions_reuses_their_prefix(tiny_pipeline) -> None:
    """The image-and-regions part of the prompt is not computed again (no vision tower, no prefill over its ~5k
    tokens); the answers are those of each question alone, and the same with the prefix cache off."""
    regions = [{"mask": m} for m in MASKS3]
    questions = ["Is <r0> near <r1> or <r2>?", "What do <r2>, <r1> and <r0> share?", "Is <r0> near <r1> or <r2>?"]
    calls = [{"image": IMAGE3, "regions": regions, "question": q, "max_new_tokens": 4} for q in questions]
    expected = [_alone(tiny_pipeline, "answer_about_regions", request) for request in calls]
    for prefix_cache_bytes in (None, 0):
        toolkit = GarToolkit(LocalEngine(pipeline=tiny_pipeline, prefix_cache_bytes=prefix_cache_bytes))
        try:
            results = [await toolkit.arun("answer_about_regions", request) for request in calls]
            info = await toolkit.ainfo()
        finally:
            await toolkit.aclose()
        assert [(r.text, r.timings.tokens_generated) for r in results] == expected
        reused = [r.timings.prompt_tokens_reused for r in results]
        if prefix_cache_bytes is None:
            assert reused[0] == 0 and reused[1] == reused[2] > 4000  # 17 tiles and 3 slots of 256 tokens
            assert reused[1] < results[1].timings.prompt_tokens  # its own question was prefilled
            assert 0 < info.prefix_cache_bytes <= info.prefix_cache_max_bytes
        else:
            assert reused == [0, 0, 0] and info.prefix_cache_max_bytes == 0 and info.prefix_cache_bytes == 0


async def test_questions_at_once_on_a_new_image_resize_it_once(tiny_pipeline, monkeypatch) -> None:
    """Agents asking about one new image at the same time: one of them resizes it into tiles, the others wait for
    those tiles (they do not each resize it, fighting over the cores); answers stay those of each request alone."""
    resize, calls, hashed = tiny_pipeline.processor.image_tiles, [], []

    def slow_resize(image):
        calls.append(1)
        time.sleep(0.3)  # every request asks for the tiles while this one is resizing
        return resize(image)

    monkeypatch.setattr(tiny_pipeline.processor, "image_tiles", slow_resize)
    digest = local.image_digest
    monkeypatch.setattr(local, "image_digest", lambda image: hashed.append(1) or digest(image))
    requests = [
        {"image": IMAGE3, "region": {"box": [40 * k, 30 * k, 40 * k + 200, 30 * k + 150]}, "max_new_tokens": 3}
        for k in range(4)
    ]
    engine = LocalEngine(pipeline=tiny_pipeline, max_batch_size=4)
    toolkit = GarToolkit(engine)
    try:
        results = await asyncio.gather(*(toolkit.arun("describe_region", r) for r in requests))
        await toolkit.arun("describe_region", requests[0])  # later: the same decoded image, the same digest
    finally:
        await toolkit.aclose()
    assert len(calls) == 1 and len(hashed) == 1  # one resize, and the pixels hashed once with the decoding
    assert [r.text for r in results] == [_alone(tiny_pipeline, "describe_region", r)[0] for r in requests]


async def test_astream_yields_deltas_then_the_result(tiny_pipeline) -> None:
    toolkit = GarToolkit(LocalEngine(pipeline=tiny_pipeline))
    try:
        items = [
            item
            async for item in toolkit.astream("describe_region", image=IMAGE1, region={"mask": MASK1}, max_new_tokens=8)
        ]
    finally:
        await toolkit.aclose()
    *deltas, result = items
    assert all(isinstance(d, str) for d in deltas) and len(deltas) >= 2
    assert "".join(deltas).strip() == result.text
    assert result.timings.queue_ms >= 0 and result.timings.prefill_ms > 0
    assert (
        result.text
        == _alone(tiny_pipeline, "describe_region", {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 8})[
            0
        ]
    )


async def test_full_queue_is_busy_and_cancelling_frees_the_slot(tiny_pipeline) -> None:
    engine = LocalEngine(pipeline=tiny_pipeline, max_batch_size=1, max_queue=1)
    long = {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 400}
    short = {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 2}
    try:
        first = asyncio.ensure_future(engine.run("describe_region", coerce_request("describe_region", long)))
        await _until(engine, "running", 1)  # the first request holds the only slot
        second = asyncio.ensure_future(engine.run("describe_region", coerce_request("describe_region", long)))
        await _until(engine, "queued", 1)  # the second one waits in the queue, which is now full
        with pytest.raises(EngineBusyError) as busy:
            await engine.run("describe_region", coerce_request("describe_region", short))
        assert busy.value.retry_after_s > 0 and "busy" in str(busy.value)
        first.cancel()
        second.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        result = await asyncio.wait_for(engine.run("describe_region", coerce_request("describe_region", short)), 60)
        assert result.timings.tokens_generated <= 2
        info = await engine.info()
        assert info.running == 0 and info.queued == 0
    finally:
        await engine.aclose()


def test_worker_answers_503_with_retry_after_when_busy(tiny_pipeline) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from gar_tools.servers.worker_app import create_worker_app

    engine = LocalEngine(pipeline=tiny_pipeline, max_batch_size=1, max_queue=1)
    long = {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 200}

    def until(key: str, value: int) -> None:
        deadline = time.monotonic() + 60
        while client.get("/v1/model").json()[key] != value:
            assert time.monotonic() < deadline, f"{key} never became {value}"
            time.sleep(0.01)

    app = create_worker_app(engine_factory=lambda: engine)
    with TestClient(app, base_url="http://127.0.0.1") as client, ThreadPoolExecutor(2) as pool:
        first = pool.submit(client.post, "/v1/describe_region", json=long)
        until("running", 1)  # the first request holds the only slot
        second = pool.submit(client.post, "/v1/describe_region", json=long)
        until("queued", 1)  # the second one fills the queue
        busy = client.post("/v1/describe_region", json=long)
        model = client.get("/v1/model").json()
        assert first.result(120).status_code == 200 and second.result(120).status_code == 200
        after = client.get("/v1/model").json()
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    assert busy.json()["error"]["type"] == "EngineBusyError" and "busy" in busy.json()["error"]["message"]
    assert model["max_batch_size"] == 1 and model["max_queue"] == 1 and model["kv_budget_tokens"] > 0
    assert model["image_cache_max_bytes"] > 0 and model["tile_cache_max_bytes"] > 0
    assert after["prefix_cache_max_bytes"] > 0 and after["prefix_cache_bytes"] > 0  # the second reused the first's


@pytest.mark.slow
def test_memory_settles_over_many_requests() -> None:
    """500 requests in a loop: the process RSS stays within 5 % of where it settled after the first 50 (measured in
    a fresh process: tests/engine_memory_probe.py)."""
    import os
    import platform
    import subprocess
    import sys

    # The probe leaves allocator settings to gar_tools.engine.allocator, as the servers do: none from the environment.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET" and not k.startswith("MALLOC_")}
    probe = Path(__file__).resolve().parent / "engine_memory_probe.py"
    out = subprocess.run(
        [sys.executable, str(probe), "500", "50"], capture_output=True, text=True, env=env, timeout=900
    )
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["allocator_tuned"] or platform.libc_ver()[0] != "glibc", figures
    # No Python-level leak (caches are bounded and already full after 50 requests) ...
    assert figures["final_python_objects"] <= figures["settled_python_objects"] * 1.001, figures
    # ... and the process's resident memory stays where it settled.
    assert figures["final_rss"] <= figures["settled_rss"] * 1.05, figures
