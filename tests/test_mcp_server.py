"""The MCP server: in-memory client session, stdio transport (subprocess) and streamable HTTP with a bearer token.

All calls use the tiny random-weight model (its text is meaningless) and few tokens.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")

import base64
import io
import json
import sys

import httpx
import httpx2
import jsonschema
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from server_helpers import ASSETS, CLI, free_port
from server_helpers import cli_server as run_cli_server

from gar_tools.engine import LocalEngine
from gar_tools.errors import GarToolsError
from gar_tools.results import TINY_MODEL_NOTE
from gar_tools.servers.mcp_server import create_server, http_app
from gar_tools.servers.settings import ServeSettings, server_policy
from gar_tools.tools import get_tool, tool_names

pytestmark = pytest.mark.anyio

IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")
IMAGE3 = str(ASSETS / "demo_image_3.png")
MASKS3 = [str(ASSETS / f"demo_mask_3_{i}.png") for i in range(3)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def allowed_dir(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("allowed")
    Image.new("RGB", (64, 48), (200, 40, 40)).save(folder / "small.png")
    return folder


@pytest.fixture(scope="module")
def settings(allowed_dir) -> ServeSettings:
    return ServeSettings(policy=server_policy([allowed_dir]))


@pytest.fixture
def server(tiny_pipeline, settings):
    return create_server(settings, engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=settings.policy))


def _inline_refs(schema: dict) -> dict:
    """``schema`` with every ``#/$defs/...`` reference replaced by its definition (for comparing schemas)."""
    defs = schema.get("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                target = walk(defs[node["$ref"].rsplit("/", 1)[-1]])
                return {**target, **{k: walk(v) for k, v in node.items() if k != "$ref"}}
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


async def _tools(client: Client) -> dict:
    return {tool.name: tool for tool in (await client.list_tools()).tools}


def _check_result(result, tool) -> dict:
    """The structured content of a successful call, checked against the tool's output schema and result model."""
    assert not result.is_error, result.content
    structured = result.structured_content
    jsonschema.validate(structured, tool.output_schema)
    get_tool(tool.name).result_model.model_validate(structured)
    assert json.loads(result.content[0].text) == structured
    assert structured["tiny_model"] is True
    assert any(block.type == "text" and block.text == TINY_MODEL_NOTE for block in result.content)
    return structured


async def test_list_tools_has_schemas_and_llm_descriptions(server, allowed_dir):
    async with Client(server) as client:
        tools = await _tools(client)
    assert set(tools) == set(tool_names())
    for name, tool in tools.items():
        reference = _inline_refs(get_tool(name).request_model.model_json_schema())
        assert _inline_refs(tool.input_schema)["properties"] == reference["properties"]
        assert sorted(tool.input_schema["required"]) == sorted(reference["required"])
        assert set(tool.output_schema["properties"]) == set(get_tool(name).result_model.model_fields) - {"overlay_png"}
        assert tool.annotations.read_only_hint is True
        assert tool.annotations.open_world_hint is False
        for phrase in ("mask", "rle", "polygon", "box", "approximation", str(allowed_dir), "no URLs", "tiny_model"):
            assert phrase in tool.description, (name, phrase)
    assert "<r0>" in tools["answer_about_regions"].description
    assert "At most 5 regions" in tools["compare_regions"].description


async def test_describe_region_structured_overlay_and_progress(server):
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(server) as client:
        tools = await _tools(client)
        result = await client.call_tool(
            "describe_region",
            {"image": IMAGE1, "region": {"id": "slipper", "mask": MASK1}, "max_new_tokens": 4, "overlay": True},
            progress_callback=on_progress,
        )
    structured = _check_result(result, tools["describe_region"])
    assert "overlay_png" not in structured
    assert structured["regions"][0]["id"] == "slipper"
    images = [block for block in result.content if block.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    png = base64.b64decode(images[0].data)
    assert png.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(png)).size == Image.open(IMAGE1).size
    assert progress, "no progress notifications"
    assert progress[-1][0] == structured["timings"]["tokens_generated"] and progress[-1][1] == 4
    assert "tokens" in (progress[-1][2] or "")
    # the message carries the text so far: the last one ends with the whole (short) text
    assert (progress[-1][2] or "").endswith(structured["text"])


async def test_compare_and_answer_with_every_region_format(server, allowed_dir):
    polygon = [[100, 240, 140, 240, 140, 275, 100, 275]]
    async with Client(server) as client:
        tools = await _tools(client)
        compared = await client.call_tool(
            "compare_regions",
            {
                "image": IMAGE3,
                "regions": [{"id": "person", "mask": MASKS3[0]}, {"id": "ball", "polygon": polygon}],
                "focus": "what they are doing",
                "max_new_tokens": 4,
            },
        )
        answered = await client.call_tool(
            "answer_about_regions",
            {
                "image": str(allowed_dir / "small.png"),
                "regions": [
                    {"id": "left", "box": [0, 0, 32, 48]},
                    {"rle": {"size": [48, 64], "counts": [48 * 40, 48 * 24]}},
                ],
                "question": "Which is redder, <left> or <r1>?",
                "choices": ["<left>", "<r1>"],
                "max_new_tokens": 4,
            },
        )
    compare = _check_result(compared, tools["compare_regions"])
    assert [r["id"] for r in compare["regions"]] == ["person", "ball"]
    answer = _check_result(answered, tools["answer_about_regions"])
    assert [r["id"] for r in answer["regions"]] == ["left", "r1"]
    assert answer["regions"][1]["box"] == [40, 0, 64, 48]
    assert "choice" in answer


async def test_errors_come_back_as_is_error_and_the_server_keeps_serving(server, tmp_path):
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    calls = [
        ("describe_region", {"region": {"box": [5000, 0, 6000, 10]}}, ["region.box", "outside the 1024x770 image"]),
        ("describe_region", {"region": {"box": [1, 2, 3]}}, ["region.box", "at least 4 items"]),
        ("describe_region", {"image": str(outside), "region": {"box": [0, 0, 4, 4]}}, ["image", "outside the allowed"]),
        ("describe_region", {"image": "https://example.com/a.png", "region": {"box": [0, 0, 4, 4]}}, ["URLs"]),
        ("compare_regions", {"regions": [{"box": [0, 0, 9, 9]}] * 6}, ["regions", "at most 5 regions"]),
        ("answer_about_regions", {"regions": [{"box": [0, 0, 9, 9]}], "question": "Is <dog> red?"}, ["<dog>"]),
    ]
    async with Client(server) as client:
        for tool, arguments, expected in calls:
            result = await client.call_tool(tool, {"image": IMAGE1, "max_new_tokens": 2, **arguments})
            assert result.is_error, (tool, arguments)
            message = result.content[0].text
            for fragment in expected:
                assert fragment in message, (message, fragment)
        tools = await _tools(client)
        result = await client.call_tool(
            "describe_region", {"image": IMAGE1, "region": {"box": [10, 10, 200, 200]}, "max_new_tokens": 2}
        )
    _check_result(result, tools["describe_region"])


async def test_arguments_are_checked_by_the_request_models_only(server):
    """Unknown, misspelt, missing and wrongly typed arguments: our message naming the field, never SDK text."""
    from gar_tools.toolkit import coerce_request

    good = {"image": IMAGE1, "region": {"box": [10, 10, 200, 200]}, "max_new_tokens": 1}
    calls = [
        ({**good, "foo": 1}, "foo", "unknown argument"),
        ({**good, "policy": {"allowed_dirs": None}}, "policy", "unknown argument"),
        ({**good, "allow_urls": True}, "allow_urls", "unknown argument"),
        ({**good, "temperature": 0.2}, "temperature", "unknown argument"),
        ({**{k: v for k, v in good.items() if k != "image"}, "IMAGE": IMAGE1}, "image", "required field is missing"),
        ({**good, "max_new_token": 2}, "max_new_token", "did you mean 'max_new_tokens'"),
        ({"image": IMAGE1}, "region", "required field is missing"),
        ({**good, "max_new_tokens": "2"}, "max_new_tokens", "got a string"),
        ({**good, "max_new_tokens": True}, "max_new_tokens", "got a boolean"),
        ({**good, "overlay": "yes"}, "overlay", "got a string"),
        ({**good, "region": {"box": [True, 0, 9, 9]}}, "region.box[0]", "got a boolean"),
        ({**good, "region": {"box": [0.1, 0.1, 0.9, 0.9]}}, "region.box", "pixels"),
    ]
    async with Client(server) as client:
        for arguments, field, fragment in calls:
            result = await client.call_tool("describe_region", arguments)
            assert result.is_error, arguments
            message = result.content[0].text
            assert f"{field}: " in message and fragment in message, message
            for raw in ("validation error", "Arguments", "pydantic", "Extra inputs", "Field required"):
                assert raw not in message, message
            if "pixels" not in fragment:  # the same text as the toolkit
                with pytest.raises(GarToolsError) as caught:
                    coerce_request("describe_region", arguments)
                assert message.endswith(str(caught.value))
        result = await client.call_tool(
            "compare_regions", {"image": IMAGE1, "regions": [{"box": [0, 0, 9, 9]}, {"box": [0, 0, 9, "x"]}]}
        )
        assert result.is_error and "regions[1].box[3]: " in result.content[0].text
        # a client that sends an object as a JSON string (some do) is still understood
        result = await client.call_tool("describe_region", {**good, "region": json.dumps(good["region"])})
        assert not result.is_error, result.content
        assert result.structured_content["image_size"] == [1024, 770]


async def test_resources_and_prompt_help_a_client(server):
    async with Client(server) as client:
        uris = {str(resource.uri) for resource in (await client.list_resources()).resources}
        assert {"gar://guide", "gar://examples"} <= uris
        guide = (await client.read_resource("gar://guide")).contents[0].text
        assert "## Regions" in guide and "tiny_model" in guide
        examples = json.loads((await client.read_resource("gar://examples")).contents[0].text)
        for example in examples:
            assert all(Image.open(r["mask"]).size == Image.open(example["image"]).size for r in example["regions"])
        blob = (await client.read_resource("gar://examples/demo_mask_1.png")).contents[0].blob
        assert base64.b64decode(blob).startswith(PNG_MAGIC)
        prompt = await client.get_prompt("gar_tour")
        assert "describe_region" in prompt.messages[0].content.text
        # every example call really works, and there is one for each tool
        calls = [call for example in examples for call in example["example_calls"]]
        assert sorted(call["tool"] for call in calls) == sorted(tool_names())
        for call in calls:
            result = await client.call_tool(call["tool"], {**call["arguments"], "max_new_tokens": 2})
            assert not result.is_error


def test_http_app_without_token_needs_none(settings):
    from gar_tools.servers.common import BearerTokenMiddleware

    app = http_app(create_server(settings))
    assert not isinstance(app, BearerTokenMiddleware)


# --- real transports -------------------------------------------------------------------------------------------------


async def test_stdio_transport_through_a_subprocess(tmp_path):
    params = StdioServerParameters(
        command=sys.executable, args=[*CLI[1:], "serve", "--transport", "stdio", "--device", "cpu", "--dtype", "fp32"]
    )
    with (tmp_path / "stderr.log").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            tools = await _tools(client)
            result = await client.call_tool(
                "describe_region", {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 3}
            )
            bad = await client.call_tool("describe_region", {"image": IMAGE1, "region": {"box": [0, 0, 0, 0]}})
    assert set(tools) == set(tool_names())
    assert _check_result(result, tools["describe_region"])["timings"]["tokens_generated"] <= 3
    assert bad.is_error and "x2 > x1" in bad.content[0].text


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    port = free_port()
    token = "test-mcp-token"
    log = tmp_path_factory.mktemp("mcp-http") / "server.log"
    args = ["serve", "--transport", "http", "--port", str(port), "--token-env", "GAR_TEST_MCP_TOKEN", "--device", "cpu"]
    with run_cli_server(args, ready_url=f"http://127.0.0.1:{port}/healthz", log=log, env={"GAR_TEST_MCP_TOKEN": token}):
        banner = (
            f"the MCP server listening on http://127.0.0.1:{port}/mcp (engine local, model tiny, token required: yes)"
        )
        assert banner in log.read_text()
        yield f"http://127.0.0.1:{port}/mcp", token


def test_streamable_http_rejects_requests_without_the_token(http_server):
    url, token = http_server
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
    }
    headers = {"Accept": "application/json, text/event-stream"}
    for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        response = httpx.post(url, json=initialize, headers={**headers, **auth})
        assert response.status_code == 401, auth
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["type"] == "AuthenticationError"
    accepted = httpx.post(url, json=initialize, headers={**headers, "Authorization": f"Bearer {token}"})
    assert accepted.status_code == 200


async def test_streamable_http_serves_the_tools_with_the_token(http_server):
    url, token = http_server
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30.0, read=300.0))
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = await _tools(client)
        result = await client.call_tool(
            "describe_region", {"image": IMAGE1, "region": {"mask": MASK1}, "max_new_tokens": 3, "overlay": True}
        )
    _check_result(result, tools["describe_region"])
    assert any(block.type == "image" for block in result.content)
