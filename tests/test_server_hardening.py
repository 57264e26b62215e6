"""Hostile clients against real uvicorn servers on loopback: Host/Origin, content type, body size, malformed and
deeply nested JSON, clients that stall in the request head or the body, and a front-end whose worker is down.

Timeouts are made small (well under a second) so every test takes a few seconds at most; the tiny model (random
weights, meaningless text) answers the good requests with one token.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")
pytest.importorskip("uvicorn")

import json
import socket
import time

import httpx
from server_helpers import ASSETS, free_port, thread_server

from gar_tools.engine import LocalEngine
from gar_tools.servers.mcp_server import create_server, http_app
from gar_tools.servers.settings import ServeSettings, WorkerSettings, default_max_body_bytes, server_policy
from gar_tools.servers.worker_app import create_worker_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


HEAD_TIMEOUT_S = 0.5
CHUNK_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 1.5
MAX_BODY = 200_000
GOOD = {"image": str(ASSETS / "demo_image_1.png"), "region": {"box": [10, 10, 200, 200]}, "max_new_tokens": 1}


@pytest.fixture(scope="module")
def worker_url(tiny_pipeline):
    settings = WorkerSettings(
        policy=server_policy(),
        preload=False,
        max_body_bytes=MAX_BODY,
        body_timeout_s=BODY_TIMEOUT_S,
        chunk_timeout_s=CHUNK_TIMEOUT_S,
    )
    app = create_worker_app(
        settings, engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=settings.policy)
    )
    with thread_server(app, header_timeout_s=HEAD_TIMEOUT_S) as url:
        yield url


def _error(response: httpx.Response, status: int, error_type: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if error_type is not None:
        assert error["type"] == error_type, error
    return error


def test_worker_checks_host_origin_and_content_type(worker_url):
    url = f"{worker_url}/v1/describe_region"
    body = json.dumps(GOOD)
    # the finding: a web page's request (foreign Host or Origin, text/plain to dodge CORS preflight) must not run
    hostile = {"Host": "evil.example", "Origin": "http://evil.example", "Content-Type": "text/plain"}
    _error(httpx.post(url, content=body, headers=hostile), 421, "InvalidHost")
    _error(httpx.post(url, content=body, headers={**hostile, "Host": "127.0.0.1"}), 403, "InvalidOrigin")
    _error(httpx.post(url, content=body, headers={"Content-Type": "text/plain"}), 415, "UnsupportedMediaType")
    _error(httpx.post(url, content=body), 415)
    _error(httpx.get(f"{worker_url}/healthz", headers={"Host": "evil.example:80"}), 421)
    ok = httpx.post(url, content=body, headers={"Content-Type": "application/json", "Origin": "http://localhost:3000"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["image_size"] == [1024, 770]


def test_worker_limits_the_body_and_answers_every_error_in_json(worker_url):
    url = f"{worker_url}/v1/describe_region"
    too_big = {**GOOD, "region": {"rle": {"size": [770, 1024], "counts": "a" * (MAX_BODY + 10)}}}
    _error(httpx.post(url, json=too_big), 413, "PayloadTooLarge")

    def chunks():
        for _ in range(30):
            yield b" " * 10_000

    _error(httpx.post(url, content=chunks(), headers={"Content-Type": "application/json"}), 413)
    for body in (b"[" * 100_000, b'{"image": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", b"{not json", b"[1, 2]"):
        assert _error(httpx.post(url, content=body, headers={"Content-Type": "application/json"}), 400)["field"]
    nested = {**GOOD, "region": {"box": json.loads("[" * 500 + "]" * 500)}}
    _error(httpx.post(url, json=nested), 422)
    _error(httpx.get(f"{worker_url}/v1/nothing/here"), 404, "NotFound")
    _error(httpx.get(url), 405, "MethodNotAllowed")
    _error(httpx.post(f"{worker_url}/v1/no_such_tool", json=GOOD), 404)
    assert httpx.post(url, json=GOOD).status_code == 200  # still serving


def test_default_body_limit_is_a_few_mb_above_the_image_limit():
    policy = server_policy()
    assert policy.max_bytes * 4 / 3 < default_max_body_bytes(policy) <= policy.max_bytes * 4 / 3 + 8 * 2**20


def _drip(url: str, payload: bytes, *, pause_s: float, budget_s: float, prefix: bytes = b"") -> tuple[bytes, float]:
    """Send ``prefix``, then ``payload`` one byte per ``pause_s``; return what the server answered and when it hung
    up."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    received = b""
    with socket.create_connection((host, int(port)), timeout=budget_s) as sock:
        sock.sendall(prefix)
        sock.settimeout(pause_s)
        for byte in payload:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # the server has closed the connection
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            received += data
            if not data:
                break
            if time.monotonic() - started > budget_s:
                break
        sock.settimeout(max(budget_s - (time.monotonic() - started), 0.1))
        try:
            while data := sock.recv(65536):
                received += data
        except OSError:
            pass
    return received, time.monotonic() - started


def _assert_head_stall_dropped(url: str) -> None:
    head = b"POST /v1/describe_region HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" * 4
    received, elapsed = _drip(url, head, pause_s=0.1, budget_s=4.0)
    assert elapsed < 3.0, f"a client dripping its request head was kept {elapsed:.1f} s"
    assert b"200 OK" not in received


def _assert_body_stall_408(url: str, path: str) -> None:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Length: 400\r\n\r\n"
    ).encode()
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=4.0) as sock:
        sock.sendall(head + b'{"image": ')
        received = b""
        try:
            while data := sock.recv(65536):
                received += data
        except OSError:
            pass
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"a client stalling in its body was kept {elapsed:.1f} s"
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b'"RequestTimeout"' in received


def test_worker_drops_clients_that_stall(worker_url):
    _assert_head_stall_dropped(worker_url)
    _assert_body_stall_408(worker_url, "/v1/describe_region")
    # a body that keeps coming, but too slowly overall, is cut at the overall deadline
    head = b"POST /v1/describe_region HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 1000\r\n\r\n"
    received, elapsed = _drip(worker_url, b" " * 1000, prefix=head, pause_s=0.2, budget_s=6)
    assert elapsed < BODY_TIMEOUT_S + 3.0 and b"408" in received
    assert httpx.get(f"{worker_url}/healthz").status_code == 200  # still serving


def test_mcp_http_server_drops_clients_that_stall(tiny_pipeline):
    settings = ServeSettings(policy=server_policy(), preload=False)
    server = create_server(settings, engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=settings.policy))
    app = http_app(server, body_timeout_s=BODY_TIMEOUT_S, chunk_timeout_s=CHUNK_TIMEOUT_S)
    with thread_server(app, header_timeout_s=HEAD_TIMEOUT_S) as url:
        _assert_head_stall_dropped(url)
        _assert_body_stall_408(url, "/mcp")
        health = httpx.get(f"{url}/healthz")
        assert health.status_code == 200 and health.json()["engine"] == "local"


async def test_front_end_healthz_reports_its_worker(worker_url):
    down = f"http://127.0.0.1:{free_port()}"
    for url, status, state in ((down, 503, "unreachable"), (worker_url, 200, "ok")):
        app = http_app(create_server(ServeSettings(engine=url, preload=False)), worker_url=url)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            response = await client.get("/healthz")
        assert response.status_code == status, response.text
        assert response.json()["worker"] == state and response.json()["worker_url"] == url


def test_worker_answers_an_unexpected_failure_in_json():
    from starlette.testclient import TestClient

    from gar_tools.engine.base import Engine

    class BrokenEngine(Engine):
        policy = server_policy()

        async def run(self, tool, request, progress=None):
            raise RuntimeError("boom")

        async def info(self):
            raise RuntimeError("no info")

    app = create_worker_app(WorkerSettings(preload=False), engine_factory=BrokenEngine)
    with TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
        for response in (client.get("/v1/model"), client.post("/v1/describe_region", json=GOOD)):
            error = _error(response, 500, "EngineError")
            assert "RuntimeError" in error["message"]
