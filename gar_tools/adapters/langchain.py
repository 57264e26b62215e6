"""LangChain adapter: the GAR tools as LangChain ``BaseTool`` s (``pip install 'gar-tools[langchain]'``).

>>> from gar_tools.adapters.langchain import GarLangChainToolkit
>>> tools = GarLangChainToolkit.from_model("tiny").get_tools()  # tiny: random weights, meaningless text
>>> llm_with_tools = chat_model.bind_tools(tools)

Each tool's ``args_schema`` is the request model from :mod:`gar_tools.inputs`, so the LLM sees the same schema and
field descriptions as over MCP. Tools use ``response_format="content_and_artifact"``: the ``ToolMessage`` content
is the result as JSON (without the overlay; plus a note for the tiny test model), and the artifact is the whole
result model, whose ``overlay_png`` holds the overlay PNG (base64) when ``overlay`` was requested. Errors are raised
as ``ToolException`` with a message naming the field; by default (``handle_tool_error=True``) LangChain turns them
into a ``ToolMessage`` with ``status="error"`` so the LLM can correct its call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForToolRun, CallbackManagerForToolRun
from langchain_core.tools import BaseTool, BaseToolkit, ToolException
from pydantic import ConfigDict, Field, ValidationError

from gar_tools.adapters.common import adapter_policy, result_text, tool_description
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import validation_error_to_input_error
from gar_tools.results import ToolResult
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import ToolName, tools

__all__ = ["GarLangChainTool", "GarLangChainToolkit", "format_validation_error"]


def format_validation_error(exc: ValidationError) -> str:
    """The message a tool returns for arguments that fail its ``args_schema`` (field paths, no input values)."""
    return str(validation_error_to_input_error(exc))


class GarLangChainTool(BaseTool):
    """One registered GAR tool (e.g. ``describe_region``) over a toolkit."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    gar_tool: ToolName
    """Which GAR tool this is."""
    toolkit: GarToolkit = Field(exclude=True)
    """The toolkit (and engine) that runs the calls."""
    response_format: Literal["content", "content_and_artifact"] = "content_and_artifact"
    handle_tool_error: bool | str | Callable[[ToolException], Any] | None = True
    handle_validation_error: bool | str | Callable[[ValidationError], str] | None = format_validation_error

    def _output(self, result: ToolResult) -> tuple[str, ToolResult]:
        return result_text(result), result

    def _run(self, run_manager: CallbackManagerForToolRun | None = None, **kwargs: Any) -> tuple[str, ToolResult]:
        try:
            return self._output(self.toolkit.run(self.gar_tool, kwargs))
        except GarToolsError as exc:
            raise ToolException(str(exc)) from exc

    async def _arun(
        self, run_manager: AsyncCallbackManagerForToolRun | None = None, **kwargs: Any
    ) -> tuple[str, ToolResult]:
        try:
            return self._output(await self.toolkit.arun(self.gar_tool, kwargs))
        except GarToolsError as exc:
            raise ToolException(str(exc)) from exc


class GarLangChainToolkit(BaseToolkit):
    """Every registered GAR tool for LangChain.

    Args:
        toolkit: the :class:`~gar_tools.toolkit.GarToolkit` that runs the calls (its engine may be local or a
            worker over HTTP).
        handle_tool_error: passed to each tool (default True: errors become ``ToolMessage`` s with status error).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    toolkit: GarToolkit
    handle_tool_error: bool = True

    @classmethod
    def from_model(
        cls,
        model: str = "tiny",
        *,
        allowed_dirs: Iterable[str | Path] = (),
        policy: ImagePolicy | None = None,
        **engine_kwargs: Any,
    ) -> GarLangChainToolkit:
        """A toolkit over a local engine of ``model`` (``"tiny"``: random weights, meaningless text).

        The model decides which paths the tools read, so local paths are off by default: only images and masks
        under ``allowed_dirs`` can be passed as paths (data: URIs and base64 always work; URLs are off). Give
        ``policy`` for full control (it replaces ``allowed_dirs``).
        """
        return cls(toolkit=GarToolkit(model, policy=adapter_policy(allowed_dirs, policy), **engine_kwargs))

    def get_tools(self) -> list[BaseTool]:
        """Every registered tool (``describe_region``, ``compare_regions``, …) as a ``BaseTool``."""
        return [
            GarLangChainTool(
                name=spec.name,
                description=tool_description(spec.name, self.toolkit.engine.policy),
                args_schema=spec.request_model,
                gar_tool=spec.name,
                toolkit=self.toolkit,
                handle_tool_error=self.handle_tool_error,
                metadata={"title": spec.title},
            )
            for spec in tools()
        ]
