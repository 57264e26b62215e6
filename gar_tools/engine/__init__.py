"""Who runs requests: ``local`` (the model in this process), ``http`` (a client of a remote worker)."""

from gar_tools.engine.base import REQUEST_MODELS, RESULT_MODELS, TOOL_NAMES, Engine, Progress, ToolName, ToolRequest
from gar_tools.engine.local import LocalEngine

__all__ = [
    "Engine",
    "LocalEngine",
    "Progress",
    "REQUEST_MODELS",
    "RESULT_MODELS",
    "TOOL_NAMES",
    "ToolName",
    "ToolRequest",
]
