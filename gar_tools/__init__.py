"""gar_tools: GAR (Grasp Any Region) as typed tools for AI agents."""

from gar_tools.errors import CheckpointError, EngineError, GarToolsError, ImageError, InputError, RegionError

__all__ = [
    "CheckpointError",
    "EngineError",
    "GarToolsError",
    "ImageError",
    "InputError",
    "RegionError",
]
__version__ = "0.1.0"
