"""The worker (``gar-tools worker`` subprocess), the http engine, and an MCP server sharing the worker.

All calls use the tiny random-weight model (its text is meaningless) and few tokens; the worker and the local
reference engine both run it on CPU in float32, so their answers must be identical.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")
pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import json
import sys

import anyio
import httpx
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from PIL import Image
from server_helpers import ASSETS, CLI, free_port
from server_helpers import cli_server as run_cli_server

from gar_tools.engine import HttpEngine, LocalEngine, make_engine
from gar_tools.errors import EngineError, GarToolsError, ImageError, InputError, RegionError
from gar_tools.results import DescribeRegionResult, ModelInfo
from gar_tools.servers.settings import server_policy
from gar_tools.toolkit import GarToolkit

pytestmark = pytest.mark.anyio

TOKEN = "test-worker-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")
IMAGE3 = str(ASSETS / "demo_image_3.png")
MASK_WRONG_SIZE = str(ASSETS / "demo_mask_3_0.png")  # 640x427, image 1 is 1024x770
TENNIS = [{"id": n, "mask": str(ASSETS / f"demo_mask_3_{i}.png")} for i, n in enumerate(("person", "ball", "racket"))]
REQUESTS = {
    "describe_region": {"image": IMAGE1, "region": {"id": "slipper", "mask": MASK1}, "max_new_tokens": 4},
    "compare_regions": {"image": IMAGE3, "regions": TENNIS[:2], "focus": "size", "max_new_tokens": 4},
    "answer_about_regions": {
        "image": IMAGE3,
        "regions": [TENNIS[0], {"id": "court", "box": [0, 300, 640, 427]}],
        "question": "Is <person> standing on <court>?",
        "choices": ["Yes.", "No."],
        "max_new_tokens": 4,
    },
    "describe_regions": {"image": IMAGE3, "regions": [*TENNIS[:2], {"box": [0, 0, 0, 0]}], "max_new_tokens": 3},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """A ``gar-tools worker`` subprocess with a token, on a free loopback port: its base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    args = ["worker", "--port", str(port), "--token-env", "GAR_TEST_WORKER_TOKEN", "--device", "cpu", "--dtype", "fp32"]
    ready = f"http://127.0.0.1:{port}/healthz"
    with run_cli_server(args, ready_url=ready, log=log, env={"GAR_TEST_WORKER_TOKEN": TOKEN}):
        banner = f"the worker listening on http://127.0.0.1:{port} (engine local, model tiny, token required: yes)"
        assert banner in log.read_text()
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def local_results(tiny_pipeline):
    """What the local engine answers to REQUESTS (the reference)."""
    with GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=server_policy())) as toolkit:
        return {tool: toolkit.run(tool, request) for tool, request in REQUESTS.items()}


def _comparable(result) -> dict:
    return result.model_dump(exclude={"timings", "overlay_png"})


# --- the HTTP API ----------------------------------------------------------------------------------------------------


def test_health_model_and_token(worker):
    health = httpx.get(f"{worker}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["loaded"] is True
    assert httpx.get(f"{worker}/v1/model").status_code == 401
    assert httpx.post(f"{worker}/v1/describe_region", json=REQUESTS["describe_region"]).status_code == 401
    assert httpx.get(f"{worker}/v1/model", headers={"Authorization": "Bearer nope"}).status_code == 401
    info = ModelInfo.model_validate_json(httpx.get(f"{worker}/v1/model", headers=AUTH).content)
    assert info.model == "tiny" and info.tiny_model and info.loaded and info.device == "cpu"


def test_post_returns_the_result_model(worker, local_results):
    response = httpx.post(f"{worker}/v1/describe_region", json=REQUESTS["describe_region"], headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    result = DescribeRegionResult.model_validate(response.json())
    assert _comparable(result) == _comparable(local_results["describe_region"])


def test_errors_have_type_message_and_field(worker):
    def post(path: str, **kwargs) -> httpx.Response:
        return httpx.post(f"{worker}{path}", headers=AUTH, timeout=60, **kwargs)

    outside = post("/v1/describe_region", json={"image": IMAGE1, "region": {"box": [5000, 0, 6000, 9]}})
    assert outside.status_code == 422
    error = outside.json()["error"]
    assert error["type"] == "RegionError" and error["field"] == "region.box" and "outside" in error["message"]
    invalid = post("/v1/compare_regions", json={"image": IMAGE1, "regions": [{"box": [0, 0, 9, 9]}]})
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "regions"
    assert post("/v1/no_such_tool", json={}).status_code == 404
    not_json = httpx.post(
        f"{worker}/v1/describe_region", content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 400 and not_json.json()["error"]["field"] == "body"
    not_allowed = post("/v1/describe_region", json={"image": "/etc/hostname", "region": {"box": [0, 0, 9, 9]}})
    assert not_allowed.status_code == 422 and not_allowed.json()["error"]["type"] == "ImageError"


def test_stream_sends_text_deltas_then_the_result(worker, local_results):
    events: list[tuple[str, dict]] = []
    request = REQUESTS["describe_region"]
    with httpx.stream("POST", f"{worker}/v1/describe_region/stream", json=request, headers=AUTH, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in resp.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "result" and set(kinds[:-1]) == {"text"}
    result = DescribeRegionResult.model_validate(events[-1][1])
    assert "".join(data["delta"] for _, data in events[:-1]).strip() == result.text  # deltas add up to the text
    assert [data["progress"] for _, data in events[:-1]] == sorted(data["progress"] for _, data in events[:-1])
    assert events[-2][1]["progress"] == result.timings.tokens_generated
    assert _comparable(result) == _comparable(local_results["describe_region"])


# --- the http engine -------------------------------------------------------------------------------------------------


async def test_http_engine_gives_the_local_engine_answers(worker, local_results):
    engine = make_engine(worker, token=TOKEN, policy=server_policy())
    assert isinstance(engine, HttpEngine)
    toolkit = GarToolkit(engine)
    try:
        assert (await toolkit.ainfo()).tiny_model
        for tool, request in REQUESTS.items():
            assert _comparable(await toolkit.arun(tool, request)) == _comparable(local_results[tool]), tool
        deltas: list[str] = []

        async def on_progress(done: float, total: float | None, delta: str | None) -> None:
            deltas.append(delta or "")

        streamed = await toolkit.arun("describe_region", REQUESTS["describe_region"], progress=on_progress)
        assert _comparable(streamed) == _comparable(local_results["describe_region"])
        assert "".join(deltas).strip() == streamed.text
    finally:
        await toolkit.aclose()


async def test_http_engine_streams_describe_regions_per_region(worker, local_results):
    from gar_tools.results import RegionDescription

    toolkit = GarToolkit(make_engine(worker, token=TOKEN, policy=server_policy()))
    try:
        items = [item async for item in toolkit.astream("describe_regions", REQUESTS["describe_regions"])]
        *regions, result = items
        assert all(isinstance(item, RegionDescription) for item in regions) and len(regions) == 3
        assert sorted(regions, key=lambda item: item.index) == result.descriptions
        assert _comparable(result) == _comparable(local_results["describe_regions"])
        assert result.descriptions[2].error is not None and result.descriptions[2].error.field == "regions[2].box"
    finally:
        await toolkit.aclose()


async def test_http_engine_raises_the_local_engine_errors(worker, tiny_pipeline, tmp_path):
    policy = server_policy()
    remote = GarToolkit(HttpEngine(worker, token=TOKEN, policy=policy))
    local = GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=policy))
    outside = tmp_path / "x.png"
    outside.write_bytes((ASSETS / "demo_mask_1.png").read_bytes())
    bad_requests = [
        ("describe_region", {"image": IMAGE1, "region": {"box": [5000, 0, 6000, 9]}}, RegionError),
        ("describe_region", {"image": IMAGE1, "region": {"mask": str(outside)}}, RegionError),
        ("describe_region", {"image": str(outside), "region": {"box": [0, 0, 9, 9]}}, ImageError),
        ("describe_region", {"image": IMAGE1, "region": {"mask": MASK_WRONG_SIZE}}, RegionError),
        ("answer_about_regions", {"image": IMAGE1, "regions": [{"box": [0, 0, 9, 9]}], "question": "<x>?"}, InputError),
        ("compare_regions", {"image": IMAGE1, "regions": [{"box": [0, 0, 9, 9]}] * 6}, InputError),
    ]
    try:
        for tool, request, error_class in bad_requests:
            errors = []
            for toolkit in (local, remote):
                with pytest.raises(GarToolsError) as caught:
                    await toolkit.arun(tool, {**request, "max_new_tokens": 2})
                errors.append(caught.value)
            local_error, remote_error = errors
            assert isinstance(remote_error, error_class)
            assert (type(remote_error), str(remote_error), remote_error.field) == (
                type(local_error),
                str(local_error),
                local_error.field,
            )
    finally:
        await remote.aclose()
        await local.aclose()


async def test_http_engine_names_an_unreachable_or_refusing_worker(worker):
    request = {"image": IMAGE1, "region": {"box": [0, 0, 9, 9]}, "max_new_tokens": 1}
    unreachable = f"http://127.0.0.1:{free_port()}"
    for engine, fragment in (
        (HttpEngine(unreachable, connect_timeout_s=5), unreachable),
        (HttpEngine(worker, token="wrong"), "401"),
        (HttpEngine(worker), "401"),
    ):
        toolkit = GarToolkit(engine)
        with pytest.raises(EngineError, match=fragment.replace(".", r"\.")):
            await toolkit.arun("describe_region", request)
        await toolkit.aclose()
    with pytest.raises(InputError):
        make_engine("ftp://example.com")


# --- an MCP server sharing the worker --------------------------------------------------------------------------------


async def test_mcp_server_with_http_engine_answers_like_local_and_serves_concurrent_calls(
    worker, local_results, tmp_path
):
    # The small image lies in a folder only the front-end allows: it reaches the worker inline.
    small = tmp_path / "small.png"
    Image.new("RGB", (96, 64), (30, 160, 60)).save(small)
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            *CLI[1:],
            "serve",
            "--transport",
            "stdio",
            "--engine",
            worker,
            "--worker-token-env",
            "GAR_TEST_WT",
            "--allow-dir",
            str(tmp_path),
        ],
        env={"GAR_TEST_WT": TOKEN},
    )
    boxes = [[4 * i, 2 * i, 4 * i + 40 + 3 * i, 2 * i + 30] for i in range(8)]
    results: dict[int, object] = {}
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            for tool, request in REQUESTS.items():
                result = await client.call_tool(tool, request)
                assert not result.is_error, result.content
                expected = _comparable(local_results[tool])
                assert {k: result.structured_content[k] for k in expected} == json.loads(json.dumps(expected))

            async def call(index: int) -> None:
                request = {"image": str(small), "region": {"id": f"b{index}", "box": boxes[index]}, "max_new_tokens": 1}
                results[index] = await client.call_tool("describe_region", request)

            async with anyio.create_task_group() as group:
                for index in range(8):
                    group.start_soon(call, index)
    assert len(results) == 8
    for index, result in results.items():
        assert not result.is_error, result.content
        region = result.structured_content["regions"][0]
        assert region["id"] == f"b{index}" and region["box"] == boxes[index]  # each call got its own answer
