"""Region prompts that become masks: SAM-family segmenters (points, boxes) and scribbles.

- :mod:`~gar_tools.segment.prompts` — a points or segment-box region checked against the image (no torch);
- :mod:`~gar_tools.segment.scribble` — strokes rasterised as the mask itself;
- :mod:`~gar_tools.segment.cache` — the per-image, byte-bounded LRU of image embeddings;
- :mod:`~gar_tools.segment.segmenter` — a loaded SAM-family model: embed once per image, best mask per prompt;
- :mod:`~gar_tools.segment.loading` — :func:`load_segmenter` by hub id or folder;
- :mod:`~gar_tools.segment.tiny` — the random ``tiny-sam`` test checkpoint;
- :mod:`~gar_tools.segment.resolve` — the engine's hook: prompts to masks in one call;
- :mod:`~gar_tools.segment.automatic` — automatic mask generation (a point grid, thresholds, NMS, caps).

Names are imported lazily, so the torch-free parts stay cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gar_tools._lazy import lazy_getattr

if TYPE_CHECKING:
    from gar_tools.segment.automatic import generate_masks
    from gar_tools.segment.cache import ImageValueCache, image_digest
    from gar_tools.segment.loading import load_segmenter
    from gar_tools.segment.prompts import SegmentPrompt, segment_prompt
    from gar_tools.segment.resolve import resolve_regions
    from gar_tools.segment.scribble import rasterize_scribble
    from gar_tools.segment.segmenter import Segmentation, Segmenter
    from gar_tools.segment.tiny import TINY_SAM_NAME, build_tiny_sam, tiny_sam_path

__all__ = [
    "TINY_SAM_NAME",
    "ImageValueCache",
    "SegmentPrompt",
    "Segmentation",
    "Segmenter",
    "build_tiny_sam",
    "generate_masks",
    "image_digest",
    "load_segmenter",
    "rasterize_scribble",
    "resolve_regions",
    "segment_prompt",
    "tiny_sam_path",
]

_LAZY = {
    "generate_masks": "gar_tools.segment.automatic",
    "ImageValueCache": "gar_tools.segment.cache",
    "image_digest": "gar_tools.segment.cache",
    "load_segmenter": "gar_tools.segment.loading",
    "SegmentPrompt": "gar_tools.segment.prompts",
    "segment_prompt": "gar_tools.segment.prompts",
    "resolve_regions": "gar_tools.segment.resolve",
    "rasterize_scribble": "gar_tools.segment.scribble",
    "Segmentation": "gar_tools.segment.segmenter",
    "Segmenter": "gar_tools.segment.segmenter",
    "TINY_SAM_NAME": "gar_tools.segment.tiny",
    "build_tiny_sam": "gar_tools.segment.tiny",
    "tiny_sam_path": "gar_tools.segment.tiny",
}

__getattr__ = lazy_getattr(__name__, _LAZY)
