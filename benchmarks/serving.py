"""Serving benchmarks: one function per comparison, each returning a JSON-ready dict. Prints JSON.

    python benchmarks/serving.py [--only segmenter_cost|describe_regions] [--model tiny] [--segmenter tiny-sam]
                                 [--iters N] [--max-new-tokens N]

- ``segmenter_cost``: describe_region from points (the segmenter cuts the mask out, then GAR) vs from the mask
  itself, on the same image with the same engine: what the segmenter adds per call, with its image embedding cached
  (every call after the first) and not (the first call on the image). With the defaults (tiny GAR, tiny-sam, CPU)
  the numbers only show the overhead's shape; pass a real model and segmenter (and a GPU) for real costs.

- ``describe_regions``: 16 regions of one image (demo_image_3.png: its 3 masks and 13 boxes) in one
  ``describe_regions`` call vs 16 ``describe_region`` calls one after another, same engine, same ``max_new_tokens``
  (each call's text is checked equal to the matching region's). Target: ≥ 4× faster. On CUDA, without ``--model``,
  it runs a random-weight checkpoint of the ``gar-1b`` size preset (GAR-1B's real dimensions) in bf16.
  Measured on CPU (tiny, fp32, 2 shared cores, 2026-11-27): 1.3× at 8 new tokens, 1.5× at 32 — per region, the
  vision tower's fixed cost (~0.45 s per call on the thumbnail and touched tiles, whatever their count) and the
  prefill dominate and are not batched across requests by the scheduler, so the 4× target is not met on CPU.

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


def _sixteen_regions() -> list[dict[str, Any]]:
    """16 regions of demo_image_3.png (640x427): its 3 object masks, then 13 boxes spread over the image."""
    regions: list[dict[str, Any]] = [{"mask": str(ASSETS / f"demo_mask_3_{i}.png")} for i in range(3)]
    for k in range(13):
        x, y = 20 + (k % 5) * 120, 20 + (k // 5) * 130
        regions.append({"box": [x, y, x + 90 + 5 * k, y + 100]})
    return regions


def _describe_regions_model(args: argparse.Namespace, tmp: Path) -> tuple[str, str | None, str | None]:
    """(model, dtype, preset): ``--model``, or on CUDA the gar-1b size preset built in ``tmp``."""
    import torch

    if args.model != "tiny" or not torch.cuda.is_available():
        return args.model, None, None
    from gar_tools.model.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(tmp / "gar-1b", preset="gar-1b", device=torch.device("cuda"))
    return str(folder), "bf16", "gar-1b"


def describe_regions(args: argparse.Namespace) -> dict[str, Any]:
    """16 regions in one describe_regions call vs 16 describe_region calls in a row (see the module docstring)."""
    import tempfile

    from gar_tools.engine.local import LocalEngine
    from gar_tools.toolkit import GarToolkit

    image, regions = str(ASSETS / "demo_image_3.png"), _sixteen_regions()
    with tempfile.TemporaryDirectory(prefix="gar-bench-") as tmp:
        model, dtype, preset = _describe_regions_model(args, Path(tmp))
        engine = LocalEngine(model, device=args.device, dtype=dtype)
        toolkit = GarToolkit(engine)
        try:
            common = {"image": image, "max_new_tokens": args.max_new_tokens}
            toolkit.describe_region(region=regions[0], **common)  # load + warm up
            toolkit.describe_regions(regions=regions[:2], **common)
            one_by_one, together, equal = [], [], True
            for _ in range(args.iters):
                start = time.perf_counter()
                alone = [toolkit.describe_region(region=region, **common).text for region in regions]
                one_by_one.append((time.perf_counter() - start) * 1000)
                start = time.perf_counter()
                result = toolkit.describe_regions(regions=regions, **common)
                together.append((time.perf_counter() - start) * 1000)
                equal = equal and [d.text for d in result.descriptions] == alone
            info = toolkit.info()
            return {
                "image": "demo_image_3.png (640x427)",
                "regions": len(regions),
                "model": preset or model,
                "device": str(engine.pipeline.device),
                "gpu": torch_device_name(),
                "dtype": str(engine.pipeline.dtype).removeprefix("torch."),
                "max_batch_size": info.max_batch_size,
                "max_new_tokens": args.max_new_tokens,
                "describe_region_x16_sequential": _ms(one_by_one),
                "describe_regions_one_call": _ms(together),
                "speedup": round(statistics.median(one_by_one) / statistics.median(together), 2),
                "texts_equal": equal,
            }
        finally:
            toolkit.close()


def torch_device_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


COMPARISONS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "segmenter_cost": segmenter_cost,
    "describe_regions": describe_regions,
}


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
