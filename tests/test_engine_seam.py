"""The engine seam: servers and adapters use only what ``Engine`` declares; errors keep reason and field apart
across the wire; closing an engine never blocks the event loop."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest

from gar_tools.engine import Engine, make_engine
from gar_tools.engine.http import error_from_payload, error_payload
from gar_tools.engine.local import LocalEngine
from gar_tools.errors import EngineError, InputError, RegionError
from gar_tools.toolkit import coerce_request

REPO = Path(__file__).resolve().parents[1]


def test_input_error_keeps_reason_and_field_apart() -> None:
    err = RegionError("box needs x2 > x1", field="regions[1].box")
    assert (err.reason, err.field, str(err)) == (
        "box needs x2 > x1",
        "regions[1].box",
        "regions[1].box: box needs x2 > x1",
    )
    assert str(InputError("no field here")) == "no field here"
    back = error_from_payload(error_payload(err))
    assert (type(back), back.reason, back.field, str(back)) == (RegionError, err.reason, err.field, str(err))
    assert set(error_payload(err)["error"]) >= {"type", "message", "field"}  # the wire shape is kept
    legacy = error_from_payload({"error": {"type": "InputError", "message": "x: bad", "field": "x"}})
    assert isinstance(legacy, InputError) and str(legacy) == "x: bad"
    assert isinstance(error_from_payload({"error": {"type": "EngineError", "message": "boom"}}), EngineError)


def test_make_engine_kinds() -> None:
    assert type(make_engine("http://127.0.0.1:9")).__name__ == "HttpEngine"
    assert isinstance(make_engine("local"), LocalEngine)
    with pytest.raises(InputError) as info:
        make_engine("ftp://x")
    assert info.value.field == "engine"


def test_no_isinstance_local_engine_outside_the_engine_package() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("gar_tools",)
        for path in (REPO / folder).rglob("*.py")
        if "engine" not in path.relative_to(REPO).parts and re.search(r"isinstance\([^)]*LocalEngine", path.read_text())
    ]
    assert offenders == []


def test_engine_declares_what_servers_use() -> None:
    for name in ("run", "info", "start", "aclose", "policy"):
        assert hasattr(Engine, name) or name in Engine.__annotations__


@pytest.mark.anyio
async def test_aclose_does_not_block_the_loop(tiny_pipeline, monkeypatch) -> None:
    engine = LocalEngine(pipeline=tiny_pipeline)
    await engine.start()
    release, entered = threading.Event(), threading.Event()
    embed = tiny_pipeline.embed

    def slow_embed(*args, **kwargs):  # keeps the model thread busy until released
        entered.set()
        release.wait(10)
        return embed(*args, **kwargs)

    monkeypatch.setattr(tiny_pipeline, "embed", slow_embed)
    request = {"image": str(REPO / "gar_tools/assets/demo_image_1.png"), "region": {"box": [0, 0, 9, 9]}}
    running = asyncio.create_task(engine.run("describe_region", coerce_request("describe_region", request)))
    while not entered.is_set():
        await asyncio.sleep(0.01)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(heartbeat())
    closing = asyncio.create_task(engine.aclose())
    await asyncio.sleep(0.2)
    assert not closing.done() and ticks >= 5  # aclose waits for the model thread, the loop keeps running
    release.set()
    await asyncio.wait_for(closing, 10)
    with pytest.raises(EngineError):  # the request still running when the engine closed fails, it does not hang
        await asyncio.wait_for(running, 10)
    beat.cancel()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
