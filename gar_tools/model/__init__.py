"""GAR on transformers' PerceptionLM: config, modeling, processing, checkpoint loading, the tiny checkpoint."""

from gar_tools.model.checkpoint import read_state_dict, resolve_checkpoint, save_checkpoint
from gar_tools.model.config import GarConfig
from gar_tools.model.decoder import BatchDecoder, PendingTokens
from gar_tools.model.detokenize import TextStream
from gar_tools.model.kv_cache import StaticKVCache
from gar_tools.model.modeling import GarModel, Geometry
from gar_tools.model.pipeline import DTYPES, TINY_NOTICE, GarPipeline, Generation, checkpoint_folder, load
from gar_tools.model.processing import GarProcessor, PreparedInputs, region_box, select_tile_grid, visual_prompt_map
from gar_tools.model.tile_cache import TileFeatureCache, image_digest
from gar_tools.model.tiny import PRESETS, TINY_NAME, SizePreset, build_tiny_checkpoint, tiny_checkpoint_path

__all__ = [
    "BatchDecoder",
    "DTYPES",
    "PRESETS",
    "PendingTokens",
    "SizePreset",
    "StaticKVCache",
    "TextStream",
    "TileFeatureCache",
    "image_digest",
    "TINY_NAME",
    "TINY_NOTICE",
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
