"""The tool registry: one :class:`ToolSpec` per tool, and the built-in tools.

Everything that offers tools — :class:`~gar_tools.toolkit.GarToolkit`, the engines, the MCP server, the worker, the
LangChain and LlamaIndex adapters and the CLI — iterates over this registry; none keeps its own list.

To add a tool:

1. write its request model (a :class:`~gar_tools.inputs.ToolRequest` subclass with a ``region`` or ``regions``
   field) and its result model (a :class:`~gar_tools.results.ToolResult` subclass);
2. write ``question(request, region_ids)``, the question text naming regions as ``<PromptK>`` (``None`` for the
   single-region describe prompt), and, if the result has extra fields, ``finish(request, text)``;
3. ``register_tool(ToolSpec(...))``. Every surface serves it from then on.

A tool with ``fan_out=True`` (``describe_regions``) is not one generation but one per region: each region is asked
the tool's ``question`` on its own (``None``: the single-region describe prompt), the engine runs them together
(one decoded image, batched decoding, the tile cache) and builds the result from per-region
:class:`~gar_tools.results.RegionDescription` items, which stream to callers as each region finishes. Its result
model has ``descriptions`` and ``proposed`` fields (see :class:`~gar_tools.results.DescribeRegionsResult`), and its
``regions`` field may be the string ``"auto"`` (regions proposed by the segmenter).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from gar_tools.errors import InputError
from gar_tools.inputs import (
    MAX_DESCRIBE_REGIONS,
    MAX_REGIONS,
    AnswerAboutRegionsRequest,
    CompareRegionsRequest,
    DescribeRegionRequest,
    DescribeRegionsRequest,
    Region,
    ToolRequest,
)
from gar_tools.model.prompts import multiple_choice_question
from gar_tools.prompts import compare_question, map_region_references, parse_choice
from gar_tools.results import (
    AnswerAboutRegionsResult,
    CompareRegionsResult,
    DescribeRegionResult,
    DescribeRegionsResult,
    ToolResult,
)

__all__ = [
    "ToolName",
    "ToolSpec",
    "get_tool",
    "register_tool",
    "tool_names",
    "tools",
    "unregister_tool",
]

ToolName: TypeAlias = str
"""A registered tool's name, e.g. ``"describe_region"``."""

REGION_FORMATS_SENTENCE = (
    "Regions: mask (PNG, non-zero = inside; best), rle (COCO), polygon, scribble (strokes, width), points "
    "([[x, y], ...] clicks the server's segmenter turns into a mask) or box [x1, y1, x2, y2] (a rectangle, an "
    "approximation; segment: true has the segmenter cut the object out)."
)


def _no_extra_fields(request: Any, text: str) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class ToolSpec:
    """Everything every surface needs to know about one tool.

    Attributes:
        name: the tool's name (MCP tool name, worker route ``/v1/{name}``, LangChain/LlamaIndex tool name).
        title: a short human-readable title.
        description: what the tool does, written for an LLM choosing a tool (servers append what images they read).
        request_model: the pydantic request model (its JSON schema is the tool's input schema).
        result_model: the pydantic result model (its JSON schema, less ``overlay_png``, the output schema).
        question: ``(validated request, region ids) -> question`` naming regions as ``<PromptK>``, or None for
            the checkpoint's single-region describe prompt. Raises :class:`InputError` naming the field.
        finish: ``(validated request, generated text) -> extra result fields`` (e.g. the parsed ``choice``).
        regions_field: the request field holding the regions: ``"region"`` (one :class:`Region`) or
            ``"regions"`` (a list).
        min_regions, max_regions: how many regions the tool takes.
        cli_command: the ``gar-tools`` subcommand (default: the tool's name).
        cli_positionals: request fields the CLI takes as positional arguments after the image.
        cli_flags: CLI flag names for request fields where ``--{field}`` is not the natural spelling.
        read_only, idempotent: MCP tool annotations (``readOnlyHint``, ``idempotentHint``).
        fan_out: each region is its own generation with ``question(request, [id])`` (see the module docstring);
            progress reports regions done, and per-region results stream as they finish.
    """

    name: ToolName
    title: str
    description: str
    request_model: type[ToolRequest]
    result_model: type[ToolResult]
    question: Callable[[Any, Sequence[str]], str | None]
    finish: Callable[[Any, str], dict[str, Any]] = _no_extra_fields
    regions_field: str = "regions"
    min_regions: int = 1
    max_regions: int = MAX_REGIONS
    cli_command: str | None = None
    cli_positionals: tuple[str, ...] = ()
    cli_flags: dict[str, str] = field(default_factory=dict)
    read_only: bool = True
    idempotent: bool = True
    fan_out: bool = False

    @property
    def single_region(self) -> bool:
        """Whether :attr:`regions_field` holds one region rather than a list."""
        return self.regions_field == "region"

    def regions(self, request: ToolRequest) -> list[Region]:
        """The request's regions as a list, in order (empty for ``"auto"``: the segmenter proposes them)."""
        value = getattr(request, self.regions_field)
        if isinstance(value, str):
            return []
        return [value] if self.single_region else list(value)

    def region_field(self, index: int) -> str:
        """The field path of region ``index`` in errors: ``region`` or ``regions[index]``."""
        return self.regions_field if self.single_region else f"{self.regions_field}[{index}]"

    @property
    def annotations(self) -> dict[str, bool]:
        """MCP tool annotations: reads the image, changes nothing, same call gives the same answer."""
        return {
            "readOnlyHint": self.read_only,
            "destructiveHint": False,
            "idempotentHint": self.idempotent,
            "openWorldHint": False,
        }


_REGISTRY: dict[ToolName, ToolSpec] = {}


def register_tool(spec: ToolSpec, *, replace: bool = False) -> ToolSpec:
    """Add ``spec`` to the registry (``replace=True`` to redefine a tool of the same name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"a tool named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_tool(name: ToolName) -> None:
    """Remove a tool from the registry (no error if it is not there)."""
    _REGISTRY.pop(name, None)


def tools() -> tuple[ToolSpec, ...]:
    """Every registered tool, in registration order."""
    return tuple(_REGISTRY.values())


def tool_names() -> tuple[ToolName, ...]:
    """The names of every registered tool, in registration order."""
    return tuple(_REGISTRY)


def get_tool(name: str) -> ToolSpec:
    """The spec of tool ``name``.

    Raises:
        InputError: naming field ``tool`` and the registered tools, for an unknown name.
    """
    spec = _REGISTRY.get(name)
    if spec is None:
        raise InputError(f"unknown tool {name!r}; use one of {', '.join(_REGISTRY)}", field="tool")
    return spec


# --- the built-in tools --------------------------------------------------------------------------------------------


def _answer_question(request: AnswerAboutRegionsRequest, ids: Sequence[str]) -> str:
    choices = request.choices or []
    fields = ["question", *(f"choices[{i}]" for i in range(len(choices)))]
    question, *options = map_region_references([request.question, *choices], ids, fields=fields, require_all=True)
    return multiple_choice_question(question, options) if options else question


def _answer_fields(request: AnswerAboutRegionsRequest, text: str) -> dict[str, Any]:
    return {"choice": parse_choice(text, len(request.choices)) if request.choices else None}


register_tool(
    ToolSpec(
        name="describe_region",
        title="Describe an image region",
        description=(
            "Describe one region of an image in detail with GAR (Grasp Any Region), a region-level vision-language "
            "model: what it is, its colour, material, shape, state or action, read in the context of the whole "
            "image: for one specific object or area. Give the image and exactly one region. "
            f"{REGION_FORMATS_SENTENCE} Returns the text and the region as understood (id, box, area, mask used). "
            "overlay=true adds a picture with the region outlined, to check it is where you meant."
        ),
        request_model=DescribeRegionRequest,
        result_model=DescribeRegionResult,
        question=lambda request, ids: None,
        regions_field="region",
        max_regions=1,
        cli_command="describe",
    )
)
register_tool(
    ToolSpec(
        name="compare_regions",
        title="Compare image regions",
        description=(
            f"Describe 2 to {MAX_REGIONS} regions of one image and how they relate to or differ from each other "
            "(appearance, position, interaction), with GAR (Grasp Any Region). The first region is the subject. "
            "Optional focus, e.g. 'size' or 'what they are doing'. Give regions ids (e.g. 'dog') to tell them "
            f"apart in the answer. At most {MAX_REGIONS} regions per call. {REGION_FORMATS_SENTENCE} overlay=true "
            "adds a picture with each region outlined and labelled."
        ),
        request_model=CompareRegionsRequest,
        result_model=CompareRegionsResult,
        question=lambda request, ids: compare_question(len(ids), request.focus),
        min_regions=2,
        cli_command="compare",
    )
)
register_tool(
    ToolSpec(
        name="answer_about_regions",
        title="Answer a question about image regions",
        description=(
            f"Answer a question about 1 to {MAX_REGIONS} regions of one image with GAR (Grasp Any Region). Name "
            "each region in the question by its id in angle brackets: 'What is <r0> holding?', 'Is <dog> bigger "
            "than <cat>?' (ids default to r0, r1, ... in list order; every region must be named). For multiple "
            "choice put the options in choices; the result's choice field holds the picked letter. "
            + REGION_FORMATS_SENTENCE
        ),
        request_model=AnswerAboutRegionsRequest,
        result_model=AnswerAboutRegionsResult,
        question=_answer_question,
        finish=_answer_fields,
        cli_command="ask",
        cli_positionals=("question",),
        cli_flags={"choices": "--choice"},
    )
)
register_tool(
    ToolSpec(
        name="describe_regions",
        title="Describe every region of an image",
        description=(
            f"Describe each of 1 to {MAX_DESCRIBE_REGIONS} regions of one image in detail with GAR (Grasp Any "
            "Region), one description per region, in one call (cheaper than one describe_region call per region; "
            'each description is what describe_region gives for that region alone). Or regions: "auto" (when the '
            "server has a segmenter) to find and describe every object: dense captions, each with its mask as COCO "
            "RLE. A region that fails gets its own error entry; the others are still described. "
            f"{REGION_FORMATS_SENTENCE}"
        ),
        request_model=DescribeRegionsRequest,
        result_model=DescribeRegionsResult,
        question=lambda request, ids: None,
        max_regions=MAX_DESCRIBE_REGIONS,
        cli_command="describe-all",
        fan_out=True,
    )
)
