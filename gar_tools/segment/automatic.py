"""Automatic mask generation: every object a SAM-family segmenter finds, from a grid of point prompts.

The image is embedded once (:meth:`Segmenter.image_embeddings`, cached). A regular grid of ``points_per_side``²
single-point prompts goes through the mask decoder in chunks; every candidate mask of every point (SAM proposes
three per point) is a proposal. Proposals are kept when

1. the segmenter's predicted IoU (its score) is at least ``score_threshold``;
2. their stability — the IoU of the mask binarised at logit ``+1`` and at ``-1``, computed on the decoder's
   low-resolution logits — is at least ``stability_threshold``;
3. their full-size mask has at least ``min_area`` pixels;
4. no better proposal (higher score; ties: lower grid index) already kept overlaps them by more than
   ``iou_threshold`` (greedy non-maximum suppression by mask IoU);

and at most ``max_regions`` are returned, best first. Everything is deterministic: fixed grid, stable sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from gar_tools.inputs import AutoRegionsOptions
from gar_tools.regions import DecodedRegion, mask_box
from gar_tools.segment.prompts import SegmentPrompt
from gar_tools.segment.segmenter import Segmenter

__all__ = ["AUTO_SOURCE", "Proposal", "generate_masks", "point_grid", "proposed_regions"]

AUTO_SOURCE = "sam:auto"
"""How results report a proposed region's mask source."""

_CHUNK = 64  # point prompts through the mask decoder at once


@dataclass(frozen=True)
class Proposal:
    """One proposed mask: boolean ``(H, W)``, predicted IoU, stability, and the grid point that prompted it."""

    mask: np.ndarray
    score: float
    stability: float
    point: tuple[float, float]


def point_grid(width: int, height: int, points_per_side: int) -> list[tuple[float, float]]:
    """``points_per_side``² points at the centres of an even grid over the image, row by row."""
    xs = (np.arange(points_per_side) + 0.5) * width / points_per_side
    ys = (np.arange(points_per_side) + 0.5) * height / points_per_side
    return [(float(x), float(y)) for y in ys for x in xs]


def _stability(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """IoU of each mask binarised at ``+offset`` and at ``-offset`` (``[..., h, w]`` logits → ``[...]``)."""
    inner = (logits > offset).flatten(-2).sum(-1).float()
    outer = (logits > -offset).flatten(-2).sum(-1).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.zeros_like(outer))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def generate_masks(
    segmenter: Segmenter, image: Image.Image, options: AutoRegionsOptions | None = None
) -> list[Proposal]:
    """The proposals of ``image`` kept by ``options`` (see the module docstring), best first."""
    options = options or AutoRegionsOptions()
    width, height = image.size
    grid = point_grid(width, height, options.points_per_side)
    candidates: list[tuple[float, int, float, torch.Tensor, object, tuple[float, float]]] = []
    with segmenter._lock:  # noqa: SLF001 - the segmenter's own lock: one user of the model at a time
        embeddings = segmenter.image_embeddings(image)
        for start in range(0, len(grid), _CHUNK):
            chunk = grid[start : start + _CHUNK]
            prompts = [
                SegmentPrompt(id="auto", field="regions", kind="points", points=(p,), labels=(1,)) for p in chunk
            ]
            logits, scores, inputs = segmenter._candidates(image, embeddings, prompts)  # noqa: SLF001
            stability = _stability(logits)
            keep = (scores >= options.score_threshold) & (stability >= options.stability_threshold)
            for row, k in zip(*torch.nonzero(keep, as_tuple=True), strict=True):
                index = (start + int(row)) * scores.shape[-1] + int(k)
                candidates.append(
                    (float(scores[row, k]), index, float(stability[row, k]), logits[row, k], inputs, chunk[int(row)])
                )
        candidates.sort(key=lambda c: (-c[0], c[1]))
        kept: list[Proposal] = []
        for score, _, stability, low_res, inputs, point in candidates:
            if len(kept) >= options.max_regions:
                break
            mask = segmenter._full_size(low_res[None], inputs)[0].numpy().astype(bool, copy=False)  # noqa: SLF001
            if int(np.count_nonzero(mask)) < options.min_area:
                continue
            if any(_iou(mask, other.mask) > options.iou_threshold for other in kept):
                continue
            kept.append(Proposal(mask=mask, score=score, stability=stability, point=point))
    return kept


def proposed_regions(proposals: list[Proposal]) -> list[DecodedRegion]:
    """Proposals as decoded regions ``r0``, ``r1``, … (source ``sam:auto``), best first."""
    return [
        DecodedRegion(
            id=f"r{i}",
            mask=p.mask,
            box=mask_box(p.mask),
            area=int(np.count_nonzero(p.mask)),
            source=AUTO_SOURCE,
            score=p.score,
        )
        for i, p in enumerate(proposals)
    ]
