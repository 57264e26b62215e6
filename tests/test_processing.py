"""GAR input processing against gar-model.md §3–4 and transformers' PerceptionLM image processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import PerceptionLMImageProcessor

from gar_tools.errors import InputError, RegionError
from gar_tools.model import region_box, select_tile_grid, visual_prompt_map

SIZES = [(1024, 770), (448, 448), (100, 1000), (2000, 300), (5000, 5000), (300, 301), (1920, 1080), (333, 2500)]


@pytest.mark.parametrize("max_tiles", [4, 8, 16])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_tile_grid_matches_perception_lm(width: int, height: int, max_tiles: int) -> None:
    processor = PerceptionLMImageProcessor(max_num_tiles=max_tiles, tile_size=448)
    expected = processor._fit_image_to_canvas(img_width=width, img_height=height, tile_size=448)
    if expected is None:
        expected = processor._find_closest_aspect_ratio(img_width=width, img_height=height, tile_size=448)
    assert select_tile_grid(width, height, 448, max_tiles) == tuple(expected)


@pytest.mark.parametrize(("width", "height"), SIZES[:6])
def test_pixel_values_have_one_thumbnail_plus_grid_tiles(tiny_pipeline, width: int, height: int) -> None:
    image = Image.new("RGB", (width, height), (200, 30, 90))
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 3 : height // 2 + 1, width // 4 : width // 2 + 1] = True
    prepared = tiny_pipeline.prepare(image, [mask])
    ncw, nch = prepared.grid
    assert prepared.pixel_values.shape == (1 + ncw * nch, 3, 448, 448)
    assert prepared.prompt_pixel_values.shape == prepared.pixel_values.shape
    image_tokens = int((prepared.input_ids == 128002).sum())
    assert image_tokens == (1 + ncw * nch) * 256


def test_visual_prompt_map_values_and_overlap() -> None:
    a = np.zeros((6, 8), dtype=bool)
    b = np.zeros((6, 8), dtype=bool)
    a[1:4, 1:5] = True
    b[2:6, 3:8] = True
    out = visual_prompt_map([a, b], [0, 1], 5)
    assert out.dtype == np.uint8
    assert out[0, 0] == 5  # background = prompt_numbers
    assert out[1, 1] == 0
    assert out[2, 3] == 0  # overlap: the first region written keeps the pixel
    assert out[5, 7] == 1
    assert set(np.unique(out)) == {0, 1, 5}


def test_prompt_tiles_decode_to_the_map(tiny_pipeline, demo3) -> None:
    """NEAREST tiling keeps the map's values exactly: decoding gives only region values and background."""
    image, masks = demo3
    prepared = tiny_pipeline.prepare(image, masks, "What is <Prompt0> doing with <Prompt1> and <Prompt2>?")
    values = torch.round((prepared.prompt_pixel_values + 1) / 2 * 255)
    assert set(values.unique().tolist()) <= {0.0, 1.0, 2.0, 5.0}
    assert {0.0, 1.0, 2.0, 5.0} <= set(values[0].unique().tolist())  # thumbnail sees all three regions


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    [
        ((0, 1), (0, 1), (0.0, 0.0, 0.0, 0.0)),  # top-left pixel
        ((9, 10), (19, 20), (19 / 20, 9 / 10, 19 / 20, 9 / 10)),  # bottom-right pixel: inclusive max index
        ((0, 10), (0, 20), (0.0, 0.0, 19 / 20, 9 / 10)),  # whole image
        ((3, 7), (5, 6), (5 / 20, 3 / 10, 5 / 20, 6 / 10)),  # one column
    ],
)
def test_region_box_inclusive_max(rows, cols, expected) -> None:
    mask = np.zeros((10, 20), dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    assert region_box(mask) == pytest.approx(expected)


def test_single_region_prompt_is_upstreams(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    slot = "<|reserved_special_token_3|>" * 256
    assert prepared.text == (
        "There are some objects I am curious about: <Prompt1>;\n"
        f"<Prompt1>: {slot}Describe this masked region in detail."
    )
    assert prepared.prompt_indices == [1]
    ids = prepared.input_ids[0]
    assert ids[0] == 128000 and int((ids == 128000).sum()) == 1  # exactly one <|begin_of_text|>
    assert int((ids == 128005).sum()) == 256
    start = int(prepared.slot_starts[0])
    assert torch.equal(ids[start : start + 256], torch.full((256,), 128005))
    assert prepared.boxes.shape == (1, 4)
    assert prepared.boxes[0].tolist() == pytest.approx(region_box(mask))
    # The single region is written with value 1 in the visual-prompt map.
    values = torch.round((prepared.prompt_pixel_values + 1) / 2 * 255)
    assert set(values.unique().tolist()) == {1.0, 5.0}


def test_chat_template_and_generation_prompt(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    text = tiny_pipeline.processor.tokenizer.decode(prepared.input_ids[0])
    assert text.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>")
    assert text.endswith("in detail.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_several_regions_in_index_order(tiny_pipeline, demo3) -> None:
    image, masks = demo3
    question = "What is the relationship between <Prompt0>, <Prompt1>, and <Prompt2>?"
    prepared = tiny_pipeline.prepare(image, masks, question)
    slots = ["<|reserved_special_token_2|>", "<|reserved_special_token_3|>", "<|reserved_special_token_4|>"]
    assert prepared.text == (
        "There are some objects I am curious about: <Prompt0>; <Prompt1>; <Prompt2>; \n"
        + "".join(f"<Prompt{k}>: {s * 256}\n" for k, s in enumerate(slots))
        + "\n"
        + question
    )
    ids = prepared.input_ids[0]
    starts = prepared.slot_starts.tolist()
    assert starts == sorted(starts)
    for token_id, start in zip((128004, 128005, 128008), starts, strict=True):
        assert int((ids == token_id).sum()) == 256
        assert torch.equal(ids[start : start + 256], torch.full((256,), token_id))
    # Each region keeps its own box (upstream's helper took every box from the last mask).
    assert [b.tolist() for b in prepared.boxes] == [pytest.approx(region_box(m)) for m in masks]


def test_prepare_rejects_bad_masks(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    with pytest.raises(RegionError, match="at most 5"):
        tiny_pipeline.prepare(image, [mask] * 6, "?")
    with pytest.raises(RegionError, match=r"masks\[0\].*does not match"):
        tiny_pipeline.prepare(image, [mask[:-1]])
    with pytest.raises(RegionError, match=r"masks\[0\].*empty"):
        tiny_pipeline.prepare(image, [np.zeros_like(mask)])
    with pytest.raises(InputError, match="question"):
        tiny_pipeline.prepare(image, [mask, mask])
