"""Rotary embedding of a decode step's queries and keys + the KV-cache write, in one Triton kernel.

Eagerly, ``apply_rotary_pos_emb`` is about ten kernels per layer (slices, a negation, a concatenation, four
products, two sums) and the cache write two more (index_put for K and V). Here one launch, grid ``(B, H + KV)``:
program ``(b, h)`` rotates query head ``h`` (``h < H``) into the output, or key head ``h - H`` into column
``positions[b]`` of slot ``b`` of the key cache and copies the matching value head into the value cache. Float32
math with the model dtype's roundings where PyTorch has them (:mod:`.rotary_kv_reference`). No host value enters
the launch but shapes and strides, so a decode step using it can be captured in a CUDA graph.

Dispatch of :func:`rotary_kv`: CUDA tensors run the kernel; CPU tensors run it under Triton's interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported, and the pure-torch reference otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._triton import runs_on, tl, triton
from .rotary_kv_reference import check_rotary_kv_inputs, rotary_kv_reference, rotate_and_write

__all__ = ["rotary_kv", "rotary_kv_backend", "rotary_kv_reference"]


if triton is not None:

    @triton.jit
    def _rotate_head(x1, x2, c1, c2, s1, s2, DTYPE: tl.constexpr):
        """Both halves of one rotated head: each product and the sum rounded to ``DTYPE``, as PyTorch."""
        a1 = (x1 * c1).to(DTYPE).to(tl.float32)
        b1 = (-x2 * s1).to(DTYPE).to(tl.float32)
        a2 = (x2 * c2).to(DTYPE).to(tl.float32)
        b2 = (x1 * s2).to(DTYPE).to(tl.float32)
        return (a1 + b1).to(DTYPE), (a2 + b2).to(DTYPE)

    @triton.jit
    def _rotary_kv_kernel(
        q_ptr,  # [B, H, D], heads packed
        k_ptr,  # [B, KV, D], heads packed
        v_ptr,  # [B, KV, D], heads packed
        cos_ptr,  # [B, D]
        sin_ptr,  # [B, D]
        keys_ptr,  # [S, KV, max_len, D]
        values_ptr,  # [S, KV, max_len, D]
        positions_ptr,  # [B] int
        q_out_ptr,  # [B, H, D] contiguous
        H,
        HALF,
        stride_qb,
        stride_kb,
        stride_vb,
        stride_cb,
        stride_sb,
        stride_keys_s,
        stride_keys_h,
        stride_keys_n,
        stride_values_s,
        stride_values_h,
        stride_values_n,
        BLOCK_HALF: tl.constexpr,
    ):
        b = tl.program_id(0)
        head = tl.program_id(1)  # query heads 0 … H-1, then key heads
        dtype = q_out_ptr.dtype.element_ty
        i = tl.arange(0, BLOCK_HALF)
        m = i < HALF
        c1 = tl.load(cos_ptr + b * stride_cb + i, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(cos_ptr + b * stride_cb + HALF + i, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(sin_ptr + b * stride_sb + i, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(sin_ptr + b * stride_sb + HALF + i, mask=m, other=0.0).to(tl.float32)
        if head < H:
            src = q_ptr + b * stride_qb + head * 2 * HALF
            x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
            x2 = tl.load(src + HALF + i, mask=m, other=0.0).to(tl.float32)
            o1, o2 = _rotate_head(x1, x2, c1, c2, s1, s2, dtype)
            dst = q_out_ptr + (b * H + head) * 2 * HALF
            tl.store(dst + i, o1, mask=m)
            tl.store(dst + HALF + i, o2, mask=m)
        else:
            kh = head - H
            position = tl.load(positions_ptr + b).to(tl.int64)
            src = k_ptr + b * stride_kb + kh * 2 * HALF
            x1 = tl.load(src + i, mask=m, other=0.0).to(tl.float32)
            x2 = tl.load(src + HALF + i, mask=m, other=0.0).to(tl.float32)
            o1, o2 = _rotate_head(x1, x2, c1, c2, s1, s2, dtype)
            dst = keys_ptr + b.to(tl.int64) * stride_keys_s + kh * stride_keys_h + position * stride_keys_n
            tl.store(dst + i, o1, mask=m)
            tl.store(dst + HALF + i, o2, mask=m)
            src = v_ptr + b * stride_vb + kh * 2 * HALF
            dst = values_ptr + b.to(tl.int64) * stride_values_s + kh * stride_values_h + position * stride_values_n
            tl.store(dst + i, tl.load(src + i, mask=m), mask=m)
            tl.store(dst + HALF + i, tl.load(src + HALF + i, mask=m), mask=m)

else:  # pragma: no cover - depends on the environment
    _rotary_kv_kernel = None


def rotary_kv_backend(device: torch.device | str) -> Literal["triton", "torch"]:
    """``"triton"`` where the kernel runs (CUDA; CPU under the interpreter), else ``"torch"`` (the reference)."""
    return "triton" if runs_on(_rotary_kv_kernel, device) else "torch"


def rotary_kv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Rotated queries [B, H, D] (contiguous); rotated keys and the values written into the caches at
    ``[b, :, positions[b]]``. Shapes and exact math: :func:`rotary_kv_reference`."""
    check_rotary_kv_inputs(q, k, v, cos, sin, keys, values, positions)
    if rotary_kv_backend(q.device) == "torch":
        return rotate_and_write(q, k, v, cos, sin, keys, values, positions)
    b, h, d = q.shape
    kv = k.shape[1]
    out = torch.empty((b, h, d), dtype=q.dtype, device=q.device)
    _rotary_kv_kernel[(b, h + kv)](
        q,
        k,
        v,
        cos,
        sin,
        keys,
        values,
        positions,
        out,
        h,
        d // 2,
        q.stride(0),
        k.stride(0),
        v.stride(0),
        cos.stride(0),
        sin.stride(0),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        BLOCK_HALF=triton.next_power_of_2(d // 2),
        num_warps=1,
    )
    return out
