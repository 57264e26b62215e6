"""A byte-bounded LRU of per-image values (segmenter image embeddings), keyed by the image's decoded pixels.

The key is the SHA-256 of the decoded RGB pixels (with the image's size) plus the identity of what computed the
value (model, dtype, device), so the same picture sent as a path, a data URI or base64 hits the same entry, and two
models never share one. Same keying and bounds as the engine's per-image tile cache; written so the two can share
this code.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, TypeVar

from gar_tools.model.rgb import image_digest

__all__ = ["ImageValueCache", "image_digest", "value_nbytes", "DEFAULT_CACHE_BYTES"]

T = TypeVar("T")

DEFAULT_CACHE_BYTES = 256 * 2**20
"""Default bound: 256 MiB (SAM ViT-B's embedding of one image is 4 MiB in fp32; SAM 2's a few times that)."""


def value_nbytes(value: Any) -> int:
    """Bytes held by a tensor / array / 8-bit PIL image, or a list, tuple or dict of them (anything else counts 0)."""
    if isinstance(value, (list, tuple)):
        return sum(value_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(value_nbytes(v) for v in value.values())
    if hasattr(value, "nbytes"):  # numpy arrays, torch tensors
        return int(value.nbytes)
    if hasattr(value, "getbands") and hasattr(value, "size"):  # PIL images: a byte per band and pixel (8-bit)
        width, height = value.size
        return int(width * height * len(value.getbands()))
    return 0


class ImageValueCache:
    """Least-recently-used values, at most ``max_bytes`` in all (0 disables caching; a value larger than the bound
    is never stored). Thread-safe. ``hits`` and ``misses`` count lookups (a caller that waited for another's
    :meth:`get_or_compute` counts as a hit)."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._computing: dict[Hashable, Future[Any]] = {}  # keys whose value one caller is computing now
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (marked most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> None:
        """Store ``value`` (``nbytes`` default: :func:`value_nbytes`), evicting the least recently used first."""
        size = value_nbytes(value) if nbytes is None else nbytes
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            while self._entries and self._bytes + size > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted
            self._entries[key] = (value, size)
            self._bytes += size

    def get_or_compute(self, key: Hashable, compute: Callable[[], T], nbytes: int | None = None) -> T:
        """The value under ``key``, computed by ``compute()`` and stored when missing — once: callers asking for a
        key while another computes it wait for that result (or its exception) instead of computing it again, as
        agents asking several questions about one new image at once do. ``compute`` runs without the lock."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[0]
            running = self._computing.get(key)
            if running is None:
                self._computing[key] = mine = Future()
                self.misses += 1
            else:
                self.hits += 1
        if running is not None:
            return running.result()
        try:
            value = compute()
            self.put(key, value, nbytes)
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(value)
            return value
        finally:
            with self._lock:
                del self._computing[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
