"""LlamaIndex adapter: the three GAR tools as a ``BaseToolSpec`` (``pip install 'gar-tools[llama-index]'``).

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

from typing import Any

from llama_index.core.base.llms.types import ContentBlock, ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool, ToolMetadata, ToolOutput
from llama_index.core.tools.tool_spec.base import SPEC_FUNCTION_TYPE, BaseToolSpec
from pydantic import BaseModel

from gar_tools.adapters.common import engine_policy, result_text, tool_description
from gar_tools.engine.base import REQUEST_MODELS, TOOL_NAMES, ToolName
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy
from gar_tools.results import AnswerAboutRegionsResult, CompareRegionsResult, DescribeRegionResult, ToolResult
from gar_tools.toolkit import GarToolkit

__all__ = ["GarFunctionTool", "GarToolSpec"]


def _tool_name(fn_name: str) -> ToolName:
    name = fn_name.removeprefix("a") if fn_name.removeprefix("a") in TOOL_NAMES else fn_name
    if name not in TOOL_NAMES:
        raise ValueError(f"{fn_name!r} is not a GAR tool function; use one of {', '.join(TOOL_NAMES)}")
    return name  # type: ignore[return-value]


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
    """The three GAR tools for LlamaIndex.

    Args:
        toolkit: the :class:`~gar_tools.toolkit.GarToolkit` that runs the calls (local engine or a worker).
    """

    spec_functions: list[SPEC_FUNCTION_TYPE] = [
        ("describe_region", "adescribe_region"),
        ("compare_regions", "acompare_regions"),
        ("answer_about_regions", "aanswer_about_regions"),
    ]

    def __init__(self, toolkit: GarToolkit) -> None:
        self.toolkit = toolkit

    @classmethod
    def from_model(cls, model: str = "tiny", *, policy: ImagePolicy | None = None, **engine_kwargs: Any) -> GarToolSpec:
        """A spec over a local engine of ``model`` (``"tiny"``: random weights, meaningless text)."""
        return cls(GarToolkit(model, policy=policy, **engine_kwargs))

    # --- the spec functions (keyword arguments are the request model's fields) -----------------------------------
    def describe_region(self, **kwargs: Any) -> DescribeRegionResult:
        """Describe one region of an image in detail."""
        return self.toolkit.describe_region(kwargs)

    async def adescribe_region(self, **kwargs: Any) -> DescribeRegionResult:
        """Describe one region of an image in detail."""
        return await self.toolkit.adescribe_region(kwargs)

    def compare_regions(self, **kwargs: Any) -> CompareRegionsResult:
        """Describe 2-5 regions of an image and how they relate."""
        return self.toolkit.compare_regions(kwargs)

    async def acompare_regions(self, **kwargs: Any) -> CompareRegionsResult:
        """Describe 2-5 regions of an image and how they relate."""
        return await self.toolkit.acompare_regions(kwargs)

    def answer_about_regions(self, **kwargs: Any) -> AnswerAboutRegionsResult:
        """Answer a question about 1-5 regions of an image."""
        return self.toolkit.answer_about_regions(kwargs)

    async def aanswer_about_regions(self, **kwargs: Any) -> AnswerAboutRegionsResult:
        """Answer a question about 1-5 regions of an image."""
        return await self.toolkit.aanswer_about_regions(kwargs)

    # --- metadata ------------------------------------------------------------------------------------------------
    def get_fn_schema_from_fn_name(
        self, fn_name: str, spec_functions: list[SPEC_FUNCTION_TYPE] | None = None
    ) -> type[BaseModel] | None:
        """The request model of the tool ``fn_name`` (sync or ``a``-prefixed async name)."""
        return REQUEST_MODELS[_tool_name(fn_name)]

    def get_metadata_from_fn_name(
        self, fn_name: str, spec_functions: list[SPEC_FUNCTION_TYPE] | None = None
    ) -> ToolMetadata | None:
        """Name, LLM-facing description and ``fn_schema`` of the tool ``fn_name``."""
        tool = _tool_name(fn_name)
        policy = engine_policy(self.toolkit.engine)
        return ToolMetadata(name=tool, description=tool_description(tool, policy), fn_schema=REQUEST_MODELS[tool])

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
