"""Residual add + RMSNorm of a decode step in one Triton kernel (``LlamaRMSNorm``, transformers' seven kernels).

A Llama layer at decode time adds each sublayer's output to the residual stream and normalizes the sum for the
next sublayer: in eager PyTorch that is an add, a cast, a square, a mean, an add, an rsqrt, two multiplies and
casts — each its own kernel launch of a few microseconds over a few kilobytes. Here one program per row does it
all (float32 math, the model dtype's roundings where PyTorch has them, see :mod:`.rms_norm_reference`) and
writes both the normalized row and the new residual stream.

Dispatch of :func:`rms_norm`: CUDA tensors run the kernel; CPU tensors run it under Triton's interpreter when
``TRITON_INTERPRET=1`` was set before triton was imported, and the pure-torch reference otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._triton import interpreted, runs_on, tl, triton
from .rms_norm_reference import check_rms_norm_inputs, normalize, rms_norm_reference

__all__ = ["rms_norm", "rms_norm_backend", "rms_norm_reference"]


if triton is not None:

    @triton.jit
    def _rms_norm_kernel(
        x_ptr,  # [B, N]
        residual_ptr,  # [B, N] (unused without HAS_RESIDUAL)
        weight_ptr,  # [N]
        out_ptr,  # [B, N] contiguous
        total_ptr,  # [B, N] contiguous (unused without HAS_RESIDUAL)
        N,
        eps,
        stride_x,
        stride_r,
        HAS_RESIDUAL: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
            x = (r + x).to(total_ptr.dtype.element_ty)  # the add rounds to the model dtype, as in PyTorch
            tl.store(total_ptr + row * N + cols, x, mask=mask)
            x = x.to(tl.float32)
        h = x * tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
        h = h.to(out_ptr.dtype.element_ty).to(tl.float32)  # LlamaRMSNorm casts back before the weight
        w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * N + cols, w * h, mask=mask)

else:  # pragma: no cover - depends on the environment
    _rms_norm_kernel = None


def rms_norm_backend(device: torch.device | str) -> Literal["triton", "torch"]:
    """``"triton"`` where the kernel runs (CUDA; CPU under the interpreter), else ``"torch"`` (the reference)."""
    return "triton" if runs_on(_rms_norm_kernel, device) else "torch"


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, total)`` [B, N] in ``x``'s dtype: RMSNorm (``weight``, ``eps``) of ``total = residual + x``, and
    ``total`` (``x`` itself when ``residual`` is None). See :func:`rms_norm_reference` for the exact math."""
    check_rms_norm_inputs(x, weight, residual)
    if rms_norm_backend(x.device) == "torch":
        return normalize(x, weight, eps, residual)
    b, n = x.shape
    out = torch.empty((b, n), dtype=x.dtype, device=x.device)
    total = x if residual is None else torch.empty((b, n), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(n)
    _rms_norm_kernel[(b,)](
        x,
        x if residual is None else residual,
        weight,
        out,
        total,
        n,
        float(eps),
        x.stride(0),
        x.stride(0) if residual is None else residual.stride(0),
        HAS_RESIDUAL=residual is not None,
        BLOCK=block,
        num_warps=1 if interpreted(_rms_norm_kernel) else min(16, max(1, block // 256)),
    )
    return out, total
