"""The GAR checkpoint configuration (``config.json`` with ``model_type: "GAR"``).

A GAR config wraps a full PerceptionLM config (``mllm_config``) and adds the region-prompt fields. We parse it
ourselves (no ``trust_remote_code``) into :class:`GarConfig` and build transformers' ``PerceptionLMConfig`` from it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PerceptionLMConfig

from gar_tools.errors import CheckpointError

__all__ = ["GarConfig", "UPSTREAM_CROP_TOKEN_IDS", "PROMPT_NUMBERS"]

#: ``<|reserved_special_token_2|>`` … ``_6|>`` in the Llama 3 tokenizer: the replay slot token of each prompt index.
UPSTREAM_CROP_TOKEN_IDS: tuple[int, ...] = (128004, 128005, 128008, 128010, 128011)
#: GAR's number of region prompts (``<Prompt0>`` … ``<Prompt4>``).
PROMPT_NUMBERS = 5


@dataclass
class GarConfig:
    """What a GAR ``config.json`` says.

    Attributes:
        mllm_config: the PerceptionLM configuration dict, as stored.
        prompt_numbers: how many region prompts the model knows (5 for the released checkpoints).
        crop_tokens_ids: the replay slot token id of each prompt index.
        extra: every other top-level key of the file, kept so a save → load round trip is lossless.
    """

    mllm_config: dict[str, Any]
    prompt_numbers: int = PROMPT_NUMBERS
    crop_tokens_ids: list[int] = field(default_factory=lambda: list(UPSTREAM_CROP_TOKEN_IDS))
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.mllm_config, dict):
            raise CheckpointError("config.json: `mllm_config` must be an object holding a PerceptionLM config")
        for key in ("vision_config", "text_config"):
            if not isinstance(self.mllm_config.get(key), dict):
                raise CheckpointError(f"config.json: `mllm_config.{key}` is missing or not an object")
        if not isinstance(self.prompt_numbers, int) or self.prompt_numbers < 1:
            raise CheckpointError(
                f"config.json: `prompt_numbers` must be a positive integer, got {self.prompt_numbers!r}"
            )
        if len(self.crop_tokens_ids) != self.prompt_numbers:
            raise CheckpointError(
                f"config.json: `crop_tokens_ids` has {len(self.crop_tokens_ids)} ids but `prompt_numbers` is "
                f"{self.prompt_numbers}; they must match"
            )
        model_args = self.mllm_config["vision_config"].get("model_args")
        if not isinstance(model_args, dict) or "embed_dim" not in model_args:
            raise CheckpointError("config.json: `mllm_config.vision_config.model_args.embed_dim` is missing")

    # --- derived facts -------------------------------------------------------------------------------------------
    @property
    def vision_dim(self) -> int:
        """Width of the vision tower (the mask patch embedding's output channels)."""
        return int(self.mllm_config["vision_config"]["model_args"]["embed_dim"])

    @property
    def patch_size(self) -> int:
        """Vision patch size: ``img_size // ref_feat_shape`` as upstream computes it (14 for PE at 448 px)."""
        args = self.mllm_config["vision_config"]["model_args"]
        img = args.get("img_size", 448)
        ref = args.get("ref_feat_shape", 32)
        img0 = img[0] if isinstance(img, list | tuple) else img
        ref0 = ref[0] if isinstance(ref, list | tuple) else ref
        return int(img0) // int(ref0)

    @property
    def image_token_id(self) -> int:
        return int(self.mllm_config.get("image_token_id", 128002))

    def perception_lm_config(self) -> PerceptionLMConfig:
        """transformers' PerceptionLM config for the wrapped model."""
        cfg = copy.deepcopy(self.mllm_config)
        # Keys upstream's remote code wrote that transformers' config does not take.
        for key in ("use_flash_attn", "_attn_implementation", "_attn_implementation_autoset", "model_type"):
            cfg.pop(key, None)
        for sub in ("vision_config", "text_config"):
            for key in ("use_flash_attn", "_attn_implementation", "_attn_implementation_autoset"):
                cfg[sub].pop(key, None)
        try:
            return PerceptionLMConfig(**cfg)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"config.json: `mllm_config` is not a valid PerceptionLM config: {exc}") from exc

    # --- files ---------------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GarConfig:
        if data.get("model_type") != "GAR":
            raise CheckpointError(
                f'config.json: `model_type` is {data.get("model_type")!r}; a GAR checkpoint has model_type "GAR"'
            )
        if "mllm_config" not in data:
            raise CheckpointError("config.json: `mllm_config` is missing (a GAR config wraps a PerceptionLM config)")
        known = {"mllm_config", "prompt_numbers", "crop_tokens_ids"}
        return cls(
            mllm_config=copy.deepcopy(data["mllm_config"]),
            prompt_numbers=data.get("prompt_numbers", PROMPT_NUMBERS),
            crop_tokens_ids=[int(i) for i in data.get("crop_tokens_ids", UPSTREAM_CROP_TOKEN_IDS)],
            extra={k: v for k, v in data.items() if k not in known},
        )

    @classmethod
    def from_file(cls, path: Path) -> GarConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CheckpointError(f"{path}: no config.json; a GAR checkpoint folder must have one") from exc
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update(
            model_type="GAR",
            mllm_config=copy.deepcopy(self.mllm_config),
            prompt_numbers=self.prompt_numbers,
            crop_tokens_ids=list(self.crop_tokens_ids),
        )
        return out
