"""Pure-torch reference of a decode step's rotary embedding + KV-cache write, plus the shared input checks.

Row ``b`` of a decode batch (cache slot ``b``) holds one new token at position ``positions[b]``. Its query heads
and key heads are rotated as transformers' ``apply_rotary_pos_emb`` does (``rotate_half`` convention, every
product and the sum rounded to the model's dtype)::

    rotated = x · cos + cat(−x₂, x₁) · sin           x = [x₁, x₂] halves of one head, cos/sin of the row

the rotated keys and the values are written at column ``positions[b]`` of slot ``b``, and the rotated queries
are returned — so a decode step built on it equals the unfused one bit for bit on CPU.
"""

from __future__ import annotations

import torch

__all__ = ["check_rotary_kv_inputs", "rotary_kv_reference", "rotate_and_write"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_rotary_kv_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
) -> None:
    """``q`` [B, H, D], ``k``/``v`` [B, KV, D] (last two dimensions packed), ``cos``/``sin`` [B, D], caches
    [S ≥ B, KV, max_len, D] (last dimension contiguous), integer ``positions`` [B]; D even; one dtype and device.
    Raises TypeError / ValueError naming the argument. (Positions must lie in ``0 … max_len-1``: device values,
    not checked here.)"""
    named = {"q": q, "k": k, "v": v, "cos": cos, "sin": sin, "keys": keys, "values": values, "positions": positions}
    for name, value in named.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name}: must be a torch.Tensor, got {type(value).__name__}")
    if q.dim() != 3 or q.shape[-1] % 2:
        raise ValueError(f"q: must be [B, H, D] with an even D, got shape {tuple(q.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q: dtype must be float32, float16 or bfloat16, got {q.dtype}")
    b, _h, d = q.shape
    if k.dim() != 3 or k.shape[0] != b or k.shape[2] != d:
        raise ValueError(f"k: must be [{b}, KV, {d}] to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    kv = k.shape[1]
    expected = {"v": (b, kv, d), "cos": (b, d), "sin": (b, d), "positions": (b,)}
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name}: must be {list(shape)}, got {list(named[name].shape)}")
    for name in ("q", "k", "v"):
        t = named[name]
        if t.stride(2) != 1 or t.stride(1) != d:
            raise ValueError(
                f"{name}: its heads must be packed rows of {d} (as a projection's view), got strides {t.stride()}"
            )
    for name in ("cos", "sin"):
        if named[name].stride(1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous")
    for name in ("keys", "values"):
        cache = named[name]
        if cache.dim() != 4 or cache.shape[0] < b or cache.shape[1] != kv or cache.shape[3] != d:
            raise ValueError(f"{name}: must be [S >= {b}, {kv}, max_len, {d}], got {tuple(cache.shape)}")
        if cache.stride(-1) != 1:
            raise ValueError(f"{name}: the last dimension must be contiguous")
    for name, value in named.items():
        if name != "positions" and value.dtype != q.dtype:
            raise TypeError(f"{name}: dtype {value.dtype} differs from q's {q.dtype}")
        if value.device != q.device:
            raise ValueError(f"{name}: on {value.device}, q on {q.device}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions: must be int32/int64, got {positions.dtype}")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [B, heads, D] rotated by ``cos``/``sin`` [B, 1, D], as ``apply_rotary_pos_emb``."""
    half = x.shape[-1] // 2
    return (x * cos) + (torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin)


def rotate_and_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """:func:`rotary_kv_reference` on inputs already checked."""
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, D]
    rows = torch.arange(q.shape[0], device=q.device)
    keys[rows, :, positions] = _rotate(k, cos, sin)  # each row writes its own column of its own slot
    values[rows, :, positions] = v
    return _rotate(q, cos, sin)


def rotary_kv_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The rotated queries [B, H, D]; rotated ``k`` and ``v`` written into ``keys``/``values`` at
    ``[b, :, positions[b]]`` (see the module docstring)."""
    check_rotary_kv_inputs(q, k, v, cos, sin, keys, values, positions)
    return rotate_and_write(q, k, v, cos, sin, keys, values, positions)
