"""A loaded GAR checkpoint: ``prepare`` → ``next_token_logits`` / ``generate``, each step inspectable."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import GenerationConfig

from gar_tools.errors import CheckpointError, InputError
from gar_tools.model.checkpoint import build_model, load_model_weights, read_state_dict, resolve_checkpoint
from gar_tools.model.config import GarConfig
from gar_tools.model.modeling import GarModel, Geometry
from gar_tools.model.processing import GarProcessor, PreparedInputs
from gar_tools.model.tiny import TINY_NAME, tiny_checkpoint_path

__all__ = ["GarPipeline", "Generation", "load", "DTYPES"]

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Generation:
    """Greedy generation output: the new token ids (without the prompt), their text, and timings."""

    token_ids: list[int]
    text: str
    encode_ms: float = 0.0
    generate_ms: float = 0.0
    stopped_by_eos: bool = field(default=False)


class GarPipeline:
    """One GAR checkpoint in memory: processor + model.

    Use :func:`load` to get one. ``prepare`` builds the inputs; ``embed`` runs the vision tower and writes image
    features and RoI replay into the token embeddings; ``next_token_logits`` and ``generate`` run the LLM.
    """

    def __init__(
        self, model: GarModel, processor: GarProcessor, name: str, *, is_tiny: bool, geometry: Geometry = "checkpoint"
    ) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.is_tiny = is_tiny
        self.geometry: Geometry = geometry
        self.load_ms = 0.0

    @property
    def config(self) -> GarConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def prepare(
        self,
        image: Image.Image,
        masks: Sequence[np.ndarray],
        question: str | None = None,
        *,
        image_tiles: torch.Tensor | None = None,
    ) -> PreparedInputs:
        """See :meth:`GarProcessor.prepare`: list index ``k`` is ``<Prompt{k}>``; ``question=None`` with one mask
        is the single-region describe prompt (region in slot ``<Prompt1>``)."""
        return self.processor.prepare(image, masks, question, image_tiles=image_tiles)

    def image_features(self, prepared: PreparedInputs) -> torch.Tensor:
        """[1 + T, 256, hidden] projected features of thumbnail and tiles with the region masks added."""
        return self.model.encode_images(prepared.pixel_values, prepared.prompt_pixel_values)

    def embed(self, prepared: PreparedInputs, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """[1, L, hidden] input embeddings: text, image features over the image tokens, RoI replay in the slots."""
        features = self.image_features(prepared) if image_features is None else image_features
        return self.model.build_inputs_embeds(
            prepared.input_ids, features, prepared.boxes, prepared.slot_starts, prepared.grid, self.geometry
        )

    @torch.no_grad()
    def embed_suffix(self, prepared: PreparedInputs, start: int) -> torch.Tensor:
        """[1, L - start, hidden]: :meth:`embed`'s rows from position ``start`` on, when none of them is an image or
        RoI-replay slot token (there they are plain token embeddings: no vision tower, no replay)."""
        ids = prepared.input_ids[:, start:]
        special = [self.config.image_token_id, *self.config.crop_tokens_ids]
        if bool(torch.isin(ids, torch.tensor(special)).any()):
            raise ValueError(f"the prompt holds image or slot tokens after position {start}")
        return self.model.mllm.get_input_embeddings()(ids.to(self.device))

    @torch.no_grad()
    def next_token_logits(self, prepared: PreparedInputs) -> torch.Tensor:
        """Float32 logits over the vocabulary for the token after the prompt."""
        return self.model.last_token_logits(self.embed(prepared))

    @torch.no_grad()
    def generate(
        self, prepared: PreparedInputs, max_new_tokens: int = 1024, streamer: object | None = None
    ) -> Generation:
        """Greedy decoding from the prompt embeddings, as upstream (tokenizer eos/pad ids, special tokens skipped)."""
        if max_new_tokens < 1:
            raise InputError("must be at least 1", field="max_new_tokens")
        start = time.perf_counter()
        embeds = self.embed(prepared)
        encoded = time.perf_counter()
        tokenizer = self.processor.tokenizer
        generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        out = self.model.mllm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            generation_config=generation_config,
            streamer=streamer,
        )
        token_ids = [int(t) for t in out[0].tolist()]
        stopped = bool(token_ids) and token_ids[-1] == tokenizer.eos_token_id
        text = tokenizer.decode(token_ids, skip_special_tokens=True).strip()
        done = time.perf_counter()
        return Generation(
            token_ids=token_ids,
            text=text,
            encode_ms=(encoded - start) * 1000,
            generate_ms=(done - encoded) * 1000,
            stopped_by_eos=stopped,
        )


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"{device!r} is not a torch device (use cpu, cuda, cuda:1, auto)", field="device") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA device is available; use --device cpu", field="device")
    return resolved


def load(
    name_or_path: str | os.PathLike[str] = TINY_NAME,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    geometry: Geometry = "checkpoint",
) -> GarPipeline:
    """Load a GAR checkpoint with our own code (no ``trust_remote_code``).

    Args:
        name_or_path: ``"tiny"`` (the random test checkpoint, built and cached locally), a local folder in the
            upstream layout, or a Hugging Face hub id such as ``"HaochenWang/GAR-1B"`` (normal HF cache).
        dtype: ``"bf16"``, ``"fp16"``, ``"fp32"`` or a torch dtype. Default: bf16 on CUDA, fp32 on CPU.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``… Default: CUDA when available.
        geometry: RoI replay box convention: ``"checkpoint"`` (default; what the released weights were trained
            with) or ``"paper"`` (opt-in).
    """
    start = time.perf_counter()
    resolved_device = _pick_device(device)
    if dtype is None:
        torch_dtype = torch.bfloat16 if resolved_device.type == "cuda" else torch.float32
    elif isinstance(dtype, torch.dtype):
        torch_dtype = dtype
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise InputError(f"{dtype!r} is not supported; use one of {', '.join(DTYPES)}", field="dtype")
    if geometry not in ("checkpoint", "paper"):
        raise InputError(f"{geometry!r} is not a replay geometry; use 'checkpoint' or 'paper'", field="geometry")
    is_tiny_name = str(name_or_path) == TINY_NAME
    folder = tiny_checkpoint_path() if is_tiny_name else resolve_checkpoint(name_or_path)
    config = GarConfig.from_file(folder / "config.json")
    processor = GarProcessor.from_folder(folder, config)
    model = build_model(config, torch_dtype)
    try:
        load_model_weights(model, read_state_dict(folder), torch_dtype, resolved_device)
    except torch.OutOfMemoryError as exc:
        raise CheckpointError(f"not enough memory on {resolved_device} for this checkpoint in {torch_dtype}") from exc
    is_tiny = bool(config.extra.get("tiny_random_weights", False))
    pipeline = GarPipeline(
        model, processor, TINY_NAME if is_tiny_name else str(name_or_path), is_tiny=is_tiny, geometry=geometry
    )
    pipeline.load_ms = (time.perf_counter() - start) * 1000
    return pipeline


def checkpoint_folder(name_or_path: str | os.PathLike[str]) -> Path:
    """The local folder behind a model name (building the tiny checkpoint if needed)."""
    return tiny_checkpoint_path() if str(name_or_path) == TINY_NAME else resolve_checkpoint(name_or_path)
