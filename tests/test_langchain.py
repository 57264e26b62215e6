"""The LangChain adapter: tools from the toolkit, a tool-calling loop driven by langchain-core's fake chat model.

The GAR model is the tiny random-weight checkpoint (its text is meaningless).
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

import base64
import json

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import ToolException
from langchain_core.utils.function_calling import convert_to_openai_tool
from server_helpers import ASSETS

from gar_tools.adapters.langchain import GarLangChainToolkit
from gar_tools.engine import LocalEngine
from gar_tools.images import ImagePolicy
from gar_tools.results import TINY_MODEL_NOTE, AnswerAboutRegionsResult, DescribeRegionResult
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import get_tool, tool_names

IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")
FEW = {"max_new_tokens": 3}


@pytest.fixture(scope="module")
def tools(tiny_pipeline):
    toolkit = GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=ImagePolicy(allowed_dirs=(ASSETS,))))
    yield {tool.name: tool for tool in GarLangChainToolkit(toolkit=toolkit).get_tools()}
    toolkit.close()


def _call(name: str, call_id: str, **args) -> dict:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def test_tools_carry_our_schemas_and_descriptions(tools):
    assert list(tools) == list(tool_names())
    for name, tool in tools.items():
        assert tool.args_schema is get_tool(name).request_model
        assert tool.response_format == "content_and_artifact"
        assert str(ASSETS) in tool.description and len(tool.description) <= 1024
        function = convert_to_openai_tool(tool)["function"]
        assert function["name"] == name and "image" in function["parameters"]["properties"]


def test_tool_calling_loop_with_a_fake_chat_model(tools):
    model = GenericFakeChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        _call("describe_region", "c1", image=IMAGE1, region={"mask": MASK1}, overlay=True, **FEW),
                        _call("describe_region", "c2", image=IMAGE1, region={"box": [5000, 0, 6000, 9]}),
                        _call("describe_region", "c3", image=IMAGE1, region={"box": [1, 2, 3]}),
                    ],
                ),
                AIMessage(
                    content="",
                    tool_calls=[
                        _call(
                            "answer_about_regions",
                            "c4",
                            image=IMAGE1,
                            regions=[{"id": "shoe", "mask": MASK1}],
                            question="What colour is <shoe>?",
                            choices=["Red.", "Blue."],
                            max_new_tokens=3,
                        )
                    ],
                ),
                AIMessage(content="done"),
            ]
        )
    )
    messages = [HumanMessage("Describe the slipper.")]
    while True:
        reply = model.invoke(messages)
        messages.append(reply)
        if not reply.tool_calls:
            break
        messages.extend(tools[call["name"]].invoke(call) for call in reply.tool_calls)

    results = {m.tool_call_id: m for m in messages if isinstance(m, ToolMessage)}
    assert set(results) == {"c1", "c2", "c3", "c4"}
    described = results["c1"]
    assert described.status == "success"
    assert isinstance(described.artifact, DescribeRegionResult)
    payload, note = described.content.split("\n", 1)
    assert json.loads(payload)["text"] == described.artifact.text and note == TINY_MODEL_NOTE
    assert "overlay_png" not in json.loads(payload)
    assert base64.b64decode(described.artifact.overlay_png).startswith(b"\x89PNG")
    assert results["c2"].status == "error" and "region.box" in results["c2"].content
    assert results["c3"].status == "error" and "region.box" in results["c3"].content
    assert results["c4"].status == "success" and isinstance(results["c4"].artifact, AnswerAboutRegionsResult)
    assert messages[-1].content == "done"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_invoke(tools, anyio_backend):
    message = await tools["compare_regions"].ainvoke(
        _call(
            "compare_regions",
            "a1",
            image=IMAGE1,
            regions=[{"mask": MASK1}, {"box": [0, 0, 100, 100]}],
            max_new_tokens=2,
        )
    )
    assert message.status == "success" and [r.id for r in message.artifact.regions] == ["r0", "r1"]
    outside = await tools["describe_region"].ainvoke(
        _call("describe_region", "a2", image="/etc/hostname", region={"box": [0, 0, 9, 9]})
    )
    assert outside.status == "error" and "outside the allowed folders" in outside.content


def test_errors_are_raised_as_tool_exceptions(tools):
    with pytest.raises(ToolException, match=r"region\.box"):
        tools["describe_region"]._run(image=IMAGE1, region={"box": [5000, 0, 6000, 9]})


def test_from_model_allows_no_local_paths_by_default(tiny_pipeline, tmp_path):
    import base64

    default = GarLangChainToolkit.from_model("tiny")
    policy = default.toolkit.engine.policy
    assert policy.allowed_dirs == () and not policy.allow_urls
    assert "no local paths" in default.get_tools()[0].description
    tool = {t.name: t for t in default.get_tools()}["describe_region"]
    with pytest.raises(ToolException) as caught:  # refused before any model is loaded
        tool._run(image=IMAGE1, region={"box": [0, 0, 9, 9]})
    assert "outside the allowed folders" in str(caught.value) and "allowed_dirs=" in str(caught.value)
    # data: URIs still work under that policy
    with GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=policy)) as toolkit:
        data = "data:image/png;base64," + base64.b64encode(open(IMAGE1, "rb").read()).decode()
        result = toolkit.describe_region(image=data, region={"box": [0, 0, 9, 9]}, max_new_tokens=1)
        assert result.image_size == [1024, 770]
    default.toolkit.close()
    assert GarLangChainToolkit.from_model("tiny", allowed_dirs=[tmp_path]).toolkit.engine.policy.allowed_dirs == (
        tmp_path,
    )
