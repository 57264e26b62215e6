"""Benchmark GAR's RoI replay: upstream loop vs one batched roi_align vs the Triton kernel. Prints JSON.

Shapes default to GAR-1B (hidden 2048, 4x4 tiles + thumbnail, bfloat16), 1 and 5 regions. On CUDA the
timings use CUDA events after a warm-up, and the kernel is also captured in a CUDA graph and replayed.
Without CUDA the script still runs (a few iterations, for smoke tests): the kernel then runs under Triton's
interpreter if TRITON_INTERPRET=1, else through the pure-torch reference; CPU timings say nothing about GPUs.

    python benchmarks/roi_replay.py [--channels 2048] [--grid 4 4] [--regions 1 5] [--iters N] [--warmup N]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision

from gar_tools.kernels.roi_replay import BINS, GEOMETRIES, roi_replay, roi_replay_backend, roi_replay_reference

CROP_TOKEN_IDS = [128004, 128005, 128008, 128010, 128011]  # gar-model.md §2
IMAGE_TOKEN_ID = 128002
TEXT_TOKEN_ID = 400


def _sequence(r: int, num_tiles: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids shaped like a GAR prompt (image tokens, text, then 256-token slots), and the slot starts."""
    parts = [torch.full((20,), TEXT_TOKEN_ID), torch.full(((1 + num_tiles) * BINS,), IMAGE_TOKEN_ID)]
    starts = []
    for k in range(r):
        parts.append(torch.full((9,), TEXT_TOKEN_ID))
        starts.append(sum(p.numel() for p in parts))
        parts.append(torch.full((BINS,), CROP_TOKEN_IDS[k]))
    parts.append(torch.full((30,), TEXT_TOKEN_ID))
    return torch.cat(parts).to(device), torch.tensor(starts, dtype=torch.int64, device=device)


def _upstream(
    tiles: torch.Tensor,
    boxes: torch.Tensor,
    input_ids: torch.Tensor,
    embeds: torch.Tensor,
    grid: tuple[int, int],
    scale: float,
) -> torch.Tensor:
    """The upstream way: merge the tiles, one roi_align per region, find each slot with nonzero + item()."""
    ncw, nch = grid
    c = tiles.shape[2]
    merged = tiles.reshape(nch, ncw, 16, 16, c).permute(4, 0, 2, 1, 3).reshape(c, 16 * nch, 16 * ncw)
    feat = torch.tensor([16 * ncw, 16 * nch, 16 * ncw, 16 * nch], dtype=torch.float32, device=boxes.device)
    for k in range(boxes.shape[0]):
        out = torchvision.ops.roi_align(merged[None].float(), [boxes[k : k + 1] * feat], (16, 16), scale, 2, True)
        out = out[0].permute(1, 2, 0).reshape(BINS, c).to(embeds.dtype)
        pos = (input_ids == CROP_TOKEN_IDS[k]).nonzero()
        start, end = int(pos[0].item()), int(pos[-1].item()) + 1  # host syncs
        embeds = torch.cat([embeds[:start], out, embeds[end:]], dim=0)
    return embeds


def _batched(
    tiles: torch.Tensor,
    boxes: torch.Tensor,
    starts: torch.Tensor,
    embeds: torch.Tensor,
    grid: tuple[int, int],
    scale: float,
) -> torch.Tensor:
    """One torchvision roi_align call for all regions, then index_copy_ into the embeddings."""
    ncw, nch = grid
    c = tiles.shape[2]
    merged = tiles.reshape(nch, ncw, 16, 16, c).permute(4, 0, 2, 1, 3).reshape(c, 16 * nch, 16 * ncw)
    feat = torch.tensor([16 * ncw, 16 * nch, 16 * ncw, 16 * nch], dtype=torch.float32, device=boxes.device)
    out = torchvision.ops.roi_align(merged[None].float(), [boxes * feat], (16, 16), scale, 2, True)
    out = out.permute(0, 2, 3, 1).reshape(-1, c).to(embeds.dtype)
    rows = (starts[:, None] + torch.arange(BINS, device=starts.device)).reshape(-1)
    return embeds.index_copy_(0, rows, out)


def _time_ms(fn: Callable[[], Any], iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return begin.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1000 / iters


def _slots(embeds: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    rows = (starts[:, None] + torch.arange(BINS, device=starts.device)).reshape(-1)
    return embeds.index_select(0, rows).reshape(starts.numel(), BINS, -1).float()


def _graph_check(
    tiles: torch.Tensor,
    boxes: torch.Tensor,
    starts: torch.Tensor,
    embeds: torch.Tensor,
    grid: tuple[int, int],
    iters: int,
) -> dict[str, Any]:
    """Capture the kernel in a CUDA graph, replay it on new boxes, compare with the reference, time replays."""
    if roi_replay_backend(tiles.device) != "triton":
        return {"captured": False, "reason": "the Triton kernel does not run here"}
    try:
        emb = embeds.clone()
        static_boxes = boxes.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                roi_replay(tiles, static_boxes, starts, emb, grid=grid)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            roi_replay(tiles, static_boxes, starts, emb, grid=grid)
        new_boxes = torch.rand_like(boxes).sort(dim=1).values  # x1 <= y1 <= x2 <= y2: valid boxes
        static_boxes.copy_(new_boxes)
        graph.replay()
        torch.cuda.synchronize()
        want = roi_replay_reference(tiles, grid, new_boxes)
        err = (_slots(emb, starts) - want.to(emb.dtype).float()).abs().max().item()
        ms = _time_ms(graph.replay, iters, 3, tiles.device)
        return {"captured": True, "replay_max_abs_err_vs_reference_cast": err, "replay_ms": ms}
    except Exception as exc:  # report, don't crash the benchmark
        return {"captured": False, "reason": f"{type(exc).__name__}: {exc}"}


def _bench_regions(
    r: int,
    c: int,
    grid: tuple[int, int],
    dtype: torch.dtype,
    geometry: str,
    device: torch.device,
    iters: int,
    warmup: int,
    gen: torch.Generator,
) -> dict[str, Any]:
    """Time and check the three ways for ``r`` regions."""
    num_tiles, scale = grid[0] * grid[1], GEOMETRIES[geometry]
    tiles = torch.randn(num_tiles, BINS, c, generator=gen).to(dtype).to(device)
    corners = torch.rand(r, 4, generator=gen).sort(dim=1).values  # x1 <= y1 <= x2 <= y2: valid boxes
    boxes = corners.to(device)
    input_ids, starts = _sequence(r, num_tiles, device)
    embeds = torch.randn(input_ids.numel(), c, generator=gen).to(dtype).to(device)
    want = roi_replay_reference(tiles, grid, boxes, geometry)  # type: ignore[arg-type]

    work = embeds.clone()
    fns: dict[str, Callable[[], Any]] = {
        "upstream": lambda: _upstream(tiles, boxes, input_ids, embeds, grid, scale),
        "batched_roi_align": lambda: _batched(tiles, boxes, starts, work, grid, scale),
        "kernel": lambda: roi_replay(tiles, boxes, starts, work, grid=grid, geometry=geometry),  # type: ignore[arg-type]
    }
    errors = {name: (_slots(fn(), starts) - want).abs().max().item() for name, fn in fns.items()}
    kernel_vs_cast = (_slots(work, starts) - want.to(dtype).float()).abs().max().item()  # work: kernel ran last
    ms = {name: _time_ms(fn, iters, warmup, device) for name, fn in fns.items()}
    entry: dict[str, Any] = {
        "regions": r,
        "seq_len": input_ids.numel(),
        "ms": ms,
        "speedup_kernel_vs_upstream": ms["upstream"] / ms["kernel"],
        "speedup_kernel_vs_batched_roi_align": ms["batched_roi_align"] / ms["kernel"],
        "max_abs_err_vs_reference": errors,
        "kernel_max_abs_err_vs_reference_cast": kernel_vs_cast,
    }
    if device.type == "cuda":
        entry["cuda_graph"] = _graph_check(tiles, boxes, starts, embeds, grid, iters)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=2048, help="hidden size C (GAR-1B: 2048)")
    parser.add_argument("--grid", type=int, nargs=2, default=[4, 4], metavar=("NCW", "NCH"))
    parser.add_argument("--regions", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="checkpoint")
    parser.add_argument("--iters", type=int, default=None, help="timed calls (default 200 on CUDA, 2 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 20 / 1)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    iters = args.iters if args.iters is not None else (200 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    dtype = getattr(torch, args.dtype)
    grid = (args.grid[0], args.grid[1])
    c = args.channels
    gen = torch.Generator().manual_seed(0)

    try:
        import triton

        triton_version: str | None = triton.__version__
    except Exception:
        triton_version = None
    report: dict[str, Any] = {
        "benchmark": "roi_replay",
        "device": {
            "type": device.type,
            "name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
            "note": None if cuda else "CPU only: timings are not representative of a GPU",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "triton": triton_version,
        },
        "shapes": {"channels": c, "grid": list(grid), "dtype": args.dtype, "geometry": args.geometry},
        "kernel_backend": roi_replay_backend(device),
        "iters": iters,
        "warmup": warmup,
        "results": [],
    }

    for r in args.regions:
        if not 1 <= r <= len(CROP_TOKEN_IDS):
            parser.error(f"--regions: each must be in 1..{len(CROP_TOKEN_IDS)}, got {r}")
        report["results"].append(_bench_regions(r, c, grid, dtype, args.geometry, device, iters, warmup, gen))

    if not cuda:
        report["cuda_graph"] = {"captured": False, "reason": "no CUDA device"}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
