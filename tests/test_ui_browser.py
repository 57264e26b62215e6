"""The region picker in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright.

Servers run in this process (uvicorn in a thread, on a free loopback port) over the tiny model (its text is
meaningless; the page must say so). Each flow draws with mouse events, runs a tool, waits for the text and the
overlay, checks the browser console stayed clean, and saves a screenshot under the test's temporary folder.
Skipped when /usr/bin/chromium or playwright is missing (.ci/run installs both).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytest.importorskip("uvicorn")
pytest.importorskip("mcp")

import io
import json

import numpy as np
import uvicorn
from PIL import Image, ImageDraw
from playwright import sync_api
from server_helpers import free_port

from gar_tools.catalog import ASSETS_DIR
from gar_tools.engine import LocalEngine
from gar_tools.servers.mcp_server import create_server, http_app
from gar_tools.servers.settings import ServeSettings, WorkerSettings, server_policy
from gar_tools.servers.worker_app import create_worker_app

CHROMIUM = os.environ.get("GAR_TEST_CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)

TOKEN = "test-ui-browser-token"
TIMEOUT_MS = int(os.environ.get("GAR_TEST_UI_TIMEOUT_MS", "60000"))


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; its base URL until the block ends."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)  # polling interval: `started` is what ends the loop
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.problems = problems
    yield page
    context.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A small synthetic photo: sky, grass, a red ball and a blue box."""
    image = Image.new("RGB", (480, 320), (150, 200, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 220, 480, 320], fill=(70, 160, 70))
    draw.ellipse([80, 150, 180, 250], fill=(220, 40, 40))
    draw.rectangle([280, 120, 400, 240], fill=(40, 60, 200))
    path = tmp_path_factory.mktemp("photo") / "ball-and-box.png"
    image.save(path)
    return path


def _tiny_engine(tiny_pipeline, cls=LocalEngine):
    return lambda: cls(pipeline=tiny_pipeline, policy=server_policy())


def _open(page, url: str, *, token: str | None) -> None:
    page.goto(url + "/ui")
    if token is not None:
        page.wait_for_selector("#token-dialog[open]")
        page.fill("#token-input", token)
        page.click("#token-submit")
    page.wait_for_selector("#model-name:has-text('tiny')")
    assert page.is_visible("#tiny-banner")  # the tiny-model notice is up before anything runs


def _drag(page, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Drag on the drawing canvas; positions are fractions of its width and height."""
    box = page.locator("#draw-canvas").bounding_box()
    page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=8)
    page.mouse.up()


def _click(page, at: tuple[float, float], **kwargs) -> None:
    box = page.locator("#draw-canvas").bounding_box()
    page.mouse.click(box["x"] + at[0] * box["width"], box["y"] + at[1] * box["height"], **kwargs)


def _run(page, *, max_tokens: int = 6) -> dict:
    page.fill("#max-tokens", str(max_tokens))
    page.click("#run")
    page.wait_for_selector("#output[data-done='1']")
    page.wait_for_selector("#overlay-img:visible")
    assert page.evaluate("document.getElementById('overlay-img').naturalWidth") > 0
    assert page.is_hidden("#error"), page.text_content("#error")
    assert page.is_visible("#result-tiny")
    assert "meaningless" in page.text_content("#result-tiny")
    text = page.text_content("#output")
    assert text.strip()
    return {"text": text, "timings": page.text_content("#timings")}


def _copied(page, kind: str) -> str:
    page.click(f"[data-copy='{kind}']")
    return page.input_value("#copy-text")


def _screenshot(page, path: Path) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)


def test_box_describe_on_the_worker(tiny_pipeline, page, photo, tmp_path):
    app = create_worker_app(WorkerSettings(token=TOKEN), engine_factory=_tiny_engine(tiny_pipeline))
    with serve_in_thread(app) as url:
        _open(page, url, token=TOKEN)
        page.set_input_files("#file-input", str(photo))
        page.wait_for_selector("#drop-hint", state="hidden")
        assert page.is_disabled("[data-mode='points']")  # no segmenter on this server
        _drag(page, (0.15, 0.45), (0.40, 0.80))
        assert page.locator("#region-list li[data-region-id='r0']").count() == 1
        page.select_option("#tool-select", "describe_region")
        result = _run(page)
        assert "tokens" in result["timings"]
        request = json.loads(_copied(page, "json"))
        assert request["tool"] == "describe_region"
        assert request["arguments"]["image"] == photo.name
        (x1, y1, x2, y2) = request["arguments"]["region"]["box"]
        assert 60 <= x1 < x2 <= 200 and 130 <= y1 < y2 <= 270
        assert "GarToolkit" in _copied(page, "python")
        cli = _copied(page, "cli")
        assert cli.startswith(f"gar-tools describe {photo.name} --box {x1},{y1},{x2},{y2} --id r0")
        _screenshot(page, tmp_path / "box-describe.png")
    assert page.problems == []


def test_example_brush_polygon_compare_on_the_mcp_http_server(tiny_pipeline, page, tmp_path):
    settings = ServeSettings(token=TOKEN)
    server = create_server(settings, engine_factory=_tiny_engine(tiny_pipeline))
    with serve_in_thread(http_app(server, token=TOKEN)) as url:
        _open(page, url, token=TOKEN)
        page.select_option("#example-select", "tennis")
        page.wait_for_selector("#status:has-text('example tennis loaded')")
        assert page.input_value("#tool-select") == "compare_regions"
        assert page.input_value("#field-focus") == "what they are doing"
        page.click("[data-mode='polygon']")
        for corner in ((0.05, 0.75), (0.30, 0.72), (0.32, 0.95), (0.04, 0.96)):
            _click(page, corner)
        page.keyboard.press("Enter")
        page.click("[data-mode='brush']")
        _drag(page, (0.70, 0.20), (0.90, 0.30))
        ids = page.locator("#region-list li").evaluate_all("items => items.map(li => li.dataset.regionId)")
        assert ids == ["person", "ball", "r0", "r1"]
        _run(page)
        request = json.loads(_copied(page, "json"))["arguments"]
        kinds = [next(k for k in region if k != "id") for region in request["regions"]]
        assert kinds == ["mask", "mask", "polygon", "mask"]
        assert [r.get("mask") for r in request["regions"][:2]] == ["demo_mask_3_0.png", "demo_mask_3_1.png"]
        assert request["regions"][2]["polygon"][0][:2] == pytest.approx([0.05 * 640, 0.75 * 427], abs=3)
        assert len(request["regions"][2]["polygon"][0]) == 8
        assert request["regions"][3]["mask"].startswith("data:image/png;base64,")
        _screenshot(page, tmp_path / "tennis-compare.png")
    if os.environ.get("GAR_UI_DOCS_SCREENSHOT"):  # refresh the README's picture: GAR_UI_DOCS_SCREENSHOT=docs/...
        _save_docs_screenshot(tmp_path / "tennis-compare.png", Path(os.environ["GAR_UI_DOCS_SCREENSHOT"]))
    assert page.problems == []


def test_points_with_the_tiny_segmenter(tiny_pipeline, page, photo, tmp_path):
    """Points become a previewed mask through the tiny random-weight SAM (its masks are arbitrary, so only the flow
    is checked): preview with a score, accept, run; the request carries the points and the result says sam:points."""

    def engine() -> LocalEngine:
        return LocalEngine(pipeline=tiny_pipeline, policy=server_policy(), segmenter="tiny-sam")

    app = create_worker_app(WorkerSettings(), engine_factory=engine)
    with serve_in_thread(app) as url:
        _open(page, url, token=None)
        page.set_input_files("#file-input", str(photo))
        page.click("[data-mode='points']")
        _click(page, (0.27, 0.62))
        page.keyboard.down("Shift")  # a negative point
        _click(page, (0.22, 0.66))
        page.keyboard.up("Shift")
        page.wait_for_selector("#region-list .seg button.accept")
        assert "score" in page.text_content("#region-list .seg")
        page.click("#region-list .seg button.accept")
        _run(page)
        region = json.loads(_copied(page, "json"))["arguments"]["region"]
        assert set(region) == {"id", "points", "labels"} and region["labels"] == [1, 0]
        assert np.allclose(region["points"], [[130, 198], [106, 211]], atol=2)
        _screenshot(page, tmp_path / "points-segment.png")
    assert page.problems == []


def _save_docs_screenshot(shot_path: Path, target: Path) -> None:
    """Write a screenshot for README (downscaled, 256-colour PNG: a few hundred KB at most)."""
    with Image.open(shot_path) as shot:
        shot = shot.convert("RGB")
        shot.thumbnail((1100, 1100))
        buffer = io.BytesIO()
        shot.quantize(256, method=Image.Quantize.FASTOCTREE).save(buffer, format="PNG", optimize=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    assert target.stat().st_size < 400_000


# --- the MCP App: the ui:// resource in an iframe of a stand-in host -----------------------------------------------

HOST_PAGE = """<!doctype html><html><body style="margin:0">
<iframe id="app" style="width:1260px;height:1300px;border:0"></iframe>
<script>
  const frame = document.getElementById("app");
  window.hostLog = [];
  window.addEventListener("message", async (event) => {
    if (event.source !== frame.contentWindow) return;
    const msg = event.data;
    window.hostLog.push(msg.method || "response");
    if (msg.id === undefined) return;  // a notification (ui/notifications/initialized, size-changed)
    let reply;
    if (msg.method === "ui/initialize") {
      reply = {result: {protocolVersion: "2026-01-26", hostInfo: {name: "test host", version: "0"},
                        hostCapabilities: {serverTools: {}, serverResources: {}}, hostContext: {theme: "light"}}};
    } else {
      reply = JSON.parse(await window.mcpRequest(JSON.stringify({method: msg.method, params: msg.params})));
    }
    frame.contentWindow.postMessage(Object.assign({jsonrpc: "2.0", id: msg.id}, reply), "*");
  });
</script></body></html>"""


@contextmanager
def mcp_session(server) -> Iterator:
    """An in-memory MCP client session held by one task on its own event-loop thread; ``call(fn)`` runs
    ``await fn(client)`` there and returns the result."""
    import asyncio

    from mcp import Client

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    opened = threading.Event()
    holder: dict = {}

    async def hold() -> None:
        holder["stop"] = asyncio.Event()
        async with Client(server) as client:
            holder["client"] = client
            opened.set()
            await holder["stop"].wait()

    held = asyncio.run_coroutine_threadsafe(hold(), loop)
    try:
        if not opened.wait(timeout=120):
            raise RuntimeError(f"the MCP client did not connect: {held}")
        yield lambda fn: asyncio.run_coroutine_threadsafe(fn(holder["client"]), loop).result(timeout=120)
    finally:
        if "stop" in holder:
            loop.call_soon_threadsafe(holder["stop"].set)
        held.result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)


def test_mcp_app_calls_tools_through_the_host(tiny_pipeline, page, tmp_path):
    from gar_tools.servers.ui import UI_RESOURCE_URI

    settings = ServeSettings()
    server = create_server(settings, engine_factory=_tiny_engine(tiny_pipeline))
    with mcp_session(server) as call:
        html = call(lambda client: client.read_resource(UI_RESOURCE_URI)).contents[0].text
        forwarded: list[str] = []

        def mcp_request(message: str) -> str:
            request = json.loads(message)
            forwarded.append(request["method"])
            params = request.get("params") or {}
            if request["method"] == "tools/call":
                result = call(lambda client: client.call_tool(params["name"], params.get("arguments") or {}))
            elif request["method"] == "resources/read":
                result = call(lambda client: client.read_resource(params["uri"]))
            else:
                return json.dumps({"error": {"code": -32601, "message": f"not forwarded: {request['method']}"}})
            return json.dumps({"result": result.model_dump(mode="json", by_alias=True, exclude_none=True)})

        page.expose_function("mcpRequest", mcp_request)
        page.set_content(HOST_PAGE)
        page.evaluate("html => { document.getElementById('app').srcdoc = html; }", html)
        app = page.frame_locator("#app")
        app.locator("#model-name:has-text('MCP host')").wait_for()
        app.locator("#example-select").select_option("slipper")
        app.locator("#status:has-text('example slipper loaded')").wait_for()
        app.locator("#max-tokens").fill("5")
        app.locator("#run").click()
        app.locator("#output[data-done='1']").wait_for()
        app.locator("#overlay-img").wait_for(state="visible")
        assert app.locator("#error").is_hidden()
        assert app.locator("#result-tiny").is_visible() and app.locator("#tiny-banner").is_visible()
        assert app.locator("#timings").text_content().count("slipper") == 1
        _screenshot(page, tmp_path / "mcp-app.png")
        # the host hands the view the result of the agent's own call
        agent_result = call(
            lambda client: client.call_tool(
                "describe_region",
                {
                    "image": str(ASSETS_DIR / "demo_image_3.png"),
                    "region": {"box": [0, 300, 640, 427]},
                    "max_new_tokens": 3,
                },
            )
        ).model_dump(mode="json", by_alias=True, exclude_none=True)
        page.evaluate(
            """params => document.getElementById('app').contentWindow.postMessage(
                {jsonrpc: '2.0', method: 'ui/notifications/tool-result', params}, '*')""",
            agent_result,
        )
        app.locator(f"#output:has-text('{agent_result['structuredContent']['text']}')").wait_for()
        assert app.locator("#timings").text_content().count("r0") == 1
    log = page.evaluate("window.hostLog")
    assert log[:2] == ["ui/initialize", "ui/notifications/initialized"]
    assert "ui/notifications/size-changed" in log
    assert forwarded.count("tools/call") == 1 and forwarded.count("resources/read") == 2  # image + mask
    assert page.problems == []


def test_text_deltas_show_as_they_arrive(page, photo, tmp_path):
    """Engines that stream text send ``text`` events before the result: the page shows them as they come."""
    import base64

    import anyio
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from gar_tools.results import ModelInfo
    from gar_tools.servers.ui import ui_routes

    release = threading.Event()
    overlay = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 30, 30)).save(overlay, format="PNG")

    class Info:
        async def info(self) -> ModelInfo:
            return ModelInfo(model="tiny", tiny_model=True, loaded=True)

    def sse(event: str, data: dict) -> str:
        return f"event: {event}\ndata: {json.dumps(data)}\n\n"

    async def stream(request):
        async def events():
            yield sse("progress", {"progress": 0, "total": 3, "message": None})
            for word in ("alpha ", "beta ", "gamma"):
                yield sse("text", {"delta": word})
            await anyio.to_thread.run_sync(release.wait, 60)  # the test reads the partial text first
            result = {
                "text": "alpha beta gamma",
                "regions": [{"id": "r0", "prompt": "<Prompt0>", "box": [1, 2, 3, 4], "area": 4}],
                "model": "tiny",
                "tiny_model": True,
                "timings": {"load_ms": 1, "encode_ms": 2, "generate_ms": 3, "tokens_generated": 3},
                "overlay_png": base64.b64encode(overlay.getvalue()).decode(),
            }
            yield sse("result", result)

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[*ui_routes(lambda request: Info(), api="/v1"), Route("/v1/{tool}/stream", stream, methods=["POST"])]
    )
    with serve_in_thread(app) as url:
        _open(page, url, token=None)
        page.set_input_files("#file-input", str(photo))
        _drag(page, (0.1, 0.1), (0.3, 0.3))
        page.click("#run")
        page.wait_for_selector("#output:has-text('alpha beta gamma')")
        assert page.get_attribute("#output", "data-done") is None  # still generating: these are the deltas
        release.set()
        page.wait_for_selector("#output[data-done='1']")
        page.wait_for_selector("#overlay-img:visible")
        _screenshot(page, tmp_path / "text-deltas.png")
    release.set()
    assert page.problems == []
