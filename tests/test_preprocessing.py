"""Pixels exactly as the GAR checkpoints saw them (gar-model.md §3).

Two independent checks of ``prepare()``'s ``pixel_values`` and visual-prompt tiles:

* the authors' own preprocessing: SHA-256 of every uint8 tile of the demo images at ``max_num_tiles`` 16 and 8
  (``tests/data/gar-reference/preprocessing-sha256.json``, produced by running their processor), so a
  transformers or torchvision upgrade that moves one pixel fails here;
* the formula, written directly with the API the authors' code calls (torchvision's v1
  ``transforms.functional.resize`` on the uint8 tensor: bicubic + antialias for the image, NEAREST for the map,
  then ``/255`` and ``(x − 0.5) / 0.5``), on RGB, RGBA, palette, grayscale and 16-bit inputs and many grids.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as tvf
from PIL import Image

from gar_tools.images import load_image
from gar_tools.model import select_tile_grid
from gar_tools.model.processing import GarProcessor, _arrangements, load_image_processor_config
from gar_tools.model.tiling import resize_uint8, tile_uint8

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"
REFERENCE = Path(__file__).resolve().parent / "data" / "gar-reference"
CASES = json.loads((REFERENCE / "preprocessing-sha256.json").read_text())["cases"]


def _processor(tiny_pipeline, max_num_tiles: int) -> GarProcessor:
    """The tiny checkpoint's processor with another ``max_num_tiles`` (GAR-1B ships 16, GAR-8B 8)."""
    from gar_tools.model.pipeline import checkpoint_folder

    base = tiny_pipeline.processor
    settings = {**load_image_processor_config(checkpoint_folder("tiny")), "max_num_tiles": max_num_tiles}
    return GarProcessor(base.tokenizer, settings, base.chat_template, base.config)


def _uint8(normalised: torch.Tensor) -> torch.Tensor:
    return torch.round((normalised * 0.5 + 0.5) * 255).to(torch.uint8)


def _hashes(normalised: torch.Tensor) -> list[str]:
    return [hashlib.sha256(tile.contiguous().numpy().tobytes()).hexdigest() for tile in _uint8(normalised)]


def _find(name: str) -> Path:
    return ASSETS / name if (ASSETS / name).is_file() else REFERENCE / name


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['image']}-{c['max_num_tiles']}")
def test_prepare_reproduces_the_authors_preprocessing_hashes(tiny_pipeline, case) -> None:
    processor = _processor(tiny_pipeline, case["max_num_tiles"])
    image = load_image(str(_find(case["image"])))
    names = re.findall(r"'([^']+)'", case.get("prompt_map", ""))
    masks = [np.asarray(Image.open(_find(n)).convert("L")) > 0 for n in names]
    if not masks:  # no published map for this image: any region will do, only the pixels are compared
        masks = [np.ones((image.height, image.width), dtype=bool)]
    question = " ".join(f"<Prompt{k}>" for k in range(len(masks))) + "?"
    prepared = processor.prepare(image, masks, question)
    assert list(prepared.grid) == case["grid"]
    assert _hashes(prepared.pixel_values) == case["pixel_tiles"]
    if "prompt_tiles" in case:
        assert _hashes(prepared.prompt_pixel_values) == case["prompt_tiles"]


# --- the formula, written with the authors' call ------------------------------------------------------------------
def _reference_tiles(array: np.ndarray, grid: tuple[int, int], nearest: bool, tile: int = 448) -> torch.Tensor:
    """Normalised tiles straight from torchvision's v1 functional resize on the uint8 ``[1, 3, H, W]`` tensor."""
    mode = tvf.InterpolationMode.NEAREST if nearest else tvf.InterpolationMode.BICUBIC
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    x = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
    ncw, nch = grid
    thumb = tvf.resize(x, [tile, tile], interpolation=mode, antialias=True)
    canvas = tvf.resize(x, [tile * nch, tile * ncw], interpolation=mode, antialias=True)[0]
    tiles = [canvas[:, r * tile : (r + 1) * tile, c * tile : (c + 1) * tile] for r in range(nch) for c in range(ncw)]
    stacked = torch.cat([thumb, torch.stack(tiles)])
    return (stacked.float() / 255 - 0.5) / 0.5


def _noise_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if mode == "RGB":
        return Image.fromarray(rgb)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (height, width), dtype=np.uint8)]))
    if mode == "P":
        return Image.fromarray(rgb).quantize(64)
    if mode == "PA":  # palette with a transparent index
        image = Image.fromarray(rgb).quantize(32)
        image.info["transparency"] = 3
        return image
    if mode == "L":
        return Image.fromarray(rgb[:, :, 0])
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    raise ValueError(mode)


def _masks(width: int, height: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    out = []
    for _ in range(count):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(2, max(3.0, width / 3)), rng.uniform(2, max(3.0, height / 3))
        mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        mask[int(cy) % height, int(cx) % width] = True
        out.append(mask)
    return out


# (width, height, max_num_tiles, input mode): tall, wide, tiny, square, odd, grids 1×15 … 15×1, both tile budgets.
PREPARE_CASES = [
    (1024, 770, 16, "RGB"),
    (20, 20, 16, "RGBA"),
    (464, 348, 16, "P"),
    (3609, 635, 16, "L"),
    (205, 512, 16, "I;16"),
    (57, 840, 16, "RGB"),
    (871, 61, 16, "PA"),
    (300, 301, 8, "RGB"),
    (1389, 348, 8, "RGBA"),
    (131, 102, 8, "I;16"),
    (20, 143, 8, "L"),
]


@pytest.mark.parametrize(("width", "height", "max_tiles", "mode"), PREPARE_CASES)
def test_prepare_matches_the_v1_resize_formula(tiny_pipeline, width, height, max_tiles, mode) -> None:
    processor = _processor(tiny_pipeline, max_tiles)
    image = _noise_image(width, height, mode, seed=width * 7 + height)
    masks = _masks(width, height, 3, seed=width + height)
    prepared = processor.prepare(image, masks, "<Prompt0> <Prompt1> <Prompt2>?")
    grid = select_tile_grid(width, height, 448, max_tiles)
    assert prepared.grid == grid
    rgb = np.asarray(load_image(image))  # converted to RGB the way images.py does (16-bit scaled, alpha dropped)
    assert rgb.shape == (height, width, 3)
    expected = _reference_tiles(rgb, grid, nearest=False)
    assert prepared.pixel_values.dtype == torch.float32
    assert torch.allclose(prepared.pixel_values, expected, rtol=0, atol=1e-6)
    prompt_map = np.full((height, width), 5, dtype=np.uint8)
    for k, mask in enumerate(masks):
        prompt_map[mask & (prompt_map == 5)] = k
    assert torch.allclose(prepared.prompt_pixel_values, _reference_tiles(prompt_map, grid, nearest=True), atol=1e-6)


def test_an_image_at_its_canvas_size_is_not_resized() -> None:
    """An image exactly the size of its canvas (here 3×2 tiles of 16) is cut into tiles as it is, as torchvision
    returns it, and resizing it anyway would give the same values."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    prompt_map = rng.integers(0, 6, (32, 48), dtype=np.uint8)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    for resample in ("bicubic", "nearest"):
        assert resize_uint8(tensor[None], (32, 48), resample).data_ptr() == tensor.data_ptr()
        resized = torch.nn.functional.interpolate(
            tensor[None].float(), size=(32, 48), mode=resample, **({"antialias": True} if resample == "bicubic" else {})
        )
        assert torch.equal(resized.round().to(torch.uint8), tensor[None])
    ours = tile_uint8(tensor, (3, 2), 16, "bicubic")
    assert torch.equal((ours.float() / 255 - 0.5) / 0.5, _reference_tiles(image, (3, 2), nearest=False, tile=16))
    assert torch.equal(ours[1:].reshape(2, 3, 3, 16, 16).permute(2, 0, 3, 1, 4).reshape(3, 32, 48), tensor)
    ours_map = tile_uint8(torch.from_numpy(prompt_map)[None], (3, 2), 16, "nearest").expand(-1, 3, -1, -1)
    assert torch.equal((ours_map.float() / 255 - 0.5) / 0.5, _reference_tiles(prompt_map, (3, 2), True, tile=16))


@pytest.mark.parametrize("max_tiles", [8, 16])
def test_every_tile_grid_matches_the_v1_resize(max_tiles: int) -> None:
    """Every grid PerceptionLM's search can return (all arrangements of at most ``max_num_tiles``), small tiles."""
    rng = np.random.default_rng(max_tiles)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    prompt_map = rng.integers(0, 6, (37, 53), dtype=np.uint8)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    for grid in _arrangements(max_tiles):
        ours = tile_uint8(tensor, grid, 16, "bicubic")
        assert torch.equal((ours.float() / 255 - 0.5) / 0.5, _reference_tiles(image, grid, nearest=False, tile=16))
        ours_map = tile_uint8(torch.from_numpy(prompt_map)[None], grid, 16, "nearest").expand(-1, 3, -1, -1)
        assert torch.equal((ours_map.float() / 255 - 0.5) / 0.5, _reference_tiles(prompt_map, grid, True, tile=16))
