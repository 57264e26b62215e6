"""What every adapter and server shows an LLM: tool titles and descriptions, result text, examples, a usage guide.

Framework-free (no MCP, LangChain or LlamaIndex imports), so the MCP server, the LangChain toolkit and the
LlamaIndex tool spec describe the three tools identically. Descriptions stay under 1024 characters (a limit some
frameworks enforce) and end with what this server lets the caller pass as images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gar_tools.engine.base import TOOL_NAMES, ToolName
from gar_tools.images import ImagePolicy
from gar_tools.inputs import MAX_REGIONS
from gar_tools.results import ToolResult

__all__ = [
    "ASSETS_DIR",
    "MAX_DESCRIPTION_CHARS",
    "TINY_MODEL_NOTE",
    "TOOL_TITLES",
    "engine_policy",
    "example_catalog",
    "result_json",
    "result_text",
    "tool_description",
    "usage_guide",
]

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
"""The bundled example images and masks."""

MAX_DESCRIPTION_CHARS = 1024

TINY_MODEL_NOTE = (
    "Note: this result comes from the 'tiny' test model with random weights, so its text is meaningless; "
    "it only shows that the tool ran. Do not rely on it."
)

TOOL_TITLES: dict[ToolName, str] = {
    "describe_region": "Describe an image region",
    "compare_regions": "Compare image regions",
    "answer_about_regions": "Answer a question about image regions",
}

_REGION_FORMATS = (
    "A region is one of: mask (PNG the image's size, non-zero = inside; most precise), rle (COCO run-length), "
    "polygon (pixel coordinates), or box [x1, y1, x2, y2] in pixels (filled rectangle, only an approximation)."
)

_DESCRIPTIONS: dict[ToolName, str] = {
    "describe_region": (
        "Describe one region of an image in detail with GAR (Grasp Any Region), a region-level vision-language "
        "model: what it is, its colour, material, shape, state or action, read in the context of the whole image. "
        "Use it when you need to know about one specific object or area. Give the image and exactly one region. "
        + _REGION_FORMATS
        + " Returns the text and the region as understood (id, box, area). overlay=true adds a picture of the "
        "image with the region outlined, to check it is where you meant."
    ),
    "compare_regions": (
        f"Describe 2 to {MAX_REGIONS} regions of one image and how they relate to or differ from each other "
        "(appearance, position, interaction), with GAR (Grasp Any Region). The first region is the subject. "
        "Optional focus, e.g. 'size' or 'what they are doing'. Give regions ids (e.g. 'dog') to tell them apart "
        f"in the answer. At most {MAX_REGIONS} regions per call. " + _REGION_FORMATS + " overlay=true adds a "
        "picture with each region outlined and labelled."
    ),
    "answer_about_regions": (
        f"Answer a question about 1 to {MAX_REGIONS} regions of one image with GAR (Grasp Any Region). Name "
        "each region in the question by its id in angle brackets: 'What is <r0> holding?', 'Is <dog> bigger "
        "than <cat>?' (ids default to r0, r1, ... in list order; every region must be named). For multiple "
        "choice put the options in choices; the result's choice field holds the picked letter. " + _REGION_FORMATS
    ),
}


def engine_policy(engine: object) -> ImagePolicy | None:
    """The image policy an engine reads images under, if it has one (local and http engines do)."""
    policy = getattr(engine, "policy", None)
    return policy if isinstance(policy, ImagePolicy) else None


def _sources_sentence(policy: ImagePolicy | None) -> str:
    if policy is None:
        return " Images and masks: a local file path, a data: URI, or base64."
    if policy.allowed_dirs is None:
        where = "a local file path"
    else:
        dirs = ", ".join(str(d) for d in policy.allowed_dirs) or "none"
        where = f"a local file path under {dirs}"
    urls = "http(s) URLs too" if policy.allow_urls else "no URLs"
    return f" Images and masks: {where}, a data: URI, or base64; {urls}."


def _limits_sentence(policy: ImagePolicy) -> str:
    megapixels = policy.max_pixels / 1_000_000
    return f" Limits: images and masks up to {policy.max_bytes / 2**20:g} MiB and {megapixels:g} megapixels."


def tool_description(tool: ToolName, policy: ImagePolicy | None = None, *, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """The LLM-facing description of ``tool``, ending with what this server accepts as image sources.

    When the whole would exceed ``limit`` characters, the size limits are left out, then the allowed folders.
    """
    base = _DESCRIPTIONS[tool] + " If tiny_model is true, the text is meaningless (random test weights)."
    candidates = [base + _sources_sentence(policy)]
    if policy is not None:
        urls = "http(s) URLs too" if policy.allow_urls else "no URLs"
        short = f" Images and masks: a local file path in the allowed folders, data: URI or base64; {urls}."
        candidates = [base + _sources_sentence(policy) + _limits_sentence(policy), *candidates, base + short]
    return next((text for text in candidates if len(text) <= limit), candidates[-1][:limit])


def result_json(result: ToolResult) -> str:
    """The result as compact JSON for an LLM, without the (large) ``overlay_png``; overlays travel as images."""
    return result.model_dump_json(exclude={"overlay_png"})


def result_text(result: ToolResult) -> str:
    """:func:`result_json` plus, for the tiny test model, a note that its text is meaningless."""
    text = result_json(result)
    return f"{text}\n{TINY_MODEL_NOTE}" if result.tiny_model else text


def example_catalog() -> list[dict[str, Any]]:
    """The bundled example images, their region masks, and a ready-made call for each tool."""
    image1, image3 = str(ASSETS_DIR / "demo_image_1.png"), str(ASSETS_DIR / "demo_image_3.png")
    masks3 = [
        {"id": name, "mask": str(ASSETS_DIR / f"demo_mask_3_{i}.png")}
        for i, name in enumerate(("person", "ball", "racket"))
    ]
    return [
        {
            "name": "slipper",
            "image": image1,
            "regions": [{"id": "slipper", "mask": str(ASSETS_DIR / "demo_mask_1.png")}],
            "example_call": {
                "tool": "describe_region",
                "arguments": {
                    "image": image1,
                    "region": {"id": "slipper", "mask": str(ASSETS_DIR / "demo_mask_1.png")},
                },
            },
        },
        {
            "name": "tennis",
            "image": image3,
            "regions": masks3,
            "example_call": {
                "tool": "answer_about_regions",
                "arguments": {
                    "image": image3,
                    "regions": masks3,
                    "question": "What is <person> doing with <racket> and <ball>?",
                },
            },
        },
    ]


def usage_guide(policy: ImagePolicy | None = None) -> str:
    """A Markdown guide to the three tools for an LLM or a person (served as an MCP resource)."""
    sources = _sources_sentence(policy).strip()
    tools = "\n".join(f"- **{name}** — {_DESCRIPTIONS[name]}" for name in TOOL_NAMES)
    return f"""# GAR region tools

GAR (Grasp Any Region) is a vision-language model that looks at specific regions of an image, in the context of the
whole image. Each tool takes ONE image and one or more regions of it.

{tools}

## Images
{sources} Coordinates are pixels of the image as displayed (EXIF rotation applied), origin top-left.

## Regions
Give each region in exactly one format:
- `{{"mask": "/path/or/data-uri.png"}}`: a mask image exactly the image's size; non-black pixels are inside.
- `{{"rle": {{"size": [H, W], "counts": "..."}}}}`: COCO run-length encoding (compressed string or list of ints).
- `{{"polygon": [[x0, y0, x1, y1, x2, y2, ...]]}}`: one or more polygons in pixels.
- `{{"box": [x1, y1, x2, y2]}}`: a filled rectangle; an approximation, since GAR was trained on masks.

Add `"id": "dog"` to name a region; ids default to r0, r1, ... At most {MAX_REGIONS} regions per call (GAR has
{MAX_REGIONS} region slots): split larger sets over several calls.

## Questions
In answer_about_regions, refer to regions as `<id>` (e.g. `What is <r0> holding?`); every region must be named.
For multiple choice, give the options in `choices`; the result's `choice` holds the letter.

## Results
`text` is the answer; `regions` lists each region's id, box and area as understood; `timings` and `model` say how
it ran. With `overlay: true` you also get a PNG of the image with the regions outlined and labelled. If
`tiny_model` is true, the server runs random test weights and the text is meaningless.

## Examples
The bundled example images are listed in the `gar://examples` resource with ready-made calls.
"""
