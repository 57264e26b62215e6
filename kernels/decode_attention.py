"""Split-KV ("flash-decoding") attention of one decode step over the static KV cache, as two Triton kernels.

At decode time each row of the batch has one query token. SDPA's kernels parallelize over (batch, head, query
block), so at batch 1 they run one program per KV head and read the whole cache with a handful of SMs (on an
H200, GAR-1B size, 4.7 k cached tokens: 78 µs per layer, 1.25 ms of a 3.27 ms step —
``benchmarks/results/2026-11-27-profile_request-nvidia-h200-run2.json``). Here the cached columns are split
into chunks of ``SPLIT`` columns as well:

1. ``_split_kernel``, grid ``(B, KV, splits)``: the ``G`` query heads of one KV head against one chunk, with an
   online softmax; writes the chunk's unnormalized output ``[G, D]``, running max and sum (float32);
2. ``_combine_kernel``, grid ``(B, KV)``: rescales and adds the chunks of a row and head and normalizes.

All math is float32 (``tl.dot`` with ``input_precision="ieee"``); the combine kernel rounds the output to the
query's dtype as it stores it.
No host value enters either launch except shapes and strides, so a decode step using it can be captured in a
CUDA graph (the number of splits is fixed by ``span``, which is fixed per captured graph).

Dispatch of :func:`decode_attention`: CUDA tensors run the Triton kernels; CPU tensors run them under Triton's
interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported, and the pure-torch reference
(:func:`decode_attention_reference`) otherwise. Without an importable ``triton`` every device uses the reference.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._triton import interpreted, runs_on, tl, triton
from .decode_attention_reference import attend, check_decode_attention_inputs, decode_attention_reference

__all__ = [
    "SPLIT",
    "decode_attention",
    "decode_attention_backend",
    "decode_attention_reference",
]

SPLIT = 256
"""Cache columns per program of the split kernel (a multiple of its column block)."""

_BLOCK_N = 64  # columns per inner step of the split kernel
_MIN_G = 16  # tl.dot needs at least 16 rows: the G query heads are padded up to this


if triton is not None:

    @triton.jit
    def _split_kernel(
        q_ptr,  # [B, KV, G, D]
        k_ptr,  # [S, KV, max_len, D]
        v_ptr,
        lengths_ptr,  # [B] int
        part_out_ptr,  # [B, KV, splits, BLOCK_G, BLOCK_D] float32
        part_stats_ptr,  # [B, KV, splits, 2, BLOCK_G] float32: running max, running sum
        G,
        D,
        scale,
        stride_qb,
        stride_qh,
        stride_qg,
        stride_kb,
        stride_kh,
        stride_kn,
        stride_vb,
        stride_vh,
        stride_vn,
        SPLIT_N: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        splits = tl.num_programs(2)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        gmask = g < G
        dmask = d < D
        q = tl.load(
            q_ptr + b * stride_qb + h * stride_qh + g[:, None] * stride_qg + d[None, :],
            mask=gmask[:, None] & dmask[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_G, BLOCK_D]
        length = tl.load(lengths_ptr + b).to(tl.int32)
        start = s * SPLIT_N
        m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        k_base = k_ptr + b.to(tl.int64) * stride_kb + h * stride_kh
        v_base = v_ptr + b.to(tl.int64) * stride_vb + h * stride_vh
        for offset in range(0, SPLIT_N, BLOCK_N):
            cols = start + offset + n  # [BLOCK_N]
            cmask = cols < length
            kv_mask = cmask[:, None] & dmask[None, :]
            k = tl.load(k_base + cols[:, None] * stride_kn + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
            scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # [BLOCK_G, BLOCK_N]
            scores = tl.where(cmask[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            # Rows with nothing visible yet keep m = -inf: use 0 as the shift there so exp() stays finite.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(scores - shift[:, None])  # [BLOCK_G, BLOCK_N], 0 where masked
            alpha = tl.exp(m_i - shift)
            v = tl.load(v_base + cols[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")  # [BLOCK_G, BLOCK_D]
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        row = (b * tl.num_programs(1) + h) * splits + s
        tl.store(part_out_ptr + row * BLOCK_G * BLOCK_D + g[:, None] * BLOCK_D + d[None, :], acc)
        tl.store(part_stats_ptr + row * 2 * BLOCK_G + g, m_i)
        tl.store(part_stats_ptr + row * 2 * BLOCK_G + BLOCK_G + g, l_i)

    @triton.jit
    def _combine_kernel(
        part_out_ptr,  # [B, KV, splits, BLOCK_G, BLOCK_D] float32
        part_stats_ptr,  # [B, KV, splits, 2, BLOCK_G] float32
        out_ptr,  # [B, KV, G, D] contiguous, in the queries' dtype
        G,
        D,
        splits,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        heads = tl.num_programs(1)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        first = (b * heads + h) * splits
        m = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        for s in range(0, splits):
            m = tl.maximum(m, tl.load(part_stats_ptr + (first + s) * 2 * BLOCK_G + g))
        total = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        for s in range(0, splits):
            row = first + s
            m_s = tl.load(part_stats_ptr + row * 2 * BLOCK_G + g)
            w = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - m))  # an empty chunk weighs nothing
            total += w * tl.load(part_stats_ptr + row * 2 * BLOCK_G + BLOCK_G + g)
            acc += w[:, None] * tl.load(part_out_ptr + row * BLOCK_G * BLOCK_D + g[:, None] * BLOCK_D + d[None, :])
        out = acc / total[:, None]
        mask = (g < G)[:, None] & (d < D)[None, :]
        tl.store(out_ptr + ((b * heads + h) * G + g[:, None]) * D + d[None, :], out, mask=mask)

else:  # pragma: no cover - depends on the environment
    _split_kernel = None
    _combine_kernel = None


def decode_attention_backend(device: torch.device | str) -> Literal["triton", "torch"]:
    """``"triton"`` for CUDA (with triton), and for CPU when the kernels run under the interpreter; else
    ``"torch"`` (the reference)."""
    return "triton" if runs_on(_split_kernel, device) else "torch"


def decode_attention(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *, scale: float, span: int
) -> torch.Tensor:
    """Attention of one decode step: ``out`` [B, KV, G, D] in ``q.dtype``.

    Args:
        q: [B, KV, G, D] the new token's queries, the G query heads of each KV head as rows.
        keys, values: [S, KV, max_len, D] one layer's whole cache (rows 0 … B-1 are read), ``q``'s dtype.
        lengths: int [B] columns each row attends to (1 … ``span``), on ``q``'s device.
        scale: the softmax scale (``head_dim ** -0.5`` for Llama).
        span: columns that may be read (a bound on every length; fixes the number of splits).
    """
    check_decode_attention_inputs(q, keys, values, lengths, span)
    if decode_attention_backend(q.device) == "torch":
        return attend(q, keys, values, lengths, scale=scale, span=span)
    b, kv, g, d = q.shape
    q = q.contiguous() if q.stride(-1) != 1 else q
    block_g = max(_MIN_G, triton.next_power_of_2(g))
    block_d = max(16, triton.next_power_of_2(d))
    splits = triton.cdiv(span, SPLIT)
    part_out = torch.empty((b, kv, splits, block_g, block_d), dtype=torch.float32, device=q.device)
    part_stats = torch.empty((b, kv, splits, 2, block_g), dtype=torch.float32, device=q.device)
    out = torch.empty((b, kv, g, d), dtype=q.dtype, device=q.device)  # the combine kernel rounds into it
    on_interpreter = interpreted(_split_kernel)
    _split_kernel[(b, kv, splits)](
        q,
        keys,
        values,
        lengths,
        part_out,
        part_stats,
        g,
        d,
        float(scale),
        q.stride(0),
        q.stride(1),
        q.stride(2),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        SPLIT_N=SPLIT,
        BLOCK_N=SPLIT if on_interpreter else _BLOCK_N,  # the interpreter runs programs one by one: few, large steps
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        num_warps=1 if on_interpreter else 4,
    )
    _combine_kernel[(b, kv)](
        part_out, part_stats, out, g, d, splits, BLOCK_G=block_g, BLOCK_D=block_d, num_warps=1 if on_interpreter else 4
    )
    return out
