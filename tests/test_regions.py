"""Tests for gar_tools.regions: every region format, every error, GAR-Bench RLEs, overlays."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from gar_tools import regions as regions_module
from gar_tools.errors import RegionError
from gar_tools.images import MEMORY_BYTES_PER_PIXEL, MEMORY_OVERHEAD_BYTES, ImagePolicy, load_image
from gar_tools.inputs import RLE, Region
from gar_tools.regions import (
    MAX_REGIONS,
    OVERLAY_PALETTE,
    DecodedRegion,
    decode_region,
    decode_regions,
    draw_overlay,
    encode_png_base64,
    mask_box,
    max_rle_chars,
)

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "gar_tools" / "assets"
BENCH = ROOT / "tests" / "data" / "gar-bench-sample"
POLICY = ImagePolicy()
DEMO_SIZE = (1024, 770)  # (W, H) of demo_image_1.png


@pytest.fixture(scope="module")
def demo_mask() -> np.ndarray:
    arr = np.asarray(Image.open(ASSETS / "demo_mask_1.png").convert("L")) > 0
    assert arr.shape == (770, 1024) and arr.any()
    return arr


def _png(arr: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, format="PNG")
    return buffer.getvalue()


def _compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0, *counts]
    return counts


def _decode(region: Region, size: tuple[int, int] = DEMO_SIZE, index: int = 0) -> DecodedRegion:
    return decode_region(region, size, index=index, policy=POLICY, field=f"regions[{index}]")


def _check(decoded: DecodedRegion, expected: np.ndarray) -> None:
    assert decoded.mask.dtype == bool
    assert decoded.mask.shape == expected.shape
    assert np.array_equal(decoded.mask, expected)
    assert decoded.area == int(expected.sum())
    assert decoded.box == mask_box(expected)


# --- every format against the same mask -----------------------------------------------------------------------------


def test_mask_from_path(demo_mask: np.ndarray) -> None:
    decoded = _decode(Region(mask=str(ASSETS / "demo_mask_1.png")))
    _check(decoded, demo_mask)
    assert decoded.id == "r0"


def test_mask_from_base64_and_data_uri(demo_mask: np.ndarray) -> None:
    b64 = base64.b64encode((ASSETS / "demo_mask_1.png").read_bytes()).decode()
    _check(_decode(Region(mask=b64)), demo_mask)
    _check(_decode(Region(mask="data:image/png;base64," + b64)), demo_mask)


@pytest.mark.parametrize("mode", ["L", "1", "RGB", "RGBA", "P"])
def test_mask_modes(tmp_path: Path, demo_mask: np.ndarray, mode: str) -> None:
    image = Image.fromarray(demo_mask.astype(np.uint8) * 255).convert(mode)
    path = tmp_path / f"mask_{mode}.png"
    image.save(path)
    _check(_decode(Region(mask=str(path))), demo_mask)


def test_mask_non_zero_is_inside(tmp_path: Path) -> None:
    arr = np.zeros((10, 12), dtype=np.uint8)
    arr[2, 3] = 1  # a value of 1 (not 255) still counts
    arr[5, 7] = 200
    path = tmp_path / "m.png"
    Image.fromarray(arr).save(path)
    decoded = _decode(Region(mask=str(path)), size=(12, 10))
    assert decoded.area == 2 and decoded.mask[2, 3] and decoded.mask[5, 7]


def test_rle_compressed(demo_mask: np.ndarray) -> None:
    rle = _compressed_rle(demo_mask)
    _check(_decode(Region(rle=RLE(**rle))), demo_mask)


def test_rle_uncompressed(demo_mask: np.ndarray) -> None:
    counts = _uncompressed_counts(demo_mask)
    assert sum(counts) == demo_mask.size
    _check(_decode(Region(rle=RLE(size=[770, 1024], counts=counts))), demo_mask)


def test_rle_uncompressed_starting_inside() -> None:
    mask = np.zeros((4, 5), dtype=bool)
    mask[0, 0] = mask[1, 0] = True  # first column starts inside
    counts = _uncompressed_counts(mask)
    assert counts[0] == 0
    _check(_decode(Region(rle=RLE(size=[4, 5], counts=counts)), size=(5, 4)), mask)


@pytest.mark.parametrize("seed", range(5))
def test_rle_random_masks_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 80, size=2)
    mask = rng.random((h, w)) < rng.uniform(0.05, 0.95)
    mask[rng.integers(h), rng.integers(w)] = True
    size = (int(w), int(h))
    _check(_decode(Region(rle=RLE(**_compressed_rle(mask))), size=size), mask)
    _check(_decode(Region(rle=RLE(size=[int(h), int(w)], counts=_uncompressed_counts(mask))), size=size), mask)


def test_polygon_rectangle_and_triangle() -> None:
    size = (80, 60)
    rect = np.zeros((60, 80), dtype=bool)
    rect[20:40, 10:30] = True  # COCO polygons: pixel (x, y) is inside when its centre (x+.5, y+.5) is
    _check(_decode(Region(polygon=[[10, 20, 30, 20, 30, 40, 10, 40]]), size=size), rect)

    tri = np.zeros((60, 80), dtype=bool)
    ys, xs = np.mgrid[0:60, 0:80]
    tri[(xs >= 10) & (ys >= 10) & (xs + ys <= 59)] = True  # right triangle (10.2,10.2) (50.2,10.2) (10.2,50.2)
    _check(_decode(Region(polygon=[[10.2, 10.2, 50.2, 10.2, 10.2, 50.2]]), size=size), tri)

    both = rect | tri
    polygon = [[10, 20, 30, 20, 30, 40, 10, 40], [10.2, 10.2, 50.2, 10.2, 10.2, 50.2]]
    _check(_decode(Region(polygon=polygon), size=size), both)


def test_polygon_of_demo_mask_box(demo_mask: np.ndarray) -> None:
    x0, y0, x1, y1 = mask_box(demo_mask)
    expected = np.zeros_like(demo_mask)
    expected[y0:y1, x0:x1] = True
    _check(_decode(Region(polygon=[[x0, y0, x1, y0, x1, y1, x0, y1]])), expected)


def test_polygon_partly_outside_is_clipped() -> None:
    expected = np.zeros((20, 30), dtype=bool)
    expected[:10, :15] = True
    _check(_decode(Region(polygon=[[-5, -5, 15, -5, 15, 10, -5, 10]]), size=(30, 20)), expected)


def test_box_round_trips_the_mask_box(demo_mask: np.ndarray) -> None:
    box = mask_box(demo_mask)
    expected = np.zeros_like(demo_mask)
    expected[box[1] : box[3], box[0] : box[2]] = True
    decoded = _decode(Region(box=list(box)))
    _check(decoded, expected)
    assert decoded.box == box  # feeding a box back gives the same rectangle


def test_box_fractional_and_clipped() -> None:
    decoded = _decode(Region(box=[2.5, 3.2, 7.01, 9.0]), size=(20, 20))
    expected = np.zeros((20, 20), dtype=bool)
    expected[3:9, 2:8] = True  # columns floor(2.5)..ceil(7.01)-1, rows floor(3.2)..ceil(9.0)-1
    _check(decoded, expected)

    clipped = _decode(Region(box=[-10, -10, 5, 1000]), size=(20, 20))
    expected = np.zeros((20, 20), dtype=bool)
    expected[:, :5] = True
    _check(clipped, expected)
    assert clipped.box == (0, 0, 5, 20)


def test_ids_default_by_position_and_explicit_ids_kept() -> None:
    regions = [Region(box=[0, 0, 2, 2]), Region(id="dog", box=[1, 1, 3, 3]), Region(box=[2, 2, 4, 4])]
    decoded = decode_regions(regions, (10, 10), policy=POLICY)
    assert [d.id for d in decoded] == ["r0", "dog", "r2"]
    assert [d.area for d in decoded] == [4, 4, 4]


def test_decoded_region_is_frozen() -> None:
    decoded = _decode(Region(box=[0, 0, 2, 2]), size=(4, 4))
    with pytest.raises(AttributeError):
        decoded.id = "x"  # type: ignore[misc]


# --- GAR-Bench sample ---------------------------------------------------------------------------------------------


def test_gar_bench_rles_decode_to_image_size() -> None:
    items = json.loads((BENCH / "items.json").read_text())
    assert items
    for item in items:
        image = load_image(str(BENCH / item["image"]))
        rles = item["mask_rles"]
        for i, rle in enumerate(rles):
            decoded = decode_region(Region(rle=RLE(**rle)), image.size, index=i, policy=POLICY, field=f"regions[{i}]")
            assert decoded.mask.shape == (image.height, image.width)
            assert decoded.area > 0
            assert decoded.area == int(mask_utils.area(rle | {"counts": rle["counts"].encode()}))
        regions = [Region(rle=RLE(**rle)) for rle in rles]
        if len(rles) <= MAX_REGIONS:
            assert len(decode_regions(regions, image.size, policy=POLICY)) == len(rles)
        else:  # the sample holds an item with more regions than GAR has prompt slots
            with pytest.raises(RegionError, match="at most 5 regions per call"):
                decode_regions(regions, image.size, policy=POLICY)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode warns under numpy 2
def test_decoding_matches_pycocotools_decode() -> None:
    for item in json.loads((BENCH / "items.json").read_text()):
        for rle in item["mask_rles"]:
            h, w = rle["size"]
            ours = decode_region(Region(rle=RLE(**rle)), (w, h), index=0, policy=POLICY, field="region").mask
            theirs = mask_utils.decode(rle | {"counts": rle["counts"].encode()}).astype(bool)
            assert np.array_equal(ours, theirs)
    polygon = [[5.3, 7.1, 70.6, 12.2, 40.4, 55.8], [60, 40, 79, 40, 79, 59]]
    ours = _decode(Region(polygon=polygon), size=(80, 60)).mask
    theirs = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygon, 60, 80))).astype(bool)
    assert np.array_equal(ours, theirs)


# --- errors -------------------------------------------------------------------------------------------------------


def _decode_many_error(regions: list[Region], size: tuple[int, int] = (32, 24), **kwargs: object) -> RegionError:
    with pytest.raises(RegionError) as info:
        decode_regions(regions, size, policy=POLICY, **kwargs)  # type: ignore[arg-type]
    return info.value


def _second_region_error(region: Region, size: tuple[int, int] = (32, 24)) -> RegionError:
    """Decode [a valid region, region] and return the error, which must name regions[1] and the region's id."""
    error = _decode_many_error([Region(box=[0, 0, 4, 4]), region], size)
    assert error.field is not None and error.field.startswith("regions[1]"), error.field
    assert str(error).startswith("regions[1]")
    rid = region.id or "r1"
    assert f"region id '{rid}'" in str(error)
    return error


def test_mask_size_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.full((10, 10), 255, dtype=np.uint8)).save(path)
    error = _second_region_error(Region(id="cat", mask=str(path)))
    assert error.field == "regions[1].mask"
    assert "mask is 10x10 (W x H) but the image is 32x24" in str(error)


def test_empty_mask(tmp_path: Path) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(np.zeros((24, 32), dtype=np.uint8)).save(path)
    error = _second_region_error(Region(mask=str(path)))
    assert error.field == "regions[1].mask"
    assert "empty" in str(error)


def test_mask_source_unreadable(tmp_path: Path) -> None:
    error = _second_region_error(Region(mask=str(tmp_path / "missing.png")))
    assert error.field == "regions[1].mask"
    assert "not an existing file, data: URI, base64 or URL" in str(error)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    error = _second_region_error(Region(mask=str(bad)))
    assert "not a readable image" in str(error)


def test_mask_outside_allowed_dirs(tmp_path: Path) -> None:
    (tmp_path / "allowed").mkdir()
    path = tmp_path / "m.png"
    Image.fromarray(np.full((24, 32), 255, dtype=np.uint8)).save(path)
    policy = ImagePolicy(allowed_dirs=(tmp_path / "allowed",))
    with pytest.raises(RegionError, match="outside the allowed folders") as info:
        decode_region(Region(mask=str(path)), (32, 24), index=0, policy=policy, field="region")
    assert info.value.field == "region.mask"


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([40, 0, 50, 10], "lies outside the 32x24 image"),
        ([-10, -10, -1, -1], "lies outside the 32x24 image"),
        ([0, 30, 10, 40], "lies outside the 32x24 image"),
        ([5, 5, 5, 10], "needs x2 > x1 and y2 > y1"),
        ([8, 5, 4, 10], "needs x2 > x1 and y2 > y1"),
        ([0, 9, 10, 3], "needs x2 > x1 and y2 > y1"),
    ],
)
def test_bad_boxes(box: list[float], message: str) -> None:
    error = _second_region_error(Region(box=box))
    assert error.field == "regions[1].box"
    assert message in str(error)


def test_normalised_box_is_refused_with_pixels_hint() -> None:
    error = _second_region_error(Region(box=[0.1, 0.1, 0.9, 0.9]))
    assert error.field == "regions[1].box"
    assert "normalised coordinates" in str(error) and "pixels of the 32x24 image" in str(error)
    assert "[3, 2, 29, 22]" in str(error)  # the box in pixels, as a hint
    # a 2x2 image (or smaller) has no other way to name its pixels
    assert decode_region(Region(box=[0, 0, 1, 1]), (2, 2), index=0, policy=POLICY, field="region").area == 1


def test_non_finite_box_and_polygon() -> None:
    error = _second_region_error(Region.model_construct(id=None, box=[0, 0, float("nan"), 3]))
    assert "finite" in str(error)
    polygon = [[0, 0, 5, 0, float("inf"), 5]]
    error = _second_region_error(Region.model_construct(id=None, polygon=polygon))
    assert error.field == "regions[1].polygon[0]"
    assert "finite" in str(error)


def test_rle_size_mismatch_message() -> None:
    mask = np.ones((480, 640), dtype=bool)
    region = Region(rle=RLE(**_compressed_rle(mask)))
    error = _decode_many_error([Region(box=[0, 0, 2, 2]), region], size=(768, 512))
    assert error.field == "regions[1].rle"
    assert str(error).startswith("regions[1].rle: size [480, 640] does not match the image (H=512, W=768)")
    assert "region id 'r1'" in str(error)


@pytest.mark.parametrize("size", [[0, 32], [24, -1]])
def test_rle_size_not_positive(size: list[int]) -> None:
    error = _second_region_error(Region(rle=RLE(size=size, counts=[768])))
    assert error.field == "regions[1].rle.size"
    assert "two positive ints" in str(error)


def test_rle_size_wrong_shape_via_construct() -> None:
    rle = RLE.model_construct(size=[24, 32, 3], counts=[768])
    error = _second_region_error(Region.model_construct(id=None, rle=rle))
    assert "two positive ints" in str(error)


@pytest.mark.parametrize(
    "counts",
    [
        "!!!!",  # characters outside the RLE alphabet
        "\u00e9\u00e9",  # non-ASCII
        "o",  # ends inside a multi-character count (continuation bit set)
        "ooooooo0",  # a count longer than any real mask needs
        "2",  # sums to 2, not 768
        "",  # sums to 0
    ],
)
def test_rle_bad_compressed_counts(counts: str) -> None:
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=counts)))
    assert error.field == "regions[1].rle.counts"


def test_rle_negative_compressed_count() -> None:
    # A valid-looking string whose delta coding yields a negative run: 5 outside, 3 inside, then 5 - 6 = -1.
    mask_counts = [5, 3]
    encoded = mask_utils.frPyObjects({"size": [2, 4], "counts": mask_counts}, 2, 4)["counts"].decode()
    # append a delta of -6 (single character: value -6 -> 0x1a with the sign bit set)
    bad = encoded + chr(48 + ((-6) & 0x1F))
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=bad)))
    assert error.field == "regions[1].rle.counts"
    assert "negative" in str(error) or "sum to" in str(error)


def test_rle_uncompressed_counts_wrong_sum_or_negative() -> None:
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=[100, 100])))
    assert error.field == "regions[1].rle.counts"
    assert "sum to 200, but must sum to H*W = 24*32 = 768" in str(error)
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=[800, -32])))
    assert "negative" in str(error)


def test_rle_all_outside_is_empty() -> None:
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=[768])))
    assert error.field == "regions[1].rle"
    assert "empty" in str(error)


@pytest.mark.parametrize(
    ("polygon", "message", "field"),
    [
        ([[0, 0, 10, 0, 10]], "odd number of coordinates (5)", "regions[1].polygon[0]"),
        ([[0, 0, 10, 0, 10, 10], [1, 1, 5, 5]], "a polygon needs at least 3", "regions[1].polygon[1]"),
        ([[0, 0, 1e12, 0, 10, 10]], "far outside", "regions[1].polygon[0]"),
        ([[40, 30, 50, 30, 50, 40]], "empty", "regions[1].polygon"),
    ],
)
def test_bad_polygons(polygon: list[list[float]], message: str, field: str) -> None:
    error = _second_region_error(Region(polygon=polygon))
    assert error.field == field
    assert message in str(error)


def test_empty_polygon_list_via_construct() -> None:
    error = _second_region_error(Region.model_construct(id=None, polygon=[]))
    assert error.field == "regions[1].polygon"


def test_too_many_regions() -> None:
    regions = [Region(box=[i, 0, i + 2, 2]) for i in range(MAX_REGIONS + 1)]
    error = _decode_many_error(regions)
    assert error.field == "regions"
    assert "GAR has 5 prompt slots" in str(error)
    assert "at most 5 regions per call" in str(error)
    assert "6 were given" in str(error)
    assert len(decode_regions(regions[:MAX_REGIONS], (32, 24), policy=POLICY)) == MAX_REGIONS


def test_custom_count_limits() -> None:
    regions = [Region(box=[0, 0, 2, 2])]
    error = _decode_many_error(regions, min_count=2)
    assert error.field == "regions"
    assert "at least 2 regions required; 1 given" in str(error)
    error = _decode_many_error(regions * 2, max_count=1)
    assert "at most 1 region allowed here; 2 were given" in str(error)
    error = _decode_many_error([])
    assert "at least 1 region required; 0 given" in str(error)


def test_duplicate_ids() -> None:
    error = _second_region_error(Region(id="r0", box=[0, 0, 2, 2]))
    assert error.field == "regions[1].id"
    assert "already used by regions[0]" in str(error)
    # an explicit id clashing with a later default id
    error = _decode_many_error([Region(id="r1", box=[0, 0, 2, 2]), Region(box=[0, 0, 2, 2])])
    assert error.field == "regions[1].id"
    assert "region id 'r1'" in str(error)


@pytest.mark.parametrize(
    ("fields", "got"),
    [({}, "got none"), ({"box": [0, 0, 1, 1], "polygon": [[0, 0, 1, 0, 1, 1]]}, "got polygon and box")],
)
def test_none_or_several_formats(fields: dict, got: str) -> None:
    error = _second_region_error(Region.model_construct(id=None, **fields))
    assert error.field == "regions[1]"
    assert "exactly one of mask, rle, polygon, box, points or scribble" in str(error)
    assert got in str(error)


def test_bad_id_via_construct() -> None:
    with pytest.raises(RegionError, match="id must start with") as info:
        decode_region(
            Region.model_construct(id="<bad>", box=[0, 0, 1, 1]), (4, 4), index=0, policy=POLICY, field="region"
        )
    assert info.value.field == "region.id"


def test_single_region_field_name() -> None:
    with pytest.raises(RegionError) as info:
        decode_region(Region(id="dog", box=[50, 50, 60, 60]), (32, 24), index=0, policy=POLICY, field="region")
    assert info.value.field == "region.box"
    assert str(info.value).startswith("region.box: ")
    assert "region id 'dog'" in str(info.value)


# --- mask_box ------------------------------------------------------------------------------------------------------


def test_mask_box() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[3, 4] = mask[7, 9] = True
    assert mask_box(mask) == (4, 3, 10, 8)
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((3, 3), dtype=bool))
    with pytest.raises(ValueError, match="2-D"):
        mask_box(np.zeros(3, dtype=bool))


# --- overlay -------------------------------------------------------------------------------------------------------


def test_overlay(demo_mask: np.ndarray) -> None:
    image = load_image(str(ASSETS / "demo_image_1.png"))
    regions = decode_regions(
        [Region(mask=str(ASSETS / "demo_mask_1.png")), Region(id="sign", box=[10, 10, 200, 100])],
        image.size,
        policy=POLICY,
    )
    png = draw_overlay(image, regions)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    out = Image.open(io.BytesIO(png))
    assert out.format == "PNG"
    assert out.size == image.size
    out_arr = np.asarray(out.convert("RGB")).astype(int)
    orig = np.asarray(image).astype(int)
    for region in regions:
        changed = np.any(out_arr[region.mask] != orig[region.mask], axis=-1)
        assert changed.mean() > 0.95
    far = np.zeros(demo_mask.shape, dtype=bool)
    far[300:500, 300:600] = True  # nowhere near either region or its label
    assert np.array_equal(out_arr[far], orig[far])
    # the outline uses the region's own colour
    first_colour = np.array(OVERLAY_PALETTE[0])
    assert np.any(np.all(out_arr[regions[0].mask] == first_colour, axis=-1))
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), orig)  # input untouched


def test_overlay_small_image_and_edge_regions() -> None:
    image = Image.new("RGB", (16, 12), (128, 128, 128))
    regions = decode_regions(
        [Region(box=[0, 0, 16, 12]), Region(id="corner_region_name", box=[14, 10, 16, 12])],
        image.size,
        policy=POLICY,
    )
    out = Image.open(io.BytesIO(draw_overlay(image, regions)))
    assert out.size == (16, 12)


def test_overlay_rejects_mismatched_mask() -> None:
    region = DecodedRegion(id="r0", mask=np.ones((5, 5), dtype=bool), box=(0, 0, 5, 5), area=25)
    with pytest.raises(ValueError, match="mask shape"):
        draw_overlay(Image.new("RGB", (6, 5)), [region])


def test_encode_png_base64() -> None:
    png = draw_overlay(Image.new("RGB", (8, 8)), [])
    text = encode_png_base64(png)
    assert base64.b64decode(text, validate=True) == png
    assert "\n" not in text


# --- hostile inputs: long RLEs, truncated masks, memory (issue 11) -----------------------------------------------


@pytest.mark.parametrize("block", [1, 2, 7, 64])
def test_rle_decoded_block_by_block_matches_pycocotools(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Blocks as small as one character: counts, signs and deltas carried across block boundaries."""
    monkeypatch.setattr(regions_module, "_RLE_BLOCK_CHARS", block)
    rng = np.random.default_rng(block)
    for size in [(1, 1), (3, 5), (17, 23), (40, 31)]:
        for p in (0.02, 0.5, 0.97):
            mask = rng.random(size) < p
            rle = _compressed_rle(mask)
            theirs = mask_utils.decode(rle | {"counts": rle["counts"].encode()}).astype(bool)
            runs = regions_module._compressed_runs(rle["counts"])
            ours = regions_module._runs_into_mask(runs, size[0], size[1], "region.rle", "r0")
            assert np.array_equal(ours, theirs) and np.array_equal(ours, mask)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (2, 3), (64, 64), (101, 37), (300, 200)])
def test_max_rle_chars_covers_the_longest_masks(height: int, width: int) -> None:
    checker = (np.indices((height, width)).sum(axis=0) % 2).astype(bool)
    rng = np.random.default_rng(0)
    for mask in (checker, ~checker, rng.random((height, width)) < 0.5, np.ones((height, width), dtype=bool)):
        counts = _compressed_rle(mask)["counts"]
        assert len(counts) <= max_rle_chars(height, width)


def test_rle_counts_longer_than_any_mask_needs_are_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("decoded although too long")

    monkeypatch.setattr(regions_module, "_compressed_runs", fail)
    limit = max_rle_chars(24, 32)
    huge = "0" * 40_000_000  # the finding: a 40 M-character counts string
    for counts in (huge, "1" * (limit + 1)):
        error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=counts)))
        assert error.field == "regions[1].rle.counts"
        assert f"never needs more than {limit:,}" in str(error)
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=[1] * (24 * 32 + 2))))
    assert error.field == "regions[1].rle.counts"
    assert "at most H*W + 1" in str(error)


def test_rle_sum_too_large_never_writes_past_the_mask() -> None:
    # 700 outside, then an inside run of 100 that would end past 24*32 = 768.
    counts = mask_utils.frPyObjects({"size": [24, 32], "counts": [700, 100]}, 24, 32)["counts"].decode()
    error = _second_region_error(Region(rle=RLE(size=[24, 32], counts=counts)))
    assert "run lengths sum to 800, but must sum to H*W = 24*32 = 768" in str(error)


def test_truncated_mask_png_is_refused() -> None:
    data = _png(np.full((24, 32), 255, dtype=np.uint8))
    cut = base64.b64encode(data[: -len(b"IEND") - 8]).decode()  # no IEND chunk
    error = _second_region_error(Region(mask=cut))
    assert error.field == "regions[1].mask"
    assert "corrupt or truncated" in str(error)


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "I", "F", "I;16"])
def test_mask_modes_block_by_block(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setattr(regions_module, "_MASK_BLOCK_PIXELS", 64)  # several blocks for a 32x24 mask
    inside = np.zeros((24, 32), dtype=bool)
    inside[3:20, 5:9] = True
    inside[0, 31] = True
    if mode in ("RGBA", "P", "CMYK"):
        arr = np.zeros((24, 32, 3), dtype=np.uint8)
        arr[inside, 2] = 1  # only the blue channel, and only by 1
        image = Image.fromarray(arr).convert(mode) if mode != "P" else Image.fromarray(arr).quantize(4)
    elif mode == "I;16":
        image = Image.fromarray(inside.astype(np.uint16) * 40000)
    else:
        image = Image.fromarray(inside.astype(np.int32 if mode == "I" else np.float32) * 70000)
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("I", "F", "CMYK") else "PNG")
    region = decode_region(
        Region(mask=base64.b64encode(buffer.getvalue()).decode()), (32, 24), index=0, policy=POLICY, field="r"
    )
    assert np.array_equal(region.mask, inside)


def test_peak_memory_of_the_worst_request_is_bounded() -> None:
    """ImagePolicy's documented bound: decoding an image and 5 regions peaks at most at 17 bytes per pixel, plus
    the largest encoded input, plus 16 MiB. Measured in a fresh process (VmHWM) on the worst inputs we know of:
    a float TIFF image, four 32-bit TIFF masks and a checkerboard RLE, at 3 megapixels."""
    clear_refs = Path("/proc/self/clear_refs")
    if not clear_refs.exists() or not os.access(clear_refs, os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    probe = Path(__file__).resolve().parent / "memory_probe.py"
    out = subprocess.run(
        [sys.executable, str(probe), "2000", "1500"], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    bound = MEMORY_BYTES_PER_PIXEL * result["pixels"] + result["encoded"] + MEMORY_OVERHEAD_BYTES
    assert 0 < result["peak"] <= bound, result
