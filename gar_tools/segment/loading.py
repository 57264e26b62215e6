"""Load a SAM-family segmenter by hub id or folder, through transformers' auto classes (no remote code)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from gar_tools.errors import CheckpointError
from gar_tools.segment.cache import DEFAULT_CACHE_BYTES
from gar_tools.segment.segmenter import Segmenter
from gar_tools.segment.tiny import TINY_SAM_NAME, tiny_sam_path

__all__ = ["load_segmenter", "SEGMENTER_EXAMPLES"]

SEGMENTER_EXAMPLES = ("facebook/sam-vit-base", "facebook/sam2.1-hiera-tiny", "Zigeng/SlimSAM-uniform-77")


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _missing(name: str, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"segmenter {name}: not in the local Hugging Face cache and it cannot be downloaded here (offline or no "
        f"network). On a machine with internet run `hf download {name}` (or `huggingface-cli download {name}`) and "
        f"copy the cache, or download the folder and pass its path. ({type(exc).__name__}: {exc})"
    )


def load_segmenter(
    name_or_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Segmenter:
    """Load a SAM-family checkpoint (SAM, SlimSAM, SAM-HQ, SAM 2, EdgeTAM) as a :class:`Segmenter`.

    Args:
        name_or_path: ``"tiny-sam"`` (random test weights, built and cached locally), a local folder in the Hugging
            Face layout, or a hub id such as ``facebook/sam-vit-base``, ``facebook/sam2.1-hiera-tiny`` or
            ``Zigeng/SlimSAM-uniform-77`` (normal HF cache; ``HF_HUB_OFFLINE=1`` uses only what is cached).
        device, dtype: where and how to hold the weights (the engine passes GAR's).
        cache_bytes: bound of the per-image embedding cache.

    Raises:
        CheckpointError: the checkpoint is missing (the message says how to download it) or is not a SAM-family
            mask-generation model.
    """
    from transformers import AutoConfig, AutoModelForMaskGeneration, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASK_GENERATION_MAPPING_NAMES

    start = time.perf_counter()
    name = str(name_or_path)
    is_tiny_name = name == TINY_SAM_NAME
    source = str(tiny_sam_path()) if is_tiny_name else name
    path = Path(source).expanduser()
    local = path.is_dir()
    if local:
        source = str(path)
    elif path.exists() or name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(
            f"segmenter {name}: no such folder, and not a hub id of the form owner/name "
            f"(e.g. {', '.join(SEGMENTER_EXAMPLES)})"
        )
    options = {"local_files_only": local or _offline()}
    try:
        config = AutoConfig.from_pretrained(source, **options)
    except OSError as exc:
        if local:
            raise CheckpointError(f"segmenter {name}: no readable config.json ({exc})") from exc
        raise _missing(name, exc) from exc
    except ValueError as exc:
        raise CheckpointError(f"segmenter {name}: not a transformers checkpoint ({exc})") from exc
    if config.model_type not in MODEL_FOR_MASK_GENERATION_MAPPING_NAMES:
        raise CheckpointError(
            f"segmenter {name}: model_type {config.model_type!r} is not a SAM-family mask-generation model; use one "
            f"of {', '.join(sorted(MODEL_FOR_MASK_GENERATION_MAPPING_NAMES))} (e.g. {', '.join(SEGMENTER_EXAMPLES)})"
        )
    try:
        model = AutoModelForMaskGeneration.from_pretrained(source, dtype=dtype, **options)
        processor = AutoProcessor.from_pretrained(source, **options)
    except OSError as exc:
        if local:
            raise CheckpointError(f"segmenter {name}: incomplete checkpoint folder ({exc})") from exc
        raise _missing(name, exc) from exc
    except torch.OutOfMemoryError as exc:
        raise CheckpointError(f"segmenter {name}: not enough memory on {device} in {dtype}") from exc
    model = model.to(device).eval().requires_grad_(False)
    segmenter = Segmenter(
        model,
        processor,
        TINY_SAM_NAME if is_tiny_name else name,
        is_tiny=bool(getattr(config, "tiny_random_weights", False)),
        cache_bytes=cache_bytes,
    )
    segmenter.load_ms = (time.perf_counter() - start) * 1000
    return segmenter
