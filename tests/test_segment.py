"""Points, segment boxes and scribbles: the tiny SAM-family segmenter in the loop (random weights: its masks are
meaningless, but every step — loader, embedding cache, prompt decoding, best-IoU choice, results — is real)."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from gar_tools.engine.local import LocalEngine
from gar_tools.errors import CheckpointError, InputError, RegionError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import MAX_POINTS, DescribeRegionRequest, Region
from gar_tools.regions import decode_region
from gar_tools.segment.cache import ImageValueCache, image_digest
from gar_tools.segment.prompts import SegmentPrompt
from gar_tools.segment.scribble import rasterize_scribble
from gar_tools.toolkit import GarToolkit, coerce_request

POLICY = ImagePolicy()


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def small_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny_segmenter():
    from gar_tools.segment import load_segmenter

    return load_segmenter("tiny-sam", device="cpu")


@pytest.fixture
def engine(tiny_pipeline, tiny_segmenter):
    tiny_segmenter.cache.clear()
    engine = LocalEngine(pipeline=tiny_pipeline, segmenter=tiny_segmenter)
    yield engine
    engine.close()


def _rle_mask(rle) -> np.ndarray:
    return mask_utils.decode({"size": rle.size, "counts": rle.counts.encode("ascii")}).astype(bool)


# --- end to end ---------------------------------------------------------------------------------------------------


def test_points_become_the_mask_gar_sees_and_the_result_reports(engine, tiny_segmenter, small_image, monkeypatch):
    seen: list[np.ndarray] = []
    prepare = engine.pipeline.prepare

    def spy(image, masks, question=None, **kwargs):
        seen.extend(np.array(m) for m in masks)
        return prepare(image, masks, question, **kwargs)

    monkeypatch.setattr(engine.pipeline, "prepare", spy)
    toolkit = GarToolkit(engine)
    region = {"id": "thing", "points": [[20, 30], [40, 10]], "labels": [1, 0]}
    result = toolkit.describe_region(image=_data_uri(small_image), region=region, max_new_tokens=2, overlay=True)
    info = result.regions[0]
    expected = tiny_segmenter.segment(
        small_image,
        SegmentPrompt(id="thing", field="region.points", kind="points", points=((20, 30), (40, 10)), labels=(1, 0)),
    )
    reported = _rle_mask(info.mask_rle)
    assert info.source == "sam:points" and info.score == pytest.approx(expected.score)
    assert np.array_equal(reported, expected.mask) and len(seen) == 1 and np.array_equal(seen[0], expected.mask)
    assert info.area == int(expected.mask.sum()) and result.timings.segment_ms > 0
    assert result.overlay_png and toolkit.info().segmenter == "tiny-sam"


def test_sources_and_mask_rle_per_format(engine, small_image):
    toolkit = GarToolkit(engine)
    full = np.zeros((48, 64), dtype=np.uint8)
    full[5:20, 5:30] = 1
    rle = mask_utils.encode(np.asfortranarray(full))
    regions = [
        {"rle": {"size": [48, 64], "counts": rle["counts"].decode("ascii")}},
        {"box": [2, 3, 30, 40]},
        {"box": [2, 3, 30, 40], "segment": True},
        {"scribble": [[5, 5, 50, 5]], "width": 3},
        {"polygon": [[1, 1, 20, 1, 20, 20]]},
    ]
    result = toolkit.compare_regions(image=_data_uri(small_image), regions=regions, max_new_tokens=1)
    sources = [r.source for r in result.regions]
    assert sources == ["rle", "box", "sam:box", "scribble", "polygon"]
    assert result.regions[0].mask_rle is None and all(r.mask_rle is not None for r in result.regions[1:])
    box_mask = _rle_mask(result.regions[1].mask_rle)
    assert box_mask.sum() == 28 * 37 and box_mask[3:40, 2:30].all()
    assert [r.score is not None for r in result.regions] == [False, False, True, False, False]


def test_embedding_computed_once_per_image_across_regions_and_calls(engine, tiny_segmenter, small_image, tmp_path):
    toolkit = GarToolkit(engine)
    regions = [{"points": [[10, 10]]}, {"points": [[30, 20]]}, {"box": [0, 0, 20, 20], "segment": True}]
    before = tiny_segmenter.embed_calls
    toolkit.compare_regions(image=_data_uri(small_image), regions=regions, max_new_tokens=1)
    assert tiny_segmenter.embed_calls == before + 1
    # The same pixels from another source (a file) hit the cache; other pixels do not.
    path = tmp_path / "same.png"
    small_image.save(path)
    local = LocalEngine(
        pipeline=engine.pipeline, segmenter=tiny_segmenter, policy=ImagePolicy(allowed_dirs=(tmp_path,))
    )
    try:
        GarToolkit(local).describe_region(image=str(path), region={"points": [[5, 5]]}, max_new_tokens=1)
        assert tiny_segmenter.embed_calls == before + 1
        other = Image.fromarray(255 - np.asarray(small_image))
        GarToolkit(local).describe_region(image=_data_uri(other), region={"points": [[5, 5]]}, max_new_tokens=1)
        assert tiny_segmenter.embed_calls == before + 2
    finally:
        local.close()


def test_empty_mask_from_the_segmenter_names_the_field(engine, tiny_segmenter, small_image, monkeypatch):
    real = tiny_segmenter._candidates

    def nothing(image, embeddings, group):
        logits, scores, inputs = real(image, embeddings, group)
        return torch.full_like(logits, -10.0), scores, inputs

    monkeypatch.setattr(tiny_segmenter, "_candidates", nothing)
    with pytest.raises(RegionError) as info:
        GarToolkit(engine).compare_regions(
            image=_data_uri(small_image), regions=[{"box": [0, 0, 9, 9]}, {"points": [[3, 3]]}], max_new_tokens=1
        )
    assert info.value.field == "regions[1].points" and "empty mask" in info.value.reason


def test_best_predicted_iou_wins_per_prompt(tiny_segmenter, small_image, monkeypatch):
    real = tiny_segmenter._candidates

    def rigged(image, embeddings, group):
        logits, scores, inputs = real(image, embeddings, group)
        logits = torch.full_like(logits, -10.0)
        logits[0, 1] = 10.0  # prompt 0: candidate 1 is the whole image
        logits[1, 2, :2, :2] = 10.0  # prompt 1: candidate 2 is a corner
        return logits, torch.tensor([[0.2, 0.7, 0.5], [0.1, 0.3, 0.9]]), inputs

    monkeypatch.setattr(tiny_segmenter, "_candidates", rigged)
    prompts = [
        SegmentPrompt(id=f"r{i}", field="regions", kind="points", points=((i + 1, 1),), labels=(1,)) for i in range(2)
    ]
    first, second = tiny_segmenter.segment_all(small_image, prompts)
    assert first.score == pytest.approx(0.7) and first.mask.all() and first.candidates == 3
    assert second.score == pytest.approx(0.9) and 0 < second.mask.sum() < second.mask.size and second.mask[0, 0]


def test_grouped_prompts_match_one_at_a_time(tiny_segmenter, small_image):
    prompts = [
        SegmentPrompt(id="a", field="f", kind="points", points=((5, 5),), labels=(1,)),
        SegmentPrompt(id="b", field="f", kind="box", box=(2, 2, 30, 30)),
        SegmentPrompt(id="c", field="f", kind="points", points=((40, 20),), labels=(1,)),
        SegmentPrompt(id="d", field="f", kind="points", points=((40, 20), (3, 3)), labels=(1, 0)),
    ]
    together = tiny_segmenter.segment_all(small_image, prompts)
    for prompt, result in zip(prompts, together, strict=True):
        alone = tiny_segmenter.segment(small_image, prompt)
        assert np.array_equal(alone.mask, result.mask) and alone.score == pytest.approx(result.score, abs=1e-5)


# --- errors naming the field ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "field", "words"),
    [
        ({"points": []}, "region.points", "empty"),
        ({"points": [[1, 1]] * (MAX_POINTS + 1)}, "region.points", f"at most {MAX_POINTS} points"),
        ({"points": [[1, 1], [2, 2]], "labels": [1]}, "region.labels", "one label"),
        ({"points": [[1, 1]], "labels": [2]}, "region.labels[0]", "less than or equal"),
        ({"labels": [1], "box": [0, 0, 2, 2]}, "region.labels", "points only"),
        ({"mask": "x.png", "segment": True}, "region.segment", "box region only"),
        ({"polygon": [[0, 0, 1, 0, 1, 1]], "width": 3}, "region.width", "scribble only"),
        ({"points": [[1, 2]], "box": [0, 0, 2, 2]}, "region", "got box and points"),
    ],
)
def test_request_errors_name_the_field(region, field, words) -> None:
    with pytest.raises(InputError) as info:
        coerce_request("describe_region", {"image": "x.png", "region": region})
    assert info.value.field == field and words in info.value.reason


def _decode(region: dict, size=(64, 48), segmenter=True):
    return decode_region(Region(**region), size, index=0, policy=POLICY, field="region", segmenter=segmenter)


@pytest.mark.parametrize(
    ("region", "field", "words"),
    [
        ({"points": [[10, 10], [64, 3]]}, "region.points[1]", "outside the 64x48 image"),
        ({"points": [[-1, 3]]}, "region.points[0]", "outside"),
        ({"points": [[1, 1]], "labels": [0]}, "region.labels", "on the object"),
        ({"box": [100, 100, 200, 200], "segment": True}, "region.box", "outside"),
    ],
)
def test_decode_errors_name_the_field(region, field, words) -> None:
    with pytest.raises(RegionError) as info:
        _decode(region)
    assert info.value.field == field and words in info.value.reason


def test_without_a_segmenter_points_and_segment_say_how_to_enable_one() -> None:
    with pytest.raises(RegionError) as info:
        _decode({"points": [[1, 1]]}, segmenter=False)
    assert info.value.field == "region.points" and "--segmenter" in info.value.reason
    with pytest.raises(RegionError) as info:
        _decode({"box": [0, 0, 5, 5], "segment": True}, segmenter=False)
    assert info.value.field == "region.segment" and "--segmenter" in info.value.reason
    plain = _decode({"box": [0, 0, 5, 5]}, segmenter=False)
    assert plain.source == "box" and plain.area == 25
    prompt = _decode({"points": [[1.5, 2]]})
    assert isinstance(prompt, SegmentPrompt) and prompt.labels == (1,) and prompt.source == "sam:points"


def test_engine_without_segmenter_refuses_points(tiny_pipeline, small_image) -> None:
    engine = LocalEngine(pipeline=tiny_pipeline)
    try:
        with pytest.raises(RegionError) as info:
            GarToolkit(engine).describe_region(image=_data_uri(small_image), region={"points": [[1, 1]]})
        assert info.value.field == "region.points" and "--segmenter" in info.value.reason
    finally:
        engine.close()


# --- scribbles ------------------------------------------------------------------------------------------------------


def test_scribble_rasterisation_is_exact_on_known_shapes() -> None:
    # A horizontal stroke of width 2 along y = 10 from x = 5 to 15: pixel centres within 1 of the segment.
    mask = rasterize_scribble([[5, 10, 15, 10]], 2, (20, 20))
    expected = np.zeros((20, 20), dtype=bool)
    # Rows 9 and 10 (centres 9.5, 10.5); columns 5-14 (centres in [5, 15]) and, through the round caps, 4 and 15
    # (centres 4.5 and 15.5 are sqrt(0.5) from the ends); column 3 is 1.5 away.
    expected[9:11, 4:16] = True
    assert np.array_equal(mask, expected)
    # A single point of width 5 is a disc: centres within 2.5 of (10, 10).
    disc = rasterize_scribble([[10, 10]], 5, (20, 20))
    ys, xs = np.mgrid[0:20, 0:20] + 0.5
    assert np.array_equal(disc, (xs - 10) ** 2 + (ys - 10) ** 2 <= 6.25)
    # An L along pixel centres, width 1: exactly the pixels it passes through; a stroke off the image adds nothing.
    ell = rasterize_scribble([[2.5, 2.5, 2.5, 8.5, 8.5, 8.5], [30, 30, 40, 40]], 1, (10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:9, 2] = True
    expected[8, 2:9] = True
    assert np.array_equal(ell, expected)


def test_scribble_region_decodes_with_default_width_and_names_bad_strokes() -> None:
    decoded = _decode({"scribble": [[10, 10]]}, segmenter=False)
    ys, xs = np.mgrid[0:48, 0:64] + 0.5
    assert decoded.source == "scribble" and np.array_equal(decoded.mask, (xs - 10) ** 2 + (ys - 10) ** 2 <= 6.25)
    with pytest.raises(RegionError) as info:
        _decode({"scribble": [[1, 1], [1, 2, 3]]})
    assert info.value.field == "region.scribble[1]" and "odd number" in info.value.reason
    with pytest.raises(RegionError) as info:
        _decode({"scribble": [[500, 500, 600, 500]]})
    assert info.value.field == "region.scribble[0]" and "far outside" in info.value.reason
    with pytest.raises(RegionError) as info:
        _decode({"scribble": [[70, 10, 100, 10]], "width": 2})  # beside the image: paints nothing
    assert info.value.field == "region.scribble" and "empty" in info.value.reason


# --- cache, loader, tiny checkpoint ---------------------------------------------------------------------------------


def test_cache_is_byte_bounded_lru_keyed_by_pixels(small_image) -> None:
    cache = ImageValueCache(max_bytes=100)
    a, b, c = np.zeros(40, np.uint8), np.zeros(40, np.uint8), np.zeros(40, np.uint8)
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)  # 120 bytes > 100: evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") is a and cache.get("c") is c and cache.nbytes == 80
    cache.put("big", np.zeros(101, np.uint8))
    assert cache.get("big") is None and len(cache) == 2
    assert image_digest(small_image) == image_digest(small_image.convert("RGBA").convert("RGB"))
    assert image_digest(small_image) != image_digest(small_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


def test_cache_computes_a_missing_value_once_for_concurrent_callers() -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    cache = ImageValueCache(max_bytes=1000)
    release, calls = threading.Event(), []

    def compute() -> np.ndarray:
        calls.append(1)
        release.wait(10)
        return np.zeros(8, np.uint8)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(cache.get_or_compute, "image", compute) for _ in range(4)]
        time.sleep(0.1)  # all four are asking while the first computes
        release.set()
        values = [f.result() for f in futures]
    assert len(calls) == 1 and all(v is values[0] for v in values)
    assert cache.get("image") is values[0] and (cache.misses, cache.hits) == (1, 4)

    def fail() -> np.ndarray:
        release.wait(10)
        raise ValueError("unreadable")

    release.clear()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(cache.get_or_compute, "bad", fail) for _ in range(2)]
        time.sleep(0.1)
        release.set()
        for future in futures:  # the waiter gets the same error; nothing is stored
            with pytest.raises(ValueError, match="unreadable"):
                future.result()
    assert cache.get("bad") is None
    assert cache.get_or_compute("bad", lambda: np.ones(2, np.uint8)).sum() == 2  # a later call computes again
    assert ImageValueCache(max_bytes=0).get_or_compute("x", lambda: 7) == 7  # caching off: still computed


def test_loader_errors_say_what_to_do(tmp_path, monkeypatch) -> None:
    from gar_tools.model.tiny import tiny_checkpoint_path
    from gar_tools.segment import load_segmenter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="hf download nobody/no-such-sam"):
        load_segmenter("nobody/no-such-sam")
    with pytest.raises(CheckpointError, match="no such folder"):
        load_segmenter(str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="not a|SAM-family"):
        load_segmenter(str(tiny_checkpoint_path()))


def test_tiny_sam_is_deterministic_and_loads_like_a_real_checkpoint(tmp_path, tiny_segmenter) -> None:
    from safetensors.torch import load_file
    from transformers import SamModel

    from gar_tools.segment.tiny import build_tiny_sam, tiny_sam_path

    build_tiny_sam(tmp_path / "again")
    built, cached = (
        load_file(tmp_path / "again" / "model.safetensors"),
        load_file(tiny_sam_path() / "model.safetensors"),
    )
    assert built.keys() == cached.keys() and all((built[k] == cached[k]).all() for k in built)
    assert isinstance(tiny_segmenter.model, SamModel) and tiny_segmenter.is_tiny
    assert (tiny_sam_path() / "model.safetensors").stat().st_size < 2 * 2**20


# --- surfaces -------------------------------------------------------------------------------------------------------


def test_schemas_and_worker_accept_the_new_forms(engine, small_image) -> None:
    schema = DescribeRegionRequest.model_json_schema()
    region = schema["$defs"]["Region"]["properties"]
    for name in ("points", "labels", "scribble", "width", "segment"):
        assert region[name]["description"]
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from gar_tools.servers.worker_app import create_worker_app

    with TestClient(create_worker_app(engine_factory=lambda: engine), base_url="http://127.0.0.1") as client:
        body = {"image": _data_uri(small_image), "region": {"points": [[3, 4]]}, "max_new_tokens": 1}
        ok = client.post("/v1/describe_region", json=body)
        assert ok.status_code == 200 and ok.json()["regions"][0]["source"] == "sam:points"
        assert ok.json()["regions"][0]["mask_rle"]["size"] == [48, 64]
        body["region"] = {"points": [[3, 400]]}
        bad = client.post("/v1/describe_region", json=body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "region.points[0]"


def test_cli_builds_the_new_region_forms() -> None:
    from gar_tools.cli import build_parser

    args = build_parser().parse_args(
        [
            "compare",
            "img.png",
            "--point",
            "1,2",
            "--neg-point",
            "3,4",
            "--next-region",
            "--point",
            "5,6",
            "--box",
            "0,0,9,9",
            "--segment",
            "--scribble",
            "1,1,5,5;7,7",
            "--width",
            "3",
            "--segmenter",
            "tiny-sam",
        ]
    )
    assert args.regions == [
        {"points": [[1.0, 2.0], [3.0, 4.0]], "labels": [1, 0]},
        {"points": [[5.0, 6.0]], "labels": [1]},
        {"box": [0.0, 0.0, 9.0, 9.0], "segment": True},
        {"scribble": [[1.0, 1.0, 5.0, 5.0], [7.0, 7.0]], "width": 3.0},
    ]
    assert args.segmenter == "tiny-sam"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["describe", "img.png", "--mask", "m.png", "--width", "3"])


def test_sam2_family_loads_and_segments_through_the_same_code(tmp_path, small_image) -> None:
    """A random 128-pixel SAM 2 (Hiera backbone, no resize-longest-side padding) through the same loader and code."""
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    from gar_tools.segment import load_segmenter

    backbone = {
        "model_type": "sam2_hiera_det_model",
        "image_size": [128, 128],
        "hidden_size": 16,
        "blocks_per_stage": [1, 1, 1, 1],
        "embed_dim_per_stage": [16, 32, 64, 128],
        "num_attention_heads_per_stage": [1, 1, 1, 1],
        "window_positional_embedding_background_size": [2, 2],
    }
    config = Sam2Config(
        vision_config={
            "backbone_config": backbone,
            "backbone_channel_list": [128, 64, 32, 16],
            "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": 128},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
    )
    torch.manual_seed(0)
    Sam2Model(config).save_pretrained(tmp_path)
    Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": 128, "width": 128})).save_pretrained(tmp_path)
    segmenter = load_segmenter(tmp_path)
    prompts = [
        SegmentPrompt(id="a", field="f", kind="points", points=((20, 30), (3, 3)), labels=(1, 0)),
        SegmentPrompt(id="b", field="f", kind="box", box=(2, 2, 40, 30)),
    ]
    results = segmenter.segment_all(small_image, prompts)
    assert type(segmenter.model).__name__ == "Sam2Model" and segmenter.embed_calls == 1
    assert all(r.mask.shape == (48, 64) and r.candidates == 3 for r in results)
