"""describe_regions: many regions of one image in one call, each described exactly as describe_region alone would;
per-region errors; the 64-region limit; ``"auto"`` with the tiny segmenter; cancellation.

The GAR and SAM models are the tiny random-weight checkpoints: text and masks are meaningless, equality is the test.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gar_tools.engine.local import LocalEngine
from gar_tools.errors import InputError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import MAX_DESCRIBE_REGIONS
from gar_tools.results import DescribeRegionsResult, RegionDescription
from gar_tools.toolkit import GarToolkit, coerce_request

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"
IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")
IMAGE3 = str(ASSETS / "demo_image_3.png")
MASKS3 = [str(ASSETS / f"demo_mask_3_{i}.png") for i in range(3)]
TOKENS = 4

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def engine(tiny_pipeline) -> LocalEngine:
    return LocalEngine(pipeline=tiny_pipeline, policy=ImagePolicy(allowed_dirs=(ASSETS,)))


REGIONS3 = [
    {"mask": MASKS3[0], "id": "a"},
    {"box": [10, 20, 200, 180]},
    {"polygon": [[300, 300, 500, 320, 420, 500]]},
    {"mask": MASKS3[1]},
]


async def test_each_region_is_described_as_describe_region_alone(engine: LocalEngine) -> None:
    try:
        request = coerce_request("describe_regions", image=IMAGE3, regions=REGIONS3, max_new_tokens=TOKENS)
        result = await engine.run("describe_regions", request)
        assert isinstance(result, DescribeRegionsResult) and not result.proposed
        assert [d.id for d in result.descriptions] == ["a", "r1", "r2", "r3"]
        for i, (region, item) in enumerate(zip(REGIONS3, result.descriptions, strict=True)):
            alone = await engine.run(
                "describe_region",
                coerce_request("describe_region", image=IMAGE3, region=region, max_new_tokens=TOKENS),
            )
            assert item.index == i and item.error is None
            assert item.text == alone.text  # token for token (fp32, CPU)
            assert item.tokens_generated == alone.timings.tokens_generated
            assert item.region is not None
            expected = alone.regions[0].model_copy(update={"id": item.id})
            assert item.region == expected
        assert result.regions == [d.region for d in result.descriptions]
        assert result.timings.tokens_generated == sum(d.tokens_generated for d in result.descriptions)
        assert result.text.splitlines()[0].startswith("a: ")
    finally:
        await engine.aclose()


async def test_a_failing_region_gets_its_own_error(engine: LocalEngine) -> None:
    regions = [{"mask": MASK1}, {"box": [2000, 2000, 2100, 2100]}, {"polygon": [[10, 10, 60, 10, 30, 50]]}]
    try:
        request = coerce_request("describe_regions", image=IMAGE1, regions=regions, max_new_tokens=2)
        result = await engine.run("describe_regions", request)
        ok0, bad, ok2 = result.descriptions
        assert ok0.error is None and ok2.error is None and ok0.text is not None and ok2.text is not None
        assert bad.text is None and bad.region is None and bad.error is not None
        assert bad.error.field is not None and bad.error.field.startswith("regions[1]")
        assert [r.id for r in result.regions] == ["r0", "r2"]
        # duplicate ids are a request error, not a region error
        twice = [{"mask": MASK1, "id": "x"}, {"mask": MASK1, "id": "x"}]
        with pytest.raises(InputError) as info:
            await engine.run("describe_regions", coerce_request("describe_regions", image=IMAGE1, regions=twice))
        assert info.value.field == "regions[1].id"
    finally:
        await engine.aclose()


def test_the_64_region_limit_is_checked_before_the_model() -> None:
    many = [{"box": [0, 0, 10 + i, 10]} for i in range(MAX_DESCRIBE_REGIONS + 1)]
    with pytest.raises(InputError) as info:
        coerce_request("describe_regions", image=IMAGE1, regions=many)
    assert info.value.field == "regions" and "at most 64" in info.value.reason
    assert len(coerce_request("describe_regions", image=IMAGE1, regions=many[:-1]).regions) == 64
    with pytest.raises(InputError):
        coerce_request("describe_regions", image=IMAGE1, regions=[])
    with pytest.raises(InputError):
        coerce_request("describe_regions", image=IMAGE1, regions="everything")
    with pytest.raises(InputError) as info:
        coerce_request("describe_regions", image=IMAGE1, regions=many[:2], auto={"max_regions": 3})
    assert "auto" in info.value.reason
    # the other tools keep GAR's 5 slots
    with pytest.raises(InputError):
        coerce_request("compare_regions", image=IMAGE1, regions=many[:6])


async def test_auto_without_a_segmenter_says_how_to_configure_one(engine: LocalEngine) -> None:
    try:
        with pytest.raises(InputError) as info:
            await engine.run("describe_regions", coerce_request("describe_regions", image=IMAGE1, regions="auto"))
        assert info.value.field == "regions" and "--segmenter" in info.value.reason
    finally:
        await engine.aclose()


AUTO = {"points_per_side": 4, "score_threshold": 0.0, "stability_threshold": 0.0, "min_area": 1, "max_regions": 3}


def test_auto_proposals_are_deterministic_deduplicated_and_capped() -> None:
    import numpy as np
    from PIL import Image

    from gar_tools.inputs import AutoRegionsOptions
    from gar_tools.segment.automatic import _iou, generate_masks
    from gar_tools.segment.loading import load_segmenter

    segmenter = load_segmenter("tiny-sam")
    image = Image.open(IMAGE1).convert("RGB")
    loose = AutoRegionsOptions(**{**AUTO, "max_regions": 64, "iou_threshold": 1.0})
    everything = generate_masks(segmenter, image, loose)
    # without thresholds or NMS every non-empty candidate (3 per grid point) survives
    assert 0 < len(everything) <= 4 * 4 * 3 and all(p.mask.any() for p in everything)
    options = AutoRegionsOptions(**{**AUTO, "max_regions": 64, "iou_threshold": 0.5})
    deduplicated = generate_masks(segmenter, image, options)
    assert 0 < len(deduplicated) < len(everything)
    for i, a in enumerate(deduplicated):
        assert all(_iou(a.mask, b.mask) <= 0.5 for b in deduplicated[i + 1 :])
    assert [p.score for p in deduplicated] == sorted((p.score for p in deduplicated), reverse=True)
    capped = generate_masks(segmenter, image, options.model_copy(update={"max_regions": 2}))
    assert len(capped) == 2 and all(np.array_equal(a.mask, b.mask) for a, b in zip(capped, deduplicated, strict=False))
    again = generate_masks(segmenter, image, options.model_copy(update={"max_regions": 2}))
    assert [p.score for p in again] == [p.score for p in capped]
    big = generate_masks(segmenter, image, options.model_copy(update={"min_area": int(capped[0].mask.sum()) + 1}))
    assert all(int(p.mask.sum()) >= int(capped[0].mask.sum()) + 1 for p in big)
    assert generate_masks(segmenter, image, options.model_copy(update={"score_threshold": 1.0})) == []


async def test_auto_describes_each_proposal_with_its_mask(tiny_pipeline) -> None:
    engine = LocalEngine(pipeline=tiny_pipeline, policy=ImagePolicy(allowed_dirs=(ASSETS,)), segmenter="tiny-sam")
    try:
        request = coerce_request("describe_regions", image=IMAGE1, regions="auto", auto=AUTO, max_new_tokens=2)
        result = await engine.run("describe_regions", request)
        assert result.proposed and len(result.descriptions) == 3
        for item in result.descriptions:
            assert item.region is not None and item.region.source == "sam:auto"
            assert item.region.mask_rle is not None and item.region.score is not None
        assert result.timings.segment_ms > 0
    finally:
        await engine.aclose()


async def test_items_and_progress_stream_as_regions_finish(engine: LocalEngine) -> None:
    toolkit = GarToolkit(engine)
    try:
        seen: list[object] = []
        async for item in toolkit.astream("describe_regions", image=IMAGE3, regions=REGIONS3[:3], max_new_tokens=2):
            seen.append(item)
        *items, final = seen
        assert all(isinstance(item, RegionDescription) for item in items) and len(items) == 3
        assert isinstance(final, DescribeRegionsResult)
        assert sorted(item.index for item in items) == [0, 1, 2]  # type: ignore[attr-defined]
        messages: list[tuple[float, float | None, str | None]] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            messages.append((done, total, message))

        await toolkit.arun("describe_regions", image=IMAGE3, regions=REGIONS3[:2], max_new_tokens=2, progress=progress)
        assert messages == [(1.0, 2.0, "1 of 2 regions done"), (2.0, 2.0, "2 of 2 regions done")]
    finally:
        await toolkit.aclose()


async def test_cancelling_frees_the_engines_slots(tiny_pipeline) -> None:
    engine = LocalEngine(pipeline=tiny_pipeline, policy=ImagePolicy(allowed_dirs=(ASSETS,)), max_batch_size=2)
    try:
        many = [{"box": [10 * i, 10, 10 * i + 50, 90]} for i in range(6)]
        request = coerce_request("describe_regions", image=IMAGE1, regions=many, max_new_tokens=400)
        task = asyncio.ensure_future(engine.run("describe_regions", request))
        deadline = asyncio.get_running_loop().time() + 60
        while ((await engine.info()).running or 0) < 2:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while (info := await engine.info()).running or info.queued:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        short = coerce_request("describe_region", image=IMAGE1, region={"mask": MASK1}, max_new_tokens=2)
        assert (await asyncio.wait_for(engine.run("describe_region", short), 60)).timings.tokens_generated <= 2
    finally:
        await engine.aclose()


# --- surfaces (through the registry) ---------------------------------------------------------------------------------


def test_worker_streams_one_event_per_region_then_the_result(engine: LocalEngine) -> None:
    pytest.importorskip("starlette")
    import json

    from starlette.testclient import TestClient

    from gar_tools.servers.worker_app import create_worker_app

    body = {"image": IMAGE3, "regions": [*REGIONS3[:2], {"box": [0, 0, 0, 0]}], "max_new_tokens": 2}
    with TestClient(create_worker_app(engine_factory=lambda: engine), base_url="http://127.0.0.1") as client:
        with client.stream("POST", "/v1/describe_regions/stream", json=body) as response:
            assert response.status_code == 200
            events, event = [], None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    events.append((event, json.loads(line.removeprefix("data: "))))
        plain = client.post("/v1/describe_regions", json=body)
    kinds = [kind for kind, _ in events]
    assert kinds.count("region") == 3 and kinds.count("progress") == 3 and kinds[-1] == "result"
    assert [data["message"] for kind, data in events if kind == "progress"][-1] == "3 of 3 regions done"
    failed = [data for kind, data in events if kind == "region" and data["error"]]
    assert len(failed) == 1 and failed[0]["error"]["field"].startswith("regions[2]")
    assert plain.status_code == 200 and len(plain.json()["descriptions"]) == 3
    assert events[-1][1]["descriptions"] == plain.json()["descriptions"]


async def test_mcp_serves_it_with_region_progress(tiny_pipeline) -> None:
    pytest.importorskip("mcp")
    from mcp import Client

    from gar_tools.servers.mcp_server import create_server
    from gar_tools.servers.settings import ServeSettings, server_policy

    settings = ServeSettings(policy=server_policy([ASSETS]))
    messages: list[str | None] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    server = create_server(settings, engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=settings.policy))
    async with Client(server) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert listed["describe_regions"].annotations.read_only_hint is True
        assert "descriptions" in listed["describe_regions"].output_schema["properties"]
        arguments = {"image": IMAGE3, "regions": REGIONS3[:2], "max_new_tokens": 2}
        result = await client.call_tool("describe_regions", arguments, progress_callback=on_progress)
    assert not result.is_error and len(result.structured_content["descriptions"]) == 2
    assert messages and all(m and " of 2 regions done" in m for m in messages)
    assert messages[-1].startswith("2 of 2 regions done")


def test_cli_takes_rle_files_and_auto(tmp_path: Path) -> None:
    import json

    from gar_tools.cli import build_parser

    rle = {"size": [427, 640], "counts": [0, 10, 273270]}
    path = tmp_path / "regions.json"
    path.write_text(json.dumps([rle, {"segmentation": rle, "id": "b"}, {"box": [0, 0, 5, 5]}]))
    args = build_parser().parse_args(["describe-all", IMAGE3, "--mask", MASKS3[0], "--rle-file", str(path)])
    assert args.regions == [{"mask": MASKS3[0]}, {"rle": rle}, {"rle": rle, "id": "b"}, {"box": [0, 0, 5, 5]}]
    args = build_parser().parse_args(["describe-all", IMAGE3, "--auto", "--auto-options", '{"max_regions": 4}'])
    assert args.auto and args.auto_options == {"max_regions": 4}
