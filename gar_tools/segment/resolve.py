"""The engine's hook: turn a request's segment prompts into masks, in one call on the model thread."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from gar_tools.errors import RegionError
from gar_tools.regions import DecodedRegion, mask_box
from gar_tools.segment.prompts import SegmentPrompt, no_segmenter_error

if TYPE_CHECKING:
    from gar_tools.segment.segmenter import Segmenter

__all__ = ["resolve_regions", "has_prompts"]


def has_prompts(regions: Sequence[DecodedRegion | SegmentPrompt]) -> bool:
    """Whether any region still waits for the segmenter."""
    return any(isinstance(region, SegmentPrompt) for region in regions)


def resolve_regions(
    image: Image.Image, regions: Sequence[DecodedRegion | SegmentPrompt], segmenter: Segmenter | None
) -> list[DecodedRegion]:
    """``regions`` with every :class:`SegmentPrompt` replaced by the segmenter's mask (one image embedding for all).

    Raises:
        RegionError: naming the prompt's field when there is no segmenter or it returned an empty mask.
    """
    pending = [(i, r) for i, r in enumerate(regions) if isinstance(r, SegmentPrompt)]
    out: list[DecodedRegion | SegmentPrompt] = list(regions)
    if not pending:
        return out  # type: ignore[return-value]
    if segmenter is None:
        index, prompt = pending[0]
        raise no_segmenter_error(prompt.field, prompt.id, prompt.kind)
    segmentations = segmenter.segment_all(image, [prompt for _, prompt in pending])
    for (index, prompt), result in zip(pending, segmentations, strict=True):
        area = int(np.count_nonzero(result.mask))
        if area == 0:
            raise RegionError(
                f"the segmenter ({segmenter.name}) returned an empty mask for this {prompt.kind} prompt "
                f"(score {result.score:.3f}); move or add points, adjust the box, or give a mask, polygon or "
                f"scribble instead (region id {prompt.id!r})",
                field=prompt.field,
            )
        out[index] = DecodedRegion(
            id=prompt.id,
            mask=result.mask,
            box=mask_box(result.mask),
            area=area,
            source=prompt.source,
            score=result.score,
        )
    return out  # type: ignore[return-value]
