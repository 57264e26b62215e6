"""Pure-torch reference of the decode step's attention over the static KV cache, plus the shared input checks.

One new query token per row ``b`` of a decode batch attends over the first ``lengths[b]`` columns of its row of
the cache. Grouped-query attention: the ``G`` query heads that share a KV head are given as ``G`` query rows of
that KV head, so K/V are never repeated. The math (float32 throughout, output in the query's dtype)::

    scores[b, h, g, n] = scale · q[b, h, g] · keys[b, h, n]          for n < lengths[b]
    out[b, h, g]      = softmax_n(scores[b, h, g]) · values[b, h, :lengths[b]]
"""

from __future__ import annotations

import torch

__all__ = ["attend", "check_decode_attention_inputs", "decode_attention_reference"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_decode_attention_inputs(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, span: int
) -> None:
    """Check types, shapes, dtypes and devices. Raises TypeError / ValueError naming the argument.

    ``q`` [B, KV, G, D]; ``keys``/``values`` [S, KV, max_len, D] with S ≥ B and ``span`` ≤ max_len; ``lengths``
    integer [B]. (Each length must lie in 1 … span; that is a device value and is not checked here.)
    """
    for name, value in (("q", q), ("keys", keys), ("values", values), ("lengths", lengths)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: must be a torch.Tensor, got {type(value).__name__}")
    if q.dim() != 4:
        raise ValueError(f"q: must be [B, KV, G, D], got shape {tuple(q.shape)}")
    b, kv, _g, d = q.shape
    for name, cache in (("keys", keys), ("values", values)):
        if cache.dim() != 4 or cache.shape[1] != kv or cache.shape[3] != d or cache.shape[0] < b:
            raise ValueError(
                f"{name}: must be [S >= {b}, {kv}, max_len, {d}] to match q {tuple(q.shape)}, got {tuple(cache.shape)}"
            )
        if cache.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {cache.dtype} differs from q's {q.dtype}")
        if cache.device != q.device:
            raise ValueError(f"{name}: on {cache.device}, q on {q.device}")
        if cache.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous")
    if keys.shape != values.shape:
        raise ValueError(f"values: shape {tuple(values.shape)} differs from keys' {tuple(keys.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    if lengths.shape != (b,) or lengths.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lengths: must be int32/int64 [{b}], got {lengths.dtype} {tuple(lengths.shape)}")
    if lengths.device != q.device:
        raise ValueError(f"lengths: on {lengths.device}, q on {q.device}")
    if not 1 <= span <= keys.shape[2]:
        raise ValueError(f"span: must be in 1 … {keys.shape[2]} (cache columns), got {span}")


def decode_attention_reference(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *, scale: float, span: int
) -> torch.Tensor:
    """``out`` [B, KV, G, D] in ``q.dtype`` (see the module docstring); reads columns ``0 … span-1`` only."""
    check_decode_attention_inputs(q, keys, values, lengths, span)
    return attend(q, keys, values, lengths, scale=scale, span=span)


def attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, *, scale: float, span: int
) -> torch.Tensor:
    """:func:`decode_attention_reference` on inputs already checked."""
    b = q.shape[0]
    k = keys[:b, :, :span].float()  # [B, KV, span, D]
    v = values[:b, :, :span].float()
    scores = torch.matmul(q.float(), k.transpose(-1, -2)) * scale  # [B, KV, G, span]
    visible = torch.arange(span, device=q.device)[None, :] < lengths[:, None]  # [B, span]
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v).to(q.dtype)  # [B, KV, G, D]
