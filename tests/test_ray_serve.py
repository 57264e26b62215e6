"""The worker as a Ray Serve application: two CPU replicas of the tiny model (random weights, meaningless text).

One local Ray instance (2 CPUs, no GPU, loopback only) is started for the module and shut down at its end. The
HTTP ingress must serve exactly the worker API (checked with raw HTTP and with ``HttpEngine``), the deployment
handle (``RayEngine``) must give the local engine's answers and errors, concurrent requests must spread over both
replicas, and a killed replica must be replaced while requests keep succeeding.
"""

from __future__ import annotations

import pytest

pytest.importorskip("ray")
pytest.importorskip("ray.serve")
pytest.importorskip("httpx")
pytest.importorskip("starlette")

import asyncio
import json
import os
import sys
import time

import httpx
import ray
from ray import serve
from server_helpers import ASSETS, CLI, free_port

from gar_tools.engine import HttpEngine, LocalEngine, RayEngine, make_engine
from gar_tools.errors import GarToolsError, ImageError, InputError, RegionError
from gar_tools.results import ModelInfo
from gar_tools.servers.ray_app import REPLICA_HEADER, RayServeSettings, build_app
from gar_tools.servers.settings import WorkerSettings, server_policy
from gar_tools.toolkit import GarToolkit

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

APP = "gar-test"
TOKEN = "test-ray-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")
IMAGE3 = str(ASSETS / "demo_image_3.png")
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
}
SMALL = {"image": IMAGE1, "region": {"box": [0, 0, 64, 48]}, "max_new_tokens": 1}
DEADLINE_S = 120.0
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def ingress():
    """Two replicas of the tiny model behind Ray Serve's proxy on a free loopback port: the base URL."""
    from ray._private import ray_constants

    port = free_port()
    # Ray's single-node mode (its default on macOS and Windows): its own services use 127.0.0.1, not this host's IP.
    saved = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        worker = WorkerSettings(token=TOKEN, engine_kwargs={"device": "cpu", "dtype": "fp32"})
        # Half a CPU each, so a replacement replica fits while a killed one is still being cleaned up.
        settings = RayServeSettings(worker=worker, replicas=2, num_cpus=0.5, name=APP)
        serve.run(build_app(settings), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            ray_constants.ENABLE_RAY_CLUSTER = saved[1]
            if saved[0] is None:
                os.environ.pop(LOOPBACK_ENV, None)
            else:
                os.environ[LOOPBACK_ENV] = saved[0]


@pytest.fixture(scope="module")
def local_results(tiny_pipeline):
    """What the local engine answers to REQUESTS (the reference)."""
    with GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=server_policy())) as toolkit:
        return {tool: toolkit.run(tool, request) for tool, request in REQUESTS.items()}


def _comparable(result) -> dict:
    return result.model_dump(exclude={"timings", "overlay_png"})


async def test_ingress_serves_the_worker_api_with_local_answers(ingress, local_results):
    health = httpx.get(f"{ingress}/healthz", timeout=30)  # no token needed
    assert health.status_code == 200 and health.json()["loaded"] is True and health.headers[REPLICA_HEADER]
    info = ModelInfo.model_validate_json(httpx.get(f"{ingress}/v1/model", headers=AUTH, timeout=30).content)
    assert info.model == "tiny" and info.tiny_model and info.loaded and info.device == "cpu"
    engine = HttpEngine(ingress, token=TOKEN, policy=server_policy())  # the worker's own client, unchanged
    toolkit = GarToolkit(engine)
    try:
        for tool, request in REQUESTS.items():
            assert _comparable(await toolkit.arun(tool, request)) == _comparable(local_results[tool]), tool
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        streamed = await toolkit.arun("describe_region", REQUESTS["describe_region"], progress=on_progress)  # SSE
        assert _comparable(streamed) == _comparable(local_results["describe_region"])
        assert progress == [1.0, 2.0, 3.0, 4.0][: len(progress)] and progress
    finally:
        await toolkit.aclose()


async def test_bad_input_and_missing_token_get_the_worker_errors(ingress):
    def post(path: str, headers: dict | None = AUTH, **kwargs) -> httpx.Response:
        return httpx.post(f"{ingress}{path}", headers=headers, timeout=60, **kwargs)

    outside = post("/v1/describe_region", json={"image": IMAGE1, "region": {"box": [5000, 0, 6000, 9]}})
    assert outside.status_code == 422
    error = outside.json()["error"]
    assert error["type"] == "RegionError" and error["field"] == "region.box" and "outside" in error["message"]
    invalid = post("/v1/compare_regions", json={"image": IMAGE1, "regions": [{"box": [0, 0, 9, 9]}]})
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "regions"
    assert post("/v1/no_such_tool", json={}).status_code == 404
    json_type = {**AUTH, "Content-Type": "application/json"}
    assert post("/v1/describe_region", headers=json_type, content=b"{not json").status_code == 400
    assert post("/v1/describe_region", content=b"{}").status_code == 415  # the worker's own checks hold here too
    for headers in (None, {"Authorization": "Bearer nope"}):
        refused = post("/v1/describe_region", headers=headers, json=SMALL)
        assert refused.status_code == 401 and refused.json()["error"]["type"] == "AuthenticationError"
    assert httpx.get(f"{ingress}/v1/model", timeout=30).status_code == 401


async def test_concurrent_requests_are_served_by_both_replicas(ingress):
    boxes = [[4 * i, 2 * i, 4 * i + 40, 2 * i + 30] for i in range(16)]
    async with httpx.AsyncClient(base_url=ingress, headers=AUTH, timeout=DEADLINE_S) as client:
        responses = await asyncio.gather(
            *(
                client.post("/v1/describe_region", json={**SMALL, "region": {"id": f"b{i}", "box": box}})
                for i, box in enumerate(boxes)
            )
        )
    assert [r.status_code for r in responses] == [200] * 16, [r.text for r in responses if r.status_code != 200]
    for index, response in enumerate(responses):  # each request got its own answer
        region = response.json()["regions"][0]
        assert region["id"] == f"b{index}" and region["box"] == boxes[index]
    replicas = {r.headers[REPLICA_HEADER] for r in responses}
    assert len(replicas) == 2, replicas


async def test_ray_engine_calls_the_deployment_handle(ingress, local_results, tiny_pipeline):
    engine = make_engine(f"ray://{APP}", policy=server_policy())
    assert isinstance(engine, RayEngine)
    remote = GarToolkit(engine)
    local = GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=server_policy()))
    try:
        assert (await remote.ainfo()).tiny_model
        for tool, request in REQUESTS.items():
            assert _comparable(await remote.arun(tool, request)) == _comparable(local_results[tool]), tool
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        streamed = await remote.arun("describe_region", REQUESTS["describe_region"], progress=on_progress)
        assert _comparable(streamed) == _comparable(local_results["describe_region"]) and progress
        bad_requests = [
            ("describe_region", {"image": IMAGE1, "region": {"box": [5000, 0, 6000, 9]}}, RegionError),
            ("describe_region", {"image": "/etc/hostname", "region": {"box": [0, 0, 9, 9]}}, ImageError),
            (
                "answer_about_regions",
                {"image": IMAGE1, "regions": [{"box": [0, 0, 9, 9]}], "question": "<x>?"},
                InputError,
            ),
        ]
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


async def test_an_mcp_front_end_in_the_cluster_uses_the_handle(ingress, local_results, tmp_path):
    """``gar-tools serve --engine ray://APP`` as a driver that joins the cluster (RAY_ADDRESS), holding no model."""
    pytest.importorskip("mcp")
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:")  # the test cluster stays on loopback
    args = [*CLI[1:], "serve", "--transport", "stdio", "--engine", f"ray://{APP}"]
    params = StdioServerParameters(command=sys.executable, args=args, env={**os.environ, "RAY_ADDRESS": address})
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            result = await client.call_tool("describe_region", REQUESTS["describe_region"])
    assert not result.is_error, (result.content, (tmp_path / "stderr.log").read_text()[-3000:])
    expected = _comparable(local_results["describe_region"])
    assert {k: result.structured_content[k] for k in expected} == json.loads(json.dumps(expected))


def _replica_actors() -> dict[str, str]:
    """Replica id -> actor name of the application's live replicas."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {name.rsplit("#", 1)[-1]: name for name in names if name.startswith("SERVE_REPLICA::") and APP in name}


def _post_with_one_retry(ingress: str) -> httpx.Response:
    response = httpx.post(f"{ingress}/v1/describe_region", json=SMALL, headers=AUTH, timeout=DEADLINE_S)
    if response.status_code == 503:  # the proxy may still route to the dead replica once
        response = httpx.post(f"{ingress}/v1/describe_region", json=SMALL, headers=AUTH, timeout=DEADLINE_S)
    return response


async def test_a_killed_replica_is_replaced_and_requests_keep_succeeding(ingress):
    before = _replica_actors()
    assert len(before) == 2, before
    victim = sorted(before)[0]
    ray.kill(ray.get_actor(before[victim], namespace="serve"), no_restart=True)
    answered: set[str] = set()
    deadline = time.monotonic() + DEADLINE_S
    while True:
        response = await asyncio.to_thread(_post_with_one_retry, ingress)
        assert response.status_code == 200, response.text
        answered.add(response.headers[REPLICA_HEADER])
        replacements = answered - set(before)
        if replacements:  # a new replica answered
            break
        assert time.monotonic() < deadline, f"no replacement replica answered within {DEADLINE_S} s: {answered}"
    assert victim not in answered
    assert victim not in _replica_actors() and len(_replica_actors()) == 2
