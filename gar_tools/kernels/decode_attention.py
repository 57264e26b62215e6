"""Split-KV ("flash-decoding") attention of one decode step over the static KV cache, as two Triton kernels.

At decode time each row of the batch has one query token. SDPA's kernels parallelize over (batch, head, query
block), so at batch 1 they run one program per KV head and read the whole cache with a handful of SMs (on an
H200, GAR-1B size, 4.7 k cached tokens: 78 µs per layer, 1.25 ms of a 3.27 ms step —
``benchmarks/results/2026-11-27-profile_request-nvidia-h200-run2.json``). Here the cached columns are split
into chunks of ``split`` columns as well:

1. ``_split_kernel``, grid ``(B, KV, splits)``: the ``G`` query heads of one KV head against one chunk, with an
   online softmax; writes the chunk's unnormalized output ``[G, D]``, running max and sum (float32). A program
   whose chunk lies beyond its row's length reads nothing;
2. ``_combine_kernel``, grid ``(B, KV, G)``: rescales and adds the row's non-empty chunks for one query head, up
   to 64 chunks per load, and normalizes. (Its first version walked the chunks one after another per KV head: on
   an H200 at batch 1, 18 µs per layer against the split kernel's 6 —
   ``benchmarks/results/2026-11-27-profile_request-nvidia-h200-run4.json``.)

Precision: float32 inputs are multiplied in float32 (``tl.dot`` with ``input_precision="ieee"``). float16 and
bfloat16 inputs go to the tensor cores as they are — the products of ``q · k`` are exact in the float32
accumulator — and the softmax weights are rounded to the input dtype for ``p · v``, as SDPA's flash kernels and
the ``"matmul"`` decode attention do. Max, sum, rescaling and the combine are float32; the combine kernel rounds
the output to the query's dtype as it stores it. (The first version multiplied every dtype in float32 on the CUDA
cores: on an H100, GAR-1B size, 16 rows over 4.7 k tokens, its step took 8.5 ms against SDPA's 4.2 —
``benchmarks/results/2026-11-27-decode_batching-nvidia-h100-80gb-hbm3-run3.json``; this version, on an H200:
3.24 ms, and 2.59 ms at batch 1 against SDPA's 3.59 — ``…-decode_batching-nvidia-h200-run4.json``.)

The chunk size is :func:`split_size`: about four programs per SM for the rows and span of a launch. No host value
enters either launch except shapes and strides, so a decode step using it can be captured in a CUDA graph (the
number of splits is fixed by ``span`` and ``split``, which are fixed per captured graph).

Dispatch of :func:`decode_attention`: CUDA tensors run the Triton kernels; CPU tensors run them under Triton's
interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported, and the pure-torch reference
(:func:`decode_attention_reference`) otherwise. Without an importable ``triton`` every device uses the reference.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

from ._triton import interpreted, runs_on, tl, triton
from .decode_attention_reference import attend, check_decode_attention_inputs, decode_attention_reference

__all__ = [
    "SPLIT",
    "decode_attention",
    "decode_attention_backend",
    "decode_attention_reference",
    "default_split",
    "split_size",
]

SPLIT = 256
"""Cache columns per program where no GPU sizes them (the interpreter on CPU): see :func:`split_size`."""

_BLOCK_N = 64  # columns per inner step of the split kernel (compiled)
_MIN_G = 16  # tl.dot needs at least 16 rows: the G query heads are padded up to this
_MIN_SPLIT, _MAX_SPLIT = 64, 1024
_COMBINE_CHUNKS = 64  # chunks the combine kernel loads at once (one load at batch 1 over a 17-tile prompt)
_PROGRAMS_PER_SM = 4


def split_size(rows: int, span: int, sms: int) -> int:
    """Cache columns per split program: the power of two in 64 … 1024 nearest above ``rows · span / (4 · sms)``.

    ``rows`` is batch × KV heads, ``sms`` the GPU's streaming multiprocessors. Batch 1 over a 17-tile prompt on
    an H100 (8 KV heads, 4.7 k columns, 132 SMs) gets 128-column chunks, 296 programs; 16 rows get 1024-column
    chunks, 640 programs: enough to hide memory latency, few enough that the combine stays short.
    """
    if rows < 1 or span < 1 or sms < 1:
        raise ValueError(f"rows, span and sms must be positive, got {rows}, {span}, {sms}")
    per_program = -(-rows * span // (_PROGRAMS_PER_SM * sms))
    split = _MIN_SPLIT
    while split < per_program and split < _MAX_SPLIT:
        split *= 2
    return split


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
        HEAD_D: tl.constexpr,
        SPLIT_N: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
        IEEE: tl.constexpr,  # both products in float32 on the CUDA cores (else the inputs' dtype, tensor cores)
        ROUND_P: tl.constexpr,  # round the softmax weights to the inputs' dtype before p · v (16-bit inputs)
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        s = tl.program_id(2)
        splits = tl.num_programs(2)
        g = tl.arange(0, BLOCK_G)
        d = tl.arange(0, BLOCK_D)
        n = tl.arange(0, BLOCK_N)
        gmask = g < G
        dmask = d < HEAD_D  # all true, and dropped by the compiler, when HEAD_D is a power of two
        q = tl.load(
            q_ptr + b * stride_qb + h * stride_qh + g[:, None] * stride_qg + d[None, :],
            mask=gmask[:, None] & dmask[None, :],
            other=0.0,
        )  # [BLOCK_G, BLOCK_D]
        if IEEE:
            q = q.to(tl.float32)
        length = tl.load(lengths_ptr + b).to(tl.int32)
        start = s * SPLIT_N
        stop = tl.minimum(length - start, SPLIT_N)  # columns of this chunk the row sees (≤ 0: none)
        m_i = tl.full((BLOCK_G,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_G,), tl.float32)
        acc = tl.zeros((BLOCK_G, BLOCK_D), tl.float32)
        k_base = k_ptr + b.to(tl.int64) * stride_kb + h * stride_kh
        v_base = v_ptr + b.to(tl.int64) * stride_vb + h * stride_vh
        for offset in range(0, stop, BLOCK_N):
            cols = start + offset + n  # [BLOCK_N]
            cmask = cols < length
            kv_mask = cmask[:, None] & dmask[None, :]
            k = tl.load(k_base + cols[:, None] * stride_kn + d[None, :], mask=kv_mask, other=0.0)
            if IEEE:
                scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")  # [BLOCK_G, BLOCK_N]
            else:
                scores = tl.dot(q, tl.trans(k))  # exact products, float32 sums
            scores = tl.where(cmask[None, :], scores * scale, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            # Rows with nothing visible yet keep m = -inf: use 0 as the shift there so exp() stays finite.
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(scores - shift[:, None])  # [BLOCK_G, BLOCK_N], 0 where masked
            alpha = tl.exp(m_i - shift)
            v = tl.load(v_base + cols[:, None] * stride_vn + d[None, :], mask=kv_mask, other=0.0)
            if ROUND_P:
                p_v = p.to(v.dtype)
            else:
                p_v = p
            if IEEE:
                pv = tl.dot(p_v.to(tl.float32), v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p_v, v)
            acc = acc * alpha[:, None] + pv  # [BLOCK_G, BLOCK_D]
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
        lengths_ptr,  # [B] int
        out_ptr,  # [B, KV, G, D] contiguous, in the queries' dtype
        splits,
        HEAD_D: tl.constexpr,
        SPLIT_N: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_S: tl.constexpr,  # chunks combined per load
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = tl.program_id(2)  # one query head
        heads = tl.num_programs(1)
        s = tl.arange(0, BLOCK_S)
        d = tl.arange(0, BLOCK_D)
        first = (b * heads + h) * splits
        used = tl.minimum(tl.cdiv(tl.load(lengths_ptr + b).to(tl.int32), SPLIT_N), splits)  # non-empty chunks
        m = tl.full((BLOCK_S,), float("-inf"), tl.float32)
        for start in range(0, used, BLOCK_S):  # the largest running max, BLOCK_S chunks at a time
            rows = first + start + s
            m_s = tl.load(part_stats_ptr + rows * 2 * BLOCK_G + g, mask=start + s < used, other=float("-inf"))
            m = tl.maximum(m, m_s)
        m_all = tl.max(m, axis=0)
        total = tl.zeros((BLOCK_S,), tl.float32)
        acc = tl.zeros((BLOCK_S, BLOCK_D), tl.float32)
        for start in range(0, used, BLOCK_S):  # rescale and add, BLOCK_S chunks at a time
            rows = first + start + s
            smask = start + s < used
            m_s = tl.load(part_stats_ptr + rows * 2 * BLOCK_G + g, mask=smask, other=float("-inf"))
            w = tl.where(m_s == float("-inf"), 0.0, tl.exp(m_s - m_all))  # an empty chunk weighs nothing
            total += w * tl.load(part_stats_ptr + rows * 2 * BLOCK_G + BLOCK_G + g, mask=smask, other=0.0)
            part = tl.load(
                part_out_ptr + (rows * BLOCK_G + g)[:, None] * BLOCK_D + d[None, :], mask=smask[:, None], other=0.0
            )  # [BLOCK_S, BLOCK_D]
            acc += w[:, None] * part
        out = tl.sum(acc, axis=0) / tl.sum(total, axis=0)  # [BLOCK_D]
        tl.store(out_ptr + ((b * heads + h) * tl.num_programs(2) + g) * HEAD_D + d, out, mask=d < HEAD_D)

else:  # pragma: no cover - depends on the environment
    _split_kernel = None
    _combine_kernel = None


def decode_attention_backend(device: torch.device | str) -> Literal["triton", "torch"]:
    """``"triton"`` for CUDA (with triton), and for CPU when the kernels run under the interpreter; else
    ``"torch"`` (the reference)."""
    return "triton" if runs_on(_split_kernel, device) else "torch"


@functools.cache
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def default_split(rows: int, span: int, device: torch.device | str) -> int:
    """The chunk size :func:`decode_attention` uses when given none: :func:`split_size` with the SM count of a
    CUDA ``device``, :data:`SPLIT` elsewhere."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return SPLIT
    return split_size(rows, span, _sm_count(torch.cuda.current_device() if dev.index is None else dev.index))


def decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    lengths: torch.Tensor,
    *,
    scale: float,
    span: int,
    split: int | None = None,
) -> torch.Tensor:
    """Attention of one decode step: ``out`` [B, KV, G, D] in ``q.dtype``.

    Args:
        q: [B, KV, G, D] the new token's queries, the G query heads of each KV head as rows.
        keys, values: [S, KV, max_len, D] one layer's whole cache (rows 0 … B-1 are read), ``q``'s dtype.
        lengths: int [B] columns each row attends to (1 … ``span``), on ``q``'s device.
        scale: the softmax scale (``head_dim ** -0.5`` for Llama).
        span: columns that may be read (a bound on every length; with ``split`` it fixes the number of splits).
        split: cache columns per split program, a power of two ≥ 16 (default: :func:`split_size` on CUDA,
            :data:`SPLIT` elsewhere). Callers that run one batch both eagerly and from a CUDA graph pass the same
            value to both, so the two sum in the same order.
    """
    check_decode_attention_inputs(q, keys, values, lengths, span)
    bad_split = isinstance(split, bool) or not isinstance(split, int) or split < 16 or split & (split - 1)
    if split is not None and bad_split:
        raise ValueError(f"split: must be a power of two >= 16, got {split!r}")
    if decode_attention_backend(q.device) == "torch":
        return attend(q, keys, values, lengths, scale=scale, span=span)
    b, kv, g, d = q.shape
    q = q.contiguous() if q.stride(-1) != 1 else q
    on_interpreter = interpreted(_split_kernel)
    if split is None:
        split = default_split(b * kv, span, q.device)
    block_g = max(_MIN_G, triton.next_power_of_2(g))
    block_d = max(16, triton.next_power_of_2(d))
    splits = triton.cdiv(span, split)
    part_out = torch.empty((b, kv, splits, block_g, block_d), dtype=torch.float32, device=q.device)
    part_stats = torch.empty((b, kv, splits, 2, block_g), dtype=torch.float32, device=q.device)
    out = torch.empty((b, kv, g, d), dtype=q.dtype, device=q.device)  # the combine kernel rounds into it
    _split_kernel[(b, kv, splits)](
        q,
        keys,
        values,
        lengths,
        part_out,
        part_stats,
        g,
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
        HEAD_D=d,
        SPLIT_N=split,
        BLOCK_N=split if on_interpreter else min(split, _BLOCK_N),  # the interpreter runs programs one by one
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        # Triton's interpreter multiplies bfloat16 operands wrongly: there the same math runs on float32 copies
        # (the products of two bfloat16 values are exact in float32 either way).
        IEEE=q.dtype == torch.float32 or (on_interpreter and q.dtype == torch.bfloat16),
        ROUND_P=q.dtype != torch.float32,
        num_warps=1 if on_interpreter else 4,
    )
    _combine_kernel[(b, kv, g)](
        part_out,
        part_stats,
        lengths,
        out,
        splits,
        HEAD_D=d,
        SPLIT_N=split,
        BLOCK_G=block_g,
        BLOCK_D=block_d,
        BLOCK_S=min(_COMBINE_CHUNKS, max(2, triton.next_power_of_2(splits))),
        num_warps=1 if on_interpreter else 4,
    )
    return out
