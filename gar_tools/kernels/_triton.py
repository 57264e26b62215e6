"""Triton when it can be imported, and where a Triton kernel of this package can run (shared by the kernels)."""

from __future__ import annotations

import os
from typing import Any

import torch

try:  # Triton is optional: without it every kernel of this package runs its pure-torch reference.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]

__all__ = ["interpreted", "runs_on", "tl", "triton", "triton_available"]


def triton_available() -> bool:
    """Whether Triton could be imported (the kernels exist)."""
    return triton is not None


def interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` was built by Triton's interpreter (``TRITON_INTERPRET=1`` when triton was imported)."""
    if triton is None or kernel is None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def runs_on(kernel: Any, device: torch.device | str) -> bool:
    """Whether ``kernel`` can run for tensors on ``device``: compiled on CUDA; on CPU under the interpreter, which
    Triton reads when it is imported (``TRITON_INTERPRET=1`` must be set before)."""
    dev = torch.device(device)
    if triton is None or kernel is None:
        return False
    if dev.type == "cuda":
        return True
    return dev.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and interpreted(kernel)
