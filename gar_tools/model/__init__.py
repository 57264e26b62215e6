"""GAR on transformers' PerceptionLM: config, modeling, processing, prompt templates, checkpoint loading, the tiny
checkpoint.

Names are imported lazily, so ``gar_tools.model.prompts`` (plain text, no torch) is cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gar_tools.model.checkpoint import read_state_dict, resolve_checkpoint, save_checkpoint
    from gar_tools.model.config import GarConfig
    from gar_tools.model.modeling import GarModel, Geometry
    from gar_tools.model.pipeline import DTYPES, GarPipeline, Generation, checkpoint_folder, load
    from gar_tools.model.processing import (
        GarProcessor,
        PreparedInputs,
        region_box,
        select_tile_grid,
        visual_prompt_map,
    )
    from gar_tools.model.tiny import TINY_NAME, build_tiny_checkpoint, tiny_checkpoint_path

__all__ = [
    "DTYPES",
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
    "read_state_dict": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "GarConfig": "config",
    "GarModel": "modeling",
    "Geometry": "modeling",
    "DTYPES": "pipeline",
    "GarPipeline": "pipeline",
    "Generation": "pipeline",
    "checkpoint_folder": "pipeline",
    "load": "pipeline",
    "GarProcessor": "processing",
    "PreparedInputs": "processing",
    "region_box": "processing",
    "select_tile_grid": "processing",
    "visual_prompt_map": "processing",
    "TINY_NAME": "tiny",
    "build_tiny_checkpoint": "tiny",
    "tiny_checkpoint_path": "tiny",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"gar_tools.model.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'gar_tools.model' has no attribute {name!r}")
