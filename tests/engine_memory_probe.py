"""Run many requests through a LocalEngine in a fresh process and print its RSS after 50 and after all of them.

Used by ``tests/test_local_engine.py`` (a subprocess, so the figure is this engine's alone, without the test session's
other objects or Triton's interpreter). Tiny random-weight model: its text is meaningless.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from gar_tools.engine.local import LocalEngine
from gar_tools.toolkit import GarToolkit


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def main(total: int, settle: int) -> dict[str, int]:
    folder = Path(tempfile.mkdtemp())
    images = []
    for k in range(5):  # five small images (one tile each): the tile caches keep filling and evicting
        path = folder / f"noise{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
    engine = LocalEngine("tiny", device="cpu", dtype="fp32", tile_cache_bytes=2 * 2**20)
    settled = 0
    async with GarToolkit(engine) as toolkit:
        for i in range(total):
            request = {"image": images[i % 5], "region": {"box": [0, 0, 20 + i % 7, 20]}, "max_new_tokens": 1}
            await toolkit.arun("describe_region", request)
            if i + 1 == settle:
                settled = rss()
        final = rss()
    return {"requests": total, "settled_after": settle, "settled_rss": settled, "final_rss": final}


if __name__ == "__main__":
    total, settle = (int(v) for v in sys.argv[1:3]) if len(sys.argv) > 2 else (500, 50)
    print(json.dumps(asyncio.run(main(total, settle))))
