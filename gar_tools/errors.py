"""Errors raised by gar_tools.

Every error a caller can cause is a :class:`GarToolsError`. Input errors keep *what* was wrong (``reason``) and
*where* (``field``) apart; ``str(err)`` reads ``field: reason``, so a person or an agent can fix the call without
reading our code.
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

    Attributes:
        reason: what was wrong and what is allowed, without the field.
        field: the offending field as a path (e.g. ``regions[1].box``), or None for the request as a whole.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


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
