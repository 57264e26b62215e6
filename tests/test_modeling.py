"""GAR's forward pass (gar-model.md §5) with the tiny random-weight checkpoint: its text is meaningless, but every
step must compute what a real checkpoint computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from gar_tools.model.modeling import decode_prompt_map


def _upstream_replay(features: torch.Tensor, grid: tuple[int, int], box: list[float], geometry: str) -> torch.Tensor:
    """What upstream computes for one region: merge tiles, feature-unit box, roi_align(spatial_scale=1/28)."""
    ncw, nch = grid
    tiles = features[1:].reshape(nch, ncw, 16, 16, -1)  # [rows, cols, i, j, C]
    merged = tiles.permute(4, 0, 2, 1, 3).reshape(1, -1, nch * 16, ncw * 16)
    feat_h, feat_w = nch * 16, ncw * 16
    roi = torch.tensor([[0, box[0] * feat_w, box[1] * feat_h, box[2] * feat_w, box[3] * feat_h]], dtype=torch.float32)
    scale = 1 / 28 if geometry == "checkpoint" else 1.0
    out = torchvision.ops.roi_align(merged.float(), roi, (16, 16), spatial_scale=scale, sampling_ratio=2, aligned=True)
    return out[0].permute(1, 2, 0).reshape(256, -1)


def test_tile_without_mask_pixels_gets_exactly_the_no_mask_features(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    model = tiny_pipeline.model
    with_mask = model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values)
    without = model.encode_images(prepared.pixel_values, None)
    binary = (torch.round((prepared.prompt_pixel_values + 1) / 2 * 255) != 5).flatten(1).any(dim=1)
    assert binary.any() and not binary.all()  # the slipper covers some tiles, not all
    for tile, touched in enumerate(binary.tolist()):
        if touched:
            assert not torch.equal(with_mask[tile], without[tile]), tile
        else:
            assert torch.equal(with_mask[tile], without[tile]), tile


def test_encode_images_is_perception_lms_and_each_tile_is_independent_of_the_others(tiny_pipeline, demo1) -> None:
    """encode_images computes PerceptionLM's own image features (tower, class token dropped, projector) with the
    mask added, and any run of tiles encoded alone gives exactly those tiles' rows of the whole encode: what the
    engine's tile cache (chunks of 4, subsets of touched tiles) relies on. 2 and 3 tiles once rounded otherwise on an
    AVX2 CPU (transformers' projector multiplies a strided view)."""
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    model = tiny_pipeline.model
    pixels, prompts = prepared.pixel_values, prepared.prompt_pixel_values  # [17, 3, 448, 448] each
    whole = model.encode_images(pixels, prompts)  # [17, 256, hidden]
    with model._mask_added(model.mask_embeddings(prompts)):
        theirs = model.mllm.model.get_image_features(pixel_values=pixels[None], return_dict=True).pooler_output
    torch.testing.assert_close(whole, theirs, rtol=0, atol=1e-6)  # the same math; the GEMM's layout may round apart
    for n in range(1, 7):
        for start in (0, 1, 17 - n):
            tiles = slice(start, start + n)
            assert torch.equal(model.encode_images(pixels[tiles], prompts[tiles]), whole[tiles]), (n, start)


def test_cpu_mask_embeddings_of_background_tiles_are_skipped_exactly(tiny_pipeline, demo1) -> None:
    """On the CPU only tiles with a region pixel are convolved; the rest get zeros — bit for bit (signs of zero
    included) what decoding and convolving every tile gives, for real maps and for odd values."""
    image, mask = demo1
    model = tiny_pipeline.model
    prompts = tiny_pipeline.prepare(image, [mask]).prompt_pixel_values.clone()  # [1 + T, 3, 448, 448]
    background = float(prompts[..., 0, 0].max())  # 5 (no region), normalized
    odd = torch.full_like(prompts[:6], background)
    odd[0, :, 7, 9] = float("nan")  # decodes as a region pixel, as upstream's round/clamp does
    odd[1, :, 100, 3] = -3.0  # below the range: clamped to 0, a region pixel
    odd[2] = 1.0  # above the background value everywhere: clamped to 5, no region
    odd[3, :, 447, 447] = -1.0  # one pixel of region 0 in a corner
    odd[4, :, :, 200:] = 1.0  # background and values above it: no region
    for tiles in (prompts, odd, torch.full_like(prompts[:3], background), prompts[:1]):
        first = tiles[:, :1]
        expected = model._mask_patch_embeddings(first).flatten(2).transpose(1, 2)  # every tile, as on CUDA
        got = model.mask_embeddings(tiles)
        assert torch.equal(got, expected) and torch.equal(torch.signbit(got), torch.signbit(expected))
    skipped = decode_prompt_map(odd[:, :1].amin(dim=(1, 2, 3)), 5).tolist()
    assert skipped == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_mask_embedding_is_added_after_patch_embedding(tiny_pipeline, demo1, monkeypatch) -> None:
    """conv(binary mask) is added to timm's patch-embedding output, before the CLS token and positions."""
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    model = tiny_pipeline.model
    timm_model = model.mllm.model.vision_tower.timm_model
    seen: list[torch.Tensor] = []
    original = timm_model._pos_embed

    def record(x: torch.Tensor):
        seen.append(x.detach().clone())
        return original(x)

    monkeypatch.setattr(timm_model, "_pos_embed", record)
    model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values)
    model.encode_images(prepared.pixel_values, None)
    expected = model.mask_embeddings(prepared.prompt_pixel_values)
    assert seen[0].shape[1] == 32 * 32  # patches only: the CLS token is added afterwards
    torch.testing.assert_close(seen[0] - seen[1], expected, rtol=0, atol=1e-6)
    assert expected.abs().sum() > 0


@pytest.mark.parametrize("geometry", ["checkpoint", "paper"])
@pytest.mark.parametrize("size", [(1024, 770), (400, 1300), (2000, 500)])
def test_replay_equals_torchvision_roi_align(tiny_pipeline, geometry: str, size: tuple[int, int]) -> None:
    width, height = size
    rng = np.random.default_rng(width)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    masks = []
    for corner in [(0, 0), (height - 1, width - 1), (height // 3, width // 2)]:  # borders and an inner region
        m = np.zeros((height, width), dtype=bool)
        y, x = corner
        m[max(0, y - 40) : y + 41, max(0, x - 60) : x + 61] = True
        masks.append(m)
    one_pixel = np.zeros((height, width), dtype=bool)
    one_pixel[height // 2, width // 2] = True  # degenerate region
    masks.append(one_pixel)
    tiny_pipeline.geometry = geometry
    try:
        prepared = tiny_pipeline.prepare(image, masks, "<Prompt0> <Prompt1> <Prompt2> <Prompt3>?")
        features = tiny_pipeline.image_features(prepared)
        embeds = tiny_pipeline.embed(prepared, features)[0]
    finally:
        tiny_pipeline.geometry = "checkpoint"
    for box, start in zip(prepared.boxes.tolist(), prepared.slot_starts.tolist(), strict=True):
        expected = _upstream_replay(features, prepared.grid, box, geometry)
        torch.testing.assert_close(embeds[start : start + 256], expected, rtol=1e-5, atol=1e-6)


def test_image_features_fill_the_image_tokens(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    features = tiny_pipeline.image_features(prepared)
    embeds = tiny_pipeline.embed(prepared, features)[0]
    image_rows = (prepared.input_ids[0] == 128002).nonzero().flatten()
    torch.testing.assert_close(embeds[image_rows], features.reshape(-1, features.shape[-1]), rtol=0, atol=0)


def test_describe_end_to_end_is_deterministic(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    first = tiny_pipeline.generate(prepared, max_new_tokens=12)
    second = tiny_pipeline.generate(tiny_pipeline.prepare(image, [mask]), max_new_tokens=12)
    assert first.text and first.text == second.text  # tiny model: meaningless, but non-empty and repeatable
    assert first.token_ids == second.token_ids
    logits = tiny_pipeline.next_token_logits(prepared)
    assert logits.dtype == torch.float32 and logits.shape == (128262,)
    assert int(logits.argmax()) == first.token_ids[0]  # greedy


def test_three_region_forward_places_three_replay_blocks(tiny_pipeline, demo3) -> None:
    image, masks = demo3
    prepared = tiny_pipeline.prepare(
        image, masks, "What is the relationship between <Prompt0>, <Prompt1>, and <Prompt2>?"
    )
    features = tiny_pipeline.image_features(prepared)
    embeds = tiny_pipeline.embed(prepared, features)[0]
    plain = tiny_pipeline.model.mllm.get_input_embeddings()(prepared.input_ids)[0]
    changed = (embeds != plain).any(dim=1)
    image_rows = prepared.input_ids[0] == 128002
    replay_rows = torch.zeros_like(changed)
    for start in prepared.slot_starts.tolist():
        replay_rows[start : start + 256] = True
    assert int(replay_rows.sum()) == 3 * 256
    assert torch.equal(changed & ~image_rows, replay_rows)  # outside the image, exactly the three slots changed
    for token_id, start in zip((128004, 128005, 128008), prepared.slot_starts.tolist(), strict=True):
        assert bool((prepared.input_ids[0, start : start + 256] == token_id).all())
    logits = tiny_pipeline.model.last_token_logits(embeds[None])
    assert torch.isfinite(logits).all()
