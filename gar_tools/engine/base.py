"""The engine interface: who runs a tool request.

The toolkit validates a request once and hands it to an engine. ``LocalEngine`` runs the model in this process;
``HttpEngine`` sends the same request models as JSON to a worker that runs a ``LocalEngine``. Every engine
answers the three tools with the same result models.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Literal, TypeAlias

from gar_tools.inputs import AnswerAboutRegionsRequest, CompareRegionsRequest, DescribeRegionRequest
from gar_tools.results import AnswerAboutRegionsResult, CompareRegionsResult, DescribeRegionResult, ModelInfo

__all__ = [
    "Engine",
    "ToolName",
    "TOOL_NAMES",
    "ToolRequest",
    "ToolResultModel",
    "Progress",
    "REQUEST_MODELS",
    "RESULT_MODELS",
]

ToolName = Literal["describe_region", "compare_regions", "answer_about_regions"]
TOOL_NAMES: tuple[ToolName, ...] = ("describe_region", "compare_regions", "answer_about_regions")
ToolRequest: TypeAlias = DescribeRegionRequest | CompareRegionsRequest | AnswerAboutRegionsRequest
ToolResultModel: TypeAlias = DescribeRegionResult | CompareRegionsResult | AnswerAboutRegionsResult
#: ``await progress(tokens_done, tokens_max, message)`` while a request generates.
Progress: TypeAlias = Callable[[float, float | None, str | None], Awaitable[None]]

REQUEST_MODELS: dict[ToolName, type[ToolRequest]] = {
    "describe_region": DescribeRegionRequest,
    "compare_regions": CompareRegionsRequest,
    "answer_about_regions": AnswerAboutRegionsRequest,
}
RESULT_MODELS: dict[ToolName, type[ToolResultModel]] = {
    "describe_region": DescribeRegionResult,
    "compare_regions": CompareRegionsResult,
    "answer_about_regions": AnswerAboutRegionsResult,
}


class Engine(ABC):
    """Runs validated tool requests. Implementations must be safe to call concurrently from one event loop."""

    @abstractmethod
    async def run(self, tool: ToolName, request: ToolRequest, progress: Progress | None = None) -> ToolResultModel:
        """Run ``tool`` on ``request`` (already a validated request model) and return its result model."""

    @abstractmethod
    async def info(self) -> ModelInfo:
        """Which model this engine serves."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, connections, GPU memory)."""
