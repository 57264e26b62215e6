"""Scribbles: strokes painted over an object, rasterised as the region's mask (no segmenter involved).

A pixel (column ``c``, row ``r``) is inside when its centre ``(c + 0.5, r + 0.5)`` lies within ``width / 2`` of a
stroke: each polyline is the union of capsules around its segments, and a polyline of one point is a disc. That
rule is exact and resolution-independent, so tests can state the expected pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["rasterize_scribble"]


def _paint_segment(mask: np.ndarray, a: tuple[float, float], b: tuple[float, float], radius: float) -> None:
    height, width = mask.shape
    c0 = max(math.floor(min(a[0], b[0]) - radius - 1), 0)
    c1 = min(math.ceil(max(a[0], b[0]) + radius + 1), width)
    r0 = max(math.floor(min(a[1], b[1]) - radius - 1), 0)
    r1 = min(math.ceil(max(a[1], b[1]) + radius + 1), height)
    if c1 <= c0 or r1 <= r0:
        return
    xs = np.arange(c0, c1, dtype=np.float64)[None, :] + 0.5
    ys = np.arange(r0, r1, dtype=np.float64)[:, None] + 0.5
    dx, dy = b[0] - a[0], b[1] - a[1]
    length2 = dx * dx + dy * dy
    if length2 == 0.0:
        t = np.zeros((1, 1))
    else:
        t = np.clip(((xs - a[0]) * dx + (ys - a[1]) * dy) / length2, 0.0, 1.0)
    px, py = a[0] + t * dx, a[1] + t * dy
    inside = (xs - px) ** 2 + (ys - py) ** 2 <= radius * radius
    mask[r0:r1, c0:c1] |= inside


def rasterize_scribble(polylines: Sequence[Sequence[float]], width: float, size: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` boolean mask of ``polylines`` (flat ``[x0, y0, x1, y1, ...]`` in pixels) painted ``width``
    pixels wide on an image of ``size = (width, height)``.

    Raises:
        ValueError: for a polyline with an odd number of coordinates or none, or a width that is not positive.
    """
    image_width, image_height = size
    if not (width > 0 and math.isfinite(width)):
        raise ValueError("width must be a positive number of pixels")
    mask = np.zeros((image_height, image_width), dtype=bool)
    radius = width / 2.0
    for line in polylines:
        if len(line) < 2 or len(line) % 2:
            raise ValueError("each polyline is [x0, y0, x1, y1, ...]: an even number of coordinates, at least 2")
        points = [(float(line[i]), float(line[i + 1])) for i in range(0, len(line), 2)]
        if len(points) == 1:
            _paint_segment(mask, points[0], points[0], radius)
        for a, b in zip(points, points[1:], strict=False):
            _paint_segment(mask, a, b, radius)
    return mask
