"""What a segmenter is asked: a region's points or box, checked against the image (no torch here).

:func:`segment_prompt` validates a ``points`` region or a ``box`` region with ``segment: true`` against the image and
returns a :class:`SegmentPrompt`: a region that waits for a segmenter to become a mask. The engine turns every
prompt of a request into a mask in one call on its model thread (:func:`gar_tools.segment.resolve.resolve_regions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from gar_tools.errors import RegionError
from gar_tools.inputs import MAX_POINTS
from gar_tools.pixels import checked_box, region_error

__all__ = ["SegmentPrompt", "segment_prompt", "needs_segmenter", "no_segmenter_error", "SEGMENTER_HINT"]

SEGMENTER_HINT = (
    "start the server or CLI with a SAM-family segmenter, e.g. --segmenter facebook/sam-vit-base "
    "(or Zigeng/SlimSAM-uniform-77, facebook/sam2.1-hiera-tiny, a local folder; LocalEngine(segmenter=...) in "
    "Python)"
)


@dataclass(frozen=True)
class SegmentPrompt:
    """A region to be cut out by the segmenter.

    Attributes:
        id: the region's id.
        field: the request field naming the prompt in errors (``region.points``, ``regions[1].box``).
        kind: ``"points"`` or ``"box"``.
        points: ``[(x, y), ...]`` in image pixels (``kind == "points"``).
        labels: one label per point, 1 on the object and 0 not on it.
        box: ``(x1, y1, x2, y2)`` in image pixels, clipped to the image (``kind == "box"``).
    """

    id: str
    field: str
    kind: Literal["points", "box"]
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None

    @property
    def source(self) -> str:
        """How the result reports the mask's origin: ``sam:points`` or ``sam:box``."""
        return f"sam:{self.kind}"


def needs_segmenter(region: Any) -> bool:
    """Whether ``region`` is given as points or as a box with ``segment: true``."""
    return getattr(region, "points", None) is not None or (
        getattr(region, "box", None) is not None and bool(getattr(region, "segment", False))
    )


def no_segmenter_error(field: str, rid: str, kind: str) -> RegionError:
    """The error for a points or segment-box region when no segmenter is configured."""
    what = "points become a mask" if kind == "points" else "segment: true turns a box into a mask"
    alternative = (
        "or give the region as a mask, rle, polygon, scribble or box"
        if kind == "points"
        else "or leave segment out to use the box as a filled rectangle"
    )
    return RegionError(
        f"{what} only with a segmenter, and this server has none: {SEGMENTER_HINT}; {alternative} (region id {rid!r})",
        field=field,
    )


def _points(region: Any, size: tuple[int, int], field: str, rid: str) -> SegmentPrompt:
    width, height = size
    points = region.points
    where = f"{field}.points"
    if not isinstance(points, (list, tuple)) or not points:
        raise region_error(where, rid, "points is empty; give at least one [x, y] point on the object")
    if len(points) > MAX_POINTS:
        raise region_error(where, rid, f"at most {MAX_POINTS} points per region; {len(points)} were given")
    checked: list[tuple[float, float]] = []
    for k, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise region_error(f"{where}[{k}]", rid, "each point must be [x, y] (two numbers, pixels)")
        try:
            x, y = float(point[0]), float(point[1])
        except (TypeError, ValueError) as exc:
            raise region_error(f"{where}[{k}]", rid, "point coordinates must be numbers") from exc
        if not (math.isfinite(x) and math.isfinite(y)):
            raise region_error(f"{where}[{k}]", rid, "point coordinates must be finite numbers")
        if not (0 <= x < width and 0 <= y < height):
            raise region_error(
                f"{where}[{k}]",
                rid,
                f"point [{x:g}, {y:g}] lies outside the {width}x{height} image (x in [0, {width}), y in [0, {height}))",
            )
        checked.append((x, y))
    labels = region.labels
    if labels is None:
        labels = [1] * len(checked)
    if len(labels) != len(checked):
        raise region_error(
            f"{field}.labels", rid, f"labels has {len(labels)} entries but points has {len(checked)}; one per point"
        )
    if any(label not in (0, 1) for label in labels):
        raise region_error(f"{field}.labels", rid, "labels must be 1 (on the object) or 0 (not on it)")
    if 1 not in labels:
        raise region_error(f"{field}.labels", rid, "at least one point must be on the object (label 1)")
    return SegmentPrompt(id=rid, field=where, kind="points", points=tuple(checked), labels=tuple(labels))


def _box(region: Any, size: tuple[int, int], field: str, rid: str) -> SegmentPrompt:
    width, height = size
    where = f"{field}.box"
    x1, y1, x2, y2 = checked_box(region.box, size, where, rid)
    cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))
    return SegmentPrompt(id=rid, field=where, kind="box", box=(cx1, cy1, cx2, cy2))


def segment_prompt(region: Any, image_size: tuple[int, int], *, field: str, rid: str) -> SegmentPrompt:
    """Check a points region or a segment-box region against the image (``(width, height)``).

    Raises:
        RegionError: naming the field (``…points[k]`` for a point outside the image, ``…labels`` for labels that do
            not match, ``…box`` for a box off the image).
    """
    if getattr(region, "points", None) is not None:
        return _points(region, image_size, field, rid)
    return _box(region, image_size, field, rid)
