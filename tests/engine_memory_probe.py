"""Run many requests through a LocalEngine in a fresh process, as a worker process does; print its RSS figures.

Used by ``tests/test_local_engine.py`` (a subprocess, so the figure is this engine's alone, without the test session's
other objects or Triton's interpreter). The servers tune glibc's allocator before they build a local engine
(``gar_tools/engine/allocator.py``); so does this probe. RSS is read after every request: "settled" is the highest
reading over requests ``settle/2 … settle``, "final" the highest over the last ``settle/2`` requests (one reading
alone may land between a request's buffers being allocated and freed). Python objects are counted after a
collection at both points. Tiny random-weight model: its text is meaningless.

    python tests/engine_memory_probe.py [TOTAL SETTLE] [--untuned]   # --untuned: glibc's defaults, for comparison
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from gar_tools.engine.allocator import tune_allocator
from gar_tools.engine.local import LocalEngine
from gar_tools.toolkit import GarToolkit


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def python_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


async def main(total: int, settle: int, tune: bool = True) -> dict[str, object]:
    tuned = tune and tune_allocator()
    folder = Path(tempfile.mkdtemp())
    images = []
    for k in range(5):  # five small images (one tile each): the tile caches keep filling and evicting
        path = folder / f"noise{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    # small caches: the tile and prefix caches keep filling and evicting (35 distinct prompts of ~0.4 MB of K/V each)
    engine = LocalEngine("tiny", device="cpu", dtype="fp32", tile_cache_bytes=2 * 2**20, prefix_cache_bytes=4 * 2**20)
    readings: list[int] = []
    objects: dict[str, int] = {}
    async with GarToolkit(engine) as toolkit:
        for i in range(total):
            request = {"image": images[i % 5], "region": {"box": [0, 0, 20 + i % 7, 20]}, "max_new_tokens": 1}
            await toolkit.arun("describe_region", request)
            readings.append(rss())
            if i + 1 == settle:
                objects["settled"] = python_objects()
        objects["final"] = python_objects()
    window = max(1, settle // 2)
    return {
        "requests": total,
        "settled_after": settle,
        "allocator_tuned": tuned,
        "settled_rss": max(readings[settle - window : settle]),
        "final_rss": max(readings[-window:]),
        "rss_mb_every_50": [readings[k] >> 20 for k in range(49, total, 50)],
        "settled_python_objects": objects["settled"],
        "final_python_objects": objects["final"],
    }


if __name__ == "__main__":
    numbers = [int(v) for v in sys.argv[1:] if not v.startswith("--")]
    total, settle = numbers if len(numbers) == 2 else (500, 50)
    print(json.dumps(asyncio.run(main(total, settle, tune="--untuned" not in sys.argv))))
