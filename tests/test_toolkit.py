"""The three tools through GarToolkit with the tiny model (random weights: texts are meaningless, so the tests check
everything but the wording)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gar_tools.engine.local import LocalEngine, build_job
from gar_tools.errors import GarToolsError, InputError, RegionError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import AnswerAboutRegionsRequest, CompareRegionsRequest
from gar_tools.regions import mask_box
from gar_tools.toolkit import GarToolkit

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "gar_tools" / "assets"
BENCH = Path(__file__).resolve().parent / "data" / "gar-bench-sample"
BENCH_ITEMS = json.loads((BENCH / "items.json").read_text())
IMAGE3 = str(ASSETS / "demo_image_3.png")
MASKS3 = [str(ASSETS / f"demo_mask_3_{i}.png") for i in range(3)]


@pytest.fixture(scope="module")
def toolkit(tiny_pipeline):
    kit = GarToolkit(LocalEngine(pipeline=tiny_pipeline))
    yield kit
    kit.close()


def _slot_counts(pipeline, tool: str, request) -> dict[int, int]:
    job = build_job(tool, request, ImagePolicy())
    prepared = pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)
    ids = prepared.input_ids[0]
    return {token: int((ids == token).sum()) for token in pipeline.config.crop_tokens_ids}


@pytest.mark.parametrize("item", BENCH_ITEMS, ids=[f"vqa_{x['index']}_{len(x['mask_rles'])}r" for x in BENCH_ITEMS])
def test_gar_bench_items(toolkit, tiny_pipeline, item) -> None:
    request = {
        "image": str(BENCH / item["image"]),
        "regions": [{"rle": rle} for rle in item["mask_rles"]],
        "question": item["question"],
        "choices": item["choices"],
        "max_new_tokens": 2,
    }
    count = len(item["mask_rles"])
    if count > 5:
        with pytest.raises(InputError, match="at most 5") as err:
            toolkit.answer_about_regions(request)
        assert err.value.field == "regions"
        return
    result = toolkit.answer_about_regions(request)
    assert result.tiny_model and result.model == "tiny"
    assert [r.id for r in result.regions] == [f"r{i}" for i in range(count)]
    assert [r.prompt for r in result.regions] == [f"<Prompt{i}>" for i in range(count)]
    assert result.choice is None or result.choice in "ABCD"
    assert result.timings.tokens_generated <= 2
    # The prompt carries exactly one 256-token replay slot per region, and none for unused prompt indices.
    counts = _slot_counts(tiny_pipeline, "answer_about_regions", AnswerAboutRegionsRequest.model_validate(request))
    assert list(counts.values()) == [256] * count + [0] * (5 - count)


def test_describe_result_fields(toolkit) -> None:
    result = toolkit.describe_region(
        image=str(ASSETS / "demo_image_1.png"), region={"mask": str(ASSETS / "demo_mask_1.png")}, max_new_tokens=3
    )
    mask = np.asarray(Image.open(ASSETS / "demo_mask_1.png").convert("L")) > 0
    (region,) = result.regions
    assert region.id == "r0" and region.prompt == "<Prompt1>"  # upstream's single-region slot
    assert region.box == list(mask_box(mask)) and region.area == int(mask.sum())
    assert result.text and result.overlay_png is None
    assert result.image_size == list(Image.open(ASSETS / "demo_image_1.png").size)
    assert result.timings.encode_ms > 0 and result.timings.generate_ms > 0 and result.timings.tokens_generated == 3


def test_overlay_is_a_png_of_the_image(toolkit) -> None:
    result = toolkit.compare_regions(
        image=IMAGE3, regions=[{"mask": MASKS3[0]}, {"mask": MASKS3[2]}], max_new_tokens=1, overlay=True
    )
    overlay = Image.open(io.BytesIO(base64.b64decode(result.overlay_png)))
    assert overlay.format == "PNG" and overlay.size == Image.open(IMAGE3).size


def test_overlapping_regions_first_keeps_pixels_boxes_are_own(toolkit, tiny_pipeline) -> None:
    regions = [{"id": "big", "box": [50, 50, 400, 300]}, {"id": "small", "box": [300, 200, 500, 400]}]
    request = CompareRegionsRequest(image=IMAGE3, regions=regions, max_new_tokens=1)
    job = build_job("compare_regions", request, ImagePolicy())
    prepared = tiny_pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)
    # Thumbnail of the visual-prompt map, decoded: the overlap (300..400, 200..300) belongs to region 0.
    values = torch.round((prepared.prompt_pixel_values[0, 0] + 1) / 2 * 255)
    height, width = job.image.size[1], job.image.size[0]
    sy, sx = 448 / height, 448 / width
    assert values[int(250 * sy), int(350 * sx)] == 0  # overlap
    assert values[int(350 * sy), int(450 * sx)] == 1  # only the second region
    result = toolkit.compare_regions(request)
    assert [r.box for r in result.regions] == [[50, 50, 400, 300], [300, 200, 500, 400]]
    assert prepared.boxes.flatten().tolist() == pytest.approx(
        [50 / width, 50 / height, 399 / width, 299 / height, 300 / width, 200 / height, 499 / width, 399 / height]
    )


def test_relationship_question_and_focus(tiny_pipeline) -> None:
    request = CompareRegionsRequest(
        image=IMAGE3, regions=[{"mask": m} for m in MASKS3], focus="what they are doing", max_new_tokens=1
    )
    job = build_job("compare_regions", request, ImagePolicy())
    assert job.question == (
        "Describe <Prompt0> in detail, including the relationship with <Prompt1> and <Prompt2>. "
        "Focus on what they are doing."
    )


def test_region_references_are_mapped(tiny_pipeline) -> None:
    request = AnswerAboutRegionsRequest(
        image=IMAGE3,
        regions=[{"id": "person", "mask": MASKS3[0]}, {"id": "bat", "mask": MASKS3[2]}],
        question="Is <person> holding <bat>?",
        choices=["Yes, <person> holds <bat>.", "No."],
    )
    job = build_job("answer_about_regions", request, ImagePolicy())
    assert job.question == (
        "Question: Is <Prompt0> holding <Prompt1>?\nOptions:\nA. Yes, <Prompt0> holds <Prompt1>.\nB. No.\n"
        "Answer with the correct option's letter directly."
    )


def test_reference_errors_name_the_field(toolkit) -> None:
    regions = [{"id": "person", "mask": MASKS3[0]}, {"id": "bat", "mask": MASKS3[2]}]
    with pytest.raises(InputError, match="<dog>") as err:
        toolkit.answer_about_regions(image=IMAGE3, regions=regions, question="Is <dog> near <person> and <bat>?")
    assert err.value.field == "question"
    with pytest.raises(InputError, match="<bat>.*never referred to"):
        toolkit.answer_about_regions(image=IMAGE3, regions=regions, question="What is <person> doing?")
    with pytest.raises(InputError) as err:
        toolkit.answer_about_regions(image=IMAGE3, regions=regions, question="<person> <bat>", choices=["<cat>", "x"])
    assert err.value.field == "choices[0]"


def test_bad_inputs_raise_and_the_toolkit_keeps_serving(toolkit) -> None:
    with pytest.raises(RegionError) as err:
        toolkit.describe_region(image=IMAGE3, region={"box": [5000, 5000, 6000, 6000]})
    assert err.value.field == "region.box" and "outside" in str(err.value)
    with pytest.raises(InputError) as err:
        toolkit.describe_region(image=IMAGE3, region={"box": [1, 2, 3, 4], "mask": MASKS3[0]})
    assert err.value.field.startswith("region")
    with pytest.raises(InputError, match="image"):
        toolkit.describe_region(image="/no/such/file.png", region={"box": [1, 2, 3, 4]})
    result = toolkit.describe_region(image=IMAGE3, region={"box": [1, 2, 30, 40]}, max_new_tokens=1)
    assert result.text


def test_async_and_sync_agree(toolkit) -> None:
    request = {"image": IMAGE3, "regions": [{"mask": MASKS3[0]}, {"mask": MASKS3[1]}], "max_new_tokens": 4}
    sync_result = toolkit.compare_regions(request)

    async def both():
        return await asyncio.gather(toolkit.acompare_regions(request), toolkit.acompare_regions(request))

    first, second = asyncio.run(both())
    strip = {"timings"}
    assert first.model_dump(exclude=strip) == sync_result.model_dump(exclude=strip)
    assert second.model_dump(exclude=strip) == sync_result.model_dump(exclude=strip)


def test_sync_api_works_inside_a_running_loop(toolkit) -> None:
    async def call_sync():
        return toolkit.describe_region(image=IMAGE3, region={"mask": MASKS3[1]}, max_new_tokens=1)

    assert asyncio.run(call_sync()).regions[0].area == 563


def test_lifecycle_with_async_with_and_closed_toolkit(tiny_pipeline) -> None:
    request = {"image": IMAGE3, "region": {"mask": MASKS3[1]}, "max_new_tokens": 1}

    async def main() -> GarToolkit:
        async with GarToolkit(LocalEngine(pipeline=tiny_pipeline)) as kit:
            assert (await kit.adescribe_region(request)).regions[0].area == 563
        return kit

    closed = asyncio.run(main())
    assert closed.closed
    with GarToolkit(LocalEngine(pipeline=tiny_pipeline)) as kit:
        kit.describe_region(request)
    for toolkit in (closed, kit):
        with pytest.raises(GarToolsError, match="closed"):
            toolkit.describe_region(request)
        with pytest.raises(GarToolsError, match="closed"):
            asyncio.run(toolkit.adescribe_region(request))
        with pytest.raises(GarToolsError, match="closed"):
            toolkit.info()
        with pytest.raises(GarToolsError, match="closed"), toolkit:
            pass
        toolkit.close()  # idempotent
        asyncio.run(toolkit.aclose())


def test_example_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "toolkit_quickstart.py"), "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "random weights" in out.stdout
    assert "describe_region:" in out.stdout and "compare_regions:" in out.stdout and "choice:" in out.stdout
