"""A static, pre-allocated KV cache with one slot per running sequence (gpt-fast style).

Every layer holds ``K`` and ``V`` of shape ``[slots, kv_heads, max_len, head_dim]``, allocated once, so a decode
step has fixed shapes and addresses and can be captured in a CUDA graph. A slot is one sequence; its length is
kept by the decoder (:mod:`gar_tools.model.decoder`), not here. The last position of every slot is a scratch
column: rows of the decode batch that hold no running sequence write there, so they never touch real entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["StaticKVCache"]


@dataclass
class StaticKVCache:
    """Per-layer key and value tensors ``[slots, kv_heads, max_len, head_dim]``.

    Attributes:
        keys: one tensor per layer.
        values: one tensor per layer.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def allocate(
        cls,
        *,
        layers: int,
        slots: int,
        kv_heads: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> StaticKVCache:
        """Zero-filled cache (zeros, not ``empty``: scratch rows then attend over finite values only)."""
        if slots < 1 or max_len < 2:
            raise ValueError(f"need at least 1 slot and max_len >= 2, got slots={slots}, max_len={max_len}")
        shape = (slots, kv_heads, max_len, head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        return cls(keys=keys, values=values)

    @property
    def slots(self) -> int:
        return int(self.keys[0].shape[0])

    @property
    def max_len(self) -> int:
        """Positions per slot, the scratch column included."""
        return int(self.keys[0].shape[2])

    @property
    def scratch_position(self) -> int:
        """The column free rows write to; a sequence may use positions ``0 … scratch_position - 1``."""
        return self.max_len - 1

    @property
    def usable_len(self) -> int:
        """Most tokens (prompt + generated) one slot can hold."""
        return self.max_len - 1

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K and V for one token of one slot, over all layers."""
        k = self.keys[0]
        return 2 * len(self.keys) * k.shape[1] * k.shape[3] * k.element_size()

    @property
    def nbytes(self) -> int:
        """Bytes allocated for the whole cache."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def read(self, slot: int, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the first ``length`` positions of ``slot``: per layer, K and V ``[kv_heads, length, head_dim]``."""
        pairs = zip(self.keys, self.values, strict=True)
        return [(k[slot, :, :length].clone(), v[slot, :, :length].clone()) for k, v in pairs]

    def write(self, slot: int, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Copy what :meth:`read` gave into the first positions of ``slot``; returns how many positions."""
        if len(saved) != len(self.keys):
            raise ValueError(f"{len(saved)} layers given for a cache of {len(self.keys)}")
        length = int(saved[0][0].shape[1])
        if length > self.usable_len:
            raise ValueError(f"{length} positions do not fit a slot of {self.usable_len}")
        for (k, v), keys, values in zip(saved, self.keys, self.values, strict=True):
            keys[slot, :, :length] = k
            values[slot, :, :length] = v
        return length
