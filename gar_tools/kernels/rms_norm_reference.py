"""Pure-torch reference of the fused residual add + RMSNorm of a decode step, plus the shared input checks.

Exactly what transformers' ``LlamaRMSNorm`` computes after the residual add of a Llama layer, with every rounding
of the model's dtype in the same place::

    total = residual + x                                     # in the dtype (when a residual is given; else x)
    h     = float32(total) · rsqrt(mean(float32(total)²) + eps)
    out   = weight · dtype(h)                                # in the dtype

so a decode step built on it equals the unfused one bit for bit on CPU.
"""

from __future__ import annotations

import torch

__all__ = ["check_rms_norm_inputs", "rms_norm_reference", "normalize"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_rms_norm_inputs(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None) -> None:
    """``x`` [B, N] with a contiguous last dimension; ``weight`` [N]; ``residual`` like ``x``; one dtype, one device.
    Raises TypeError / ValueError naming the argument."""
    named = [("x", x), ("weight", weight)] + ([("residual", residual)] if residual is not None else [])
    for name, value in named:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: must be a torch.Tensor, got {type(value).__name__}")
    if x.dim() != 2 or x.stride(-1) != 1:
        raise ValueError(f"x: must be [B, N] with a contiguous last dimension, got shape {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x: dtype must be float32, float16 or bfloat16, got {x.dtype}")
    if weight.shape != (x.shape[1],):
        raise ValueError(f"weight: must be [{x.shape[1]}] to match x {tuple(x.shape)}, got {tuple(weight.shape)}")
    for name, value in named[1:]:
        if value.dtype != x.dtype:
            raise TypeError(f"{name}: dtype {value.dtype} differs from x's {x.dtype}")
        if value.device != x.device:
            raise ValueError(f"{name}: on {value.device}, x on {x.device}")
    if residual is not None and (residual.shape != x.shape or residual.stride(-1) != 1):
        raise ValueError(
            f"residual: must be {tuple(x.shape)} with a contiguous last dimension, got {tuple(residual.shape)}"
        )


def normalize(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rms_norm_reference` on inputs already checked."""
    total = x if residual is None else residual + x
    h = total.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(total.dtype), total


def rms_norm_reference(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, total)``, both [B, N] in ``x``'s dtype: the RMSNorm of ``total = residual + x`` (``x`` itself without
    a residual) and ``total``, the residual stream to carry on."""
    check_rms_norm_inputs(x, weight, residual)
    return normalize(x, weight, eps, residual)
