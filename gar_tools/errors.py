"""Errors raised by gar_tools.

Every error a caller can cause is a :class:`GarToolsError`. Messages say what was wrong, which field it
was, and what is allowed, so a person or an agent can fix the call without reading our code.
"""

from __future__ import annotations

__all__ = [
    "GarToolsError",
    "InputError",
    "ImageError",
    "RegionError",
    "CheckpointError",
    "EngineError",
    "EngineBusyError",
]


class GarToolsError(Exception):
    """Base class of every error gar_tools raises on purpose."""


class InputError(GarToolsError, ValueError):
    """A request is malformed: a field is missing, of the wrong type, or out of range.

    ``field`` names the offending field (dotted path, e.g. ``regions[1].box``) when known.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class ImageError(InputError):
    """The image could not be read, is too large, or is not allowed (path outside allowed folders, URL off)."""


class RegionError(InputError):
    """A region is malformed, empty, does not fit the image, or there are too many regions."""


class CheckpointError(GarToolsError):
    """A checkpoint is missing, incomplete, or not in the GAR layout."""


class EngineError(GarToolsError):
    """The engine failed to run a request (worker unreachable, model failure)."""


class EngineBusyError(EngineError):
    """The engine's queue is full; try again later.

    ``retry_after_s`` is a hint (seconds) for when a slot is likely to be free, e.g. for an HTTP ``Retry-After``.
    """

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        self.retry_after_s = float(retry_after_s)
        super().__init__(message)
