"""``GarToolkit``: the three GAR tools, sync and async, framework-free.

>>> toolkit = GarToolkit("tiny")  # random weights: the text is meaningless; use a real checkpoint for answers
>>> result = toolkit.describe_region(image="photo.jpg", region={"box": [10, 20, 200, 240]})
>>> result.text, result.regions[0].box

Each tool takes a request model (or a dict, or keyword arguments), validates it once, and returns a result model.
Errors a caller can fix are :class:`~gar_tools.errors.InputError` (and its subclasses) naming the field.
Adapters (MCP, LangChain, LlamaIndex) and the worker API are thin layers over this class.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import pydantic

from gar_tools.engine.base import REQUEST_MODELS, Engine, Progress, ToolName, ToolRequest
from gar_tools.engine.local import LocalEngine
from gar_tools.errors import InputError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import (
    AnswerAboutRegionsRequest,
    CompareRegionsRequest,
    DescribeRegionRequest,
    validation_error_to_input_error,
)
from gar_tools.results import AnswerAboutRegionsResult, CompareRegionsResult, DescribeRegionResult, ModelInfo

__all__ = ["GarToolkit", "coerce_request"]

_T = TypeVar("_T")
_R = TypeVar("_R", bound=pydantic.BaseModel)


def coerce_request(tool: ToolName, request: Any = None, **kwargs: Any) -> ToolRequest:
    """The request model for ``tool`` from a model instance, a mapping, or keyword arguments (validated once)."""
    model = REQUEST_MODELS[tool]
    if isinstance(request, model) and not kwargs:
        return request
    if isinstance(request, pydantic.BaseModel):
        request = request.model_dump(exclude_unset=True)
    if request is not None and not isinstance(request, Mapping):
        raise InputError(f"expected a {model.__name__} or a mapping, got {type(request).__name__}", field="request")
    data = {**(request or {}), **kwargs}
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_error_to_input_error(exc) from None


class _LoopThread:
    """One background event loop so the sync API works inside and outside running loops."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="gar-toolkit-loop", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop = None


class GarToolkit:
    """The three GAR tools over an engine.

    Args:
        engine: an :class:`~gar_tools.engine.base.Engine`, or a model name for a :class:`LocalEngine`
            (``"tiny"`` — random weights, meaningless text —, a checkpoint folder, or a hub id).
        policy: image policy for a local engine built from a model name.
        **engine_kwargs: ``dtype``, ``device``, ``geometry`` for that local engine.
    """

    def __init__(self, engine: Engine | str = "tiny", *, policy: ImagePolicy | None = None, **engine_kwargs: Any):
        self.engine: Engine = LocalEngine(engine, policy=policy, **engine_kwargs) if isinstance(engine, str) else engine
        self._sync = _LoopThread()

    # --- async ---------------------------------------------------------------------------------------------------
    async def arun(self, tool: ToolName, request: Any = None, progress: Progress | None = None, **kwargs: Any):
        """Run ``tool`` by name (the generic entry point used by adapters and servers)."""
        if tool not in REQUEST_MODELS:
            raise InputError(f"unknown tool {tool!r}; use one of {', '.join(REQUEST_MODELS)}", field="tool")
        return await self.engine.run(tool, coerce_request(tool, request, **kwargs), progress)

    async def adescribe_region(
        self, request: DescribeRegionRequest | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> DescribeRegionResult:
        """Describe one region of an image in detail. See :class:`~gar_tools.inputs.DescribeRegionRequest`."""
        return await self.arun("describe_region", request, **kwargs)  # type: ignore[return-value]

    async def acompare_regions(
        self, request: CompareRegionsRequest | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> CompareRegionsResult:
        """Describe 2–5 regions and how they relate. See :class:`~gar_tools.inputs.CompareRegionsRequest`."""
        return await self.arun("compare_regions", request, **kwargs)  # type: ignore[return-value]

    async def aanswer_about_regions(
        self, request: AnswerAboutRegionsRequest | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> AnswerAboutRegionsResult:
        """Answer a question about 1–5 regions, free-form or multiple choice.
        See :class:`~gar_tools.inputs.AnswerAboutRegionsRequest`."""
        return await self.arun("answer_about_regions", request, **kwargs)  # type: ignore[return-value]

    async def ainfo(self) -> ModelInfo:
        return await self.engine.info()

    # --- sync ----------------------------------------------------------------------------------------------------
    def run(self, tool: ToolName, request: Any = None, **kwargs: Any):
        """Synchronous :meth:`arun`; safe to call from code that is itself inside an event loop."""
        return self._sync.run(self.arun(tool, request, **kwargs))

    def describe_region(
        self, request: DescribeRegionRequest | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> DescribeRegionResult:
        """Describe one region of an image in detail."""
        return self.run("describe_region", request, **kwargs)

    def compare_regions(
        self, request: CompareRegionsRequest | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> CompareRegionsResult:
        """Describe 2–5 regions and how they relate or differ."""
        return self.run("compare_regions", request, **kwargs)

    def answer_about_regions(
        self, request: AnswerAboutRegionsRequest | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> AnswerAboutRegionsResult:
        """Answer a question about 1–5 regions, free-form or multiple choice."""
        return self.run("answer_about_regions", request, **kwargs)

    def info(self) -> ModelInfo:
        return self._sync.run(self.ainfo())

    # --- lifecycle -----------------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        await self.engine.aclose()

    def close(self) -> None:
        self._sync.run(self.engine.aclose())
        self._sync.close()

    def __enter__(self) -> GarToolkit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
