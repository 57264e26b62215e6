"""Exact tile-feature reuse (tiny model, fp32, CPU): cached features equal a full encode, bit for bit, and the
vision tower runs only on the tiles that need it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from batching_requests import with_max_tiles
from PIL import Image

from gar_tools.model.tile_cache import TileFeatureCache, image_digest, touched_tiles


class VisionSpy:
    """Records the tiles ([N, 3, 448, 448]) each vision-tower call sees."""

    def __init__(self, model) -> None:
        self.calls: list[torch.Tensor] = []
        self._handle = model.mllm.model.vision_tower.register_forward_pre_hook(self._record)

    def _record(self, _module, args) -> None:
        self.calls.append(args[0].detach().clone())

    def take(self) -> torch.Tensor | None:
        calls, self.calls = self.calls, []
        assert len(calls) <= 1
        return calls[0] if calls else None

    def remove(self) -> None:
        self._handle.remove()


def _box(size: tuple[int, int], x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    mask[int(y0 * height) : int(y1 * height), int(x0 * width) : int(x1 * width)] = True
    return mask


def _indices(flags: list[bool]) -> list[int]:
    return [i for i, flag in enumerate(flags) if flag]


@pytest.mark.parametrize("case", ["demo1", "demo3"])
def test_cached_features_equal_full_encode_and_only_needed_tiles_are_encoded(tiny_pipeline, demo1, demo3, case):
    model = tiny_pipeline.model
    if case == "demo1":  # 1 region, then another single region elsewhere, then the first again
        image, mask = demo1
        second = [_box(image.size, 0.05, 0.05, 0.2, 0.2)]
        requests = [([mask], None), (second, None), ([mask], None)]
    else:  # 3 regions, then one of them, then the 3 again with a different question
        image, masks = demo3
        requests = [
            (masks, "<Prompt0> <Prompt1> <Prompt2>?"),
            (masks[1:2], "What is <Prompt0>?"),
            (masks, "Compare <Prompt0>, <Prompt1> and <Prompt2>."),
        ]
    digest = image_digest(image)
    cache = TileFeatureCache()
    spy = VisionSpy(model)
    try:
        encoded_before: set[int] = set()
        for step, (region_masks, question) in enumerate(requests):
            prepared = tiny_pipeline.prepare(image, region_masks, question)
            expected = model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values)
            spy.take()
            features = cache.image_features(model, prepared, digest)
            seen = spy.take()
            assert torch.equal(features, expected), step
            touched = touched_tiles(prepared.prompt_pixel_values, model.config.prompt_numbers).tolist()
            count = len(touched)
            cached_untouched = {i for i in range(count) if not touched[i]} & encoded_before
            must_encode = [i for i in range(count) if i not in cached_untouched]
            assert seen is not None and torch.equal(seen, prepared.pixel_values[must_encode].to(seen.dtype)), step
            if step == 0:
                assert len(must_encode) == count  # cold cache: everything
            if step == 2:  # every untouched tile is cached by now: only the touched ones ran
                assert must_encode == _indices(touched) and len(must_encode) < count
            encoded_before |= {i for i in must_encode if not touched[i]}
    finally:
        spy.remove()
    stats = cache.stats()
    assert stats["images"] == 1 and stats["tile_hits"] > 0 and 0 < stats["bytes"] <= stats["max_bytes"]


def test_key_covers_pixels_and_grid_and_bound_evicts_lru(tiny_pipeline, demo1) -> None:
    image, mask = demo1
    pipeline = with_max_tiles(tiny_pipeline, 4)  # same model, 2×2 grid: quicker
    model = pipeline.model
    assert image_digest(image) == image_digest(image.convert("RGBA").convert("RGB"))
    changed = image.copy()
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert image_digest(changed) != image_digest(image)
    prepared = pipeline.prepare(image, [mask])
    one_tile = 256 * model.mllm.config.text_config.hidden_size * 4
    untouched = int((~touched_tiles(prepared.prompt_pixel_values, 5)).sum())
    cache = TileFeatureCache(max_bytes=untouched * one_tile)  # room for exactly one image
    cache.image_features(model, prepared, "a")
    assert cache.stats()["bytes"] == untouched * one_tile
    cache.image_features(model, prepared, "b")  # another image: the first is evicted
    assert cache.stats()["images"] == 1 and cache.stats()["evictions"] == 1
    assert cache.key(model, "b", prepared.grid) in cache._entries
    assert cache.key(model, "b", (1, 1)) != cache.key(model, "b", prepared.grid)
    off = TileFeatureCache(max_bytes=0)
    assert torch.equal(
        off.image_features(model, prepared, "a"),
        model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values),
    )
    assert off.stats()["bytes"] == 0 and TileFeatureCache(device="cuda").max_bytes > TileFeatureCache().max_bytes


def test_region_over_every_tile_keeps_nothing(tiny_pipeline) -> None:
    """A region covering the whole image touches thumbnail and every tile: all are encoded, none cached."""
    pipeline = with_max_tiles(tiny_pipeline, 2)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 120, 3), dtype=np.uint8))
    prepared = pipeline.prepare(image, [np.ones((100, 120), dtype=bool)])
    cache = TileFeatureCache()
    out = cache.image_features(pipeline.model, prepared, image_digest(image))
    assert torch.equal(out, pipeline.model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values))
    assert cache.stats()["tile_hits"] == 0 and cache.stats()["images"] == 0  # nothing untouched to keep


def test_fixed_size_chunks_give_the_same_features(tiny_pipeline, demo3) -> None:
    """chunk_tiles=3 on a 2×2 grid: calls of exactly 3 tiles (the last padded with blank tiles), same features."""
    image, masks = demo3
    pipeline = with_max_tiles(tiny_pipeline, 4)
    model = pipeline.model
    prepared = pipeline.prepare(image, masks[:2], "<Prompt0> or <Prompt1>?")
    expected = model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values)
    cache = TileFeatureCache(chunk_tiles=3)
    spy = VisionSpy(model)
    try:
        features = cache.image_features(model, prepared, image_digest(image))
        sizes = [call.shape[0] for call in spy.calls]
    finally:
        spy.remove()
    assert torch.equal(features, expected)
    assert prepared.pixel_values.shape[0] == 5 and sizes == [3, 3]
    assert TileFeatureCache(device="cuda").chunk_tiles == 4 and TileFeatureCache().chunk_tiles is None
    with pytest.raises(ValueError, match="chunk_tiles"):
        TileFeatureCache(chunk_tiles=0)


@pytest.mark.gpu
def test_cuda_cached_features_equal_uncached_through_the_same_chunks(tiny_pipeline, demo1) -> None:
    """On CUDA: features from the cache equal features computed without it (both in chunks of 4 tiles)."""
    image, mask = demo1
    model = tiny_pipeline.model.to("cuda")
    try:
        cache, off = TileFeatureCache(device="cuda"), TileFeatureCache(max_bytes=0, device="cuda")
        digest = image_digest(image)
        for regions in ([mask], [_box(image.size, 0.05, 0.05, 0.2, 0.2)], [mask]):
            prepared = tiny_pipeline.prepare(image, regions)
            assert torch.equal(
                cache.image_features(model, prepared, digest), off.image_features(model, prepared, digest)
            )
        assert cache.stats()["tile_hits"] > 0
    finally:
        tiny_pipeline.model.to("cpu")


@pytest.mark.parametrize("norm", [(0.5, 0.5), (0.5 - 2 / 255, 0.5)])  # GAR's; one where map values 3, 4 decode as 5
def test_lazy_normalization_and_uint8_touched_tiles_match_the_full_tensors(tiny_pipeline, demo3, norm) -> None:
    """A request normalizes only the tiles it encodes and reads touched tiles from the uint8 map: the same values
    and the same tiles as the full normalized tensors give (bit for bit), for any normalization."""
    import dataclasses

    from gar_tools.model.tile_cache import touched_prompt_tiles

    image, masks = demo3
    mean, std = norm
    prepared = dataclasses.replace(
        tiny_pipeline.prepare(image, masks[:2], "<Prompt0> and <Prompt1>?"),
        image_mean=(mean,) * 3,
        image_std=(std,) * 3,
    )
    count = prepared.image_tiles.shape[0]
    for index in ([0], [count - 1, 1], list(range(count))):
        assert torch.equal(prepared.tile_pixel_values(index), prepared.pixel_values[index])
        assert torch.equal(prepared.tile_prompt_pixel_values(index), prepared.prompt_pixel_values[index])
    expected = touched_tiles(prepared.prompt_pixel_values, 5).tolist()
    assert touched_prompt_tiles(prepared, 5) == expected and 0 < sum(expected) < count
    background = dataclasses.replace(prepared, prompt_tiles=torch.full_like(prepared.prompt_tiles, 5))
    assert touched_prompt_tiles(background, 5) == [False] * count


@pytest.mark.gpu
def test_tiles_normalized_on_cuda_are_the_cpu_values(tiny_pipeline, demo3) -> None:
    """The cache normalizes the tiles it encodes on the model's device: the same float32 bits as on the CPU."""
    image, masks = demo3
    prepared = tiny_pipeline.prepare(image, masks[:2], "<Prompt0> and <Prompt1>?")
    index = list(range(prepared.image_tiles.shape[0]))
    assert torch.equal(prepared.tile_pixel_values(index, "cuda").cpu(), prepared.pixel_values)
    assert torch.equal(prepared.tile_prompt_pixel_values(index, "cuda").cpu(), prepared.prompt_pixel_values)


def test_vision_graphs_need_cuda_and_leave_cpu_eager(tiny_pipeline, demo1) -> None:
    """``cuda_graphs=True`` changes nothing for a model on the CPU; a VisionGraph refuses one."""
    from gar_tools.model.vision_graph import VisionGraph

    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        VisionGraph(tiny_pipeline.model, 4)
    image, mask = demo1
    prepared = tiny_pipeline.prepare(image, [mask])
    digest = image_digest(image)
    graphed = TileFeatureCache(max_bytes=0, cuda_graphs=True, chunk_tiles=2)
    plain = TileFeatureCache(max_bytes=0, chunk_tiles=2)
    assert torch.equal(
        graphed.image_features(tiny_pipeline.model, prepared, digest),
        plain.image_features(tiny_pipeline.model, prepared, digest),
    )
    assert graphed.fused_rope_kept is None  # nothing captured: info() reports no rotation kernel either way


@pytest.mark.gpu
def test_cuda_graph_vision_equals_eager(tiny_pipeline, demo1) -> None:
    """On CUDA: chunks of tiles replayed from the captured graph give exactly the eager features."""
    image, mask = demo1
    model = tiny_pipeline.model.to("cuda")
    try:
        eager = TileFeatureCache(max_bytes=0, device="cuda")
        graphed = TileFeatureCache(max_bytes=0, device="cuda", cuda_graphs=True)
        digest = image_digest(image)
        for regions in ([mask], [_box(image.size, 0.05, 0.05, 0.2, 0.2)], [mask]):
            prepared = tiny_pipeline.prepare(image, regions)
            assert torch.equal(
                graphed.image_features(model, prepared, digest), eager.image_features(model, prepared, digest)
            )
        assert graphed.cuda_graphs and len(graphed._graphs) == 1
        assert all(graph.fused_rope for graph in graphed._graphs.values())  # the one-kernel q/k rotation, kept
        assert graphed.fused_rope_kept is True and eager.fused_rope_kept is None  # what info() reports
    finally:
        tiny_pipeline.model.to("cpu")
