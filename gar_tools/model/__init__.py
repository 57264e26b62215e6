"""GAR on transformers' PerceptionLM: config, modeling, processing, prompt templates, checkpoint loading, the tiny
checkpoint.

Names are imported lazily, so ``gar_tools.model.prompts`` (plain text, no torch) is cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gar_tools._lazy import lazy_getattr

if TYPE_CHECKING:
    from gar_tools.model.checkpoint import read_state_dict, resolve_checkpoint, save_checkpoint
    from gar_tools.model.config import GarConfig
    from gar_tools.model.decoder import BatchDecoder, PendingTokens
    from gar_tools.model.detokenize import TextStream
    from gar_tools.model.kv_cache import StaticKVCache
    from gar_tools.model.modeling import GarModel, Geometry
    from gar_tools.model.pipeline import DTYPES, GarPipeline, Generation, checkpoint_folder, load
    from gar_tools.model.prefix_cache import PrefixKVCache, SharedPrefix
    from gar_tools.model.processing import (
        GarProcessor,
        PreparedInputs,
        region_box,
        select_tile_grid,
        visual_prompt_map,
    )
    from gar_tools.model.tile_cache import TileFeatureCache, image_digest
    from gar_tools.model.tiny import PRESETS, TINY_NAME, SizePreset, build_tiny_checkpoint, tiny_checkpoint_path

__all__ = [
    "BatchDecoder",
    "DTYPES",
    "PRESETS",
    "PendingTokens",
    "PrefixKVCache",
    "SharedPrefix",
    "SizePreset",
    "StaticKVCache",
    "TextStream",
    "TileFeatureCache",
    "image_digest",
    "TINY_NAME",
    "GarConfig",
    "GarModel",
    "GarPipeline",
    "GarProcessor",
    "Generation",
    "Geometry",
    "PreparedInputs",
    "build_tiny_checkpoint",
    "checkpoint_folder",
    "load",
    "read_state_dict",
    "region_box",
    "resolve_checkpoint",
    "save_checkpoint",
    "select_tile_grid",
    "tiny_checkpoint_path",
    "visual_prompt_map",
]

_LAZY = {
    "read_state_dict": "gar_tools.model.checkpoint",
    "resolve_checkpoint": "gar_tools.model.checkpoint",
    "save_checkpoint": "gar_tools.model.checkpoint",
    "GarConfig": "gar_tools.model.config",
    "BatchDecoder": "gar_tools.model.decoder",
    "PendingTokens": "gar_tools.model.decoder",
    "TextStream": "gar_tools.model.detokenize",
    "StaticKVCache": "gar_tools.model.kv_cache",
    "TileFeatureCache": "gar_tools.model.tile_cache",
    "image_digest": "gar_tools.model.tile_cache",
    "PRESETS": "gar_tools.model.tiny",
    "SizePreset": "gar_tools.model.tiny",
    "GarModel": "gar_tools.model.modeling",
    "Geometry": "gar_tools.model.modeling",
    "DTYPES": "gar_tools.model.pipeline",
    "GarPipeline": "gar_tools.model.pipeline",
    "Generation": "gar_tools.model.pipeline",
    "checkpoint_folder": "gar_tools.model.pipeline",
    "load": "gar_tools.model.pipeline",
    "PrefixKVCache": "gar_tools.model.prefix_cache",
    "SharedPrefix": "gar_tools.model.prefix_cache",
    "GarProcessor": "gar_tools.model.processing",
    "PreparedInputs": "gar_tools.model.processing",
    "region_box": "gar_tools.model.processing",
    "select_tile_grid": "gar_tools.model.processing",
    "visual_prompt_map": "gar_tools.model.processing",
    "TINY_NAME": "gar_tools.model.tiny",
    "build_tiny_checkpoint": "gar_tools.model.tiny",
    "tiny_checkpoint_path": "gar_tools.model.tiny",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
