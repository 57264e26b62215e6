"""A SAM-family segmenter in memory: image embedding (cached per image), then one mask per prompt.

Works with every transformers mask-generation model whose processor takes ``input_points`` / ``input_labels`` /
``input_boxes`` and whose model takes ``image_embeddings`` (SAM, SlimSAM, SAM-HQ, SAM 2, EdgeTAM). Of the candidate
masks the model proposes, the one with the highest predicted IoU is kept and that score reported.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from gar_tools.segment.cache import DEFAULT_CACHE_BYTES, ImageValueCache, image_digest
from gar_tools.segment.prompts import SegmentPrompt

__all__ = ["Segmentation", "Segmenter"]


@dataclass(frozen=True)
class Segmentation:
    """One prompt's mask.

    Attributes:
        mask: boolean ``(H, W)`` array the image's size.
        score: the segmenter's predicted IoU of that mask.
        candidates: how many masks the segmenter proposed (the best one was kept).
    """

    mask: np.ndarray
    score: float
    candidates: int


class Segmenter:
    """A loaded SAM-family model and its processor (get one with :func:`gar_tools.segment.load_segmenter`).

    Args:
        model: a transformers mask-generation model (``SamModel``, ``Sam2Model``, ...), in eval mode.
        processor: its processor (``SamProcessor``, ``Sam2Processor``, ...).
        name: what it was loaded from (hub id, folder, or ``tiny-sam``).
        is_tiny: True for the random ``tiny-sam`` test checkpoint (its masks are meaningless).
        cache_bytes: bound of the per-image embedding cache (0 disables it).

    Attributes:
        embed_calls: how many times the image encoder ran (a cached image does not run it again).
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str,
        *,
        is_tiny: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.is_tiny = is_tiny
        self.cache = ImageValueCache(cache_bytes)
        self.embed_calls = 0
        self.load_ms = 0.0
        self._lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def identity(self) -> str:
        """What the cached embeddings depend on besides the pixels: model, dtype, device."""
        return f"{self.name}|{self.dtype}|{self.device}|{id(self.model)}"

    # --- image embedding -------------------------------------------------------------------------------------------
    def _encode(self, image: Image.Image, **prompts: Any) -> Any:
        return self.processor(images=image, return_tensors="pt", **prompts)

    def image_embeddings(self, image: Image.Image, digest: str | None = None) -> Any:
        """The image encoder's output for ``image`` (cached by pixels, see :mod:`gar_tools.segment.cache`)."""
        key = (digest or image_digest(image), self.identity)
        return self.cache.get_or_compute(key, lambda: self._embed(image))

    @torch.no_grad()
    def _embed(self, image: Image.Image) -> Any:
        pixel_values = self._encode(image)["pixel_values"].to(self.device, self.dtype)
        embeddings = self.model.get_image_embeddings(pixel_values)
        self.embed_calls += 1
        return embeddings

    # --- prompts -------------------------------------------------------------------------------------------------
    def _candidates(
        self, image: Image.Image, embeddings: Any, group: Sequence[SegmentPrompt]
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """For prompts of one kind and point count: low-resolution candidate mask logits ``[P, K, h, w]``, their
        predicted IoUs ``[P, K]`` (float32, CPU) and the processor's output (sizes for post-processing)."""
        if group[0].kind == "points":
            inputs = self._encode(
                image,
                input_points=[[[list(p) for p in prompt.points] for prompt in group]],
                input_labels=[[list(prompt.labels) for prompt in group]],
            )
        else:
            inputs = self._encode(image, input_boxes=[[list(prompt.box or ()) for prompt in group]])
        kwargs: dict[str, Any] = {}
        for name in ("input_points", "input_labels", "input_boxes"):
            if name in inputs and inputs[name] is not None:
                value = inputs[name].to(self.device)
                kwargs[name] = value.to(self.dtype) if value.is_floating_point() else value
        with torch.no_grad():
            out = self.model(image_embeddings=embeddings, multimask_output=True, **kwargs)
        return out.pred_masks.float().cpu()[0], out.iou_scores.float().cpu()[0], inputs

    def _full_size(self, logits: torch.Tensor, inputs: Any) -> torch.Tensor:
        """Masks ``[P, H, W]`` (bool, the image's size) from low-resolution logits ``[P, h, w]``."""
        post = [logits[None, :, None], inputs["original_sizes"]]
        if "reshaped_input_sizes" in inputs:  # SAM / SAM-HQ pad to a square after resizing the longest side
            post.append(inputs["reshaped_input_sizes"])
        return self.processor.post_process_masks(*post, binarize=True)[0][:, 0].bool()

    def segment_all(self, image: Image.Image, prompts: Sequence[SegmentPrompt]) -> list[Segmentation]:
        """One mask per prompt, all on ``image``: the image is embedded once (or found in the cache), and prompts of
        the same kind and point count go through the processor and the mask decoder together. Of each prompt's
        candidate masks the one with the highest predicted IoU is kept (and only it is scaled to full size)."""
        if not prompts:
            return []
        groups: dict[tuple[str, int], list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault((prompt.kind, len(prompt.points)), []).append(index)
        out: list[Segmentation | None] = [None] * len(prompts)
        with self._lock:
            embeddings = self.image_embeddings(image)
            for indices in groups.values():
                logits, scores, inputs = self._candidates(image, embeddings, [prompts[i] for i in indices])
                best = torch.argmax(scores, dim=-1)
                chosen = logits[torch.arange(len(indices)), best]
                masks = self._full_size(chosen, inputs)
                for row, index in enumerate(indices):
                    out[index] = Segmentation(
                        mask=masks[row].numpy().astype(bool, copy=False),
                        score=float(scores[row, best[row]]),
                        candidates=int(scores.shape[-1]),
                    )
        return [segmentation for segmentation in out if segmentation is not None]

    def segment(self, image: Image.Image, prompt: SegmentPrompt) -> Segmentation:
        """:meth:`segment_all` for one prompt."""
        return self.segment_all(image, [prompt])[0]
