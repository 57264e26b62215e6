"""Pure-torch reference of the vision tower's rotary embedding of queries and keys, plus the shared input checks.

The PE vision towers of GAR (timm's ``AttentionRope`` with ``RotaryEmbeddingCat``, interleaved layout) rotate the
queries and keys of every patch token, leaving the ``prefix`` class token(s) as they are::

    rotated = x · cos + rot(x) · sin        rot(x) = [−x₁, x₀, −x₃, x₂, …]   (pairs of neighbouring channels)

``emb`` holds ``[sin | cos]`` per patch token (``[N − prefix, 2·D]``). The products and the sum are computed in
the promoted dtype of ``x`` and ``emb`` (each rounded there, as PyTorch's element-wise ops round), and the result
is cast back to ``x``'s dtype; the output is the contiguous ``[B, H, N, D]`` tensor timm's concatenation builds.
"""

from __future__ import annotations

import torch

__all__ = ["check_vision_rope_inputs", "vision_rope_reference", "rotate"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_vision_rope_inputs(q: torch.Tensor, k: torch.Tensor, emb: torch.Tensor, prefix: int) -> None:
    """``q``/``k`` [B, H, N, D] of one shape, dtype and device (D even, last dimension contiguous), ``emb``
    [N − prefix, 2·D] floating on the same device (last dimension contiguous), ``0 <= prefix <= N``.
    Raises TypeError / ValueError naming the argument."""
    for name, value in (("q", q), ("k", k), ("emb", emb)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: must be a torch.Tensor, got {type(value).__name__}")
    if q.dim() != 4 or q.shape[-1] % 2:
        raise ValueError(f"q: must be [B, H, N, D] with an even D, got shape {tuple(q.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    if k.shape != q.shape:
        raise ValueError(f"k: must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if k.dtype != q.dtype:
        raise TypeError(f"k: dtype {k.dtype} differs from q's {q.dtype}")
    if emb.dtype not in _DTYPES:
        raise TypeError(f"emb: dtype must be float32, float16 or bfloat16, got {emb.dtype}")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix <= q.shape[2]:
        raise ValueError(f"prefix: must be an integer in 0 … {q.shape[2]} (the tokens left unrotated), got {prefix!r}")
    n, d = q.shape[2], q.shape[3]
    if tuple(emb.shape) != (n - prefix, 2 * d):
        raise ValueError(f"emb: must be [{n - prefix}, {2 * d}] ([sin | cos] per rotated token), got {list(emb.shape)}")
    for name, value in (("q", q), ("k", k), ("emb", emb)):
        if value.device != q.device:
            raise ValueError(f"{name}: on {value.device}, q on {q.device}")
        if value.numel() and value.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous, got strides {value.stride()}")


def rotate(x: torch.Tensor, emb: torch.Tensor, prefix: int) -> torch.Tensor:
    """One of :func:`vision_rope_reference`'s two outputs, on inputs already checked."""
    sin, cos = emb.chunk(2, dim=-1)  # [N - prefix, D] each
    body = x[:, :, prefix:]  # [B, H, N - prefix, D]
    pairs = torch.stack([-body[..., 1::2], body[..., 0::2]], dim=-1)  # [B, H, N - prefix, D/2, 2]
    rotated = (body * cos + pairs.reshape(body.shape) * sin).to(x.dtype)
    return torch.cat([x[:, :, :prefix], rotated], dim=2)  # [B, H, N, D], contiguous


def vision_rope_reference(
    q: torch.Tensor, k: torch.Tensor, emb: torch.Tensor, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated ``q`` and ``k``, each a new contiguous ``[B, H, N, D]`` tensor (see the module docstring)."""
    check_vision_rope_inputs(q, k, emb, prefix)
    return rotate(q, emb, prefix), rotate(k, emb, prefix)
