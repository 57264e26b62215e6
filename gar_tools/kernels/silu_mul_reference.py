"""Pure-torch reference of the gated activation of Llama's MLP, ``silu(gate) · up``, plus the input checks.

As ``LlamaMLP`` computes it between its projections: ``F.silu`` rounded to the model's dtype, then the product
rounded to it — so a decode step built on it equals the unfused one bit for bit on CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["check_silu_mul_inputs", "silu_mul_reference"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_silu_mul_inputs(gate: torch.Tensor, up: torch.Tensor) -> None:
    """Two contiguous tensors of one shape, dtype and device. Raises TypeError / ValueError naming the argument."""
    for name, value in (("gate", gate), ("up", up)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_contiguous():
            raise ValueError(f"{name}: must be contiguous")
    if gate.dtype not in _DTYPES:
        raise TypeError(f"gate: dtype must be float32, float16 or bfloat16, got {gate.dtype}")
    if up.shape != gate.shape:
        raise ValueError(f"up: shape {tuple(up.shape)} differs from gate's {tuple(gate.shape)}")
    if up.dtype != gate.dtype:
        raise TypeError(f"up: dtype {up.dtype} differs from gate's {gate.dtype}")
    if up.device != gate.device:
        raise ValueError(f"up: on {up.device}, gate on {gate.device}")


def silu_mul_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) · up`` in ``gate``'s dtype and shape."""
    check_silu_mul_inputs(gate, up)
    return F.silu(gate) * up
