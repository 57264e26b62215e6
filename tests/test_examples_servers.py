"""The server and agent examples run end to end against the tiny model (random weights: meaningless text).

The MCP client example starts the server exactly as the desktop-client config snippet describes (with the model
overridden to tiny), so both are checked by one run.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")
pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

import json
import re
import subprocess
import sys
from pathlib import Path

from server_helpers import REPO

from gar_tools.cli import build_parser
from gar_tools.results import TINY_MODEL_NOTE

EXAMPLES = REPO / "examples"
CONFIG = EXAMPLES / "claude_desktop_config.json"
TIMEOUT_S = 300


def run_example(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_desktop_config_snippet_is_a_valid_serve_command():
    servers = json.loads(CONFIG.read_text())["mcpServers"]
    (entry,) = servers.values()
    # a desktop app starts outside the venv: the command is the venv's gar-tools by absolute path
    assert Path(entry["command"]).is_absolute() and entry["command"].endswith("/bin/gar-tools")
    args = build_parser().parse_args(entry["args"])
    assert args.command == "serve" and args.transport == "stdio"
    assert args.allow_dir and all(folder.is_absolute() for folder in args.allow_dir)


def test_readme_desktop_config_is_the_example_file():
    readme = (REPO / "README.md").read_text()
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", readme, flags=re.S)]
    configs = [block for block in blocks if "mcpServers" in block]
    assert configs == [json.loads(CONFIG.read_text())]
    assert "absolute path" in readme and "-m gar_tools" in readme


def test_mcp_client_example_with_the_desktop_config():
    out = run_example("mcp_client.py", "--config", str(CONFIG), "--model", "tiny", "--max-new-tokens", "4")
    assert "tools: describe_region, compare_regions, answer_about_regions" in out
    for section in ("== describe_region ==", "== compare_regions ==", "== answer_about_regions =="):
        assert section in out
    assert "overlay image: image/png" in out and "progress:" in out
    assert TINY_MODEL_NOTE in out
    assert "error: Error executing tool describe_region: region.box" in out


def test_langchain_agent_example():
    out = run_example("langchain_agent.py", "--max-new-tokens", "4")
    assert "[tool describe_region success]" in out
    assert "[tool answer_about_regions error] question: refers to <bat>" in out
    assert "[tool answer_about_regions success]" in out
    assert TINY_MODEL_NOTE in out and "(scripted reply)" in out


def test_llama_index_agent_example():
    out = run_example("llama_index_agent.py", "--max-new-tokens", "4")
    assert "[tool describe_region ok]" in out and "[tool compare_regions ok]" in out
    assert TINY_MODEL_NOTE in out and "[agent] (scripted reply)" in out
