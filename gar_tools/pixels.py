"""Pixel coordinates a caller sends, checked against the image once: boxes and flat ``[x0, y0, x1, y1, …]`` lists.

Every region format that carries coordinates (box, polygon, scribble, a box to segment) checks them here, so the
rules and their messages are the same everywhere. Errors are :class:`~gar_tools.errors.RegionError` naming the
field and the region's id.
"""

from __future__ import annotations

import math

from gar_tools.errors import RegionError

__all__ = ["region_error", "checked_box", "checked_coordinates"]


def region_error(field: str, region_id: str, message: str) -> RegionError:
    """A :class:`RegionError` for ``field`` that also names the region's id."""
    return RegionError(f"{message} (region id {region_id!r})", field=field)


def checked_box(box: object, size: tuple[int, int], field: str, rid: str) -> tuple[float, float, float, float]:
    """``[x1, y1, x2, y2]`` in pixels as four finite floats with ``x2 > x1``, ``y2 > y1``, overlapping the image.

    On an image larger than 2×2, a box whose four values all lie in [0, 1] is refused as normalised coordinates
    (the message gives the box in pixels).
    """
    width, height = size
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise region_error(field, rid, "box must be [x1, y1, x2, y2] (4 numbers, pixels)")
    try:
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise region_error(field, rid, "box coordinates must be numbers") from exc
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise region_error(field, rid, "box coordinates must be finite numbers (no NaN or infinity)")
    if x2 <= x1 or y2 <= y1:
        raise region_error(field, rid, f"box {[x1, y1, x2, y2]} needs x2 > x1 and y2 > y1 ([x1, y1, x2, y2], pixels)")
    if (width > 2 or height > 2) and all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)):
        raise region_error(
            field,
            rid,
            f"box {[x1, y1, x2, y2]} looks like normalised coordinates (all four in [0, 1]), but boxes are in "
            f"pixels of the {width}x{height} image: multiply x by {width} and y by {height}, e.g. "
            f"{[round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)]}",
        )
    if min(x2, width) <= max(x1, 0) or min(y2, height) <= max(y1, 0):
        raise region_error(
            field,
            rid,
            f"box {[x1, y1, x2, y2]} lies outside the {width}x{height} image (x in [0, {width}], y in [0, {height}])",
        )
    return x1, y1, x2, y2


def checked_coordinates(values: object, size: tuple[int, int], field: str, rid: str, what: str) -> list[float]:
    """A flat ``[x0, y0, x1, y1, …]`` list of pixel coordinates (a polygon, a stroke) as finite floats within one
    image size of the image."""
    width, height = size
    if not isinstance(values, (list, tuple)) or not values:
        raise region_error(field, rid, f"each {what} must be a flat list [x0, y0, x1, y1, ...] of numbers")
    if len(values) % 2:
        raise region_error(field, rid, f"has an odd number of coordinates ({len(values)}); give x, y pairs")
    try:
        coords = [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise region_error(field, rid, "coordinates must be numbers") from exc
    if not all(math.isfinite(v) for v in coords):
        raise region_error(field, rid, "coordinates must be finite numbers (no NaN or infinity)")
    xs, ys = coords[0::2], coords[1::2]
    if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
        raise region_error(
            field,
            rid,
            f"coordinates are far outside the {width}x{height} image; {what} coordinates are pixels and must lie "
            f"within one image size of it (x in [{-width}, {2 * width}], y in [{-height}, {2 * height}])",
        )
    return coords
