"""The ``tiny-sam`` segmenter: a ``SamModel`` with random weights, in the Hugging Face layout.

Like the ``tiny`` GAR checkpoint it exists so the whole segmenter path — loader, processor, image embedding, cache,
prompt decoding, mask post-processing — runs and is tested offline. **Its masks are meaningless.** It is a 64-pixel
SAM (patch 8, two ViT blocks of width 32, a two-layer mask decoder), about 80 k parameters, built deterministically
(same seed, same tensors) into the gar-tools cache and loaded by :func:`gar_tools.segment.load_segmenter` exactly as
a real checkpoint folder is.
"""

from __future__ import annotations

from pathlib import Path

from gar_tools.model.tiny import cached_build, random_fill

__all__ = ["TINY_SAM_NAME", "TINY_SAM_SPEC_VERSION", "build_tiny_sam", "tiny_sam_path"]

TINY_SAM_NAME = "tiny-sam"
#: Bump when anything below changes, so caches are rebuilt.
TINY_SAM_SPEC_VERSION = 1
_IMAGE_SIZE = 64
_PATCH = 8


def _config() -> object:
    from transformers import SamConfig

    grid = _IMAGE_SIZE // _PATCH
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH,
            "window_size": 0,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "num_pos_feats": 16,
        },
        prompt_encoder_config={
            "hidden_size": 32,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH,
            "image_embedding_size": grid,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )
    config.tiny_random_weights = True
    return config


def build_tiny_sam(folder: Path, *, seed: int = 0) -> Path:
    """Write the tiny SAM (config, safetensors weights, processor) to ``folder`` and return it."""
    from transformers import SamImageProcessor, SamModel, SamProcessor

    model = SamModel(_config()).eval()
    random_fill(model, seed, lambda sample, shape: sample * 0.5 / max(shape[-1], 1) ** 0.5)
    model.save_pretrained(str(folder))
    side = _IMAGE_SIZE // 4
    processor = SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": _IMAGE_SIZE},
            pad_size={"height": _IMAGE_SIZE, "width": _IMAGE_SIZE},
            mask_size={"longest_edge": side},
            mask_pad_size={"height": side, "width": side},
        )
    )
    processor.save_pretrained(str(folder))
    return folder


def tiny_sam_path(seed: int = 0) -> Path:
    """The cached tiny SAM folder, built on first use (atomically, so concurrent builders are safe)."""
    return cached_build(
        "tiny-sam", TINY_SAM_SPEC_VERSION, seed, lambda folder: build_tiny_sam(folder, seed=seed), "model.safetensors"
    )
