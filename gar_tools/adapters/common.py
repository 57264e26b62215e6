"""What every adapter and server shows an LLM: tool descriptions with this server's image sources, result text, and
a usage guide.

Framework-free (no MCP, LangChain or LlamaIndex imports) and torch-free, so the MCP server, the LangChain toolkit and
the LlamaIndex tool spec describe the tools identically. Titles and descriptions come from the tool registry
(:mod:`gar_tools.tools`). Descriptions stay under 1024 characters (a limit some frameworks enforce) and end with what
this server lets the caller pass as images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from gar_tools.images import ImagePolicy
from gar_tools.inputs import MAX_DESCRIBE_REGIONS, MAX_POINTS, MAX_REGIONS
from gar_tools.results import TINY_MODEL_NOTE, ToolResult
from gar_tools.tools import ToolName, get_tool, tools

__all__ = [
    "MAX_DESCRIPTION_CHARS",
    "adapter_policy",
    "result_json",
    "result_text",
    "tool_description",
    "usage_guide",
]

MAX_DESCRIPTION_CHARS = 1024
_TINY_SENTENCE = f"If tiny_model is true: {TINY_MODEL_NOTE}"


def adapter_policy(allowed_dirs: Iterable[str | Path] = (), policy: ImagePolicy | None = None) -> ImagePolicy:
    """The image policy of an adapter built with ``from_model``: ``policy`` if given, else local paths only under
    ``allowed_dirs`` (none by default), no URLs. An LLM chooses the paths, so nothing is readable unless allowed."""
    if policy is not None:
        return policy
    if isinstance(allowed_dirs, (str, Path)):
        allowed_dirs = [allowed_dirs]
    return ImagePolicy(allowed_dirs=tuple(Path(d) for d in allowed_dirs))


def _sources_sentence(policy: ImagePolicy | None) -> str:
    if policy is None:
        return " Images and masks: a local file path, a data: URI, or base64."
    if policy.allowed_dirs is None:
        where = "a local file path"
    elif not policy.allowed_dirs:
        urls = "http(s) URLs too" if policy.allow_urls else "no URLs"
        return f" Images and masks: a data: URI or base64 (no local paths); {urls}."
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
    base = f"{get_tool(tool).description} {_TINY_SENTENCE}"
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


def usage_guide(policy: ImagePolicy | None = None) -> str:
    """A Markdown guide to the registered tools for an LLM or a person (served as an MCP resource)."""
    sources = _sources_sentence(policy).strip()
    listing = "\n".join(f"- **{spec.name}** — {spec.description}" for spec in tools())
    return f"""# GAR region tools

GAR (Grasp Any Region) is a vision-language model that looks at specific regions of an image, in the context of the
whole image. Each tool takes ONE image and one or more regions of it.

{listing}

## Images
{sources} Coordinates are pixels of the image as displayed (EXIF rotation applied), origin top-left.

## Regions
Give each region in exactly one format:
- `{{"mask": "/path/or/data-uri.png"}}`: a mask image exactly the image's size; non-black pixels are inside.
- `{{"rle": {{"size": [H, W], "counts": "..."}}}}`: COCO run-length encoding (compressed string or list of ints).
- `{{"polygon": [[x0, y0, x1, y1, x2, y2, ...]]}}`: one or more polygons in pixels.
- `{{"scribble": [[x0, y0, x1, y1, ...]], "width": 5}}`: strokes painted over the object; the painted pixels are
  the region (width in pixels, default 5; no segmenter needed).
- `{{"points": [[x, y], ...], "labels": [1, ...]}}`: clicks on the object (label 1; 0 marks a point NOT on it), at
  most {MAX_POINTS}; the server's SAM-family segmenter turns them into the object's mask. Servers without a
  segmenter refuse points (`gar-tools serve --segmenter facebook/sam-vit-base` enables one).
- `{{"box": [x1, y1, x2, y2]}}`: a filled rectangle; an approximation, since GAR was trained on masks. Add
  `"segment": true` to have the segmenter cut the object out of the box instead.

When the mask GAR saw was not sent as a mask or rle, the result's region has `mask_rle` (compressed COCO RLE) with
`source` (`polygon`, `scribble`, `box`, `sam:points`, `sam:box`) and, for the segmenter, its `score` (predicted IoU):
check it, show it, or pass it back as an `rle` region.

Coordinates are pixels, never fractions of the image: a box whose four values all lie in [0, 1] is refused.
Arguments are checked strictly: numbers must be JSON numbers and `overlay` a JSON boolean (not strings), and an
unknown or misspelt argument is an error naming it.

Add `"id": "dog"` to name a region; ids default to r0, r1, ... At most {MAX_REGIONS} regions per call (GAR has
{MAX_REGIONS} region slots): split larger sets over several calls — except describe_regions, which describes up to
{MAX_DESCRIBE_REGIONS} regions each on its own in one call (or, with `"regions": "auto"` on a server with a
segmenter, every object the segmenter finds, each with its mask as `mask_rle`).

## Questions
In answer_about_regions, refer to regions as `<id>` (e.g. `What is <r0> holding?`); every region must be named.
For multiple choice, give the options in `choices`; the result's `choice` holds the letter.

## Results
`text` is the answer; `regions` lists each region's id, box and area as understood; `image_size` is the image's
`[width, height]` in pixels (the frame of every coordinate); `timings` and `model` say how it ran. With
`overlay: true` you also get a PNG of the image with the regions outlined and labelled.
{_TINY_SENTENCE}

## Examples
The bundled example images are listed in the `gar://examples` resource with ready-made calls.
"""
