"""Decode and validate regions into boolean masks; boxes; overlay drawing.

A :class:`~gar_tools.inputs.Region` comes in one of six formats (mask image, COCO RLE, polygons,
box, points, scribble). :func:`decode_regions` turns each into a boolean ``H x W`` mask the size of the image,
checked against it, and raises :class:`~gar_tools.errors.RegionError` naming the region (index and id) and
the field when something does not fit. :func:`draw_overlay` renders the regions on the image so a
caller can see what the model was shown. Points and boxes with ``segment: true`` need a segmenter: with
``segmenter=True`` they come back as :class:`~gar_tools.segment.prompts.SegmentPrompt` (checked against the image),
for the engine to turn into masks on its model thread (:mod:`gar_tools.segment.resolve`); without, they are an error
that says how to enable one.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont
from pycocotools import mask as mask_utils

from gar_tools.errors import ImageError, RegionError
from gar_tools.images import ImagePolicy, decode_image_bytes, read_source_bytes
from gar_tools.inputs import (
    MAX_REGIONS,
    REGION_ID_PATTERN,
    RLE,
    SCRIBBLE_WIDTH_DEFAULT,
    Region,
    exactly_one_format,
    too_many_regions,
)
from gar_tools.pixels import checked_box, checked_coordinates, region_error
from gar_tools.segment.prompts import SegmentPrompt, needs_segmenter, no_segmenter_error, segment_prompt
from gar_tools.segment.scribble import rasterize_scribble

__all__ = [
    "MAX_REGIONS",
    "OVERLAY_PALETTE",
    "DecodedRegion",
    "decode_region",
    "decode_regions",
    "mask_box",
    "mask_read_error",
    "mask_rle",
    "max_rle_chars",
    "draw_overlay",
    "encode_png_base64",
]

OVERLAY_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),  # red
    (60, 180, 75),  # green
    (0, 130, 200),  # blue
    (255, 225, 25),  # yellow
    (145, 30, 180),  # purple
    (245, 130, 48),  # orange
    (70, 240, 240),  # cyan
    (240, 50, 230),  # magenta
)
"""Region colours for :func:`draw_overlay`, in region order (distinct, colour-blind-friendlier first five)."""

_ID_RE = re.compile(REGION_ID_PATTERN)
_RLE_MAX_GROUPS = 6  # 6 five-bit groups hold any signed count up to 2**29, far beyond max_pixels
_RLE_BLOCK_CHARS = 1 << 16  # characters of a compressed RLE string decoded at once (~3 MiB of temporaries)
_MASK_BLOCK_PIXELS = 1 << 18  # pixels of a mask image compared at once
_FILL_ALPHA = 0.4


@dataclass(frozen=True)
class DecodedRegion:
    """A region decoded against an image.

    Attributes:
        id: the region's id (given, or ``r{index}`` by position).
        mask: boolean array of shape ``(H, W)``, True inside the region.
        box: ``(x_min, y_min, x_max + 1, y_max + 1)`` of the mask in pixels (end-exclusive), so feeding it back
            as a ``box`` region gives the same rectangle.
        area: number of pixels inside the region.
        source: where the mask came from: ``mask``, ``rle``, ``polygon``, ``scribble``, ``box`` (the format given),
            or ``sam:points`` / ``sam:box`` (cut out by the segmenter).
        score: the segmenter's predicted IoU of the mask (``sam:*`` only).
    """

    id: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    area: int
    source: str = "mask"
    score: float | None = None

    @property
    def from_caller(self) -> bool:
        """Whether the mask is exactly what the caller sent (a mask image or RLE), rather than one we drew."""
        return self.source in ("mask", "rle")


def mask_read_error(exc: ImageError, field: str, region_id: str) -> RegionError:
    """The :class:`RegionError` for a mask image that could not be read (``exc`` names the reason)."""
    return region_error(field, region_id, "mask " + exc.reason)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x_min, y_min, x_max + 1, y_max + 1)`` of the True pixels of a 2-D mask (end-exclusive).

    Raises:
        ValueError: if the mask is not 2-D or has no True pixel.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        raise ValueError("mask is empty")
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def mask_rle(mask: np.ndarray) -> dict[str, object]:
    """``mask`` as compressed COCO RLE: ``{"size": [H, W], "counts": str}`` (what pycocotools' ``encode`` writes)."""
    encoded = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


# --- formats -------------------------------------------------------------------------------------------------------


def _decode_mask(source: str, size: tuple[int, int], policy: ImagePolicy, field: str, rid: str) -> np.ndarray:
    width, height = size
    try:
        data = read_source_bytes(source, policy, field=field)
        image = decode_image_bytes(data, policy, field=field)
    except ImageError as exc:
        raise mask_read_error(exc, field, rid) from exc
    del data
    if image.size != (width, height):
        raise region_error(
            field,
            rid,
            f"mask is {image.width}x{image.height} (W x H) but the image is {width}x{height}; "
            "a mask must be exactly the image's size",
        )
    if image.mode not in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Colour masks: inside where any colour channel is non-zero; alpha is ignored (many tools save opaque RGBA).
        # The brightest channel is built one channel at a time, so a colour mask costs ~3 bytes/pixel on top of
        # its decoded image, not an RGB copy plus a numpy copy of it.
        rgb = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
        del image
        image = ImageChops.lighter(ImageChops.lighter(rgb.getchannel(0), rgb.getchannel(1)), rgb.getchannel(2))
        del rgb
    # Row blocks: a 32-bit mask is never copied whole into numpy.
    out = np.empty((height, width), dtype=bool)
    rows = max(1, _MASK_BLOCK_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        np.not_equal(np.asarray(image.crop((0, top, width, bottom))), 0, out=out[top:bottom])
    return out


class _MalformedRLE(ValueError):
    """A compressed RLE string that is not what pycocotools' encoder writes."""


def max_rle_chars(height: int, width: int) -> int:
    """The longest compressed COCO RLE string a ``height x width`` mask can need: ``H·W + H·W/8 + 32`` characters.

    A mask has at most ``H·W + 1`` runs (only the first may be empty). Runs after the third are written as the
    difference to the run two before, in 5-bit groups: a difference below 16 takes one character and every further
    character needs a run at least 16 times longer, which the ``H·W`` total leaves room for at most ``H·W/8`` times;
    the first three runs take at most 6 characters each.
    """
    total = height * width
    return total + total // 8 + 32


def _compressed_runs(counts: str) -> Iterator[np.ndarray]:
    """The run lengths of a compressed COCO RLE string, as int64 arrays, block by block (vectorised
    ``rleFrString`` of pycocotools; memory about 40 bytes per character of one block, whatever the string's length).

    Raises:
        _MalformedRLE: for characters outside the alphabet, a count longer than 6 characters, or a string ending
            inside a count.
    """
    n = len(counts)
    pos = 0
    done = 0  # runs yielded so far
    last = [0, 0]  # the latest run value of even and odd index
    while pos < n:
        piece = counts[pos : pos + max(_RLE_BLOCK_CHARS, _RLE_MAX_GROUPS)]  # a whole count always fits
        try:
            raw = np.frombuffer(piece.encode("ascii"), dtype=np.uint8)
        except UnicodeEncodeError as exc:
            raise _MalformedRLE("non-ASCII character") from exc
        if int(raw.min()) < 48 or int(raw.max()) > 48 + 63:
            raise _MalformedRLE("character outside the RLE alphabet")
        c = (raw - 48).astype(np.int64)
        ends = np.flatnonzero((c & 0x20) == 0)
        if ends.size == 0:
            raise _MalformedRLE("count without an end")
        if pos + len(piece) >= n and ends[-1] != len(piece) - 1:
            raise _MalformedRLE("ends inside a count")
        c = c[: ends[-1] + 1]
        starts = np.concatenate(([0], ends[:-1] + 1))
        lengths = ends - starts + 1
        if int(lengths.max()) > _RLE_MAX_GROUPS:
            raise _MalformedRLE("count longer than any mask needs")
        shift = 5 * (np.arange(c.size) - np.repeat(starts, lengths))
        x = np.add.reduceat((c & 0x1F) << shift, starts)
        negative = (c[ends] & 0x10) != 0
        x[negative] -= np.left_shift(1, 5 * lengths[negative])
        # Runs from the fourth on are differences to the run two before.
        index = done + np.arange(x.size)
        for parity in (0, 1):
            chosen = np.flatnonzero((index % 2 == parity) & (index >= 3))
            if chosen.size:
                first = int(index[chosen[0]]) - 2
                base = x[first - done] if first >= done else last[parity]
                x[chosen] = base + np.cumsum(x[chosen])
            same = np.flatnonzero(index % 2 == parity)
            if same.size:
                last[parity] = int(x[same[-1]])
        done += x.size
        pos += int(ends[-1]) + 1
        yield x


def _runs_into_mask(blocks: Iterable[np.ndarray], height: int, width: int, field: str, rid: str) -> np.ndarray:
    """Expand COCO run lengths (outside first, column-major) to an ``(H, W)`` bool mask, checking they are not
    negative and sum to ``H·W`` without ever writing past it. Peak memory: 2 bytes per pixel."""
    total = height * width
    edges = np.zeros(total + 1, dtype=np.int8)  # +1 where an inside run starts, -1 where it ends
    pos = 0
    done = 0
    for runs in blocks:
        if runs.size == 0:
            continue
        if int(runs.min()) < 0:
            raise region_error(f"{field}.counts", rid, "counts contain a negative run length")
        ends = pos + np.cumsum(runs)
        if pos <= total:
            inside = np.flatnonzero((((done + np.arange(runs.size)) % 2) == 1) & (runs > 0) & (ends <= total))
            edges[ends[inside] - runs[inside]] += 1
            edges[ends[inside]] -= 1
        pos = int(ends[-1])
        done += runs.size
    if pos != total:
        raise region_error(
            f"{field}.counts",
            rid,
            f"run lengths sum to {pos}, but must sum to H*W = {height}*{width} = {total}",
        )
    np.cumsum(edges, dtype=np.int8, out=edges)
    flat = edges[:total].view(np.bool_)
    return np.ascontiguousarray(flat.reshape(width, height).T)


def _decode_rle(rle: RLE, size: tuple[int, int], field: str, rid: str) -> np.ndarray:
    width, height = size
    rle_size = getattr(rle, "size", None)
    counts = getattr(rle, "counts", None)
    if (
        not isinstance(rle_size, (list, tuple))
        or len(rle_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in rle_size)
    ):
        raise region_error(f"{field}.size", rid, f"size must be two positive ints [height, width], got {rle_size!r}")
    if list(rle_size) != [height, width]:
        raise region_error(
            field, rid, f"size {list(rle_size)} does not match the image (H={height}, W={width}); size is [H, W]"
        )
    total = height * width
    if isinstance(counts, str):
        limit = max_rle_chars(height, width)
        if len(counts) > limit:
            raise region_error(
                f"{field}.counts",
                rid,
                f"counts is {len(counts):,} characters long; a {height}x{width} mask never needs more than "
                f"{limit:,} (H*W*9/8 + 32)",
            )
        try:
            return _runs_into_mask(_compressed_runs(counts), height, width, field, rid)
        except _MalformedRLE as exc:
            raise region_error(
                f"{field}.counts",
                rid,
                f"counts is not a valid compressed COCO RLE string (as from pycocotools encode): {exc}",
            ) from exc
    if isinstance(counts, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            raise region_error(f"{field}.counts", rid, "uncompressed counts must be a list of non-negative ints")
        if len(counts) > total + 1:
            raise region_error(
                f"{field}.counts",
                rid,
                f"counts has {len(counts):,} runs; a mask of H*W = {total:,} pixels has at most H*W + 1",
            )
        if any(v < 0 for v in counts):
            raise region_error(f"{field}.counts", rid, "counts contain a negative run length")
        if sum(counts) != total:
            raise region_error(
                f"{field}.counts",
                rid,
                f"run lengths sum to {sum(counts)}, but must sum to H*W = {height}*{width} = {total}",
            )
        return _runs_into_mask([np.asarray(counts, dtype=np.int64)], height, width, field, rid)
    raise region_error(
        f"{field}.counts", rid, f"counts must be a compressed string or a list of ints, got {type(counts).__name__}"
    )


def _decode_polygon(polygons: object, size: tuple[int, int], field: str, rid: str) -> np.ndarray:
    width, height = size
    if not isinstance(polygons, (list, tuple)) or not polygons:
        raise region_error(field, rid, "polygon must be a non-empty list of polygons, each [x0, y0, x1, y1, ...]")
    flat: list[list[float]] = []
    for k, poly in enumerate(polygons):
        where = f"{field}[{k}]"
        coords = checked_coordinates(poly, size, where, rid, "polygon")
        if len(coords) < 6:
            raise region_error(where, rid, f"has {len(coords) // 2} points; a polygon needs at least 3 (6 numbers)")
        flat.append(coords)
    merged = mask_utils.merge(mask_utils.frPyObjects(flat, height, width))
    try:
        return _runs_into_mask(_compressed_runs(merged["counts"].decode("ascii")), height, width, field, rid)
    except (_MalformedRLE, RegionError) as exc:  # pycocotools produced something unexpected
        raise region_error(field, rid, "polygon could not be rasterized") from exc


def _decode_box(box: object, size: tuple[int, int], field: str, rid: str) -> np.ndarray:
    width, height = size
    x1, y1, x2, y2 = checked_box(box, size, field, rid)
    c0, c1 = max(math.floor(x1), 0), min(math.ceil(x2), width)
    r0, r1 = max(math.floor(y1), 0), min(math.ceil(y2), height)
    mask = np.zeros((height, width), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def _decode_scribble(polylines: object, width: object, size: tuple[int, int], field: str, rid: str) -> np.ndarray:
    image_width, image_height = size
    if not isinstance(polylines, (list, tuple)) or not polylines:
        raise region_error(field, rid, "scribble must be a non-empty list of strokes, each [x0, y0, x1, y1, ...]")
    stroke = SCRIBBLE_WIDTH_DEFAULT if width is None else width
    if not isinstance(stroke, (int, float)) or not math.isfinite(stroke) or stroke <= 0:
        raise region_error(field.rsplit(".", 1)[0] + ".width", rid, "width must be a positive number of pixels")
    lines: list[list[float]] = []
    for k, line in enumerate(polylines):
        where = f"{field}[{k}]"
        coords = checked_coordinates(line, size, where, rid, "stroke")
        lines.append(coords)
    return rasterize_scribble(lines, float(stroke), size)


def decode_region(
    region: Region,
    image_size: tuple[int, int],
    *,
    index: int,
    policy: ImagePolicy,
    field: str,
    segmenter: bool = False,
) -> DecodedRegion | SegmentPrompt:
    """Decode one region to a boolean mask of the image's size and validate it.

    Args:
        region: the region (exactly one of ``mask``, ``rle``, ``polygon``, ``box``).
        image_size: ``(width, height)`` of the image, as ``PIL.Image.size``.
        index: the region's position; its default id is ``r{index}``.
        policy: limits for reading ``mask`` images (same as for the image).
        field: the request field naming this region in errors, e.g. ``"regions[1]"`` or ``"region"``.
        segmenter: whether a segmenter will turn points and ``segment: true`` boxes into masks. If so they are
            checked and returned as a :class:`SegmentPrompt`; if not they are a :class:`RegionError`.

    Formats:
        ``mask``: an image (path / data URI / base64) exactly the image's size; non-zero (non-black) = inside.
        ``rle``: COCO RLE ``{"size": [H, W], "counts": str | list[int]}``.
        ``polygon``: list of flat ``[x0, y0, x1, y1, ...]`` polygons in pixels (COCO style), unioned.
        ``box``: ``[x1, y1, x2, y2]`` pixels; fills columns ``floor(x1)..ceil(x2)-1`` and rows
        ``floor(y1)..ceil(y2)-1``, clipped to the image. A box is an approximation: GAR was trained on masks.
        On an image larger than 2×2, a box whose four values all lie in [0, 1] is refused as normalised
        coordinates (an error that says boxes are in pixels).
        ``box`` with ``segment: true`` and ``points`` (``[[x, y], ...]``, optional ``labels``): need a segmenter.
        ``scribble``: strokes ``[[x0, y0, x1, y1, ...], ...]`` painted ``width`` pixels wide
        (:func:`~gar_tools.segment.scribble.rasterize_scribble`).

    Raises:
        RegionError: naming ``field`` (and sub-field) and the region's id, when the region is malformed,
            does not fit the image, or is empty.
    """
    width, height = image_size
    rid = region.id if region.id is not None else f"r{index}"
    if not isinstance(rid, str) or not _ID_RE.fullmatch(rid):
        raise region_error(
            f"{field}.id", str(rid), "id must start with a letter or _, then up to 31 letters, digits, _ . or -"
        )
    try:
        kind = exactly_one_format(region)
    except ValueError as exc:
        raise region_error(field, rid, str(exc)) from None
    sub = f"{field}.{kind}"
    if needs_segmenter(region):
        if not segmenter:
            raise no_segmenter_error(f"{sub}" if kind == "points" else f"{field}.segment", rid, kind)
        return segment_prompt(region, (width, height), field=field, rid=rid)
    if kind == "mask":
        mask = _decode_mask(region.mask, (width, height), policy, sub, rid)
    elif kind == "rle":
        mask = _decode_rle(region.rle, (width, height), sub, rid)
    elif kind == "polygon":
        mask = _decode_polygon(region.polygon, (width, height), sub, rid)
    elif kind == "scribble":
        mask = _decode_scribble(region.scribble, getattr(region, "width", None), (width, height), sub, rid)
    else:
        mask = _decode_box(region.box, (width, height), sub, rid)
    area = int(np.count_nonzero(mask))
    if area == 0:
        raise region_error(sub, rid, f"region is empty: its {kind} covers no pixel of the {width}x{height} image")
    return DecodedRegion(id=rid, mask=mask, box=mask_box(mask), area=area, source=kind)


def decode_regions(
    regions: Sequence[Region],
    image_size: tuple[int, int],
    *,
    policy: ImagePolicy,
    field: str = "regions",
    fields: Sequence[str] | None = None,
    min_count: int = 1,
    max_count: int = MAX_REGIONS,
    segmenter: bool = False,
) -> list[DecodedRegion | SegmentPrompt]:
    """Decode and validate a list of regions (see :func:`decode_region`), in order.

    Checks the count (``min_count`` to ``max_count``; GAR has 5 prompt slots, so never more than
    :data:`MAX_REGIONS`) and that ids are unique before decoding. Errors about the list name ``field``; errors
    about region ``i`` name ``fields[i]`` (default ``field[i]``). With ``segmenter=True``, points and
    ``segment: true`` boxes come back as :class:`SegmentPrompt` (see :func:`decode_region`); without, every item is a
    :class:`DecodedRegion`.

    Raises:
        RegionError: for a wrong count, duplicate ids, or any region :func:`decode_region` rejects.
    """
    count = len(regions)
    names = list(fields) if fields is not None else [f"{field}[{i}]" for i in range(count)]
    if count > max_count:
        if max_count >= MAX_REGIONS:
            message = too_many_regions(count)
        else:
            message = f"at most {max_count} region{'s' if max_count != 1 else ''} allowed here; {count} were given"
        raise RegionError(message, field=field)
    if count < min_count:
        raise RegionError(
            f"at least {min_count} region{'s' if min_count != 1 else ''} required; {count} given", field=field
        )
    seen: dict[str, int] = {}
    for i, region in enumerate(regions):
        rid = region.id if region.id is not None else f"r{i}"
        if rid in seen:
            raise region_error(
                f"{names[i]}.id",
                rid,
                f"id {rid!r} is already used by {names[seen[rid]]}; ids must be unique "
                "(regions without an id get r0, r1, ... by position)",
            )
        seen[rid] = i
    return [
        decode_region(region, image_size, index=i, policy=policy, field=names[i], segmenter=segmenter)
        for i, region in enumerate(regions)
    ]


# --- overlay -------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, TypeError, ValueError):
        return ImageFont.load_default()


def _outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels of ``mask`` on its contour (inside, next to outside), thickened to about ``thickness`` px."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = mask & ~interior
    if thickness > 1:
        size = thickness if thickness % 2 else thickness + 1
        grown = Image.fromarray(edge.astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(size))
        edge = np.asarray(grown) > 0
    return edge


def draw_overlay(image: Image.Image, regions: Sequence[DecodedRegion]) -> bytes:
    """Render ``regions`` on ``image`` and return it as PNG bytes (the image's size, RGB).

    Each region is filled translucently in its own colour from :data:`OVERLAY_PALETTE` (by position),
    outlined along its mask contour, and labelled with its id near the top-left of its box, on a
    background of the region's colour so the label stays readable. Later regions are drawn over earlier ones.
    """
    base = image.convert("RGB")
    width, height = base.size
    canvas = np.array(base, dtype=np.uint8)
    thickness = max(2, round(min(width, height) / 300))
    margin = thickness + 1
    for i, region in enumerate(regions):
        if region.mask.shape != (height, width):
            raise ValueError(f"region {region.id!r} mask shape {region.mask.shape} != image (H, W) {(height, width)}")
        colour = np.array(OVERLAY_PALETTE[i % len(OVERLAY_PALETTE)], dtype=np.float32)
        # Work on the region's box plus a margin only: cheap on large images.
        x0, y0, x1, y1 = region.box
        rows = slice(max(y0 - margin, 0), min(y1 + margin, height))
        cols = slice(max(x0 - margin, 0), min(x1 + margin, width))
        inside = region.mask[rows, cols].astype(bool)
        patch = canvas[rows, cols].astype(np.float32)
        patch[inside] = patch[inside] * (1.0 - _FILL_ALPHA) + colour * _FILL_ALPHA
        patch[_outline(inside, thickness)] = colour
        canvas[rows, cols] = np.clip(patch + 0.5, 0, 255).astype(np.uint8)
    out = Image.fromarray(canvas)

    draw = ImageDraw.Draw(out)
    font = _font(max(12, round(min(width, height) / 40)))
    pad = max(2, thickness)
    for i, region in enumerate(regions):
        colour = OVERLAY_PALETTE[i % len(OVERLAY_PALETTE)]
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        text_colour = (0, 0, 0) if luminance > 140 else (255, 255, 255)
        left, top, right, bottom = draw.textbbox((0, 0), region.id, font=font)
        text_w, text_h = right - left, bottom - top
        label_w, label_h = text_w + 2 * pad, text_h + 2 * pad
        x0, y0 = region.box[0], region.box[1] - label_h
        if y0 < 0:  # no room above the box: put the label just inside its top edge
            y0 = region.box[1]
        x0 = min(max(x0, 0), max(width - label_w, 0))
        y0 = min(max(y0, 0), max(height - label_h, 0))
        draw.rectangle((x0, y0, x0 + label_w - 1, y0 + label_h - 1), fill=colour)
        draw.text((x0 + pad - left, y0 + pad - top), region.id, fill=text_colour, font=font)

    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_png_base64(data: bytes) -> str:
    """Standard base64 (ASCII, no line breaks) of PNG bytes, e.g. for a result's ``overlay_png``."""
    return base64.b64encode(data).decode("ascii")
