"""The vision tower's rotary embedding of queries and keys, in one Triton kernel.

timm's ``AttentionRope`` rotates the patch tokens of q and k with about a dozen kernels per block (two
negations, two stacks, four products, two sums, two concatenations with the class token, and their copies): on an
H100 at GAR-1B size, 17 tiles spend ~20 of their ~65 ms of vision kernels there
(``benchmarks/results/2026-11-27-profile_request-nvidia-h100-80gb-hbm3-run3.json``: ``aten::cat``, ``aten::mul``,
``aten::neg``, ``aten::add``). Here one launch, grid ``(B·H, ⌈N / BLOCK_N⌉, 2)``: program ``(bh, block, which)``
reads a block of tokens of head ``bh`` of q (``which = 0``) or k from their strided views of the fused qkv
projection, rotates the patch tokens, copies the class token(s), and writes the contiguous ``[B, H, N, D]``
tensor the attention reads. Every product and the sum are rounded to the promoted dtype as PyTorch rounds them,
and float32 is compiled without fused multiply-adds, so the result is bit for bit the reference's
(:mod:`.vision_rope_reference`) on a GPU.

Dispatch of :func:`vision_rope`: CUDA tensors run the kernel; CPU tensors run it under Triton's interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported, and the pure-torch reference otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._triton import runs_on, tl, triton
from .vision_rope_reference import check_vision_rope_inputs, rotate, vision_rope_reference

__all__ = ["vision_rope", "vision_rope_backend", "vision_rope_reference"]

#: The kernel's ROUND / OUT_ROUND constexprs: the dtype the products and the sum / the output are rounded to.
_ROUND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_BLOCK_N = 32

if triton is not None:

    @triton.jit
    def _round(x, ROUND: tl.constexpr):
        """``x`` (float32) rounded to a dtype and kept in float32: 0 float32 (as is), 1 bfloat16, 2 float16.

        bfloat16 is rounded to nearest, ties to even, on the bits (NaN kept): what a compiled ``.to(tl.bfloat16)``
        does, and what Triton's interpreter does not (it truncates), so the CPU tests can check equality too."""
        out = x
        if ROUND == 1:
            bits = x.to(tl.uint32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            out = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
        if ROUND == 2:
            out = x.to(tl.float16).to(tl.float32)
        return out

    @triton.jit
    def _vision_rope_kernel(
        q_ptr,  # [B, H, N, D], any strides but the last
        k_ptr,  # [B, H, N, D], any strides but the last
        emb_ptr,  # [N - PREFIX, 2 * D]: sin, then cos
        q_out_ptr,  # [B, H, N, D] contiguous
        k_out_ptr,  # [B, H, N, D] contiguous
        H,
        N,
        PREFIX,
        HALF,  # D / 2: pairs of channels
        stride_qb,
        stride_qh,
        stride_qn,
        stride_kb,
        stride_kh,
        stride_kn,
        stride_e,
        ROUND: tl.constexpr,
        OUT_ROUND: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_HALF: tl.constexpr,
    ):
        bh = tl.program_id(0)
        which = tl.program_id(2)  # 0: q, 1: k
        b = (bh // H).to(tl.int64)
        h = bh % H
        rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] token indices
        pairs = tl.arange(0, BLOCK_HALF)  # [BLOCK_HALF] channel pairs
        inside = (rows < N)[:, None] & (pairs < HALF)[None, :]  # [BLOCK_N, BLOCK_HALF]
        rotated = inside & (rows >= PREFIX)[:, None]
        if which == 0:
            src = q_ptr + b * stride_qb + h * stride_qh + rows[:, None] * stride_qn + 2 * pairs[None, :]
            dst = q_out_ptr
        else:
            src = k_ptr + b * stride_kb + h * stride_kh + rows[:, None] * stride_kn + 2 * pairs[None, :]
            dst = k_out_ptr
        even = tl.load(src, mask=inside, other=0.0)  # x[2i]
        odd = tl.load(src + 1, mask=inside, other=0.0)  # x[2i + 1]
        rope = emb_ptr + (rows - PREFIX)[:, None].to(tl.int64) * stride_e + 2 * pairs[None, :]
        sin_even = tl.load(rope, mask=rotated, other=0.0).to(tl.float32)
        sin_odd = tl.load(rope + 1, mask=rotated, other=0.0).to(tl.float32)
        cos_even = tl.load(rope + 2 * HALF, mask=rotated, other=0.0).to(tl.float32)
        cos_odd = tl.load(rope + 2 * HALF + 1, mask=rotated, other=0.0).to(tl.float32)
        xe = even.to(tl.float32)
        xo = odd.to(tl.float32)
        # out[2i] = x[2i]·cos[2i] + (−x[2i+1])·sin[2i];  out[2i+1] = x[2i+1]·cos[2i+1] + x[2i]·sin[2i+1]
        out_even = _round(_round(xe * cos_even, ROUND) + _round(-xo * sin_even, ROUND), ROUND)
        out_odd = _round(_round(xo * cos_odd, ROUND) + _round(xe * sin_odd, ROUND), ROUND)
        dtype = dst.dtype.element_ty
        out_even = _round(out_even, OUT_ROUND).to(dtype)  # exact: a value of the output dtype already
        out_odd = _round(out_odd, OUT_ROUND).to(dtype)
        out_even = tl.where(rotated, out_even, even)  # the class token(s): copied
        out_odd = tl.where(rotated, out_odd, odd)
        out = dst + ((b * H + h) * N + rows[:, None]) * (2 * HALF) + 2 * pairs[None, :]
        tl.store(out, out_even, mask=inside)
        tl.store(out + 1, out_odd, mask=inside)

else:  # pragma: no cover - depends on the environment
    _vision_rope_kernel = None


def vision_rope_backend(device: torch.device | str) -> Literal["triton", "torch"]:
    """``"triton"`` where the kernel runs (CUDA; CPU under the interpreter), else ``"torch"`` (the reference)."""
    return "triton" if runs_on(_vision_rope_kernel, device) else "torch"


def vision_rope(q: torch.Tensor, k: torch.Tensor, emb: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated ``q`` and ``k`` [B, H, N, D] (new contiguous tensors; the first ``prefix`` tokens copied as they are).
    Shapes and exact math: :func:`vision_rope_reference`."""
    check_vision_rope_inputs(q, k, emb, prefix)
    if vision_rope_backend(q.device) == "torch":
        return rotate(q, emb, prefix), rotate(k, emb, prefix)
    batch, heads, n, d = q.shape
    q_out = torch.empty((batch, heads, n, d), dtype=q.dtype, device=q.device)
    k_out = torch.empty_like(q_out)
    if q_out.numel() == 0:
        return q_out, k_out
    _vision_rope_kernel[(batch * heads, triton.cdiv(n, _BLOCK_N), 2)](
        q,
        k,
        emb,
        q_out,
        k_out,
        heads,
        n,
        prefix,
        d // 2,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        emb.stride(0),
        ROUND=_ROUND[torch.promote_types(q.dtype, emb.dtype)],
        OUT_ROUND=_ROUND[q.dtype],
        BLOCK_N=_BLOCK_N,
        BLOCK_HALF=triton.next_power_of_2(d // 2),
        num_warps=4,
        enable_fp_fusion=False,  # x·cos + rot(x)·sin as two rounded products and a sum, as PyTorch computes it
    )
    return q_out, k_out
