"""``GarToolkit``: every registered GAR tool, sync and async, framework-free.

>>> toolkit = GarToolkit("tiny")  # random weights: the text is meaningless; use a real checkpoint for answers
>>> result = toolkit.describe_region(image="photo.jpg", region={"box": [10, 20, 200, 240]})
>>> result.text, result.regions[0].box
>>> toolkit.close()  # or: with GarToolkit(...) as toolkit: ... / async with GarToolkit(...) as toolkit: ...

Each tool (see :mod:`gar_tools.tools`) is a method of the same name (``toolkit.describe_region(...)``) and an
async one with an ``a`` prefix (``await toolkit.adescribe_region(...)``); :meth:`GarToolkit.run` and
:meth:`GarToolkit.arun` take the tool's name. A tool takes its request model, a mapping, or keyword arguments,
validates it once, and returns its result model. Errors a caller can fix are
:class:`~gar_tools.errors.InputError` (and subclasses) naming the field. Adapters (MCP, LangChain, LlamaIndex) and
the worker API are thin layers over this class.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pydantic

from gar_tools.engine import Engine, ItemCallback, Progress, make_engine
from gar_tools.errors import GarToolsError, InputError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import ToolRequest, validation_error_to_input_error
from gar_tools.results import ModelInfo, RegionDescription, ToolResult
from gar_tools.tools import ToolName, get_tool, tool_names

__all__ = ["GarToolkit", "coerce_request"]

_T = TypeVar("_T")


def coerce_request(tool: ToolName, request: Any = None, **kwargs: Any) -> ToolRequest:
    """The request model for ``tool`` from a model instance, a mapping, or keyword arguments (validated once)."""
    model = get_tool(tool).request_model
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
    """Every registered GAR tool over an engine.

    Args:
        engine: an :class:`~gar_tools.engine.base.Engine`, or a model name for a local engine (``"tiny"`` —
            random weights, meaningless text —, a checkpoint folder, or a hub id).
        policy: image policy for a local engine built from a model name.
        **engine_kwargs: ``dtype``, ``device``, ``geometry`` for that local engine.
    """

    def __init__(self, engine: Engine | str = "tiny", *, policy: ImagePolicy | None = None, **engine_kwargs: Any):
        self.engine: Engine = (
            make_engine("local", model=engine, policy=policy, **engine_kwargs) if isinstance(engine, str) else engine
        )
        self._sync = _LoopThread()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise GarToolsError(
                "this GarToolkit is closed (after close(), aclose() or the end of its with block); "
                "create a new one, or make the calls inside the with block"
            )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` or :meth:`aclose` has been called (calls then raise :class:`GarToolsError`)."""
        return self._closed

    # --- by name -------------------------------------------------------------------------------------------------
    async def arun(
        self,
        tool: ToolName,
        request: Any = None,
        progress: Progress | None = None,
        on_item: ItemCallback | None = None,
        **kwargs: Any,
    ) -> ToolResult:
        """Run ``tool`` by name (the generic entry point used by adapters and servers).

        For a fan-out tool (``describe_regions``) ``progress`` reports regions done (``k``, ``N``, ``"k of N regions
        done"``) and ``on_item`` receives each region's :class:`~gar_tools.results.RegionDescription` as it finishes.
        """
        self._check_open()
        validated = coerce_request(tool, request, **kwargs)
        if on_item is not None and get_tool(tool).fan_out:
            return await self.engine.run(tool, validated, progress, on_item)
        return await self.engine.run(tool, validated, progress)

    def run(self, tool: ToolName, request: Any = None, **kwargs: Any) -> ToolResult:
        """Synchronous :meth:`arun`; safe to call from code that is itself inside an event loop."""
        self._check_open()
        return self._sync.run(self.arun(tool, request, **kwargs))

    async def astream(
        self, tool: ToolName, request: Any = None, **kwargs: Any
    ) -> AsyncIterator[str | RegionDescription | ToolResult]:
        """Run ``tool`` and yield what it produces as it comes, then the result model: its text as it is generated
        (``str`` deltas), or for a fan-out tool (``describe_regions``) one
        :class:`~gar_tools.results.RegionDescription` per region as it finishes (in finishing order; ``index`` says
        which region).

        >>> async for item in toolkit.astream("describe_region", image=..., region=...):
        ...     print(item, end="") if isinstance(item, str) else print("\n", item.timings)
        >>> async for item in toolkit.astream("describe_regions", image=..., regions=[...]):
        ...     print(item.id, item.text) if isinstance(item, RegionDescription) else print(item.timings)

        Closing the iterator early (or cancelling the task consuming it) cancels the request.
        """
        items: asyncio.Queue[str | RegionDescription] = asyncio.Queue()
        fan_out = get_tool(tool).fan_out

        async def progress(done: float, total: float | None, delta: str | None) -> None:
            if delta and not fan_out:
                items.put_nowait(delta)

        async def on_item(item: RegionDescription) -> None:
            items.put_nowait(item)

        extra = {"on_item": on_item} if fan_out else {}
        task = asyncio.ensure_future(self.arun(tool, request, progress=progress, **extra, **kwargs))
        try:
            while not task.done():
                getter = asyncio.ensure_future(items.get())
                await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            while not items.empty():
                yield items.get_nowait()
            yield task.result()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- one method per registered tool --------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Callable[..., Any]:
        tool = name[1:] if name.startswith("a") and name[1:] in tool_names() else name
        if tool not in tool_names():
            raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")
        method = self.arun if tool != name else self.run
        bound = functools.partial(method, tool)
        functools.update_wrapper(bound, method)
        bound.__name__ = name  # type: ignore[attr-defined]
        bound.__doc__ = f"{'Async ' if tool != name else ''}{get_tool(tool).title}: see {tool!r} in gar_tools.tools."
        return bound

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *tool_names(), *(f"a{name}" for name in tool_names())]

    # --- model ---------------------------------------------------------------------------------------------------
    async def ainfo(self) -> ModelInfo:
        self._check_open()
        return await self.engine.info()

    def info(self) -> ModelInfo:
        self._check_open()
        return self._sync.run(self.ainfo())

    # --- lifecycle -----------------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Release the engine (model thread, connections); later calls raise :class:`GarToolsError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.engine.aclose()
        finally:
            self._sync.close()

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        if self._closed:
            return
        self._closed = True
        try:
            self._sync.run(self.engine.aclose())
        finally:
            self._sync.close()

    def __enter__(self) -> GarToolkit:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> GarToolkit:
        self._check_open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
