"""An MCP client that starts ``gar-tools serve`` over stdio, lists the tools and calls each one.

    python examples/mcp_client.py                       # the tiny test model (random weights: meaningless text)
    python examples/mcp_client.py --model HaochenWang/GAR-1B --max-new-tokens 256
    python examples/mcp_client.py --config examples/claude_desktop_config.json --model tiny

With ``--config`` the server is started exactly as a desktop MCP client would start it from that
``mcpServers`` entry (``--model`` and ``--device``, when given here, are appended and win). If the entry's
command does not exist here (the example config names a placeholder venv), ``python -m gar_tools`` is run with
this Python instead, and ``--allow-dir`` folders that do not exist here are replaced by the bundled examples.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import sys
from pathlib import Path

from mcp import Client, StdioServerParameters

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"


def _existing_dir(arg: str, option: str) -> str:
    """An ``--allow-dir`` value of a config made for another machine that does not exist here: the bundled
    examples instead (the server refuses folders that do not exist)."""
    if option == "--allow-dir" and not Path(arg).expanduser().is_dir():
        print(f"(--allow-dir {arg} does not exist here; using {ASSETS})", file=sys.stderr)
        return str(ASSETS)
    return arg


def server_parameters(args: argparse.Namespace) -> StdioServerParameters:
    """How to start the server: from a desktop-client config entry, or ``gar-tools serve`` with this Python."""
    env: dict[str, str] = {}
    if args.config is not None:
        servers = json.loads(args.config.read_text())["mcpServers"]
        entry = servers[args.server] if args.server else next(iter(servers.values()))
        command, server_args, env = entry["command"], list(entry.get("args", [])), dict(entry.get("env", {}))
    else:
        command, server_args = "gar-tools", ["serve", "--transport", "stdio"]
    if shutil.which(command) is None:  # e.g. the config's placeholder venv path: use this Python's gar_tools
        name = Path(command).name
        if name == "gar-tools":
            command, server_args = sys.executable, ["-m", "gar_tools", *server_args]
        elif name.startswith("python"):
            command = sys.executable
    options = ["", *server_args][: len(server_args)]  # the option before each argument
    server_args = [_existing_dir(arg, option) for option, arg in zip(options, server_args, strict=True)]
    if args.model is not None:
        server_args += ["--model", args.model]
    if args.device is not None:
        server_args += ["--device", args.device]
    return StdioServerParameters(command=command, args=server_args, env=env or None)


def show(title: str, result) -> None:  # noqa: ANN001 - mcp.types.CallToolResult
    """Print a tool result: the structured content's text, the notes, and where an overlay image went."""
    print(f"\n== {title} ==")
    if result.is_error:
        print("error:", result.content[0].text)
        return
    structured = result.structured_content or {}
    print("text:", structured.get("text"))
    if structured.get("choice"):
        print("choice:", structured["choice"])
    print("regions:", [(r["id"], r["box"], r["area"]) for r in structured.get("regions", [])])
    for block in result.content[1:]:
        if block.type == "text":
            print(block.text)
        elif block.type == "image":
            print(f"overlay image: {block.mime_type}, {len(base64.b64decode(block.data))} bytes")


async def main(args: argparse.Namespace) -> None:
    slipper = {
        "image": str(ASSETS / "demo_image_1.png"),
        "region": {"id": "slipper", "mask": str(ASSETS / "demo_mask_1.png")},
    }
    tennis_image = str(ASSETS / "demo_image_3.png")
    tennis = [
        {"id": n, "mask": str(ASSETS / f"demo_mask_3_{i}.png")} for i, n in enumerate(("person", "ball", "racket"))
    ]
    tokens = {"max_new_tokens": args.max_new_tokens}

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        print(f"  progress: {message or f'{done:g}/{total:g}'}", flush=True)

    async with Client(server_parameters(args)) as client:
        tools = (await client.list_tools()).tools
        print("tools:", ", ".join(tool.name for tool in tools))
        resources = (await client.list_resources()).resources
        print("resources:", ", ".join(str(resource.uri) for resource in resources))

        result = await client.call_tool(
            "describe_region", {**slipper, **tokens, "overlay": True}, progress_callback=on_progress
        )
        show("describe_region", result)
        result = await client.call_tool(
            "compare_regions", {"image": tennis_image, "regions": tennis[:2], "focus": "what they are doing", **tokens}
        )
        show("compare_regions", result)
        result = await client.call_tool(
            "answer_about_regions",
            {
                "image": tennis_image,
                "regions": tennis,
                "question": "What is <person> doing with <racket> and <ball>?",
                "choices": ["Hitting <ball> with <racket>.", "Throwing <racket> at <ball>."],
                **tokens,
            },
        )
        show("answer_about_regions", result)
        # A mistake an LLM might make: the error comes back as an isError result, and the server keeps serving.
        result = await client.call_tool(
            "describe_region", {**slipper, "region": {"box": [5000, 0, 6000, 10]}, **tokens}
        )
        show("describe_region with a box outside the image", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="a desktop MCP client config with mcpServers")
    parser.add_argument("--server", default=None, help="which mcpServers entry (default: the first)")
    parser.add_argument("--model", default=None, help="model for the server (default: the server's, tiny)")
    parser.add_argument("--device", default=None, help="device for the server, e.g. cpu")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    asyncio.run(main(parser.parse_args()))
