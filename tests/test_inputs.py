"""Tests for gar_tools.inputs (request models) and gar_tools.results (result models)."""

from __future__ import annotations

import json

import pydantic
import pytest

from gar_tools.errors import InputError
from gar_tools.inputs import (
    MAX_REGIONS,
    RLE,
    AnswerAboutRegionsRequest,
    CompareRegionsRequest,
    DescribeRegionRequest,
    Region,
    validation_error_to_input_error,
)
from gar_tools.results import (
    AnswerAboutRegionsResult,
    CompareRegionsResult,
    DescribeRegionResult,
    RegionInfo,
    Timings,
    ToolResult,
)

BOX = {"box": [1, 2, 30, 40]}


def _regions(n: int) -> list[dict]:
    return [{"box": [i, 0, i + 1, 1]} for i in range(n)]


# --- Region -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"mask": "m.png"},
        {"rle": {"size": [4, 5], "counts": [20]}},
        {"rle": {"size": [4, 5], "counts": "PT1"}},
        {"polygon": [[0, 0, 1, 0, 1, 1]]},
        BOX,
    ],
)
def test_region_each_format(fields: dict) -> None:
    region = Region(**fields)
    assert region.format == next(iter(fields))
    assert region.id is None


def test_region_needs_exactly_one_format() -> None:
    with pytest.raises(
        pydantic.ValidationError, match=r"exactly one of mask, rle, polygon, box, points or scribble.*got none"
    ):
        Region()
    with pytest.raises(pydantic.ValidationError, match=r"got mask and box"):
        Region(mask="m.png", box=[0, 0, 1, 1])
    with pytest.raises(pydantic.ValidationError, match=r"got mask and rle and polygon and box"):
        Region(mask="m.png", rle={"size": [1, 1], "counts": [1]}, polygon=[[0, 0, 1, 0, 1, 1]], box=[0, 0, 1, 1])


@pytest.mark.parametrize("region_id", ["dog", "r0", "_x", "Dog_2.left-ear", "a" * 32])
def test_region_id_ok(region_id: str) -> None:
    assert Region(id=region_id, **BOX).id == region_id


@pytest.mark.parametrize("region_id", ["", "0dog", "<dog>", "a b", "a" * 33, "dög"])
def test_region_id_rejected(region_id: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        Region(id=region_id, **BOX)


@pytest.mark.parametrize("box", [[0, 0, 1], [0, 0, 1, 1, 2], [0, 0, float("nan"), 1], [0, 0, float("inf"), 1]])
def test_region_box_shape_and_finiteness(box: list[float]) -> None:
    with pytest.raises(pydantic.ValidationError):
        Region(box=box)


def test_region_polygon_rejects_nan_and_empty() -> None:
    with pytest.raises(pydantic.ValidationError):
        Region(polygon=[[0, 0, 1, 0, float("nan"), 1]])
    with pytest.raises(pydantic.ValidationError):
        Region(polygon=[])


def test_rle_model() -> None:
    assert RLE(size=[2, 3], counts=[6]).counts == [6]
    assert RLE(size=[2, 3], counts="6").counts == "6"
    with pytest.raises(pydantic.ValidationError):
        RLE(size=[2], counts=[6])
    with pytest.raises(pydantic.ValidationError):
        RLE(size=[2, 3], counts=[6], extra=1)


# --- requests ---------------------------------------------------------------------------------------------------------


def test_describe_defaults() -> None:
    request = DescribeRegionRequest(image="img.png", region=BOX)
    assert request.max_new_tokens == 1024
    assert request.overlay is False
    assert request.region.box == [1, 2, 30, 40]


@pytest.mark.parametrize("tokens", [0, -1, 4097])
def test_max_new_tokens_range(tokens: int) -> None:
    with pytest.raises(pydantic.ValidationError, match="max_new_tokens"):
        DescribeRegionRequest(image="img.png", region=BOX, max_new_tokens=tokens)
    assert DescribeRegionRequest(image="img.png", region=BOX, max_new_tokens=4096).max_new_tokens == 4096


def test_image_required_and_non_empty() -> None:
    with pytest.raises(pydantic.ValidationError):
        DescribeRegionRequest(region=BOX)
    with pytest.raises(pydantic.ValidationError):
        DescribeRegionRequest(image="", region=BOX)


def test_compare_regions_counts() -> None:
    request = CompareRegionsRequest(image="img.png", regions=_regions(2), focus="size")
    assert len(request.regions) == 2 and request.focus == "size"
    assert len(CompareRegionsRequest(image="img.png", regions=_regions(5)).regions) == 5
    with pytest.raises(pydantic.ValidationError, match="at least 2 regions; 1 given") as info:
        CompareRegionsRequest(image="img.png", regions=_regions(1))
    assert "describe_region" in str(info.value)
    with pytest.raises(pydantic.ValidationError, match="at most 5") as info:
        CompareRegionsRequest(image="img.png", regions=_regions(6))
    assert "GAR has 5 prompt slots" in str(info.value)
    assert "6 were given" in str(info.value)


def test_compare_focus_length() -> None:
    with pytest.raises(pydantic.ValidationError, match="focus"):
        CompareRegionsRequest(image="img.png", regions=_regions(2), focus="x" * 501)


def test_answer_regions_counts() -> None:
    request = AnswerAboutRegionsRequest(image="img.png", regions=_regions(1), question="What is <r0>?")
    assert request.choices is None
    with pytest.raises(pydantic.ValidationError, match="at least 1 region; 0 given"):
        AnswerAboutRegionsRequest(image="img.png", regions=[], question="What is <r0>?")
    with pytest.raises(pydantic.ValidationError, match="at most 5"):
        AnswerAboutRegionsRequest(image="img.png", regions=_regions(MAX_REGIONS + 3), question="?")


def test_answer_question_and_choices() -> None:
    with pytest.raises(pydantic.ValidationError, match="question"):
        AnswerAboutRegionsRequest(image="img.png", regions=_regions(1), question="")
    with pytest.raises(pydantic.ValidationError, match="question"):
        AnswerAboutRegionsRequest(image="img.png", regions=_regions(1), question="x" * 2001)
    ok = AnswerAboutRegionsRequest(image="i", regions=_regions(1), question="<r0>?", choices=["yes", "no"])
    assert ok.choices == ["yes", "no"]
    for choices in (["only one"], [f"option {i}" for i in range(27)], ["a", ""]):
        with pytest.raises(pydantic.ValidationError, match="choices"):
            AnswerAboutRegionsRequest(image="i", regions=_regions(1), question="<r0>?", choices=choices)
    assert (
        len(AnswerAboutRegionsRequest(image="i", regions=_regions(1), question="q", choices=["o"] * 26).choices) == 26
    )


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (DescribeRegionRequest, {"image": "i", "region": BOX, "temperature": 0.2}),
        (DescribeRegionRequest, {"image": "i", "region": {**BOX, "label": "dog"}}),
        (CompareRegionsRequest, {"image": "i", "regions": _regions(2), "extra": True}),
        (AnswerAboutRegionsRequest, {"image": "i", "regions": _regions(1), "question": "q", "answer": "A"}),
        (DescribeRegionRequest, {"image": "i", "region": {"rle": {"size": [1, 1], "counts": [1], "x": 1}}}),
    ],
)
def test_extra_fields_forbidden(model: type[pydantic.BaseModel], payload: dict) -> None:
    with pytest.raises(pydantic.ValidationError, match="Extra inputs are not permitted"):
        model.model_validate(payload)


@pytest.mark.parametrize(
    ("payload", "field", "got"),
    [
        ({"max_new_tokens": "2"}, "max_new_tokens", "got a string"),
        ({"max_new_tokens": True}, "max_new_tokens", "got a boolean"),
        ({"max_new_tokens": 2.0}, "max_new_tokens", "got a number"),
        ({"overlay": "yes"}, "overlay", "got a string"),
        ({"overlay": 1}, "overlay", "got an integer"),
        ({"region": {"box": [True, 0, 4, 4]}}, "region.box[0]", "got a boolean"),
        ({"region": {"box": [0, "1", 4, 4]}}, "region.box[1]", "got a string"),
        ({"region": {"polygon": [[0, 0, 4, False, 4, 4]]}}, "region.polygon[0][3]", "got a boolean"),
        ({"region": {"rle": {"size": [2, "3"], "counts": [6]}}}, "region.rle.size[1]", "got a string"),
        ({"region": {"rle": {"size": [2, 3], "counts": 6}}}, "region.rle.counts", "got an integer"),
    ],
)
def test_no_silent_coercion(payload: dict, field: str, got: str) -> None:
    from gar_tools.toolkit import coerce_request

    with pytest.raises(InputError) as info:
        coerce_request("describe_region", {"image": "i", "region": BOX, **payload})
    assert info.value.field == field and got in info.value.reason


def test_unknown_argument_is_named_with_the_closest_spelling() -> None:
    from gar_tools.toolkit import coerce_request

    with pytest.raises(InputError) as info:
        coerce_request("describe_region", {"image": "i", "region": BOX, "max_new_token": 2})
    assert info.value.field == "max_new_token"
    assert "did you mean 'max_new_tokens'?" in info.value.reason
    with pytest.raises(InputError) as info:
        coerce_request("describe_region", {"IMAGE": "i", "region": {**BOX, "bx": 1}})
    assert str(info.value).startswith("image: required field is missing")
    assert "IMAGE: unknown argument; did you mean 'image'?" in str(info.value)
    assert "region.bx: unknown field; did you mean 'box'?" in str(info.value)


def test_json_round_trip() -> None:
    payload = {
        "image": "data:image/png;base64,AAAA",
        "regions": [{"id": "dog", "rle": {"size": [2, 2], "counts": [1, 3]}}, {"polygon": [[0, 0, 1, 0, 1, 1]]}],
        "question": "Is <dog> next to <r1>?",
        "choices": ["yes", "no"],
        "overlay": True,
    }
    request = AnswerAboutRegionsRequest.model_validate_json(json.dumps(payload))
    assert AnswerAboutRegionsRequest.model_validate_json(request.model_dump_json()) == request


def test_schemas_describe_every_field_and_region_limits() -> None:
    for model in (DescribeRegionRequest, CompareRegionsRequest, AnswerAboutRegionsRequest):
        schema = model.model_json_schema()
        assert schema["additionalProperties"] is False
        for name, prop in schema["properties"].items():
            assert prop.get("description"), f"{model.__name__}.{name} has no description"
        for name, prop in schema["$defs"]["Region"]["properties"].items():
            assert prop.get("description"), f"Region.{name} has no description"
    assert CompareRegionsRequest.model_json_schema()["properties"]["regions"]["maxItems"] == 5
    assert CompareRegionsRequest.model_json_schema()["properties"]["regions"]["minItems"] == 2
    assert AnswerAboutRegionsRequest.model_json_schema()["properties"]["regions"]["maxItems"] == 5


# --- validation_error_to_input_error -----------------------------------------------------------------------------


def test_validation_error_to_input_error_names_field() -> None:
    big_image = "A" * 10_000
    with pytest.raises(pydantic.ValidationError) as info:
        CompareRegionsRequest(image=big_image, regions=[BOX, {"box": [0, 0, 1]}])
    error = validation_error_to_input_error(info.value)
    assert isinstance(error, InputError)
    assert error.field == "regions[1].box"
    assert error.reason.startswith("List should have at least 4 items")
    assert str(error) == f"regions[1].box: {error.reason}"
    assert big_image not in str(error)  # inputs are not echoed


def test_validation_error_to_input_error_lists_every_error() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        AnswerAboutRegionsRequest.model_validate(
            {"image": "i", "regions": [{"box": [0, 0, 1, 1], "mask": "m.png"}], "question": "", "bogus": 1}
        )
    error = validation_error_to_input_error(info.value)
    text = str(error)
    assert error.field == "regions[0]"
    assert error.reason.startswith(
        "give exactly one of mask, rle, polygon, box, points or scribble per region (got mask and box)"
    )
    assert text.startswith(
        "regions[0]: give exactly one of mask, rle, polygon, box, points or scribble per region (got mask and box)"
    )
    assert "; question: String should have at least 1 character" in text
    assert "; bogus: unknown argument; allowed: image, max_new_tokens, overlay, regions, question, choices" in text
    assert "Value error," not in text


def test_validation_error_to_input_error_too_many_regions() -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        CompareRegionsRequest(image="i", regions=_regions(7))
    error = validation_error_to_input_error(info.value)
    assert error.field == "regions"
    assert "regions: GAR has 5 prompt slots, so at most 5 regions per call; 7 were given" in str(error)


# --- results ------------------------------------------------------------------------------------------------------


def _result_fields() -> dict:
    return {
        "text": "A dog.",
        "regions": [RegionInfo(id="r0", prompt="<Prompt0>", box=[1, 2, 3, 4], area=4)],
        "image_size": [64, 48],
        "model": "tiny",
        "tiny_model": True,
        "timings": Timings(load_ms=1.0, encode_ms=2.0, generate_ms=3.0, tokens_generated=5),
    }


def test_results() -> None:
    for model in (DescribeRegionResult, CompareRegionsResult):
        result = model(**_result_fields())
        assert isinstance(result, ToolResult)
        assert result.overlay_png is None
        assert model.model_validate_json(result.model_dump_json()) == result
    answer = AnswerAboutRegionsResult(**_result_fields(), choice="B")
    assert answer.choice == "B"
    assert AnswerAboutRegionsResult(**_result_fields()).choice is None
    with pytest.raises(pydantic.ValidationError):
        RegionInfo(id="r0", prompt="<Prompt0>", box=[1, 2, 3], area=4)
    schema = AnswerAboutRegionsResult.model_json_schema()
    for name, prop in schema["properties"].items():
        assert prop.get("description"), f"AnswerAboutRegionsResult.{name} has no description"
