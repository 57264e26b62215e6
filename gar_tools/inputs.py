"""What a caller sends: pydantic models of regions and of the three tool requests.

These models are the tool schemas served over MCP, LangChain and LlamaIndex, so their field
descriptions are written for an LLM deciding how to call the tools. They check structure (types,
lengths, exactly one region format); :mod:`gar_tools.regions` checks regions against the image.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gar_tools.errors import InputError

__all__ = [
    "MAX_REGIONS",
    "MAX_POINTS",
    "SCRIBBLE_WIDTH_DEFAULT",
    "REGION_ID_PATTERN",
    "REGION_FORMATS",
    "RLE",
    "Region",
    "ToolRequest",
    "DescribeRegionRequest",
    "CompareRegionsRequest",
    "AnswerAboutRegionsRequest",
    "MAX_DESCRIBE_REGIONS",
    "AutoRegionsOptions",
    "DescribeRegionsRequest",
    "exactly_one_format",
    "too_many_regions",
    "field_path",
    "validation_error_to_input_error",
]

MAX_REGIONS = 5
"""GAR has 5 region prompt slots (``prompt_numbers``: ``<Prompt0>`` … ``<Prompt4>``), so at most 5 regions per call."""

REGION_ID = r"[A-Za-z_][A-Za-z0-9_.\-]{0,31}"
REGION_ID_PATTERN = rf"^{REGION_ID}$"
"""Allowed region ids: a letter or ``_``, then up to 31 letters, digits, ``_``, ``.`` or ``-``."""

REGION_FORMATS = ("mask", "rle", "polygon", "box", "points", "scribble")
"""The ways a region can be given; each region uses exactly one."""

MAX_POINTS = 16
"""Most points in one ``points`` region. SAM-family segmenters were trained with a handful of clicks per object
(SAM's interactive training used up to about a dozen); more points rarely help and only cost time."""

SCRIBBLE_WIDTH_DEFAULT = 5.0
"""Stroke width in pixels of a ``scribble`` region when ``width`` is not given."""

MAX_SCRIBBLE_LINES = 32
"""Most strokes in one ``scribble`` region."""
MAX_SCRIBBLE_NUMBERS = 4000
"""Most coordinates in one stroke (2000 points)."""

MAX_NEW_TOKENS_DEFAULT = 1024
MAX_NEW_TOKENS_LIMIT = 4096

_FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A coordinate: an int or a float, finite; never a string or a boolean (strict: no silent coercion)."""
_StrictInt = Annotated[int, Field(strict=True)]

_IMAGE_DESCRIPTION = (
    "The image: a local file path (readable by the server), a data: URI (data:image/png;base64,...), "
    "raw base64 of the file, or an http(s) URL if the server allows URLs. Any common format (PNG, JPEG, WEBP, ...); "
    "EXIF rotation is applied. Region coordinates refer to the image as displayed after that rotation."
)
_MAX_NEW_TOKENS_DESCRIPTION = (
    f"Upper bound on the number of tokens to generate (1-{MAX_NEW_TOKENS_LIMIT}). "
    f"Default {MAX_NEW_TOKENS_DEFAULT}; lower it for short answers."
)
_OVERLAY_DESCRIPTION = (
    "If true, the result also contains overlay_png: a PNG of the image with each region filled and outlined in its "
    "own colour and labelled with its id, to check that the regions are where you meant."
)


def too_many_regions(count: int) -> str:
    """Why ``count`` regions (more than :data:`MAX_REGIONS`) are too many for one call."""
    return (
        f"GAR has {MAX_REGIONS} prompt slots, so at most {MAX_REGIONS} regions per call; {count} were given. "
        "Split the regions over several calls."
    )


class RLE(BaseModel):
    """A COCO run-length-encoded binary mask."""

    model_config = ConfigDict(extra="forbid")

    size: list[_StrictInt] = Field(
        min_length=2,
        max_length=2,
        description="[height, width] of the mask in pixels (COCO order: height first). Must equal the image's size.",
    )
    counts: str | list[_StrictInt] = Field(
        description=(
            "COCO RLE counts: either the compressed string (as produced by pycocotools.mask.encode, e.g. in COCO "
            "annotations) or the uncompressed list of run lengths, which alternate outside/inside starting with "
            "outside, run in column-major (Fortran) order, and sum to height*width."
        ),
    )


class Region(BaseModel):
    """One region of the image, given in exactly one of six formats: mask, rle, polygon, box, points or scribble.

    ``box`` may add ``segment: true``, ``points`` may add ``labels``, ``scribble`` may add ``width``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(
        default=None,
        pattern=REGION_ID_PATTERN,
        description=(
            "Optional short name for the region (a letter or _, then letters, digits, _ . -; at most 32 "
            "characters), e.g. 'dog'. Questions refer to it as <dog>; results report it. "
            "Default: r0, r1, ... by position in the list."
        ),
    )
    mask: str | None = Field(
        default=None,
        description=(
            "Binary mask image exactly the size of the image, non-zero (non-black) pixels inside the region; "
            "as a local file path, a data: URI or raw base64 of a PNG (any common image format works). "
            "The most precise way to give a region."
        ),
    )
    rle: RLE | None = Field(
        default=None,
        description="The mask as COCO run-length encoding (compressed string or uncompressed counts).",
    )
    polygon: list[list[_FiniteFloat]] | None = Field(
        default=None,
        min_length=1,
        description=(
            "One or more polygons in image pixel coordinates (origin at the top-left corner, x to the right, y "
            "down), each a flat list [x0, y0, x1, y1, ...] of at least 3 points, as in COCO segmentations. "
            "The region is their union."
        ),
    )
    box: list[_FiniteFloat] | None = Field(
        default=None,
        min_length=4,
        max_length=4,
        description=(
            "Bounding box [x1, y1, x2, y2] in image pixels (x2, y2 exclusive; x2 > x1, y2 > y1), filled as a "
            "rectangle. An approximation: GAR was trained on masks, so prefer mask, rle or polygon when the "
            "outline is known, or set segment: true to have the server's segmenter cut the object out of the box."
        ),
    )
    segment: bool = Field(
        default=False,
        strict=True,
        description=(
            "Only with box: if true, a SAM-family segmenter (enabled on the server with --segmenter) turns the box "
            "into the mask of the object inside it, which GAR reads far better than a rectangle. The result "
            "reports the mask used (mask_rle) and the segmenter's score."
        ),
    )
    points: list[Annotated[list[_FiniteFloat], Field(min_length=2, max_length=2)]] | None = Field(
        default=None,
        description=(
            f"Clicks on the object, [[x, y], ...] in image pixels (1 to {MAX_POINTS} points); a SAM-family "
            "segmenter (enabled on the server with --segmenter) turns them into the object's mask. The result "
            "reports the mask used (mask_rle) and the segmenter's score."
        ),
    )
    labels: list[Annotated[int, Field(strict=True, ge=0, le=1)]] | None = Field(
        default=None,
        description=(
            "Only with points: one label per point, 1 = on the object, 0 = not on it (to cut a part away). "
            "Default: all 1."
        ),
    )
    scribble: list[Annotated[list[_FiniteFloat], Field(min_length=2, max_length=MAX_SCRIBBLE_NUMBERS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SCRIBBLE_LINES,
        description=(
            "One or more strokes painted over the object, each a flat polyline [x0, y0, x1, y1, ...] in image "
            "pixels (a single point paints a dot); the painted pixels, width wide, are the region itself "
            "(no segmenter involved)."
        ),
    )
    width: _FiniteFloat | None = Field(
        default=None,
        gt=0,
        le=4096,
        description=f"Only with scribble: stroke width in pixels (default {SCRIBBLE_WIDTH_DEFAULT:g}).",
    )

    @field_validator("segment")
    @classmethod
    def _segment_needs_box(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("box") is None:
            raise ValueError("segment: true applies to a box region only; give box [x1, y1, x2, y2] with it")
        return value

    @field_validator("points", mode="before")
    @classmethod
    def _point_count(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("points is empty; give at least one [x, y] point on the object")
            if len(value) > MAX_POINTS:
                raise ValueError(
                    f"at most {MAX_POINTS} points per region; {len(value)} were given "
                    "(a few clicks on the object are enough; use a mask for a precise outline)"
                )
        return value

    @field_validator("labels")
    @classmethod
    def _labels_match_points(cls, value: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if value is None:
            return value
        points = info.data.get("points")
        if points is None:
            raise ValueError("labels apply to points only; give points [[x, y], ...] with them")
        if len(value) != len(points):
            raise ValueError(
                f"labels has {len(value)} entries but points has {len(points)}; give one label (1 on the object, "
                "0 not on it) per point, or leave labels out for all 1"
            )
        return value

    @field_validator("width")
    @classmethod
    def _width_needs_scribble(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("scribble") is None:
            raise ValueError("width applies to scribble only; give scribble [[x0, y0, x1, y1, ...]] with it")
        return value

    @model_validator(mode="after")
    def _exactly_one_format(self) -> Region:
        exactly_one_format(self)
        return self

    @property
    def format(self) -> str:
        """Which of :data:`REGION_FORMATS` this region uses."""
        return exactly_one_format(self)


def exactly_one_format(region: Any) -> str:
    """The one format of :data:`REGION_FORMATS` (``mask``, ``rle``, ``polygon``, ``box``, ``points``, ``scribble``)
    ``region`` is given in.

    Raises:
        ValueError: when none or several are given.
    """
    given = [name for name in REGION_FORMATS if getattr(region, name, None) is not None]
    if len(given) != 1:
        got = "none" if not given else " and ".join(given)
        raise ValueError(
            f"give exactly one of {', '.join(REGION_FORMATS[:-1])} or {REGION_FORMATS[-1]} per region (got {got})"
        )
    return given[0]


def _check_region_count(value: Any, *, minimum: int, tool: str, hint: str = "") -> Any:
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_REGIONS:
            raise ValueError(too_many_regions(len(value)))
        if len(value) < minimum:
            plural = "region" if minimum == 1 else "regions"
            raise ValueError(f"{tool} needs at least {minimum} {plural}; {len(value)} given{hint}")
    return value


class ToolRequest(BaseModel):
    """What every tool request has: the image, a generation budget and the overlay switch.

    Each tool's request model (see :mod:`gar_tools.tools`) adds its regions and text fields.
    """

    model_config = ConfigDict(extra="forbid")

    image: str = Field(min_length=1, description=_IMAGE_DESCRIPTION)
    max_new_tokens: int = Field(
        default=MAX_NEW_TOKENS_DEFAULT,
        ge=1,
        le=MAX_NEW_TOKENS_LIMIT,
        strict=True,
        description=_MAX_NEW_TOKENS_DESCRIPTION,
    )
    overlay: bool = Field(default=False, strict=True, description=_OVERLAY_DESCRIPTION)


class DescribeRegionRequest(ToolRequest):
    """Describe one region of an image in detail."""

    region: Region = Field(description="The region to describe.")


class CompareRegionsRequest(ToolRequest):
    """Describe 2 to 5 regions of an image and how they relate to or differ from each other."""

    regions: list[Region] = Field(
        description=(
            f"The regions to compare, 2 to {MAX_REGIONS} (GAR has {MAX_REGIONS} prompt slots). The first region is "
            "the subject; the others are related to it."
        ),
        json_schema_extra={"minItems": 2, "maxItems": MAX_REGIONS},
    )
    focus: str | None = Field(
        default=None,
        max_length=500,
        description=(
            "Optional aspect to concentrate on, e.g. 'size', 'colour', 'what they are doing', 'spatial relation'. "
            "Leave out for a general comparison."
        ),
    )

    @field_validator("regions", mode="before")
    @classmethod
    def _region_count(cls, value: Any) -> Any:
        return _check_region_count(
            value, minimum=2, tool="compare_regions", hint=" (use describe_region for a single region)"
        )


class AnswerAboutRegionsRequest(ToolRequest):
    """Answer a question about 1 to 5 regions of an image, free-form or multiple choice."""

    regions: list[Region] = Field(
        description=(
            f"The regions the question is about, 1 to {MAX_REGIONS} (GAR has {MAX_REGIONS} prompt slots). "
            "Every region must be named in the question."
        ),
        json_schema_extra={"minItems": 1, "maxItems": MAX_REGIONS},
    )
    question: str = Field(
        min_length=1,
        max_length=2000,
        description=(
            "The question. Name regions by id in angle brackets, e.g. 'What is <r0> holding?' or "
            "'Is <dog> bigger than <cat>?' (ids default to r0, r1, ... by position; upstream's <Prompt0> spelling "
            "is accepted too). Do not list the choices here; put them in choices."
        ),
    )
    choices: list[Annotated[str, Field(min_length=1, max_length=1000)]] | None = Field(
        default=None,
        min_length=2,
        max_length=26,
        description=(
            "Optional answer options for a multiple-choice question, 2 to 26, each the option's text, e.g. "
            "['The ears are rounded.', 'The ears are pointed.']. Letters 'A.', 'B.', ... are added if missing; "
            "the result's choice field then holds the chosen letter."
        ),
    )

    @field_validator("regions", mode="before")
    @classmethod
    def _region_count(cls, value: Any) -> Any:
        return _check_region_count(value, minimum=1, tool="answer_about_regions")


MAX_DESCRIBE_REGIONS = 64
"""Most regions of one ``describe_regions`` call: each is described alone (one prompt slot each), so the 5-slot
limit does not apply; the bound keeps one call's work and result size reasonable."""


class AutoRegionsOptions(BaseModel):
    """How ``regions: "auto"`` proposes regions with the segmenter (automatic mask generation)."""

    model_config = ConfigDict(extra="forbid")

    points_per_side: int = Field(
        default=16, ge=1, le=64, strict=True, description="Point prompts per side of the grid laid over the image."
    )
    score_threshold: float = Field(
        default=0.8, ge=0, le=1, description="Keep masks whose predicted IoU (the segmenter's score) is at least this."
    )
    stability_threshold: float = Field(
        default=0.9,
        ge=0,
        le=1,
        description="Keep masks whose stability (IoU of the mask at two binarisation thresholds) is at least this.",
    )
    iou_threshold: float = Field(
        default=0.7, ge=0, le=1, description="Drop a mask overlapping a better-scored kept one by more than this IoU."
    )
    min_area: int = Field(default=100, ge=1, strict=True, description="Drop masks of fewer pixels than this.")
    max_regions: int = Field(
        default=32,
        ge=1,
        le=MAX_DESCRIBE_REGIONS,
        strict=True,
        description=f"Describe at most this many proposed masks (the best scored; at most {MAX_DESCRIBE_REGIONS}).",
    )


class DescribeRegionsRequest(ToolRequest):
    """Describe each of up to 64 regions of an image, one description per region, in one call."""

    regions: list[Region] | Literal["auto"] = Field(
        description=(
            f"The regions to describe, 1 to {MAX_DESCRIBE_REGIONS}, each described on its own; or the string "
            '"auto" to have the server\'s segmenter propose every object it finds (needs --segmenter).'
        ),
    )
    auto: AutoRegionsOptions | None = Field(
        default=None,
        title="Auto",
        description='Only with regions: "auto": grid, thresholds, smallest area and most regions to propose.',
    )

    @field_validator("regions", mode="before")
    @classmethod
    def _region_count(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_DESCRIBE_REGIONS:
                raise ValueError(
                    f"describe_regions takes at most {MAX_DESCRIBE_REGIONS} regions per call; {len(value)} were "
                    "given. Split them over several calls."
                )
            if not value:
                raise ValueError('describe_regions needs at least 1 region (or "auto" with a segmenter); 0 given')
        elif isinstance(value, str) and value != "auto":
            raise ValueError('regions must be a list of regions or the string "auto"')
        return value

    @model_validator(mode="after")
    def _auto_needs_auto(self) -> DescribeRegionsRequest:
        if self.auto is not None and self.regions != "auto":
            raise ValueError('auto options apply only with regions: "auto"')
        return self


_JSON_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    tuple: "a list",
    dict: "an object",
    type(None): "null",
}
_TYPE_ERRORS = ("int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type", "model_type")


def _model_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model that holds the field at ``loc`` (the parent of its last part), if it can be found."""
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        model = _model_in(info.annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _request_model(title: str) -> type[BaseModel] | None:
    """The request model (a :class:`ToolRequest` subclass) named ``title``, if there is one."""
    pending: list[type[BaseModel]] = [ToolRequest]
    while pending:
        cls = pending.pop()
        if cls.__name__ == title:
            return cls
        pending.extend(cls.__subclasses__())
    return None


def _unknown_field_message(loc: Sequence[Any], model: type[BaseModel] | None) -> str:
    parent = _model_at(model, loc)
    if parent is None:
        return "unknown field; remove it (check the spelling against the tool's schema)"
    allowed = list(parent.model_fields)
    what = "argument" if len(loc) == 1 else "field"
    lowered = {name.lower(): name for name in allowed}
    close = difflib.get_close_matches(str(loc[-1]).lower(), list(lowered), n=1, cutoff=0.6) if loc else []
    hint = f"did you mean {lowered[close[0]]!r}? " if close else ""
    return f"unknown {what}; {hint}allowed: {', '.join(allowed)}"


def _error_message(error: Any, model: type[BaseModel] | None = None) -> str:
    kind = error.get("type")
    if kind == "value_error":
        ctx = error.get("ctx") or {}
        if "error" in ctx:
            return str(ctx["error"])
    if kind == "extra_forbidden":
        return _unknown_field_message(error.get("loc", ()), model)
    if kind == "missing":
        return "required field is missing"
    message = str(error.get("msg", "invalid value"))
    if kind in _TYPE_ERRORS and "input" in error:
        got = _JSON_TYPE_NAMES.get(type(error["input"]), type(error["input"]).__name__)
        message += f", got {got}"  # the type only: input values are never echoed
    return message


def field_path(loc: Sequence[Any]) -> str:
    """A pydantic error location as one field path: ``("regions", 1, "box")`` → ``regions[1].box``.

    This is the one field-path style of every error (toolkit, MCP, worker, adapters, CLI).
    """
    path = ""
    for part in loc:
        if isinstance(part, str) and _is_union_tag(part):
            continue  # pydantic names the union member it tried (``str``, ``list[int]``): not a field
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _is_union_tag(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "bytes", "none") or "[" in part or "-" in part


def validation_error_to_input_error(exc: pydantic.ValidationError, model: type[BaseModel] | None = None) -> InputError:
    """Turn a pydantic ``ValidationError`` into one :class:`~gar_tools.errors.InputError`.

    ``field`` is the first error's location (e.g. ``regions[1].box``; None when the error is about the whole
    request) and ``reason`` its message, followed by the other errors as ``; field: message``. An unknown field's
    message lists the allowed ones (and the closest spelling) when ``model``, the validated model, is given; a
    wrong type's message says which type was given. Input values are never echoed (they may be large base64
    strings).
    """
    model = model or _request_model(exc.title)
    errors = [
        (field_path(error.get("loc", ())), _error_message(error, model))
        for error in exc.errors(include_url=False, include_context=True)
    ]
    if not errors:
        return InputError(f"invalid {exc.title or 'request'}")
    (first_field, first_reason), rest = errors[0], errors[1:]
    reason = "; ".join([first_reason, *(f"{loc}: {msg}" if loc else msg for loc, msg in rest)])
    return InputError(reason, field=first_field or None)
