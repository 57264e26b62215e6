"""The vision tower's attention with its q/k rotation done by one kernel (:func:`gar_tools.kernels.vision_rope`).

GAR's PE vision towers are timm ``Eva`` models whose blocks use ``AttentionRope``: a fused qkv projection, the
rotary embedding of the patch tokens' queries and keys (about a dozen element-wise kernels and two concatenations
with the class token per block), SDPA, the output projection. :func:`fused_vision_rope` swaps, for as long as it
is entered, each such module's ``forward`` for :func:`attention_forward`, which computes the same thing with the
rotation in one kernel: the same tensors reach SDPA (contiguous rotated q and k, v a view of the projection), so
the outputs are the same bits. The vision CUDA graphs (:class:`~gar_tools.model.vision_graph.VisionGraph`) are
captured inside it and check that against the tower run as timm defines it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from gar_tools.kernels.vision_rope import vision_rope

__all__ = ["attention_forward", "fusable", "fused_vision_rope"]


def _attention_rope_class() -> type[nn.Module] | None:
    try:
        from timm.layers.attention import AttentionRope
    except ImportError:  # an older or newer timm without it: nothing to fuse
        return None
    return AttentionRope


def fusable(module: nn.Module) -> bool:
    """Whether ``module`` is a timm ``AttentionRope`` in the configuration :func:`attention_forward` computes: fused
    qkv projection, no gate, no q/k or output norm, as many key/value heads as query heads, interleaved rotary
    layout, SDPA attention."""
    cls = _attention_rope_class()
    if cls is None or not isinstance(module, cls):
        return False
    identity = all(isinstance(getattr(module, name, None), nn.Identity) for name in ("q_norm", "k_norm", "norm"))
    return (
        identity
        and isinstance(getattr(module, "qkv", None), nn.Linear)
        and getattr(module, "gate", 0) is None
        and getattr(module, "num_kv_groups", 0) == 1
        and getattr(module, "rotate_half", True) is False
        and bool(getattr(module, "fused_attn", False))
        and isinstance(getattr(module, "num_prefix_tokens", None), int)
    )


def attention_forward(
    self: Any,
    x: torch.Tensor,
    rope: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
) -> torch.Tensor:
    """A fusable ``AttentionRope``'s forward with the rotation in one kernel; anything else (no rotary embedding, a
    per-sample one, training) goes to the module's own forward."""
    batch, tokens, _ = x.shape  # x: [B, N, C]
    prefix = self.num_prefix_tokens
    if rope is None or self.training or tuple(rope.shape) != (tokens - prefix, 2 * self.head_dim):
        return type(self).forward(self, x, rope=rope, attn_mask=attn_mask, is_causal=is_causal)
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # [B, H, N, D] views of the projection
    q, k = vision_rope(q, k, rope, prefix)  # [B, H, N, D] contiguous, as timm's concatenation leaves them
    out = functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    out = out.transpose(1, 2).reshape(batch, tokens, self.attn_dim)  # [B, N, H·D]
    return self.proj_drop(self.proj(out))


@contextmanager
def fused_vision_rope(model: nn.Module) -> Iterator[int]:
    """Within the block, every fusable attention module of ``model`` runs :func:`attention_forward`; yields how
    many were swapped (0: none, the model runs as before). For the one thread that owns the model."""
    swapped = [m for m in model.modules() if fusable(m) and "forward" not in m.__dict__]
    for module in swapped:
        module.forward = MethodType(attention_forward, module)  # type: ignore[method-assign]
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            del module.forward
