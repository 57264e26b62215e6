"""The LlamaIndex adapter: the tool list from the spec, sync and async calls, errors, and a FunctionAgent run.

The agent's LLM is llama_index's ``MockFunctionCallingLLM`` with a scripted response generator; the GAR model is
the tiny random-weight checkpoint (its text is meaningless).
"""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

import json
from collections.abc import Sequence

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ImageBlock, ToolCallBlock
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.mock import MockFunctionCallingLLM
from llama_index.core.tools import ToolOutput
from server_helpers import ASSETS

from gar_tools.adapters.llama_index import GarFunctionTool, GarToolSpec
from gar_tools.engine import LocalEngine
from gar_tools.errors import RegionError
from gar_tools.images import ImagePolicy
from gar_tools.results import TINY_MODEL_NOTE, CompareRegionsResult, DescribeRegionResult
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import get_tool, tool_names

IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def spec(tiny_pipeline):
    toolkit = GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=ImagePolicy(allowed_dirs=(ASSETS,))))
    yield GarToolSpec(toolkit)
    toolkit.close()


@pytest.fixture(scope="module")
def tools(spec):
    return {tool.metadata.name: tool for tool in spec.to_tool_list()}


def test_tool_list_from_the_spec(tools):
    assert list(tools) == list(tool_names())
    for name, tool in tools.items():
        assert isinstance(tool, GarFunctionTool)
        assert tool.metadata.fn_schema is get_tool(name).request_model
        openai = tool.metadata.to_openai_tool()  # raises if the description is over 1024 characters
        assert openai["function"]["name"] == name and "image" in openai["function"]["parameters"]["properties"]
        assert str(ASSETS) in tool.metadata.description


def test_sync_call(tools):
    output = tools["describe_region"].call(image=IMAGE1, region={"mask": MASK1}, max_new_tokens=3, overlay=True)
    assert isinstance(output, ToolOutput) and not output.is_error
    assert isinstance(output.raw_output, DescribeRegionResult)
    payload, note = output.content.split("\n", 1)
    assert json.loads(payload)["text"] == output.raw_output.text and note == TINY_MODEL_NOTE
    assert any(isinstance(block, ImageBlock) and block.image_mimetype == "image/png" for block in output.blocks)


def test_errors_become_error_outputs(tools):
    output = tools["describe_region"].call(image=IMAGE1, region={"box": [5000, 0, 6000, 9]})
    assert output.is_error and "region.box" in output.content
    assert isinstance(output.exception, RegionError)
    invalid = tools["answer_about_regions"].call(image=IMAGE1, regions=[{"box": [0, 0, 9, 9]}])
    assert invalid.is_error and "question" in invalid.content


@pytest.mark.anyio
async def test_async_call(tools):
    output = await tools["compare_regions"].acall(
        image=IMAGE1, regions=[{"mask": MASK1}, {"box": [0, 0, 100, 100]}], max_new_tokens=2
    )
    assert not output.is_error and isinstance(output.raw_output, CompareRegionsResult)
    bad = await tools["compare_regions"].acall(image=IMAGE1, regions=[{"box": [0, 0, 9, 9]}], max_new_tokens=2)
    assert bad.is_error and "at least 2" in bad.content


@pytest.mark.anyio
async def test_function_agent_with_a_mock_function_calling_llm(tools):
    def respond(messages: Sequence[ChatMessage], **kwargs) -> ChatMessage:
        if any(message.role == MessageRole.TOOL for message in messages):
            return ChatMessage(role="assistant", content="done")
        call = ToolCallBlock(
            tool_call_id="t1",
            tool_name="describe_region",
            tool_kwargs={"image": IMAGE1, "region": {"id": "slipper", "mask": MASK1}, "max_new_tokens": 2},
        )
        return ChatMessage(role="assistant", blocks=[call])

    agent = FunctionAgent(tools=list(tools.values()), llm=MockFunctionCallingLLM(response_generator=respond))
    handler = agent.run(user_msg="Describe the slipper.")
    calls = [event async for event in handler.stream_events() if isinstance(event, ToolCallResult)]
    reply = await handler
    assert str(reply) == "done"
    assert [call.tool_name for call in calls] == ["describe_region"]
    output = calls[0].tool_output
    assert not output.is_error and output.raw_output.regions[0].id == "slipper"


def test_from_model_allows_no_local_paths_by_default(tmp_path):
    spec = GarToolSpec.from_model("tiny")
    assert spec.toolkit.engine.policy.allowed_dirs == ()
    output = spec.to_tool_list()[0].call(image=str(ASSETS / "demo_image_1.png"), region={"box": [0, 0, 9, 9]})
    assert output.is_error and "allowed_dirs=" in output.content
    spec.toolkit.close()
    assert GarToolSpec.from_model("tiny", allowed_dirs=[tmp_path]).toolkit.engine.policy.allowed_dirs == (tmp_path,)
