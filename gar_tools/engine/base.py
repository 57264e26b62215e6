"""The engine interface: who runs a tool request.

The toolkit validates a request once and hands it to an engine. ``LocalEngine`` runs the model in this process;
``HttpEngine`` sends the same request models as JSON to a worker that runs a ``LocalEngine``. Every engine answers
every registered tool (:mod:`gar_tools.tools`) with the same result models. Servers and adapters use only what
this interface declares.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from gar_tools.images import ImagePolicy
from gar_tools.inputs import ToolRequest
from gar_tools.results import ModelInfo, RegionDescription, ToolResult
from gar_tools.tools import ToolName

__all__ = ["Engine", "ItemCallback", "Progress"]

#: ``await progress(tokens_done, tokens_max, text_delta)`` while a request generates: ``text_delta`` is the text
#: generated since the previous call (possibly empty, e.g. half of a multi-byte character), in order.
Progress: TypeAlias = Callable[[float, float | None, str | None], Awaitable[None]]

#: ``await on_item(item)`` while a fan-out tool (``describe_regions``) runs: one
#: :class:`~gar_tools.results.RegionDescription` per region as soon as it is finished (in finishing order). For such a
#: tool ``progress`` reports regions, not tokens: ``(regions done, regions in all, "k of N regions done")``.
ItemCallback: TypeAlias = Callable[[RegionDescription], Awaitable[None]]


class Engine(ABC):
    """Runs validated tool requests. Implementations must be safe to call concurrently from one event loop.

    Attributes:
        policy: what images and masks this engine reads (allowed folders, URLs, size limits).
    """

    policy: ImagePolicy

    @abstractmethod
    async def run(
        self,
        tool: ToolName,
        request: ToolRequest,
        progress: Progress | None = None,
        on_item: ItemCallback | None = None,
    ) -> ToolResult:
        """Run ``tool`` on ``request`` (already a validated request model) and return its result model.

        ``on_item`` receives a fan-out tool's per-region items as they finish (callers pass it only for such a
        tool, so engines without fan-out tools may leave it out of their signature)."""

    @abstractmethod
    async def info(self) -> ModelInfo:
        """Which model this engine serves."""

    async def segment(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """A segmenter's mask for one prompt, for previews: ``{"image", "points"?, "labels"?, "box"?}`` →
        ``{"rle": COCO RLE, "score": predicted IoU}``. Engines whose :meth:`info` reports a ``segmenter`` do it.

        Raises:
            EngineError: when this engine has no segmenter.
        """
        from gar_tools.errors import EngineError

        raise EngineError("this server has no segmenter configured (start it with --segmenter, e.g. tiny-sam)")

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Get ready to serve (a local engine loads its model); returns when ready. Never blocks the loop."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (threads, connections, GPU memory). Never blocks the loop."""
