"""Benchmark batched greedy decoding from the static KV cache: eager vs CUDA graphs, per batch size. Prints JSON.

Builds a random-weight checkpoint of a size preset (default ``gar-1b``: GAR-1B's real dimensions) straight on the
device, loads it through ``gar_tools.model.load``, prefills ``--batch`` sequences of ``--prompt-tokens`` random
token embeddings and times ``--new-tokens`` decode steps. The baseline, in the same run, is transformers'
``generate`` at batch 1 (dynamic cache). Without CUDA it runs the ``tiny`` preset for a smoke test; CPU figures
say nothing about GPUs. ``--variants`` picks decode-step variants (:data:`VARIANTS`: CUDA graphs or not; SDPA,
matmul or the split-KV Triton attention); the report names the fastest graph variant at the smallest batch.
``--out FILE`` rewrites the report there after every row, so a run stopped by a time limit keeps what it measured.

    python benchmarks/decode_batching.py [--preset gar-1b|gar-8b|tiny] [--model FOLDER] [--batch 1 8 32]
        [--prompt-tokens 4700] [--new-tokens 128] [--dtype bf16] [--variants NAME ...] [--skip-generate]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gar_tools.model import load
from gar_tools.model.decoder import BatchDecoder
from gar_tools.model.tiny import build_tiny_checkpoint


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prompts(pipeline: Any, batch: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """``batch`` prompt embeddings [length, hidden] of random (non-special) tokens."""
    generator = torch.Generator().manual_seed(seed)
    embed = pipeline.model.mllm.get_input_embeddings()
    return [embed(torch.randint(0, 128000, (length,), generator=generator).to(pipeline.device)) for _ in range(batch)]


#: decode-step variants: name → (CUDA graphs, attention, fused element-wise kernels, one GEMV for q/k/v). With
#: fused kernels the q/k/v projections are packed into one GEMV on CUDA unless the name says ``separate_qkv``.
VARIANTS: dict[str, tuple[bool, str, bool, bool | None]] = {
    "eager": (False, "sdpa", False, None),
    "cuda_graphs": (True, "sdpa", False, None),
    "cuda_graphs+matmul": (True, "matmul", False, None),
    "cuda_graphs+triton": (True, "triton", False, None),
    "cuda_graphs+matmul+fused": (True, "matmul", True, None),
    "cuda_graphs+triton+fused": (True, "triton", True, None),
    "cuda_graphs+triton+fused+separate_qkv": (True, "triton", True, False),
}


def run_decoder(pipeline: Any, batch: int, prompts: list[torch.Tensor], new_tokens: int, variant: str) -> dict:
    device = pipeline.device
    graphs, attention, fused, packed = VARIANTS[variant]
    max_len = prompts[0].shape[0] + new_tokens + 2
    start = time.perf_counter()
    decoder = BatchDecoder(
        pipeline.model,
        slots=batch,
        max_len=max_len,
        cuda_graphs=graphs,
        attention=attention,  # type: ignore[arg-type]
        fused_ops=fused,
        packed_qkv=packed,
    )
    _sync(device)
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    for slot, embeds in enumerate(prompts[:batch]):
        first = int(decoder.prefill(slot, embeds).argmax())
        decoder.activate(slot, first, embeds.shape[0])
    _sync(device)
    prefill_ms = (time.perf_counter() - start) * 1000 / batch
    for _ in range(3):  # warm-up steps (positions move on; the cache has room for them)
        decoder.step(batch)
    _sync(device)
    start = time.perf_counter()
    pending = [decoder.step(batch) for _ in range(new_tokens - 4)]
    ids = [p.tolist() for p in pending]
    _sync(device)
    elapsed = time.perf_counter() - start
    steps = len(ids)
    return {
        "batch": batch,
        "mode": variant,
        "setup_s": round(setup_s, 3),
        "prefill_ms_per_sequence": round(prefill_ms, 2),
        "step_ms": round(elapsed * 1000 / steps, 3),
        "tokens_per_s": round(batch * steps / elapsed, 1),
        "kv_cache_bytes": decoder.cache.nbytes,
    }


def run_generate_baseline(pipeline: Any, prompt: torch.Tensor, new_tokens: int) -> dict:
    embeds = prompt[None]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    kwargs = {"inputs_embeds": embeds, "attention_mask": mask, "do_sample": False, "pad_token_id": 128001}
    pipeline.model.mllm.generate(**kwargs, max_new_tokens=4, min_new_tokens=4)
    _sync(pipeline.device)
    start = time.perf_counter()
    out = pipeline.model.mllm.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    _sync(pipeline.device)
    elapsed = time.perf_counter() - start
    return {"batch": 1, "mode": "transformers_generate", "tokens_per_s": round(out.shape[1] / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=None, help="gar-1b (CUDA default), gar-8b, tiny (CPU default)")
    parser.add_argument("--model", default=None, help="an existing checkpoint folder instead of building one")
    parser.add_argument("--batch", type=int, nargs="+", default=None)
    parser.add_argument("--prompt-tokens", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--dtype", default=None, help="bf16 (CUDA default) or fp32 (CPU default)")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=None,
        help="decode-step variants (default: eager, plus cuda_graphs on CUDA)",
    )
    parser.add_argument("--skip-generate", action="store_true", help="leave out the transformers generate baseline")
    parser.add_argument("--out", default=None, help="also write the report to this file (after every row)")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("gar-1b" if cuda else "tiny")
    batches = args.batch or ([1, 8, 32] if cuda else [1, 4])
    prompt_tokens = args.prompt_tokens or (4700 if cuda else 600)
    new_tokens = args.new_tokens or (128 if cuda else 12)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    with tempfile.TemporaryDirectory(prefix="gar-bench-") as tmp:
        start = time.perf_counter()
        if args.model:
            folder = Path(args.model)
        else:
            folder = build_tiny_checkpoint(Path(tmp) / preset, preset=preset, device=device)
        build_s = time.perf_counter() - start
        pipeline = load(folder, device=str(device), dtype=dtype)
    prompts = _prompts(pipeline, max(batches), prompt_tokens)
    variants = args.variants or (["eager", "cuda_graphs"] if cuda else ["eager"])
    report: dict[str, Any] = {
        "benchmark": "decode_batching",
        "preset": None if args.model else preset,
        "model": str(folder) if args.model else None,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "dtype": dtype,
        "torch": torch.__version__,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "build_and_load_s": round(build_s, 1),
        "results": [],
        "fastest_graph_variant_at_smallest_batch": None,
        "complete": False,
    }
    results: list[dict[str, Any]] = report["results"]

    def save() -> None:
        timed = [r for r in results if "step_ms" in r and r["mode"] != "eager"]
        smallest = min((r["batch"] for r in timed), default=None)
        best = max((r for r in timed if r["batch"] == smallest), key=lambda r: r["tokens_per_s"], default=None)
        report["fastest_graph_variant_at_smallest_batch"] = None if best is None else best["mode"]
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2))

    if not args.skip_generate:
        results.append(run_generate_baseline(pipeline, prompts[0], new_tokens))
        save()
    for batch in batches:
        for variant in variants:
            try:
                results.append(run_decoder(pipeline, batch, prompts, new_tokens, variant))
            except Exception as error:  # a variant that fails is reported, the others still run
                results.append({"batch": batch, "mode": variant, "error": f"{type(error).__name__}: {error}"[:500]})
            save()
    report["complete"] = True
    save()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
