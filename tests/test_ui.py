"""The region picker's server side: the /ui routes on the worker and the MCP HTTP server, and the MCP App resource.

In-process (Starlette's test client, the in-memory MCP client), tiny model (its text is meaningless). The page in a
real browser is tests/test_ui_browser.py.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")
pytest.importorskip("starlette")

import json
import re

from mcp import Client
from starlette.testclient import TestClient

from gar_tools.catalog import ASSETS_DIR, example_calls
from gar_tools.engine import LocalEngine
from gar_tools.servers.mcp_server import create_server, http_app
from gar_tools.servers.settings import ServeSettings, WorkerSettings, server_policy
from gar_tools.servers.ui import UI_MIME_TYPE, UI_RESOURCE_URI, page_html
from gar_tools.servers.worker_app import create_worker_app
from gar_tools.tools import tool_names

TOKEN = "test-ui-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _config(html: str) -> dict:
    match = re.search(r"window\.GAR_CONFIG = (\{.*?\});\n?</script>", html, re.S)
    assert match, "the page carries its configuration"
    return json.loads(match.group(1).replace("<\\/", "</"))


def _assert_self_contained(html: str) -> None:
    """Nothing is loaded from elsewhere: no external scripts, styles, images or fonts; everything is inline."""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", html, re.I)
    assert "/*GAR_" not in html  # every placeholder was filled


@pytest.fixture(scope="module")
def worker_client(tiny_pipeline):
    policy = server_policy()
    app = create_worker_app(
        WorkerSettings(token=TOKEN), engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=policy)
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


def test_page_is_served_without_token_and_is_self_contained(worker_client):
    response = worker_client.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    _assert_self_contained(response.text)
    config = _config(response.text)
    assert config["mode"] == "http" and config["api"] == "/v1"
    assert [tool["name"] for tool in config["tools"]] == list(tool_names())
    assert str(ASSETS_DIR) not in response.text  # no filesystem path reaches the browser


def test_ui_json_routes_need_the_token(worker_client):
    for path in ("/ui/config", "/ui/examples", "/ui/examples/demo_image_1.png"):
        assert worker_client.get(path).status_code == 401, path
    assert worker_client.post("/ui/segment", json={}).status_code == 401


def test_config_reports_model_tools_and_no_segmenter(worker_client):
    config = worker_client.get("/ui/config", headers=AUTH).json()
    assert config["model"]["model"] == "tiny" and config["model"]["tiny_model"] is True
    assert config["segmenter"] is False
    assert {"mask", "rle", "polygon", "box"} <= set(config["region_fields"])
    tools = {tool["name"]: tool for tool in config["tools"]}
    assert list(tools) == list(tool_names())
    assert tools["describe_region"]["single_region"] is True
    assert [f["name"] for f in tools["compare_regions"]["fields"]] == ["focus"]
    assert {f["name"]: f["kind"] for f in tools["answer_about_regions"]["fields"]} == {
        "question": "text",
        "choices": "list",
    }


def test_examples_by_name_never_by_path(worker_client):
    response = worker_client.get("/ui/examples", headers=AUTH)
    assert str(ASSETS_DIR) not in response.text
    examples = {example["name"]: example for example in response.json()}
    assert set(examples) == {"slipper", "tennis"}
    files = [examples["tennis"]["image"], *(r["mask"] for r in examples["tennis"]["regions"])]
    assert all("/" not in name for name in files)
    tennis_calls = {
        tool for tool, args in example_calls().items() if args["image"].endswith(examples["tennis"]["image"])
    }
    assert {call["tool"] for call in examples["tennis"]["calls"]} == tennis_calls and "compare_regions" in tennis_calls
    image = worker_client.get(f"/ui/examples/{files[0]}", headers=AUTH)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (ASSETS_DIR / files[0]).read_bytes()
    for name in ("LICENSE-GAR-Apache-2.0.txt", "nope.png", "..%2Fcatalog.py"):
        response = worker_client.get(f"/ui/examples/{name}", headers=AUTH)
        assert response.status_code == 404, name


def test_segment_without_a_segmenter_is_a_clear_404(worker_client):
    response = worker_client.post("/ui/segment", headers=AUTH, json={"image": "x", "points": [[1, 2]], "labels": [1]})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "NotConfigured" and "no segmenter" in error["message"]


def test_segment_uses_the_engines_segmenter(tiny_pipeline):
    """With ``--segmenter`` (here the tiny random-weight SAM: arbitrary masks), /ui/segment returns its mask."""
    engine = LocalEngine(pipeline=tiny_pipeline, policy=server_policy(), segmenter="tiny-sam")
    app = create_worker_app(WorkerSettings(), engine_factory=lambda: engine)
    image = str(ASSETS_DIR / "demo_image_1.png")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/ui/config").json()["segmenter"] is True
        answer = client.post("/ui/segment", json={"image": image, "points": [[776, 690]], "labels": [1]}).json()
        assert answer["rle"]["size"] == [770, 1024] and isinstance(answer["score"], float)
        boxed = client.post("/ui/segment", json={"image": image, "box": [700, 650, 820, 720]})
        assert boxed.status_code == 200 and boxed.json()["rle"]["size"] == [770, 1024]
        outside = client.post("/ui/segment", json={"image": image, "points": [[5000, 1]]})
        assert outside.status_code == 422 and outside.json()["error"]["field"].startswith("region.points")
        json_type = {"Content-Type": "application/json"}
        assert client.post("/ui/segment", content=b"not json", headers=json_type).status_code == 400


# --- MCP ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def mcp_server(tiny_pipeline):
    settings = ServeSettings()
    return create_server(settings, engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=settings.policy))


@pytest.mark.anyio
async def test_mcp_app_resource_is_listed_linked_and_self_contained(mcp_server):
    async with Client(mcp_server) as client:
        resources = {str(r.uri): r for r in (await client.list_resources()).resources}
        tools = (await client.list_tools()).tools
        read = await client.read_resource(UI_RESOURCE_URI)
    resource = resources[UI_RESOURCE_URI]
    assert resource.mime_type == UI_MIME_TYPE == "text/html;profile=mcp-app"
    csp = resource.meta["ui"]["csp"]
    assert csp == {"connectDomains": [], "resourceDomains": []}  # nothing outside the page
    assert {tool.name for tool in tools} == set(tool_names())
    for tool in tools:
        assert tool.meta["ui"]["resourceUri"] == UI_RESOURCE_URI, tool.name
    (content,) = read.contents
    assert content.mime_type == UI_MIME_TYPE
    _assert_self_contained(content.text)
    config = _config(content.text)
    assert config["mode"] == "mcp-app"
    assert "ui/initialize" in content.text and "tools/call" in content.text
    assert content.text == page_html("mcp-app")


def test_mcp_http_server_serves_the_page_and_the_tool_routes(mcp_server):
    app = http_app(mcp_server, token=TOKEN)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        page = client.get("/ui")
        assert page.status_code == 200
        assert _config(page.text)["api"] == "/ui/v1"
        assert client.get("/ui/config").status_code == 401
        assert client.get("/ui/config", headers=AUTH).json()["model"]["tiny_model"] is True
        request = {
            "image": str(ASSETS_DIR / "demo_image_3.png"),
            "region": {"id": "court", "box": [0, 300, 640, 427]},
            "max_new_tokens": 3,
        }
        assert client.post("/ui/v1/describe_region", json=request).status_code == 401
        result = client.post("/ui/v1/describe_region", json=request, headers=AUTH).json()
        assert result["tiny_model"] is True and result["regions"][0]["id"] == "court"
        stream = client.post("/ui/v1/describe_region/stream", json=request, headers=AUTH)
        events = re.findall(r"^event: (\w+)$", stream.text, re.M)
        assert events[-1] == "result" and set(events[:-1]) <= {"progress", "text"}
