"""Serving benchmarks: one function per comparison, each returning a JSON-ready dict. Prints JSON.

    python benchmarks/serving.py [--only segmenter_cost] [--model tiny] [--segmenter tiny-sam] [--iters N]

- ``segmenter_cost``: describe_region from points (the segmenter cuts the mask out, then GAR) vs from the mask
  itself, on the same image with the same engine: what the segmenter adds per call, with its image embedding cached
  (every call after the first) and not (the first call on the image). With the defaults (tiny GAR, tiny-sam, CPU)
  the numbers only show the overhead's shape; pass a real model and segmenter (and a GPU) for real costs.

Add a comparison by writing ``def name(args) -> dict`` and listing it in ``COMPARISONS``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"


def _ms(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 2), "min_ms": round(min(values), 2), "n": len(values)}


def segmenter_cost(args: argparse.Namespace) -> dict[str, Any]:
    """describe_region from points vs from a mask, same image, same engine (see the module docstring)."""
    from gar_tools.engine.local import LocalEngine
    from gar_tools.toolkit import GarToolkit

    image = str(ASSETS / "demo_image_1.png")
    mask_path = ASSETS / "demo_mask_1.png"
    mask = np.asarray(Image.open(mask_path).convert("L")) > 0
    ys, xs = np.nonzero(mask)
    point = [float(np.median(xs)), float(np.median(ys))]  # a click inside the object the mask outlines
    engine = LocalEngine(args.model, device=args.device, segmenter=args.segmenter)
    toolkit = GarToolkit(engine)
    try:
        common = {"image": image, "max_new_tokens": args.max_new_tokens}
        toolkit.describe_region(region={"mask": str(mask_path)}, **common)  # load GAR + warm up
        segmenter = engine.segmenter
        assert segmenter is not None
        cold_total, cold_segment = [], []
        for _ in range(args.iters):  # embedding not cached: the first call on an image
            segmenter.cache.clear()
            start = time.perf_counter()
            result = toolkit.describe_region(region={"points": [point]}, **common)
            cold_total.append((time.perf_counter() - start) * 1000)
            cold_segment.append(result.timings.segment_ms)
        warm_total, warm_segment, from_mask = [], [], []
        for _ in range(args.iters):
            start = time.perf_counter()
            result = toolkit.describe_region(region={"points": [point]}, **common)
            warm_total.append((time.perf_counter() - start) * 1000)
            warm_segment.append(result.timings.segment_ms)
            start = time.perf_counter()
            toolkit.describe_region(region={"mask": str(mask_path)}, **common)
            from_mask.append((time.perf_counter() - start) * 1000)
        return {
            "image": "demo_image_1.png (1024x770)",
            "model": args.model,
            "segmenter": args.segmenter,
            "device": str(engine.pipeline.device),
            "dtype": str(engine.pipeline.dtype).removeprefix("torch."),
            "max_new_tokens": args.max_new_tokens,
            "describe_from_mask": _ms(from_mask),
            "describe_from_points_embedding_cached": {**_ms(warm_total), "segment": _ms(warm_segment)},
            "describe_from_points_embedding_not_cached": {**_ms(cold_total), "segment": _ms(cold_segment)},
            "segmenter_embed_calls": segmenter.embed_calls,
        }
    finally:
        toolkit.close()


COMPARISONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"segmenter_cost": segmenter_cost}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=sorted(COMPARISONS), help="run only these (repeatable)")
    parser.add_argument("--model", default="tiny", help="GAR model (default tiny: random weights)")
    parser.add_argument("--segmenter", default="tiny-sam", help="SAM-family segmenter (default tiny-sam)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA when available)")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per variant (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens per call (default 8)")
    args = parser.parse_args(argv)
    import torch
    import transformers

    report: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": {name: COMPARISONS[name](args) for name in (args.only or COMPARISONS)},
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
