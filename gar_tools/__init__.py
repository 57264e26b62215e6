"""gar_tools: GAR (Grasp Any Region) as typed tools for AI agents.

The toolkit, engines and request/result models are imported lazily, so ``import gar_tools`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gar_tools._lazy import lazy_getattr
from gar_tools.errors import (
    CheckpointError,
    EngineBusyError,
    EngineError,
    GarToolsError,
    ImageError,
    InputError,
    RegionError,
)

if TYPE_CHECKING:
    from gar_tools.engine.base import Engine
    from gar_tools.engine.local import LocalEngine
    from gar_tools.images import ImagePolicy
    from gar_tools.inputs import AnswerAboutRegionsRequest, CompareRegionsRequest, DescribeRegionRequest, Region
    from gar_tools.results import AnswerAboutRegionsResult, CompareRegionsResult, DescribeRegionResult, ModelInfo
    from gar_tools.toolkit import GarToolkit

__all__ = [
    "AnswerAboutRegionsRequest",
    "AnswerAboutRegionsResult",
    "CheckpointError",
    "CompareRegionsRequest",
    "CompareRegionsResult",
    "DescribeRegionRequest",
    "DescribeRegionResult",
    "Engine",
    "EngineBusyError",
    "EngineError",
    "GarToolkit",
    "GarToolsError",
    "ImageError",
    "ImagePolicy",
    "InputError",
    "LocalEngine",
    "ModelInfo",
    "Region",
    "RegionError",
]
__version__ = "0.1.0"

_LAZY = {
    "GarToolkit": "gar_tools.toolkit",
    "Engine": "gar_tools.engine.base",
    "LocalEngine": "gar_tools.engine.local",
    "ImagePolicy": "gar_tools.images",
    "Region": "gar_tools.inputs",
    "DescribeRegionRequest": "gar_tools.inputs",
    "CompareRegionsRequest": "gar_tools.inputs",
    "AnswerAboutRegionsRequest": "gar_tools.inputs",
    "DescribeRegionResult": "gar_tools.results",
    "CompareRegionsResult": "gar_tools.results",
    "AnswerAboutRegionsResult": "gar_tools.results",
    "ModelInfo": "gar_tools.results",
}


__getattr__ = lazy_getattr(__name__, _LAZY)
