"""LlamaIndex adapter: the GAR tools as a ``BaseToolSpec`` (``pip install 'gar-tools[llama-index]'``).

>>> from gar_tools.adapters.llama_index import GarToolSpec
>>> tools = GarToolSpec.from_model("tiny").to_tool_list()  # tiny: random weights, meaningless text
>>> agent = FunctionAgent(tools=tools, llm=llm)

Each tool has a sync and an async function and its request model from :mod:`gar_tools.inputs` as ``fn_schema``,
so the LLM sees the same schema and descriptions as over MCP. A call returns a ``ToolOutput`` whose content is the
result as JSON (plus a note for the tiny test model), whose ``raw_output`` is the result model, and which carries
the overlay as an ``ImageBlock`` when ``overlay`` was requested. Errors a caller can fix (bad region, path outside
the allowed folders, ...) come back as a ``ToolOutput`` with ``is_error=True`` and the message naming the field,
so an agent can correct its call.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import ContentBlock, ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.tools.tool_spec.base import SPEC_FUNCTION_TYPE, BaseToolSpec
from pydantic import BaseModel

from gar_tools.adapters.common import adapter_policy, result_text, tool_description
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy
from gar_tools.results import ToolResult
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import ToolName, get_tool, tool_names

__all__ = ["GarFunctionTool", "GarToolSpec"]


def _tool_name(fn_name: str) -> ToolName:
    """The tool behind a spec function name: the tool's own name (sync) or ``a`` + it (async)."""
    name = fn_name[1:] if fn_name.startswith("a") and fn_name[1:] in tool_names() else fn_name
    if name not in tool_names():
        raise ValueError(f"{fn_name!r} is not a GAR tool function; use one of {', '.join(tool_names())}")
    return name


class GarFunctionTool(FunctionTool):
    """A ``FunctionTool`` whose output keeps the result model and reports GAR errors as error outputs."""

    def _output(self, result: ToolResult, kwargs: dict[str, Any]) -> ToolOutput:
        blocks: list[ContentBlock] = [TextBlock(text=result_text(result))]
        if result.overlay_png:
            blocks.append(ImageBlock(image=result.overlay_png.encode("ascii"), image_mimetype="image/png"))
        return ToolOutput(
            blocks=blocks,
            tool_name=self.metadata.get_name(),
            raw_input={"args": (), "kwargs": kwargs},
            raw_output=result,
        )

    def _error(self, exc: GarToolsError, kwargs: dict[str, Any]) -> ToolOutput:
        return ToolOutput(
            content=str(exc),
            tool_name=self.metadata.get_name(),
            raw_input={"args": (), "kwargs": kwargs},
            raw_output=str(exc),
            is_error=True,
            exception=exc,
        )

    def call(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Run the tool; GAR errors become a ``ToolOutput`` with ``is_error=True``."""
        kwargs = {**self.partial_params, **kwargs}
        try:
            result = self.fn(*args, **kwargs)
        except GarToolsError as exc:
            return self._error(exc, kwargs)
        return self._output(result, kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> ToolOutput:
        """Async :meth:`call`."""
        kwargs = {**self.partial_params, **kwargs}
        try:
            result = await self.async_fn(*args, **kwargs)
        except GarToolsError as exc:
            return self._error(exc, kwargs)
        return self._output(result, kwargs)


class GarToolSpec(BaseToolSpec):
    """Every registered GAR tool for LlamaIndex.

    Each tool ``name`` is a spec function of that name (sync) and ``a`` + name (async), taking the tool's request
    fields as keyword arguments.

    Args:
        toolkit: the :class:`~gar_tools.toolkit.GarToolkit` that runs the calls (local engine or a worker).
    """

    def __init__(self, toolkit: GarToolkit) -> None:
        self.toolkit = toolkit

    @property
    def spec_functions(self) -> list[SPEC_FUNCTION_TYPE]:  # type: ignore[override]
        """``(name, "a" + name)`` for every registered tool."""
        return [(name, f"a{name}") for name in tool_names()]

    @classmethod
    def from_model(
        cls,
        model: str = "tiny",
        *,
        allowed_dirs: Iterable[str | Path] = (),
        policy: ImagePolicy | None = None,
        **engine_kwargs: Any,
    ) -> GarToolSpec:
        """A spec over a local engine of ``model`` (``"tiny"``: random weights, meaningless text).

        The model decides which paths the tools read, so local paths are off by default: only images and masks
        under ``allowed_dirs`` can be passed as paths (data: URIs and base64 always work; URLs are off). Give
        ``policy`` for full control (it replaces ``allowed_dirs``).
        """
        return cls(GarToolkit(model, policy=adapter_policy(allowed_dirs, policy), **engine_kwargs))

    def __getattr__(self, fn_name: str) -> Any:
        """The spec function ``fn_name``: the toolkit's method of the same name, with keyword arguments only."""
        try:
            tool = _tool_name(fn_name)
        except ValueError:
            raise AttributeError(f"{type(self).__name__!r} has no attribute {fn_name!r}") from None
        if fn_name == tool:

            def run(**kwargs: Any) -> ToolResult:
                return self.toolkit.run(tool, kwargs)

        else:

            async def run(**kwargs: Any) -> ToolResult:  # type: ignore[misc]
                return await self.toolkit.arun(tool, kwargs)

        run.__name__, run.__doc__ = fn_name, get_tool(tool).title
        return run

    # --- metadata ------------------------------------------------------------------------------------------------
    def get_fn_schema_from_fn_name(
        self, fn_name: str, spec_functions: list[SPEC_FUNCTION_TYPE] | None = None
    ) -> type[BaseModel] | None:
        """The request model of the tool ``fn_name`` (sync or ``a``-prefixed async name)."""
        return get_tool(_tool_name(fn_name)).request_model

    def get_metadata_from_fn_name(
        self, fn_name: str, spec_functions: list[SPEC_FUNCTION_TYPE] | None = None
    ) -> ToolMetadata | None:
        """Name, LLM-facing description and ``fn_schema`` of the tool ``fn_name``."""
        spec = get_tool(_tool_name(fn_name))
        description = tool_description(spec.name, self.toolkit.engine.policy)
        return ToolMetadata(name=spec.name, description=description, fn_schema=spec.request_model)

    def to_tool_list(
        self,
        spec_functions: list[SPEC_FUNCTION_TYPE] | None = None,
        func_to_metadata_mapping: dict[str, ToolMetadata] | None = None,
    ) -> list[FunctionTool]:
        """The tools as :class:`GarFunctionTool` s (sync and async), with the request models as ``fn_schema``."""
        mapping = func_to_metadata_mapping or {}
        tools: list[FunctionTool] = []
        for spec in spec_functions or self.spec_functions:
            sync_name, async_name = (spec, "a" + spec) if isinstance(spec, str) else spec
            metadata = mapping.get(sync_name) or self.get_metadata_from_fn_name(sync_name)
            tools.append(
                GarFunctionTool(fn=getattr(self, sync_name), async_fn=getattr(self, async_name), metadata=metadata)
            )
        return tools
