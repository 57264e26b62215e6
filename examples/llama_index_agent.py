"""A LlamaIndex ``FunctionAgent`` using the GAR tools.

    python examples/llama_index_agent.py [--model tiny] [--max-new-tokens 64]

The LLM here is llama_index's ``MockFunctionCallingLLM`` driven by a small script (call describe_region and
compare_regions, then reply), so the example runs offline; the agent, its tool calls and their outputs are real.
With a real LLM, replace ``scripted_llm()`` by e.g. ``Anthropic(model="claude-sonnet-4-5")`` or
``OpenAI(model="gpt-4o")`` and keep the rest. The tiny model (the default) has random weights: its text is
meaningless.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.llms import ChatMessage, MessageRole
from llama_index.core.llms.mock import MockFunctionCallingLLM

from gar_tools.adapters.llama_index import GarToolSpec

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"


def scripted_llm(max_new_tokens: int) -> MockFunctionCallingLLM:
    """A mock function-calling LLM: first it calls two GAR tools, then it replies once it has their results."""
    image = str(ASSETS / "demo_image_3.png")
    regions = [
        {"id": name, "mask": str(ASSETS / f"demo_mask_3_{i}.png")}
        for i, name in enumerate(("person", "ball", "racket"))
    ]

    def respond(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
        if any(message.role == MessageRole.TOOL for message in messages):
            return ChatMessage(role="assistant", content="(scripted reply) A real LLM would now answer from the tools.")
        calls = [
            ToolCallBlock(
                tool_call_id="call_1",
                tool_name="describe_region",
                tool_kwargs={"image": image, "region": regions[2], "max_new_tokens": max_new_tokens},
            ),
            ToolCallBlock(
                tool_call_id="call_2",
                tool_name="compare_regions",
                tool_kwargs={
                    "image": image,
                    "regions": regions[:2],
                    "focus": "what they are doing",
                    "max_new_tokens": max_new_tokens,
                },
            ),
        ]
        return ChatMessage(role="assistant", blocks=calls)

    return MockFunctionCallingLLM(response_generator=respond)


async def run(model: str, max_new_tokens: int) -> tuple[str, list[ToolCallResult]]:
    """Run the agent once; return its reply and the tool calls it made."""
    spec = GarToolSpec.from_model(model, allowed_dirs=[ASSETS])  # paths only from here
    agent = FunctionAgent(
        tools=spec.to_tool_list(),
        llm=scripted_llm(max_new_tokens),  # a real function-calling LLM goes here
        system_prompt="You answer questions about image regions with the GAR tools.",
    )
    handler = agent.run(user_msg=f"In {ASSETS / 'demo_image_3.png'}, what are the player and the ball doing?")
    calls = [event async for event in handler.stream_events() if isinstance(event, ToolCallResult)]
    reply = await handler
    await spec.toolkit.aclose()
    return str(reply), calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (random weights, meaningless text), a folder or hub id")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    reply, calls = asyncio.run(run(args.model, args.max_new_tokens))
    for call in calls:
        status = "error" if call.tool_output.is_error else "ok"
        print(f"[tool {call.tool_name} {status}] {call.tool_output.content}")
    print(f"[agent] {reply}")


if __name__ == "__main__":
    main()
