"""The tool registry is the one place tools are defined: a tool registered here, in this test alone, is served by
every surface (toolkit, MCP, worker, LangChain, LlamaIndex, CLI) without touching any of them.

The model is the tiny random-weight checkpoint: its text is meaningless, so only shapes and routing are checked.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydantic import Field

from gar_tools.cli import build_parser
from gar_tools.engine.local import LocalEngine
from gar_tools.errors import InputError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import Region, ToolRequest
from gar_tools.results import ToolResult
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import ToolSpec, get_tool, register_tool, tool_names, unregister_tool

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"
IMAGE, MASK = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")


class NameRegionRequest(ToolRequest):
    """Name the object in one region with a few words."""

    region: Region = Field(description="The region to name.")
    language: str | None = Field(default=None, max_length=40, description="Optional language of the answer.")


class NameRegionResult(ToolResult):
    """Result of name_region: ``text`` names the region; ``words`` counts its words."""

    words: int = Field(ge=0, description="Number of words in the answer.")


def _question(request: NameRegionRequest, ids: Sequence[str]) -> str:
    return "What is <Prompt0>? Answer in a few words" + (f" in {request.language}." if request.language else ".")


@pytest.fixture
def fourth_tool() -> Iterator[ToolSpec]:
    spec = register_tool(
        ToolSpec(
            name="name_region",
            title="Name an image region",
            description="Name the object in one region of an image in a few words, with GAR.",
            request_model=NameRegionRequest,
            result_model=NameRegionResult,
            question=_question,
            finish=lambda request, text: {"words": len(text.split())},
            regions_field="region",
            max_regions=1,
            cli_command="name",
        )
    )
    try:
        yield spec
    finally:
        unregister_tool(spec.name)
    assert "name_region" not in tool_names()


@pytest.fixture
def engine(tiny_pipeline) -> LocalEngine:
    """A fresh engine over the shared tiny pipeline (servers close their engine when they stop)."""
    return LocalEngine(pipeline=tiny_pipeline, policy=ImagePolicy(allowed_dirs=(ASSETS,)))


def test_builtin_registry() -> None:
    assert tool_names() == ("describe_region", "compare_regions", "answer_about_regions", "describe_regions")
    with pytest.raises(InputError) as info:
        get_tool("nope")
    assert info.value.field == "tool" and "describe_region" in info.value.reason
    with pytest.raises(ValueError, match="already registered"):
        register_tool(get_tool("describe_region"))
    annotations = get_tool("describe_region").annotations
    assert annotations["readOnlyHint"] and annotations["idempotentHint"] and not annotations["openWorldHint"]


def test_toolkit_runs_a_registered_tool(fourth_tool, engine) -> None:
    toolkit = GarToolkit(engine)
    result = toolkit.name_region(image=IMAGE, region={"id": "slipper", "mask": MASK}, max_new_tokens=3)
    assert isinstance(result, NameRegionResult)
    assert result.words == len(result.text.split()) and result.regions[0].prompt == "<Prompt0>"
    assert "name_region" in dir(toolkit) and "aname_region" in dir(toolkit)


def test_cli_has_a_command_for_it(fourth_tool) -> None:
    args = build_parser().parse_args(["name", IMAGE, "--mask", MASK, "--language", "French"])
    assert (args.tool, args.language, args.regions) == ("name_region", "French", [{"mask": MASK}])


@pytest.mark.anyio
async def test_mcp_lists_it(fourth_tool, engine) -> None:
    pytest.importorskip("mcp")
    from mcp import Client

    from gar_tools.servers.mcp_server import create_server

    async with Client(create_server(engine_factory=lambda: engine)) as client:
        listed = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert "name_region" in listed
        assert listed["name_region"].annotations.read_only_hint is True
        assert "words" in listed["name_region"].output_schema["properties"]
        result = await client.call_tool("name_region", {"image": IMAGE, "region": {"mask": MASK}, "max_new_tokens": 2})
        assert not result.is_error and result.structured_content["words"] >= 0


def test_worker_routes_it(fourth_tool, engine) -> None:
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from gar_tools.servers.worker_app import create_worker_app

    # a loopback base URL: the worker refuses other Host names (TestClient's default is "testserver")
    with TestClient(create_worker_app(engine_factory=lambda: engine), base_url="http://127.0.0.1") as client:
        ok = client.post("/v1/name_region", json={"image": IMAGE, "region": {"mask": MASK}, "max_new_tokens": 2})
        assert ok.status_code == 200 and "words" in ok.json()
        bad = client.post("/v1/name_region", json={"image": IMAGE, "region": {"box": [0, 0, 0, 0]}})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "region.box"
        assert client.post("/v1/nope", json={}).status_code == 404


def test_langchain_and_llama_index_list_it(fourth_tool, engine) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from gar_tools.adapters.langchain import GarLangChainToolkit
    from gar_tools.adapters.llama_index import GarToolSpec

    toolkit = GarToolkit(engine)
    langchain_tools = {tool.name: tool for tool in GarLangChainToolkit(toolkit=toolkit).get_tools()}
    assert langchain_tools["name_region"].args_schema is NameRegionRequest
    llama_tools = {tool.metadata.name: tool for tool in GarToolSpec(toolkit).to_tool_list()}
    assert llama_tools["name_region"].metadata.fn_schema is NameRegionRequest
    output = llama_tools["name_region"].call(image=IMAGE, region={"mask": MASK}, max_new_tokens=2)
    assert not output.is_error and isinstance(output.raw_output, NameRegionResult)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
