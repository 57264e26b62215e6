"""Exact reuse of per-tile vision features across requests on the same image (gar-model.md §1).

The vision tower encodes each 448-px tile (and the thumbnail) independently, and GAR's mask patch embedding
adds exactly zero to a tile without any region pixel (no bias). So a tile no region touches has the same
features as with no mask at all, and those can be cached per image and reused by any later request on that
image, whatever its regions: such a request runs the vision tower only on the tiles its regions touch.

Keys are (sha256 of the decoded RGB pixels and size, tile grid, model identity, dtype); values are the projected
features ``[256, hidden]`` of single tiles, on the model's device. The cache is bounded in bytes and evicts whole
images, least recently used first. It is meant for the one thread that owns the model.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from gar_tools.model.modeling import GarModel, decode_prompt_map
from gar_tools.model.processing import PreparedInputs, normalize_prompt_tiles
from gar_tools.model.rgb import image_digest
from gar_tools.model.vision_graph import VisionGraph

__all__ = [
    "TileFeatureCache",
    "image_digest",
    "touched_tiles",
    "touched_prompt_tiles",
    "DEFAULT_CPU_BYTES",
    "DEFAULT_CUDA_BYTES",
]

#: Default bound on CPU: 256 MiB (≈ 128 tiles of GAR-1B in fp32 — 7 full images; thousands with the tiny model).
DEFAULT_CPU_BYTES = 256 * 2**20
#: Default bound on CUDA: 2 GiB (≈ 2 000 tiles of GAR-1B in bf16 — 120 images of 16 tiles; half that for GAR-8B).
DEFAULT_CUDA_BYTES = 2 * 2**30

_CacheKey = tuple[str, tuple[int, int], str, str]


def touched_tiles(prompt_pixel_values: torch.Tensor, prompt_numbers: int) -> torch.Tensor:
    """Bool ``[1 + T]``: which of thumbnail and tiles hold any region pixel, decoded as the model decodes them.

    The reference, from the normalized float tiles; the cache reads the same from the uint8 tiles
    (:func:`touched_prompt_tiles`)."""
    first_channel = prompt_pixel_values[:, :1]  # the map is the same on all three channels
    return decode_prompt_map(first_channel, prompt_numbers).flatten(1).any(dim=1).cpu()


def touched_prompt_tiles(prepared: PreparedInputs, prompt_numbers: int) -> list[bool]:
    """:func:`touched_tiles` of ``prepared.prompt_pixel_values``, read from its uint8 tiles without normalizing them.

    A map value's meaning depends on nothing but the value, so the model's own decoding is run once on each of
    the 256 uint8 values (normalized as the prompt tiles are). When exactly the values below ``prompt_numbers`` mean
    "in a region" (GAR's normalization), a tile is touched when its smallest value is one of them; otherwise when
    any value it holds is (counted with ``bincount``).
    """
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 1, 256)
    normalized = normalize_prompt_tiles(values, prepared.image_mean, prepared.image_std)[:, :1]
    in_region = decode_prompt_map(normalized, prompt_numbers).flatten().bool()  # [256]
    flat = prepared.prompt_tiles[:, 0].reshape(prepared.prompt_tiles.shape[0], -1)  # [1 + T, 448·448] uint8
    if torch.equal(in_region, torch.arange(256) < prompt_numbers):
        return (flat.amin(dim=1) < prompt_numbers).tolist()
    return [bool(in_region[torch.bincount(row, minlength=256) > 0].any()) for row in flat]


@dataclass
class _Entry:
    tiles: dict[int, torch.Tensor] = field(default_factory=dict)  # tile index → [256, hidden]
    nbytes: int = 0


class TileFeatureCache:
    """LRU, byte-bounded cache of the no-mask features of single tiles, per image.

    Args:
        max_bytes: bound on the bytes of cached features (default: :data:`DEFAULT_CPU_BYTES`, or
            :data:`DEFAULT_CUDA_BYTES` when ``device`` is CUDA). 0 disables caching.
        device: where the model runs (picks the default bound and chunking).
        chunk_tiles: run the vision tower on exactly this many tiles per call (the last call padded with blank
            tiles), so a tile's features never depend on how many tiles share its batch — on CUDA, kernels picked
            by batch size can round differently. Default: 4 on CUDA, none (one call per request) on CPU, where
            the tile count does not change results (the tests check it). For cached and uncached features to be
            bit-identical on a GPU, produce both through this method (``max_bytes=0`` caches nothing).
        cuda_graphs: on CUDA, with ``chunk_tiles`` set, run each chunk from one captured CUDA graph
            (:class:`~gar_tools.model.vision_graph.VisionGraph`, the same kernels without the host launching each;
            captured on first use). If the capture fails, a warning says so and the tower runs eagerly. Off by
            default here; :class:`~gar_tools.engine.local.LocalEngine` turns it on with CUDA (on an H200, 17
            tiles of GAR-1B in 68 ms instead of 104:
            ``benchmarks/results/2026-11-27-profile_request-nvidia-h200-run4.json``).
        fused_rope: capture the graphs with the attention blocks' q/k rotation in one kernel (default; kept only
            where a replay equals the eager tower bit for bit: :class:`~gar_tools.model.vision_graph.VisionGraph`).
    """

    def __init__(
        self,
        max_bytes: int | None = None,
        *,
        device: torch.device | str | None = None,
        chunk_tiles: int | None | str = "auto",
        cuda_graphs: bool = False,
        fused_rope: bool = True,
    ) -> None:
        on_cuda = device is not None and torch.device(device).type == "cuda"
        if max_bytes is None:
            max_bytes = DEFAULT_CUDA_BYTES if on_cuda else DEFAULT_CPU_BYTES
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        if chunk_tiles == "auto":
            chunk_tiles = 4 if on_cuda else None
        if chunk_tiles is not None and (not isinstance(chunk_tiles, int) or chunk_tiles < 1):
            raise ValueError(f"chunk_tiles must be a positive integer or None, got {chunk_tiles!r}")
        self.chunk_tiles: int | None = chunk_tiles
        self.cuda_graphs = bool(cuda_graphs)
        self.fused_rope = bool(fused_rope)
        self._graphs: dict[tuple[int, int], VisionGraph] = {}  # (id(model), tiles) → captured graph
        self._entries: OrderedDict[_CacheKey, _Entry] = OrderedDict()
        self.nbytes = 0
        self.hits = 0  # tiles taken from the cache
        self.misses = 0  # untouched tiles that had to be encoded
        self.encoded = 0  # tiles run through the vision tower (touched ones included)
        self.evictions = 0  # images dropped

    def stats(self) -> dict[str, int]:
        """Sizes and counters (for health endpoints and reports)."""
        return {
            "images": len(self._entries),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "tile_hits": self.hits,
            "tile_misses": self.misses,
            "tiles_encoded": self.encoded,
            "evictions": self.evictions,
        }

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    @property
    def fused_rope_kept(self) -> bool | None:
        """Whether every vision graph captured so far kept the one-kernel q/k rotation (its replay equalled the eager
        tower); None while none is captured (graphs off, not on CUDA, or no request yet)."""
        if not self._graphs:
            return None
        return all(graph.fused_rope for graph in self._graphs.values())

    @staticmethod
    def key(model: GarModel, digest: str, grid: tuple[int, int]) -> _CacheKey:
        """The cache key of an image under one model (identity, dtype and device included)."""
        identity = f"{type(model).__name__}@{id(model):x}/{model.device}"
        return (digest, (int(grid[0]), int(grid[1])), identity, str(model.dtype))

    @torch.no_grad()
    def image_features(self, model: GarModel, prepared: PreparedInputs, digest: str) -> torch.Tensor:
        """``[1 + T, 256, hidden]`` features of thumbnail + tiles with the region masks added — equal to
        ``model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values)`` — running the vision tower
        only on the tiles the regions touch and on untouched tiles not cached yet (which are then cached).

        ``digest`` is :func:`image_digest` of the image ``prepared`` was built from.

        Exactness: tiles are independent in the vision tower; on CPU the features of one tile do not depend on
        which other tiles share its batch (each tile is its own row block of every matmul; the tests check this
        with ``torch.equal``), and on CUDA ``chunk_tiles`` fixes the batch size so kernel choice cannot vary.
        Untouched tiles encoded here get an exactly zero mask embedding, so what is stored equals their no-mask
        features.
        """
        count = int(prepared.image_tiles.shape[0])  # 1 + T
        touched = touched_prompt_tiles(prepared, model.config.prompt_numbers)
        key = self.key(model, digest, prepared.grid)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        reused = {i: entry.tiles[i] for i in range(count) if entry is not None and not touched[i] and i in entry.tiles}
        encode = [i for i in range(count) if i not in reused]
        self.hits += len(reused)
        self.misses += sum(1 for i in encode if not touched[i])
        self.encoded += len(encode)
        parts: dict[int, torch.Tensor] = dict(reused)
        if encode:
            pixels = prepared.tile_pixel_values(encode, model.device)  # [len(encode), 3, 448, 448]
            fresh = self._encode(model, pixels, prepared.tile_prompt_pixel_values(encode, model.device))
            for row, tile in enumerate(encode):  # [len(encode), 256, hidden]
                parts[tile] = fresh[row]
            self._store(key, {tile: fresh[row].clone() for row, tile in enumerate(encode) if not touched[tile]})
        return torch.stack([parts[i] for i in range(count)])  # [1 + T, 256, hidden]

    def _encode(self, model: GarModel, pixels: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """``model.encode_images`` on ``[N, 3, 448, 448]`` tiles, in calls of exactly ``chunk_tiles`` when set."""
        if self.chunk_tiles is None:
            return model.encode_images(pixels, prompts)
        size, count = self.chunk_tiles, pixels.shape[0]
        background = model.config.prompt_numbers / 127.5 - 1.0  # the normalized "no region" prompt value
        parts = []
        for start in range(0, count, size):
            chunk_pixels, chunk_prompts = pixels[start : start + size], prompts[start : start + size]
            pad = size - chunk_pixels.shape[0]
            if pad:
                chunk_pixels = torch.cat([chunk_pixels, chunk_pixels.new_zeros((pad, *chunk_pixels.shape[1:]))])
                chunk_prompts = torch.cat(
                    [chunk_prompts, chunk_prompts.new_full((pad, *chunk_prompts.shape[1:]), background)]
                )
            encode = self._graph(model, size) or model.encode_images
            parts.append(encode(chunk_pixels, chunk_prompts)[: size - pad])  # [≤ size, 256, hidden]
        return torch.cat(parts)

    def _graph(self, model: GarModel, tiles: int) -> VisionGraph | None:
        """The captured vision pass for ``tiles`` tiles (captured now if needed); None when graphs are off, the
        model is not on CUDA, or the capture failed (then graphs stay off, with a warning)."""
        if not self.cuda_graphs or model.device.type != "cuda":
            return None
        key = (id(model), tiles)
        if key not in self._graphs:
            try:
                self._graphs[key] = VisionGraph(model, tiles, fused_rope=self.fused_rope)
            except Exception as error:  # a tower that cannot be captured still runs, eagerly
                warnings.warn(
                    f"the vision tower could not be captured in a CUDA graph ({type(error).__name__}: {error}); "
                    "running it eagerly",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.cuda_graphs = False
                return None
        return self._graphs[key]

    def _store(self, key: _CacheKey, tiles: dict[int, torch.Tensor]) -> None:
        if not tiles or self.max_bytes == 0:
            return
        entry = self._entries.setdefault(key, _Entry())
        self._entries.move_to_end(key)
        for tile, features in tiles.items():
            if tile not in entry.tiles:
                size = features.numel() * features.element_size()
                entry.tiles[tile] = features
                entry.nbytes += size
                self.nbytes += size
        while self.nbytes > self.max_bytes and self._entries:
            _, dropped = self._entries.popitem(last=False)  # the least recently used image (maybe this one)
            self.nbytes -= dropped.nbytes
            self.evictions += 1
