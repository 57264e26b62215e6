"""Exact reuse of a prompt's image part by later questions about the same image and regions (prefix K/V cache).

A GAR prompt is ``[framing][thumbnail + tile image tokens][region list with RoI-replay slots][question][generation
prompt]`` (gar-model.md §4). Everything up to the last image or slot token — the *shared prefix* — is fixed by the
image, the regions (the visual-prompt map and the boxes) and the token ids there; only the question text after it
changes from one question to the next. An agent asking several questions about the same regions of one image sends
the same prefix each time: thousands of tokens (256 per tile), the vision tower and the whole prefill over them.

So the scheduler (:class:`~gar_tools.engine.scheduler.ContinuousBatcher`, given a cache) splits the prefill of every
request whose prefix the cache could hold at the prefix end, stores the keys and values of the prefix after that
call, and a later request with the same :func:`prefix_key` copies them into its slot and prefills only its own text
(a prefix larger than the cache's bound is never kept, so its prompt is prefilled whole). Exactness: the
prefix's K/V depend only on the prefix embeddings (causal attention), the prefix is prefilled by the same calls
whether its K/V are then stored or not, and the question's call starts at the same position over the same K/V
either way — so a request gives the same ids with a hit as computed alone (tests/test_prefix_cache.py compares the
K/V bit for bit).

The cache is bounded in bytes and evicts least recently used prefixes; it is meant for the model thread only.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gar_tools.model.modeling import TOKENS_PER_TILE, GarModel
from gar_tools.model.processing import PreparedInputs

__all__ = [
    "PrefixKVCache",
    "SavedPrefix",
    "SharedPrefix",
    "prefix_key",
    "shared_prefix_length",
    "DEFAULT_CPU_BYTES",
    "DEFAULT_CUDA_BYTES",
]

# Sizes by arithmetic: a GAR-1B token's K/V is 16 layers × 2 × 8 KV heads × 64 dims = 16 k values (32 KiB in bf16),
# so the ~4.7 k-token prefix of a 17-tile prompt takes ~150 MB in bf16 and ~300 MB in fp32; the tiny model's, ~2.4 MB.
#: Default bound on CPU: 1 GiB (three 17-tile GAR-1B prefixes in fp32, 64 KiB per token; about a hundred of the tiny
#: model's).
DEFAULT_CPU_BYTES = 2**30
#: Default bound on CUDA: 2 GiB (13 prefixes of 17-tile prompts at GAR-1B size in bf16).
DEFAULT_CUDA_BYTES = 2 * 2**30

#: Keys and values of a prefix, per layer: ``[kv_heads, length, head_dim]`` each.
SavedPrefix = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SharedPrefix:
    """What a request tells the scheduler about its shared prefix.

    Attributes:
        key: :func:`prefix_key`: equal keys mean equal embeddings over the first ``length`` positions.
        length: prompt tokens in the prefix (less than the prompt: at least its last token is prefilled).
        suffix_embeds: builds the embeddings ``[L - length, hidden]`` of the rest of the prompt (plain token
            embeddings: no image or slot token there), run instead of the full ``build_embeds`` on a hit.
    """

    key: str
    length: int
    suffix_embeds: Callable[[], torch.Tensor]


def shared_prefix_length(prepared: PreparedInputs, image_token_id: int) -> int:
    """Positions up to and including the last image or RoI-replay slot token (at most ``L - 1``)."""
    ids = prepared.input_ids[0]
    last = -1
    image_positions = (ids == image_token_id).nonzero()
    if image_positions.numel():
        last = int(image_positions[-1])
    if prepared.slot_starts.numel():
        last = max(last, int(prepared.slot_starts.max()) + TOKENS_PER_TILE - 1)
    return min(last + 1, int(ids.shape[0]) - 1)


def prefix_key(prepared: PreparedInputs, digest: str, length: int, model: GarModel, geometry: str) -> str:
    """SHA-256 of everything the embeddings of the first ``length`` positions depend on: the model (identity,
    device, dtype), the replay geometry, the image (``digest``: :func:`~gar_tools.model.rgb.image_digest` of the
    image ``prepared`` was built from) and its tile grid, the visual-prompt map as the model sees it (uint8 tiles),
    the region boxes, the slot positions and the token ids of the prefix."""
    h = hashlib.sha256()
    h.update(f"{type(model).__name__}@{id(model):x}/{model.device}/{model.dtype}/{geometry}/".encode())
    h.update(f"{digest}/{prepared.grid[0]}x{prepared.grid[1]}/{length}/".encode())
    for tensor in (
        prepared.prompt_tiles,
        prepared.boxes.to(torch.float32),
        prepared.slot_starts.to(torch.int64),
        prepared.input_ids[0, :length].to(torch.int64),
    ):
        h.update(tensor.contiguous().numpy())  # the array's own bytes (no copy: hashlib reads the buffer)
        h.update(b"|")
    return h.hexdigest()


def _nbytes(saved: SavedPrefix) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in saved)


class PrefixKVCache:
    """LRU, byte-bounded store of prefix keys and values, by :func:`prefix_key`.

    Args:
        max_bytes: bound on the bytes held (default: :data:`DEFAULT_CPU_BYTES`, or :data:`DEFAULT_CUDA_BYTES` when
            ``device`` is CUDA); 0 stores nothing. A prefix larger than the bound is not stored.
        device: where the model runs (picks the default bound), as for the tile cache.
    """

    def __init__(self, max_bytes: int | None = None, *, device: torch.device | str | None = None) -> None:
        if max_bytes is None:
            on_cuda = device is not None and torch.device(device).type == "cuda"
            max_bytes = DEFAULT_CUDA_BYTES if on_cuda else DEFAULT_CPU_BYTES
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[str, SavedPrefix] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.stored = 0
        self.evictions = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def fits(self, nbytes: int) -> bool:
        """Whether a prefix of ``nbytes`` would be stored."""
        return 0 < nbytes <= self.max_bytes

    def get(self, key: str) -> SavedPrefix | None:
        """The stored prefix (now the most recently used), or None."""
        saved = self._entries.get(key)
        if saved is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return saved

    def put(self, key: str, saved: SavedPrefix) -> None:
        """Store ``saved`` (tensors the cache now owns), evicting least recently used prefixes to stay bounded."""
        size = _nbytes(saved)
        if key in self._entries or not self.fits(size):
            return
        self._entries[key] = saved
        self.nbytes += size
        self.stored += 1
        while self.nbytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.nbytes -= _nbytes(dropped)
            self.evictions += 1

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def stats(self) -> dict[str, int]:
        return {
            "prefixes": len(self._entries),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "stored": self.stored,
            "evictions": self.evictions,
        }
