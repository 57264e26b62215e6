"""What the tools return: pydantic result models with the generated text, the regions as understood, and timings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gar_tools.inputs import RLE

__all__ = [
    "TINY_MODEL_NOTE",
    "RegionSource",
    "RegionInfo",
    "Timings",
    "ToolResult",
    "DescribeRegionResult",
    "CompareRegionsResult",
    "AnswerAboutRegionsResult",
    "RegionFailure",
    "RegionDescription",
    "DescribeRegionsResult",
    "ModelInfo",
]

TINY_MODEL_NOTE = (
    "The 'tiny' test model has random weights: its text is meaningless and only shows that the tool ran; "
    "use a real GAR checkpoint for answers."
)
"""The one sentence every surface (CLI, MCP, LangChain, LlamaIndex, descriptions) shows for tiny-model output."""


RegionSource = Literal["mask", "rle", "polygon", "scribble", "box", "sam:points", "sam:box", "sam:auto"]
"""Where a region's mask came from: the format the caller gave, ``sam:points`` / ``sam:box`` (the segmenter), or
``sam:auto`` (proposed by the segmenter's automatic mask generation, ``describe_regions`` with ``regions: "auto"``)."""


class RegionInfo(BaseModel):
    """One region as the model saw it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="The region's id: the one given, or r0, r1, ... by position.")
    prompt: str = Field(description="The GAR prompt token the region was given to the model as, e.g. '<Prompt0>'.")
    box: list[int] = Field(
        min_length=4,
        max_length=4,
        description=(
            "Bounding box of the region's mask, [x1, y1, x2, y2] in image pixels with x2, y2 exclusive; passing it "
            "back as a box region gives the same rectangle."
        ),
    )
    area: int = Field(ge=0, description="Number of image pixels inside the region.")
    source: RegionSource = Field(
        default="mask",
        description=(
            "Where the mask GAR saw came from: mask, rle, polygon, scribble or box (drawn from what was given), or "
            "sam:points / sam:box (cut out by the segmenter from the points or the box), sam:auto (proposed by the "
            "segmenter)."
        ),
    )
    mask_rle: RLE | None = Field(
        default=None,
        description=(
            "The mask GAR saw, as compressed COCO RLE ({size: [H, W], counts}), whenever it was not sent as a mask "
            "or rle: pass it back as an rle region, decode it with pycocotools, or show it."
        ),
    )
    score: float | None = Field(
        default=None,
        description="For sam:points and sam:box: the segmenter's predicted IoU of the mask it chose (higher is surer).",
    )


class Timings(BaseModel):
    """Where the time went for one call."""

    model_config = ConfigDict(extra="forbid")

    load_ms: float = Field(
        ge=0,
        description=(
            "Milliseconds spent reading and validating the image and regions (plus loading the model, on the call "
            "that had to load it)."
        ),
    )
    queue_ms: float = Field(
        default=0.0, ge=0, description="Milliseconds spent waiting for the model (queue, batch slot, KV budget)."
    )
    encode_ms: float = Field(
        ge=0, description="Milliseconds spent preparing and encoding the image and regions with the model."
    )
    prefill_ms: float = Field(default=0.0, ge=0, description="Milliseconds from prefill start to the first token.")
    generate_ms: float = Field(ge=0, description="Milliseconds spent generating the text (prefill included).")
    segment_ms: float = Field(
        default=0.0, ge=0, description="Milliseconds the segmenter spent turning points or boxes into masks."
    )
    tokens_generated: int = Field(ge=0, description="Number of tokens generated.")
    prompt_tokens: int = Field(
        default=0,
        ge=0,
        description="Tokens of the prompt: image, regions and text (describe_regions: summed over its regions).",
    )
    prompt_tokens_reused: int = Field(
        default=0,
        ge=0,
        description=(
            "Prompt tokens not computed again: their keys and values were kept from an earlier question about the "
            "same image and regions (no vision tower, no prefill over them)."
        ),
    )


class ToolResult(BaseModel):
    """Common fields of every tool result."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The model's answer or description.")
    regions: list[RegionInfo] = Field(description="The regions as understood, in the order given.")
    image_size: list[int] = Field(
        min_length=2,
        max_length=2,
        description=(
            "[width, height] of the image in pixels as the model saw it (EXIF rotation applied): the frame every "
            "region coordinate refers to, so a caller can check its boxes and polygons against it."
        ),
    )
    model: str = Field(description="The model that answered: a hub id, a local path, or 'tiny'.")
    tiny_model: bool = Field(description=f"True for the 'tiny' test checkpoint. {TINY_MODEL_NOTE}")
    timings: Timings = Field(description="Time spent per stage and number of generated tokens.")
    overlay_png: str | None = Field(
        default=None,
        description=(
            "Base64 PNG of the image with each region filled, outlined and labelled with its id in its own colour; "
            "present only when overlay was requested."
        ),
    )


class DescribeRegionResult(ToolResult):
    """Result of describe_region: ``text`` is a detailed description of the region."""


class CompareRegionsResult(ToolResult):
    """Result of compare_regions: ``text`` describes the regions and how they relate or differ."""


class AnswerAboutRegionsResult(ToolResult):
    """Result of answer_about_regions: ``text`` is the answer; ``choice`` the option letter picked, if any."""

    choice: str | None = Field(
        default=None,
        description=(
            "For a multiple-choice question: the option letter parsed from the answer ('A', 'B', ...); null when no "
            "choices were given or the answer names no option."
        ),
    )


class RegionFailure(BaseModel):
    """Why one region of a ``describe_regions`` call could not be described (the others still were)."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="The error's kind, e.g. 'RegionError'.")
    message: str = Field(description="The whole message: field and reason.")
    field: str | None = Field(default=None, description="The offending field, e.g. 'regions[3].rle'.")
    reason: str | None = Field(default=None, description="What was wrong and what is allowed.")


class RegionDescription(BaseModel):
    """One region's description in a ``describe_regions`` result (streamed as each region finishes)."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="The region's position in the request (or among the proposed regions).")
    id: str = Field(description="The region's id: the one given, or r0, r1, ... by position.")
    text: str | None = Field(default=None, description="The description; null when the region failed (see error).")
    region: RegionInfo | None = Field(
        default=None, description="The region as understood (box, area, mask source, mask_rle); null when it failed."
    )
    tokens_generated: int = Field(default=0, ge=0, description="Tokens generated for this region.")
    error: RegionFailure | None = Field(default=None, description="Why this region failed; null when it succeeded.")


class DescribeRegionsResult(ToolResult):
    """Result of describe_regions: one entry per region in ``descriptions`` (``text`` joins them as ``id: text``
    lines; ``regions`` lists the regions that were described).

    ``timings`` covers the whole call: ``encode_ms`` and ``prefill_ms`` add up the regions' own, ``queue_ms`` is the
    longest any region waited, ``generate_ms`` the wall time from the first region's submission to the last one's
    end, and ``tokens_generated`` the sum over regions."""

    descriptions: list[RegionDescription] = Field(
        description="Per region, in order: id, text, the region as understood and tokens generated, or its error."
    )
    proposed: bool = Field(
        default=False, description='True when the regions were proposed by the segmenter (regions: "auto").'
    )


class ModelInfo(BaseModel):
    """Which model an engine serves."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="The model: a hub id, a local path, or 'tiny'.")
    tiny_model: bool = Field(description=f"True for the 'tiny' test checkpoint. {TINY_MODEL_NOTE}")
    loaded: bool = Field(description="Whether the weights are in memory yet (engines load on first use).")
    device: str | None = Field(default=None, description="Where the model runs, e.g. 'cuda:0' or 'cpu'.")
    dtype: str | None = Field(default=None, description="The weights' dtype, e.g. 'bfloat16'.")
    max_regions: int = Field(default=5, description="Most regions per call (GAR's prompt slots).")
    segmenter: str | None = Field(
        default=None,
        description="The SAM-family segmenter that turns points and segment boxes into masks, or null for none.",
    )
    geometry: str = Field(default="checkpoint", description="RoI replay box convention.")
    max_batch_size: int | None = Field(default=None, description="Most requests decoded together.")
    max_queue: int | None = Field(default=None, description="Most requests waiting; more are refused as busy.")
    kv_budget_tokens: int | None = Field(
        default=None, description="Tokens (prompt + max_new_tokens) the KV cache holds for running requests at once."
    )
    kv_cache_bytes: int | None = Field(default=None, description="Memory of the preallocated KV cache.")
    tile_cache_max_bytes: int | None = Field(default=None, description="Bound of the per-image tile-feature cache.")
    image_cache_bytes: int | None = Field(default=None, description="Memory the decoded-image cache holds now.")
    image_cache_max_bytes: int | None = Field(default=None, description="Bound of the decoded-image cache.")
    prefix_cache_bytes: int | None = Field(
        default=None, description="Memory the kept prompt prefixes (keys and values of image and regions) hold now."
    )
    prefix_cache_max_bytes: int | None = Field(default=None, description="Bound of the kept prompt prefixes.")
    tile_cache_bytes: int | None = Field(default=None, description="Memory the tile-feature cache holds now.")
    prefill_chunk_tokens: int | None = Field(
        default=None, description="Prompt tokens prefilled between two decode steps; null: whole prompts."
    )
    decode_cuda_graphs: bool | None = Field(default=None, description="Whether decode steps replay CUDA graphs.")
    decode_attention: str | None = Field(
        default=None, description="A decode step's attention over the KV cache: 'sdpa', 'matmul' or 'triton'."
    )
    decode_fused_ops: bool | None = Field(
        default=None, description="Whether decode layers run their element-wise work in fused Triton kernels."
    )
    vision_cuda_graphs: bool | None = Field(
        default=None, description="Whether the vision tower's tile chunks replay CUDA graphs."
    )
    vision_fused_rope: bool | None = Field(
        default=None,
        description="Whether the captured vision graphs rotate q and k in one kernel (kept only where a replay "
        "equals the eager tower); null until a graph is captured, or without vision graphs.",
    )
    queued: int | None = Field(default=None, description="Requests waiting now.")
    running: int | None = Field(default=None, description="Requests generating now.")
