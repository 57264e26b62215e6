"""Prefill + batched greedy decode from the static KV cache (tiny model, fp32, CPU) equals batch-1 generation."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gar_tools.model.decoder import BatchDecoder, default_buckets, default_span_buckets, pack_qkv
from gar_tools.model.kv_cache import StaticKVCache
from gar_tools.model.tiny import tiny_checkpoint_path


def test_static_cache_shapes_and_bytes() -> None:
    cache = StaticKVCache.allocate(
        layers=3, slots=4, kv_heads=2, max_len=10, head_dim=8, dtype=torch.float32, device="cpu"
    )
    assert cache.keys[0].shape == (4, 2, 10, 8) and len(cache.values) == 3
    assert cache.usable_len == 9 and cache.scratch_position == 9
    assert cache.bytes_per_token == 2 * 3 * 2 * 8 * 4
    assert cache.nbytes == cache.bytes_per_token * 4 * 10
    assert default_buckets(6) == [1, 2, 4, 6] and default_buckets(1) == [1]
    assert default_span_buckets(8193) == [1024, 2048, 4096, 8193] and default_span_buckets(600) == [600]


@pytest.mark.parametrize(
    "attention,fused_ops,packed_qkv",
    [("sdpa", False, None), ("matmul", False, None), ("sdpa", True, None), ("matmul", True, True)],
)
def test_staggered_batch_equals_generate_alone(tiny_pipeline, mixed_requests, attention, fused_ops, packed_qkv) -> None:
    """Six sequences join one at a time while the others decode (one chunked prefill), each at its own length.
    (``fused_ops``: the fused element-wise kernels, interpreted on CPU in the test run; ``packed_qkv``: one GEMV for
    the q, k and v projections, the CUDA default.)"""
    chosen = [mixed_requests[i] for i in (0, 3, 5, 8, 11, 14)]
    longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in chosen)
    decoder = BatchDecoder(
        tiny_pipeline.model,
        slots=6,
        max_len=longest + 1,
        attention=attention,
        fused_ops=fused_ops,
        packed_qkv=packed_qkv,
    )
    outputs: list[list[int]] = [[] for _ in chosen]
    running: set[int] = set()
    for slot, request in enumerate(chosen):
        embeds = request.build_embeds()[0]
        if slot == 0:  # a prompt of ~4.5 k tokens in three chunks
            for start in range(0, embeds.shape[0], 2000):
                logits = decoder.prefill(slot, embeds[start : start + 2000], start=start)
        else:
            logits = decoder.prefill(slot, embeds)
        outputs[slot].append(int(logits.argmax()))
        if request.max_new_tokens > 1:
            decoder.activate(slot, outputs[slot][0], embeds.shape[0])
            running.add(slot)
        # One decode step for everything running before the next one joins.
        ids = decoder.step(max(running) + 1).tolist() if running else []
        for s in sorted(running):
            outputs[s].append(ids[s])
            if len(outputs[s]) == chosen[s].max_new_tokens:
                decoder.release(s)
                running.discard(s)
    while running:
        ids = decoder.step(max(running) + 1).tolist()
        for s in sorted(running):
            outputs[s].append(ids[s])
            if len(outputs[s]) == chosen[s].max_new_tokens:
                decoder.release(s)
                running.discard(s)
    for request, out in zip(chosen, outputs, strict=True):
        assert out == request.expected


def test_triton_attention_decodes_like_generate(tiny_pipeline, mixed_requests) -> None:
    """The split-KV kernel in the decode step (interpreted on CPU; see tests/test_decode_attention.py): two rows of
    different lengths decode the ids of generate alone."""
    from gar_tools.kernels.decode_attention import decode_attention_backend

    if decode_attention_backend("cpu") != "triton":
        pytest.skip("Triton interpreter not active: attention='triton' would run the reference")
    long_enough = [r for r in mixed_requests if r.max_new_tokens >= 4]
    chosen = sorted(long_enough, key=lambda r: r.prepared.input_ids.shape[1])[:2]
    longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in chosen)
    decoder = BatchDecoder(tiny_pipeline.model, slots=2, max_len=longest + 1, attention="triton")
    outputs = []
    for slot, request in enumerate(chosen):
        embeds = request.build_embeds()[0]
        outputs.append([int(decoder.prefill(slot, embeds).argmax())])
        decoder.activate(slot, outputs[slot][0], embeds.shape[0])
    steps = 3
    for _ in range(steps):
        for slot, token in enumerate(decoder.step(2).tolist()):
            outputs[slot].append(token)
    for request, out in zip(chosen, outputs, strict=True):
        assert out == request.expected[: steps + 1]


@pytest.mark.parametrize("attention", ["sdpa", "matmul", "triton"])
def test_fused_step_with_references_is_the_unfused_step_bit_for_bit(
    tiny_pipeline, mixed_requests, attention, monkeypatch
) -> None:
    """The fused layer (residual add inside the next norm, rotary + KV write, SiLU · up) on the kernels' pure-torch
    references computes exactly what the unfused layer computes: same next ids, same K/V
    written, bit for bit — so only the kernels' own roundings can differ (tests/test_decode_ops.py)."""
    used: set[str] = set()
    for module in ("rms_norm", "rotary_kv", "silu_mul", "decode_attention"):
        kernel = importlib.import_module(f"gar_tools.kernels.{module}")
        monkeypatch.setattr(kernel, f"{module}_backend", lambda _, name=module: used.add(name) or "torch")
    chosen = [mixed_requests[i] for i in (1, 4, 6)]
    longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in chosen)
    caches, ids = [], []
    for fused in (False, True):
        decoder = BatchDecoder(tiny_pipeline.model, slots=4, max_len=longest + 1, attention=attention, fused_ops=fused)
        for slot, request in enumerate(chosen):
            embeds = request.build_embeds()[0]
            decoder.activate(slot, int(decoder.prefill(slot, embeds).argmax()), embeds.shape[0])
        ids.append([decoder.step(3).tolist() for _ in range(4)])
        caches.append(decoder.cache)
    assert {"rms_norm", "rotary_kv", "silu_mul"} <= used  # the fused step ran the fused ops
    assert ids[0] == ids[1]
    for unfused, fused in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values, strict=True):
        assert torch.equal(unfused, fused)


def test_cpu_decode_head_is_the_models_lm_head(tiny_pipeline) -> None:
    """The decode step's logits: one row exactly ``lm_head``'s (what ``generate`` computes); a batch's rows the
    same products as ``lm_head`` on that batch (the CPU multiplies them as weight @ hᵀ), equal within float32
    rounding, with the same greedy token."""
    decoder = BatchDecoder(tiny_pipeline.model, slots=1, max_len=8)
    head = tiny_pipeline.model.mllm.lm_head
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for rows in (1, 2, 3, 8, 16):
            h = torch.randn(rows, head.in_features, generator=generator)
            got, want = decoder._lm_head(h), head(h)  # [rows, vocab] each
            if rows == 1:
                assert torch.equal(got, want)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            assert torch.equal(got.max(dim=-1).indices, want.max(dim=-1).indices)


def test_decoder_options_are_checked(tiny_pipeline) -> None:
    from typing import get_args

    from gar_tools.model.decoder import DecodeAttention
    from gar_tools.model.options import DECODE_ATTENTIONS

    assert get_args(DecodeAttention) == DECODE_ATTENTIONS  # the type and the names the CLI and servers list
    with pytest.raises(ValueError, match="attention must be one of sdpa, matmul, triton"):
        BatchDecoder(tiny_pipeline.model, slots=1, max_len=8, attention="flash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="packed_qkv needs fused_ops=True"):
        BatchDecoder(tiny_pipeline.model, slots=1, max_len=8, packed_qkv=True)
    assert not BatchDecoder(tiny_pipeline.model, slots=1, max_len=8, fused_ops=True).packed_qkv  # CPU default


def test_packed_qkv_keeps_the_weights_and_shares_their_memory() -> None:
    """pack_qkv: the projections' weights become views of one matrix with the same values; its product is the
    three projections; packing again reuses it, and after the model moved it packs anew."""
    from gar_tools.model import load

    model = load("tiny", device="cpu", dtype="fp32").model  # a model of its own: packing changes it
    layer = model.mllm.model.language_model.layers[1]
    attn = layer.self_attn
    linears = (attn.q_proj, attn.k_proj, attn.v_proj)
    before = [lin.weight.detach().clone() for lin in linears]
    h = torch.randn(3, before[0].shape[1])
    separate = [lin(h) for lin in linears]
    packed = pack_qkv(layer)
    assert packed is not None and packed.shape == (sum(w.shape[0] for w in before), before[0].shape[1])
    row = 0
    for lin, weight in zip(linears, before, strict=True):
        assert torch.equal(lin.weight, weight) and isinstance(lin.weight, torch.nn.Parameter)
        assert lin.weight.data_ptr() == packed[row].data_ptr()  # a view: no second copy
        row += weight.shape[0]
    together = torch.nn.functional.linear(h, packed).split([w.shape[0] for w in before], -1)
    for got, want in zip(together, separate, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert pack_qkv(layer) is packed
    layer.to(torch.float64)  # new weight tensors: no longer views of the packed matrix
    repacked = pack_qkv(layer)
    assert repacked is not packed and repacked.dtype == torch.float64
    assert attn.v_proj.weight.data_ptr() == repacked[-before[2].shape[0]].data_ptr()


def test_prefill_rejects_what_does_not_fit(tiny_pipeline) -> None:
    decoder = BatchDecoder(tiny_pipeline.model, slots=1, max_len=8)
    with pytest.raises(ValueError, match="do not fit"):
        decoder.prefill(0, torch.zeros(8, tiny_pipeline.model.mllm.config.text_config.hidden_size))
    with pytest.raises(ValueError, match="slot 1"):
        decoder.prefill(1, torch.zeros(2, tiny_pipeline.model.mllm.config.text_config.hidden_size))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "attention,fused_ops", [("sdpa", False), ("matmul", False), ("triton", False), ("triton", True), ("matmul", True)]
)
def test_cuda_graph_decode_equals_eager(tiny_pipeline, mixed_requests, attention, fused_ops) -> None:
    """On CUDA: the captured decode step gives the ids of the same step run eagerly (fp32, tiny model), and the
    first step's ids are those of generate alone."""
    model = tiny_pipeline.model.to("cuda")
    try:
        chosen = [mixed_requests[i] for i in (1, 2, 3)]
        longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in chosen) + 8
        results = []
        for graphs in (False, True):
            decoder = BatchDecoder(
                model, slots=4, max_len=longest, cuda_graphs=graphs, attention=attention, fused_ops=fused_ops
            )
            steps = []
            for slot, request in enumerate(chosen):
                embeds = request.build_embeds()[0]
                logits = decoder.prefill(slot, embeds)
                decoder.activate(slot, int(logits.argmax()), embeds.shape[0])
            pending = [decoder.step(3) for _ in range(6)]  # in flight together, read afterwards
            steps = [p.tolist() for p in pending]
            results.append(steps)
        assert results[0] == results[1]
        assert [results[1][0][s] for s in range(3)] == [r.expected[1] for r in chosen]
    finally:
        tiny_pipeline.model.to("cpu")


def test_benchmark_script_runs() -> None:
    """CPU smoke run of benchmarks/decode_batching.py on the cached tiny checkpoint."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_batching.py"
    args = ["--model", str(tiny_checkpoint_path()), "--batch", "1", "2", "--prompt-tokens", "64", "--new-tokens", "8"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    modes = [(r["mode"], r["batch"]) for r in report["results"]]
    assert modes == [("transformers_generate", 1), ("eager", 1), ("eager", 2)]
    assert all(r["tokens_per_s"] > 0 for r in report["results"])
