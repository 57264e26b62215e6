"""Where one request's time goes, phase by phase, and which kernels a decode step runs. Prints JSON.

    python benchmarks/profile_request.py [--preset gar-1b|tiny] [--side 1792] [--iters 3] [--top 15]

A first question (cold tile cache, a new image each time) on a ``--side`` × ``--side`` image (1792: 4×4 tiles +
thumbnail = 17) is timed phase by phase as the local engine runs it, each phase synchronized: reading the PNG,
the image digest, resizing into uint8 tiles, ``prepare`` (masks, prompt map, token ids), the vision tower through
the tile cache (on CUDA also with each chunk of tiles replayed from a CUDA graph, checked equal: captured with the
q/k rotation as one kernel, and with timm's own), the input
embeddings (scatter + RoI replay), and the whole-prompt prefill. Then one decode step
at batch 1 runs eagerly under ``torch.profiler`` (kernels per step and the most expensive ones) and, on CUDA,
from its CUDA graph (time per replay). The model is built like ``benchmarks/serving.py``'s: ``gar-1b`` (random
weights, GAR-1B's dimensions) in bf16 on CUDA, ``tiny`` in fp32 on CPU (a smoke run: CPU figures say nothing
about GPUs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gar_tools.images import ImagePolicy, load_image
from gar_tools.model import load
from gar_tools.model.decoder import BatchDecoder
from gar_tools.model.rgb import image_digest, to_rgb
from gar_tools.model.tile_cache import TileFeatureCache
from gar_tools.model.tiny import build_tiny_checkpoint


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, (time.perf_counter() - start) * 1000


def _image(folder: Path, side: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (side // 32 + 1, side // 32 + 1, 3), dtype=np.uint8)
    path = folder / f"{seed}.png"
    Image.fromarray(small).resize((side, side), Image.BILINEAR).save(path)
    return path


def _kernel_table(prof: Any, top: int, key: str | None = None) -> list[dict[str, Any]]:
    """The ``top`` entries of ``prof`` by self device time (CUDA) or self CPU time."""
    key = key or ("self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total")
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"name": e.key[:90], "count": e.count, "self_us": round(getattr(e, key), 1)} for e in events[:top]]


def phases(pipeline: Any, folder: Path, side: int, iters: int) -> dict[str, Any]:
    """Median ms of each phase of a first question on a new image (one warm-up first)."""
    rows: dict[str, list[float]] = {}
    cuda = torch.cuda.is_available()
    graphs = {"device": pipeline.device, "cuda_graphs": True, "max_bytes": 0}
    graphed = TileFeatureCache(**graphs) if cuda else None  # type: ignore[arg-type]
    # the same graphs captured with timm's own q/k rotation (the default captures it as one kernel)
    unfused = TileFeatureCache(**graphs, fused_rope=False) if cuda else None  # type: ignore[arg-type]
    equal: list[bool] = []
    for i in range(iters + 1):
        path = _image(folder, side, 100 + i)
        image, load_ms = _timed(lambda path=path: load_image(str(path), ImagePolicy()))
        digest, digest_ms = _timed(lambda image=image: image_digest(image))
        tiles, tiles_ms = _timed(lambda image=image: pipeline.processor.image_tiles(to_rgb(image, copy=False)))
        mask = np.zeros((side, side), dtype=bool)
        mask[side // 8 : side // 4, side // 8 : side // 4] = True
        prepared, prepare_ms = _timed(lambda: pipeline.prepare(image, [mask], None, image_tiles=tiles))  # noqa: B023
        cache = TileFeatureCache(device=pipeline.device)
        features, vision_ms = _timed(lambda: cache.image_features(pipeline.model, prepared, digest))  # noqa: B023
        if graphed is not None:  # the same, each chunk of tiles replayed from a CUDA graph (captured in the warm-up)
            replayed, graph_ms = _timed(lambda: graphed.image_features(pipeline.model, prepared, digest))  # noqa: B023
            equal.append(torch.equal(replayed, features))
            replayed, unfused_ms = _timed(lambda: unfused.image_features(pipeline.model, prepared, digest))  # noqa: B023
            equal.append(torch.equal(replayed, features))
        embeds, embed_ms = _timed(lambda: pipeline.embed(prepared, features))  # noqa: B023
        decoder = BatchDecoder(pipeline.model, slots=1, max_len=embeds.shape[1] + 8, cuda_graphs=False)
        _, prefill_ms = _timed(lambda: decoder.prefill(0, embeds[0]))  # noqa: B023
        if i == 0:
            continue  # warm-up
        for name, ms in (
            ("read_png", load_ms),
            ("digest", digest_ms),
            ("resize_to_uint8_tiles", tiles_ms),
            ("prepare", prepare_ms),
            ("vision_tower_via_tile_cache", vision_ms),
            *((("vision_tower_cuda_graphs", graph_ms),) if graphed is not None else ()),
            *((("vision_tower_cuda_graphs_unfused_rope", unfused_ms),) if unfused is not None else ()),
            ("embeddings_and_roi_replay", embed_ms),
            ("prefill_whole_prompt", prefill_ms),
        ):
            rows.setdefault(name, []).append(ms)
    medians = {name: round(statistics.median(values), 2) for name, values in rows.items()}
    return {
        "tiles": int(prepared.image_tiles.shape[0]),
        "prompt_tokens": int(embeds.shape[1]),
        "median_ms": medians,
        "sum_ms": round(sum(v for k, v in medians.items() if not k.startswith("vision_tower_cuda_graphs")), 2),
        "vision_cuda_graph_features_equal_eager": all(equal) if graphed is not None else None,
        "vision_cuda_graphs_captured": bool(graphed is not None and graphed.cuda_graphs),
        # whether the graphs kept the one-kernel q/k rotation (each checked bit for bit against the eager tower)
        "vision_cuda_graphs_fused_rope": graphed.fused_rope_kept if graphed is not None else None,
        "vision_tower_profile": _vision_profile(pipeline, prepared, digest),
    }


def _vision_profile(pipeline: Any, prepared: Any, digest: str, top: int = 12) -> dict[str, Any]:
    """One cold ``TileFeatureCache.image_features`` call under ``torch.profiler``: wall time, kernel time, and the
    most expensive operators by device and by host time (a host-bound phase shows host time ≫ kernel time)."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    cache = TileFeatureCache(device=pipeline.device)
    _sync()
    with torch.profiler.profile(activities=activities) as prof:
        _, wall_ms = _timed(lambda: cache.image_features(pipeline.model, prepared, digest))
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {
        "wall_ms_profiled": round(wall_ms, 2),
        "kernels": len(kernels),
        "kernel_time_ms": round(sum(e.device_time for e in kernels) / 1000, 2),
        "top_by_device_time": _kernel_table(prof, top) if kernels else None,
        "top_by_host_time": _kernel_table(prof, top, "self_cpu_time_total"),
    }


def decode_step(pipeline: Any, top: int) -> dict[str, Any]:
    """Kernels of one eager decode step at batch 1 over a ~4.7k-token cache: unfused, with the fused element-wise
    kernels, and fused with the Triton attention; on CUDA, the graph replay's time per attention variant, unfused
    and fused."""
    hidden = pipeline.model.mllm.config.text_config.hidden_size
    length = 4700 if torch.cuda.is_available() else 600
    embeds = torch.randn(length, hidden, generator=torch.Generator().manual_seed(0)).to(pipeline.device)
    out: dict[str, Any] = {"cache_tokens": length}
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    for name, attention, fused in (
        ("eager", "sdpa", False),
        ("eager_fused", "sdpa", True),
        ("eager_fused_triton", "triton", True),
    ):
        try:
            decoder = BatchDecoder(
                pipeline.model, slots=1, max_len=length + 64, cuda_graphs=False, attention=attention, fused_ops=fused
            )
            decoder.activate(0, int(decoder.prefill(0, embeds.to(pipeline.dtype)).argmax()), length)
            for _ in range(3):
                decoder.step(1).tolist()
            with torch.profiler.profile(activities=activities) as prof:
                decoder.step(1).tolist()
        except Exception as error:  # a variant that fails is reported; the others still run
            out[f"{name}_error"] = f"{type(error).__name__}: {error}"[:500]
            continue
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        out[f"{name}_kernels_per_step"] = len(kernels) if torch.cuda.is_available() else None
        out[f"{name}_kernel_time_us"] = round(sum(e.device_time for e in kernels), 1) if kernels else None
        out[f"{name}_top"] = _kernel_table(prof, top)
    if torch.cuda.is_available():
        variants = [("sdpa", False), ("matmul", False), ("triton", False), ("matmul", True), ("triton", True)]
        for attention, fused in variants:
            name = f"graph_step_ms_{attention}{'_fused' if fused else ''}"
            try:
                graphs = BatchDecoder(
                    pipeline.model, slots=1, max_len=length + 64, attention=attention, fused_ops=fused
                )
                graphs.activate(0, 0, length)
                for _ in range(3):
                    graphs.step(1).tolist()
                _, ms = _timed(lambda graphs=graphs: [graphs.step(1) for _ in range(50)][-1].tolist())
            except Exception as error:
                out[f"{name}_error"] = f"{type(error).__name__}: {error}"[:500]
                continue
            out[name] = round(ms / 50, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="gar-1b (CUDA default) or tiny (CPU default)")
    parser.add_argument("--side", type=int, default=1792, help="image side (default 1792: 17 tiles)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="kernels listed")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    preset = args.preset or ("gar-1b" if cuda else "tiny")
    device = "cuda" if cuda else "cpu"
    with tempfile.TemporaryDirectory(prefix="gar-profile-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        if preset == "tiny":
            pipeline = load("tiny", device=device, dtype="bf16" if cuda else "fp32")
        else:
            checkpoint = build_tiny_checkpoint(folder / preset, preset=preset, device=torch.device(device))
            pipeline = load(checkpoint, device=device, dtype="bf16")
        load_s = time.perf_counter() - start
        report = {
            "benchmark": "profile_request",
            "preset": preset,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "dtype": str(pipeline.dtype).removeprefix("torch."),
            "torch": torch.__version__,
            "build_and_load_s": round(load_s, 1),
            "first_question": phases(pipeline, folder, args.side, args.iters),
            "decode_step": decode_step(pipeline, args.top),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
