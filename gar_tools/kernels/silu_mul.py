"""``silu(gate) · up`` of Llama's MLP in one Triton kernel (eagerly two: the activation, then the product).

Float32 math, the activation rounded to the model's dtype before the product as in PyTorch
(:mod:`.silu_mul_reference`). Dispatch of :func:`silu_mul`: CUDA tensors run the kernel; CPU tensors run it under
Triton's interpreter when ``TRITON_INTERPRET=1`` was set before triton was imported, and the reference otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ._triton import interpreted, runs_on, tl, triton
from .silu_mul_reference import check_silu_mul_inputs, silu_mul_reference

__all__ = ["silu_mul", "silu_mul_backend", "silu_mul_reference"]

_BLOCK = 1024  # elements per program


if triton is not None:

    @triton.jit
    def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        g = tl.load(gate_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(up_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        activated = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + offsets, activated * u, mask=mask)

else:  # pragma: no cover - depends on the environment
    _silu_mul_kernel = None


def silu_mul_backend(device: torch.device | str) -> Literal["triton", "torch"]:
    """``"triton"`` where the kernel runs (CUDA; CPU under the interpreter), else ``"torch"`` (the reference)."""
    return "triton" if runs_on(_silu_mul_kernel, device) else "torch"


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) · up`` (same shape and dtype; both contiguous). Exact math: :func:`silu_mul_reference`."""
    check_silu_mul_inputs(gate, up)
    if silu_mul_backend(gate.device) == "torch":
        return F.silu(gate) * up
    out = torch.empty_like(gate)
    n = gate.numel()
    block = 16 * _BLOCK if interpreted(_silu_mul_kernel) else _BLOCK  # the interpreter: few, large programs
    _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=4)
    return out
