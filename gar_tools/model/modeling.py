"""GAR's forward pass on transformers' PerceptionLM (gar-model.md §1 and §5).

``GarModel`` holds exactly the modules of an upstream checkpoint — ``mllm`` (a
``PerceptionLMForConditionalGeneration``) and ``mask_patch_embedding`` (``Conv2d(3 → vision_dim, 14, 14, bias=False)``)
— so the state-dict keys are the checkpoint's keys. What GAR adds to PerceptionLM:

1. the mask patch embedding, added to the vision tower's patch-embedding output, tile by tile, before the CLS
   token and position handling (a forward hook on timm's ``patch_embed``);
2. RoI replay: each region's 256 slot-token embeddings are replaced by a 16×16 RoIAlign of the merged tile
   features (``gar_tools.kernels.roi_replay``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import PerceptionLMForConditionalGeneration

from gar_tools.kernels.roi_replay import Geometry, roi_replay
from gar_tools.model.config import GarConfig

__all__ = ["GarModel", "Geometry", "TOKENS_PER_TILE", "decode_prompt_map"]

#: Projected tokens per 448-px tile (32×32 patches, 2×2 average pooling).
TOKENS_PER_TILE = 256


def decode_prompt_map(prompt_pixel_values: torch.Tensor, prompt_numbers: int) -> torch.Tensor:
    """Binary region mask from the normalized visual-prompt tiles, exactly as upstream decodes it.

    ``round((x + 1) / 2 · 255)`` clamped to ``[0, prompt_numbers]``; a pixel is "in some region" when the value is
    not ``prompt_numbers`` (the background value). Returns float32 0/1 of the same shape.
    """
    values = torch.round((prompt_pixel_values.float() + 1.0) / 2.0 * 255.0).long()
    values = torch.clamp(values, min=0, max=prompt_numbers)
    return (values != prompt_numbers).float()


class GarModel(nn.Module):
    """PerceptionLM + GAR's mask patch embedding + RoI replay. Batch size 1, like the released checkpoints."""

    def __init__(self, config: GarConfig) -> None:
        super().__init__()
        self.config = config
        plm_config = config.perception_lm_config()
        plm_config.text_config._attn_implementation = "sdpa"
        self.mllm = PerceptionLMForConditionalGeneration(plm_config)
        self.mask_patch_embedding = nn.Conv2d(
            3, config.vision_dim, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )

    # --- properties ----------------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.mask_patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.mask_patch_embedding.weight.device

    @property
    def tied_word_embeddings(self) -> bool:
        return bool(self.mllm.config.tie_word_embeddings)

    def tie_weights_if_configured(self) -> None:
        """Share ``lm_head.weight`` with the input embeddings when the checkpoint's config ties them."""
        if self.tied_word_embeddings:
            self.mllm.lm_head.weight = self.mllm.model.language_model.embed_tokens.weight

    # --- vision --------------------------------------------------------------------------------------------------
    @contextmanager
    def _mask_added(self, mask_embeds: torch.Tensor | None) -> Iterator[None]:
        """Add ``mask_embeds`` ([N, patches, D]) to the output of timm's patch embedding while inside."""
        if mask_embeds is None:
            yield
            return
        patch_embed = self.mllm.model.vision_tower.timm_model.patch_embed

        def add_mask(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            if output.shape != mask_embeds.shape:
                raise RuntimeError(
                    f"mask embeddings {tuple(mask_embeds.shape)} do not fit patches {tuple(output.shape)}"
                )
            return output + mask_embeds

        handle = patch_embed.register_forward_hook(add_mask)
        try:
            yield
        finally:
            handle.remove()

    def mask_embeddings(self, prompt_pixel_values: torch.Tensor) -> torch.Tensor:
        """Mask patch embeddings [N, patches, vision_dim] of the visual-prompt tiles [N, 3, 448, 448].

        On the CPU only the tiles with a region pixel are decoded and convolved (most tiles of an image have none; a
        new 17-tile image's vision pass went from 116 to 91 ms: ``benchmarks/results/*profile_request-cpu-tiny-896*``):
        decoding is monotone in the value, so a tile whose smallest value decodes as background is background
        everywhere, and its embedding — the bias-free convolution of zeros — is exactly 0 (the tests compare with the
        whole computation bit for bit). On CUDA every tile goes through the same kernels, as the vision CUDA graphs
        capture it (no data-dependent shapes).
        """
        # The map is the same on all three channels (gar-model.md §3): decode one, feed it as three.
        first = prompt_pixel_values[:, :1].to(self.device)  # [N, 1, S, S]
        if self.device.type == "cuda":
            embeds = self._mask_patch_embeddings(first)
        else:
            touched = decode_prompt_map(first.amin(dim=(1, 2, 3)), self.config.prompt_numbers).bool()  # [N]
            if bool(touched.all()):
                embeds = self._mask_patch_embeddings(first)
            else:
                side = first.shape[-1] // self.config.patch_size
                embeds = first.new_zeros((first.shape[0], self.config.vision_dim, side, side), dtype=self.dtype)
                if bool(touched.any()):
                    embeds[touched] = self._mask_patch_embeddings(first[touched])
        return embeds.flatten(2).transpose(1, 2)  # [N, patches, D]

    def _mask_patch_embeddings(self, first: torch.Tensor) -> torch.Tensor:
        """[N, D, S/14, S/14]: GAR's mask patch embedding of the first channel [N, 1, S, S] of prompt tiles."""
        binary = decode_prompt_map(first, self.config.prompt_numbers).to(self.dtype).expand(-1, 3, -1, -1)
        return self.mask_patch_embedding(binary)

    @torch.no_grad()
    def encode_images(
        self, pixel_values: torch.Tensor, prompt_pixel_values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected image features [N, 256, hidden] of the thumbnail + tiles, with the region masks added.

        What PerceptionLM's ``get_image_features`` computes: the vision tower, the class token dropped, the
        projector. Tiles are independent in both, so any subset of tiles encoded alone gives the same features bit
        for bit (the local engine's tile cache relies on it; see :meth:`_project`).
        """
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        mask_embeds = None if prompt_pixel_values is None else self.mask_embeddings(prompt_pixel_values)
        with self._mask_added(mask_embeds):
            hidden = self.mllm.model.vision_tower(pixel_values, return_dict=True).last_hidden_state  # [N, 1 + P, D]
        if self.mllm.model.config.vision_use_cls_token:
            hidden = hidden[:, 1:]  # [N, P, D]
        return self._project(hidden)

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        """PerceptionLM's projector on the tower's patch tokens [N, P, D]: Linear → GELU → Linear, then 2×2 average
        pooling → [N, 256, hidden], each tile's result independent of N.

        transformers' projector applies its linears to the token-major *view* [P, N, D] of the tiles. PyTorch's CPU
        matmul takes a path for that strided view that depends on N: on an AVX2 CPU, 2 or 3 tiles rounded
        otherwise than 1, 4, 5 … 17, so cached tiles (encoded in chunks) differed from a whole encode in the last
        bit. The same math on a contiguous [P, N, D] copy is one GEMM whose rows do not depend on N (the tests
        encode every subset size against the whole image).
        """
        projector = self.mllm.model.multi_modal_projector
        x = hidden.transpose(0, 1).contiguous()  # [P, N, D]
        x = projector.linear_2(projector.gelu(projector.linear_1(x)))  # [P, N, hidden]
        return projector.pooling(x.transpose(0, 1))  # [N, 256, hidden]

    # --- text ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        image_features: torch.Tensor,
        boxes: torch.Tensor,
        slot_starts: torch.Tensor,
        grid: tuple[int, int],
        geometry: Geometry = "checkpoint",
    ) -> torch.Tensor:
        """Token embeddings with image features scattered over the image tokens and the RoI replay written in.

        Args:
            input_ids: [1, L] token ids.
            image_features: [1 + T, 256, hidden] from :meth:`encode_images` (thumbnail first, tiles row-major).
            boxes: [R, 4] float32 normalized region boxes, in prompt-index order of ``slot_starts``.
            slot_starts: [R] index of each region's first slot token in ``input_ids``.
            grid: (ncw, nch) tile columns and rows.
            geometry: ``"checkpoint"`` (default: the box convention the released weights were trained with, the
                1/28 quirk) or ``"paper"`` (samples the box itself; not what the weights saw).
        """
        input_ids = input_ids.to(self.device)
        embeds = self.mllm.get_input_embeddings()(input_ids)
        features = image_features.to(device=embeds.device, dtype=embeds.dtype)
        image_mask, _ = self.mllm.model.get_placeholder_mask(input_ids, inputs_embeds=embeds, image_features=features)
        embeds = embeds.masked_scatter(image_mask, features)
        if boxes.shape[0]:
            roi_replay(
                features[1:],
                boxes.to(device=embeds.device, dtype=torch.float32),
                slot_starts.to(device=embeds.device, dtype=torch.long),
                embeds[0],
                grid=grid,
                geometry=geometry,
            )
        return embeds

    @torch.no_grad()
    def last_token_logits(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Float32 logits over the vocabulary at the last position of ``inputs_embeds`` [1, L, hidden]."""
        out = self.mllm(inputs_embeds=inputs_embeds, use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float()
