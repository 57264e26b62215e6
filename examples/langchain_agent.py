"""A LangChain tool-calling loop over the GAR tools.

    python examples/langchain_agent.py [--model tiny] [--max-new-tokens 64]

The chat model here is a scripted fake from ``langchain_core`` that emits fixed tool calls (including one mistake
it then corrects), so the example runs offline; the loop itself is the standard one. With a real LLM, replace
``scripted_chat_model()`` by e.g. ``ChatAnthropic(model="claude-sonnet-4-5")`` or ``ChatOpenAI(model="gpt-4o")``
and keep the rest: ``llm.bind_tools(tools)`` then passes the tools' schemas to the model.
The tiny model (the default) has random weights: its text is meaningless.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from gar_tools.adapters.langchain import GarLangChainToolkit

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"


class ScriptedChatModel(GenericFakeChatModel):
    """``GenericFakeChatModel`` that accepts ``bind_tools`` like a real chat model (the script ignores the tools)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> ScriptedChatModel:
        return self


def scripted_chat_model(max_new_tokens: int) -> ScriptedChatModel:
    """A fake LLM that calls describe_region, then answer_about_regions wrongly, then correctly, then answers."""
    image = str(ASSETS / "demo_image_3.png")
    regions = [
        {"id": name, "mask": str(ASSETS / f"demo_mask_3_{i}.png")}
        for i, name in enumerate(("person", "ball", "racket"))
    ]
    ask = {"image": image, "regions": regions, "max_new_tokens": max_new_tokens}
    return ScriptedChatModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {
                            "name": "describe_region",
                            "args": {"image": image, "region": regions[2], "max_new_tokens": max_new_tokens},
                            "id": "call_1",
                        },
                        {  # wrong: <bat> is not one of the regions; the tool says so
                            "name": "answer_about_regions",
                            "args": {**ask, "question": "What is <person> doing with <bat> and <ball>?"},
                            "id": "call_2",
                        },
                    ],
                ),
                AIMessage(
                    content="",
                    tool_calls=[
                        {
                            "name": "answer_about_regions",
                            "args": {**ask, "question": "What is <person> doing with <racket> and <ball>?"},
                            "id": "call_3",
                        }
                    ],
                ),
                AIMessage(content="(scripted reply) A real LLM would now answer from the tool results above."),
            ]
        )
    )


def run(model: str, max_new_tokens: int) -> list[BaseMessage]:
    """Run the loop and return the conversation."""
    toolkit = GarLangChainToolkit.from_model(model, allowed_dirs=[ASSETS])  # paths only from here
    tools = toolkit.get_tools()
    tools_by_name = {tool.name: tool for tool in tools}
    llm = scripted_chat_model(max_new_tokens).bind_tools(tools)  # a real chat model goes here
    messages: list[BaseMessage] = [
        SystemMessage("You answer questions about image regions with the GAR tools."),
        HumanMessage(f"In {ASSETS / 'demo_image_3.png'}, what is the player doing with the racket and the ball?"),
    ]
    try:
        while True:
            reply = llm.invoke(messages)
            messages.append(reply)
            if not reply.tool_calls:
                return messages
            for call in reply.tool_calls:
                messages.append(tools_by_name[call["name"]].invoke(call))  # a ToolMessage (status error on errors)
    finally:
        toolkit.toolkit.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (random weights, meaningless text), a folder or hub id")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    for message in run(args.model, args.max_new_tokens):
        if isinstance(message, ToolMessage):
            overlay = (
                " (+ overlay in artifact)" if message.artifact is not None and message.artifact.overlay_png else ""
            )
            print(f"[tool {message.name} {message.status}]{overlay} {message.content}")
        elif isinstance(message, AIMessage) and message.tool_calls:
            print("[assistant calls]", ", ".join(call["name"] for call in message.tool_calls))
        else:
            print(f"[{message.type}] {message.content}")


if __name__ == "__main__":
    main()
