"""Seeded fuzzing: generated bad requests against the toolkit and the MCP server (in memory).

Each case starts from a valid request of a registered tool and breaks it in one or two ways (missing, unknown,
wrongly typed or out-of-range arguments; malformed, oversized, normalised or misplaced regions; junk images and
masks; hostile question text). Whatever comes back must be a result or a :class:`GarToolsError` subclass naming a
field — never another exception, never raw pydantic text, never a hang — and the server must still answer a good
request afterwards. A fixed seed keeps failures reproducible; the tiny model (random weights, meaningless text)
generates one token when a case happens to be valid. Bounded to well under a minute on two slow cores.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mcp")

import asyncio
import base64
import copy
import io
import random
import time
from typing import Any

import anyio
from mcp import Client
from PIL import Image
from server_helpers import ASSETS

from gar_tools.engine import LocalEngine
from gar_tools.errors import GarToolsError
from gar_tools.servers.mcp_server import create_server
from gar_tools.servers.settings import ServeSettings, server_policy
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import tool_names

SEED = 1111
TOOLKIT_CASES = 160
MCP_CASES = 60
CALL_TIMEOUT_S = 30.0
RAW_TEXT = ("validation error", "Extra inputs", "Field required", "pydantic", "Traceback", "Arguments")


def _png_uri(size: tuple[int, int], colour: tuple[int, int, int] = (120, 60, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE = _png_uri((64, 48))
MASK = _png_uri((64, 48), (255, 255, 255))
WRONG_MASK = _png_uri((10, 10), (255, 255, 255))
TRUNCATED = IMAGE[: len(IMAGE) // 2]
BOX = {"box": [4, 4, 40, 30]}
VALID: dict[str, dict[str, Any]] = {
    "describe_region": {"image": IMAGE, "region": BOX, "max_new_tokens": 1},
    "compare_regions": {"image": IMAGE, "regions": [BOX, {"mask": MASK, "id": "m"}], "max_new_tokens": 1},
    "answer_about_regions": {
        "image": IMAGE,
        "regions": [{"id": "a", **BOX}, {"polygon": [[0, 0, 20, 0, 20, 20]]}],
        "question": "Is <a> left of <r1>?",
        "choices": ["yes", "no"],
        "max_new_tokens": 1,
    },
    "describe_regions": {"image": IMAGE, "regions": [BOX, {"mask": MASK, "id": "m"}], "max_new_tokens": 1},
}


def _junk(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            -1,
            2**70,
            1e308,
            -0.5,
            float("nan"),
            "",
            "x",
            "1",
            "true",
            "A" * rng.choice([10, 5000, 200_000]),
            [],
            [1, 2],
            {},
            {"box": [1, 2, 3, 4]},
            [[[[[]]]]],
            _deep(rng.randint(50, 400)),
            "<image>",
            "<Prompt3>",
            "<|eot_id|>",
            "data:image/png;base64,!!!",
            "data:image/png;base64," + base64.b64encode(rng.randbytes(64)).decode(),
            base64.b64encode(rng.randbytes(200)).decode(),
            TRUNCATED,
            WRONG_MASK,
            "/etc/passwd",
            "/nonexistent/x.png",
            str(ASSETS),
            "../../../../etc/hostname",
            "http://127.0.0.1:9/x.png",
            "file:///etc/passwd",
            "\x00\x01\x02",
            "é" * 100,
        ]
    )


def _deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _bad_region(rng: random.Random) -> Any:
    return rng.choice(
        [
            {},
            {"box": [0.1, 0.1, 0.9, 0.9]},
            {"box": [5, 5, 5, 5]},
            {"box": [1000, 1000, 2000, 2000]},
            {"box": [-50, -50, -1, -1]},
            {"box": [1, 2, 3]},
            {"box": [True, 0, 4, 4]},
            {"box": ["1", 0, 4, 4]},
            {"box": [0, 0, float("inf"), 4]},
            {"box": [1, 2, 3, 4], "mask": MASK},
            {"polygon": [[0, 0, 1]]},
            {"polygon": [[0, 0, 1, 1, 2]]},
            {"polygon": []},
            {"polygon": [[0, 0, 1e9, 0, 1e9, 1e9]]},
            {"rle": {"size": [48, 64], "counts": "!!!!"}},
            {"rle": {"size": [48, 64], "counts": [-1, 5]}},
            {"rle": {"size": [10, 10], "counts": [100]}},
            {"rle": {"size": [48, 64], "counts": [48 * 64 + 1]}},
            {"rle": {"size": [48, 64], "counts": "0" * 10_000}},
            {"rle": {"size": [48, 64]}},
            {"mask": WRONG_MASK},
            {"mask": TRUNCATED},
            {"mask": "/etc/passwd"},
            {"mask": _png_uri((64, 48), (0, 0, 0))},
            {"id": "<bad>", **BOX},
            {"id": "x" * 40, **BOX},
            {"id": 7, **BOX},
            {"label": "dog", **BOX},
            _junk(rng),
        ]
    )


def _mutate(rng: random.Random, tool: str, request: dict[str, Any]) -> dict[str, Any]:
    request = copy.deepcopy(request)
    kind = rng.randrange(8)
    region_key = "region" if "region" in request else "regions"
    if kind == 0 and request:
        request.pop(rng.choice(sorted(request)))
    elif kind == 1:
        name = rng.choice(["foo", "policy", "allow_urls", "temperature", "IMAGE", "max_new_token", "regoin", "ctx"])
        request[name] = _junk(rng)
    elif kind == 2:
        request[rng.choice(sorted(request))] = _junk(rng)
    elif kind == 3 and region_key == "region":
        request["region"] = _bad_region(rng)
    elif kind == 3 and isinstance(request.get("regions"), list) and request["regions"]:  # (a first break may
        regions = list(request["regions"])  # have removed the list or made it "auto")
        regions[rng.randrange(len(regions))] = _bad_region(rng)
        request["regions"] = regions
    elif kind == 4:
        request["image"] = rng.choice([TRUNCATED, _png_uri((1, 1)), "", "nope", _junk(rng), "/etc/hostname"])
    elif kind == 5:
        request["max_new_tokens"] = rng.choice([0, -3, 5000, "1", True, 1.5, None])
    elif kind == 6 and region_key == "regions":
        request["regions"] = rng.choice(
            [[], [BOX] * 6, [{"id": "a", **BOX}, {"id": "a", **BOX}], "regions", [BOX] * rng.randint(0, 8), "auto"]
        )
    elif kind == 6:
        request["region"] = rng.choice([[BOX], [BOX, BOX], "box", None])
    elif kind == 7 and tool == "answer_about_regions":
        request[rng.choice(["question", "choices"])] = rng.choice(
            [
                "What is <zz>?",
                "no reference at all",
                "<a> <a> <r1> <Prompt0> <Prompt7>",
                "<image>" * 50,
                "x" * 3000,
                ["only one"],
                ["ok", ""],
                ["c"] * 30,
            ]
        )
    elif kind == 7:
        request["focus" if tool == "compare_regions" else "overlay"] = rng.choice(["yes", 1, "x" * 600, None])
    if rng.random() < 0.3:  # a second, independent break
        return _mutate(rng, tool, request)
    return request


def _cases(count: int, seed: int) -> list[tuple[str, dict[str, Any]]]:
    rng = random.Random(seed)
    names = list(tool_names())
    cases = []
    for _ in range(count):
        tool = rng.choice(names)
        request = _mutate(rng, tool, VALID[tool])
        request.setdefault("max_new_tokens", 1)  # a case that happens to be valid generates one token, not 1 024
        cases.append((tool, request))
    return cases


def test_generated_bad_requests_against_the_toolkit(tiny_pipeline) -> None:
    started = time.monotonic()
    outcomes = {"result": 0, "error": 0}
    with GarToolkit(LocalEngine(pipeline=tiny_pipeline, policy=server_policy())) as toolkit:

        async def run_all() -> None:
            for number, (tool, request) in enumerate(_cases(TOOLKIT_CASES, SEED)):
                try:
                    with anyio.fail_after(CALL_TIMEOUT_S):
                        await toolkit.arun(tool, request)
                except GarToolsError as exc:
                    assert getattr(exc, "field", None), f"case {number} ({tool}): error without a field: {exc!r}"
                    assert not any(raw in str(exc) for raw in RAW_TEXT), f"case {number}: raw text: {exc}"
                    outcomes["error"] += 1
                except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
                    pytest.fail(f"case {number} ({tool}, {str(request)[:300]}): {type(exc).__name__}: {exc}")
                else:
                    outcomes["result"] += 1

        asyncio.run(run_all())
        assert toolkit.run("describe_region", VALID["describe_region"]).timings.tokens_generated == 1
    assert outcomes["error"] > TOOLKIT_CASES * 0.8, outcomes
    assert time.monotonic() - started < 120


def test_generated_bad_requests_against_the_mcp_server(tiny_pipeline) -> None:
    policy = server_policy()
    server = create_server(
        ServeSettings(policy=policy), engine_factory=lambda: LocalEngine(pipeline=tiny_pipeline, policy=policy)
    )
    errors = 0

    async def run_all() -> None:
        nonlocal errors
        async with Client(server) as client:
            for number, (tool, request) in enumerate(_cases(MCP_CASES, SEED + 1)):
                try:
                    with anyio.fail_after(CALL_TIMEOUT_S):
                        result = await client.call_tool(tool, _json_safe(request))
                except Exception as exc:  # noqa: BLE001 - a protocol error instead of an isError result
                    pytest.fail(f"case {number} ({tool}): {type(exc).__name__}: {exc}")
                if result.is_error:
                    errors += 1
                    message = result.content[0].text
                    assert not any(raw in message for raw in RAW_TEXT), f"case {number}: {message}"
                    assert ": " in message.removeprefix(f"Error executing tool {tool}: "), message  # names a field
            with anyio.fail_after(CALL_TIMEOUT_S):
                good = await client.call_tool("describe_region", VALID["describe_region"])
            assert not good.is_error, good.content

    asyncio.run(run_all())
    assert errors > MCP_CASES * 0.8


def _json_safe(value: Any) -> Any:
    """What a JSON client can send: NaN and infinities become strings (JSON has none)."""
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
