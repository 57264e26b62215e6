"""The MCP server: the three GAR tools over the official ``mcp`` SDK (2.x ``MCPServer``).

- Tools ``describe_region``, ``compare_regions``, ``answer_about_regions``. Their input schemas are exactly the
  fields of the request models in :mod:`gar_tools.inputs` (with the LLM-oriented descriptions), and their output
  schemas the result models of :mod:`gar_tools.results` minus ``overlay_png``: results come back as
  ``structuredContent`` plus a JSON text block, and a requested overlay as an ``ImageContent`` PNG beside them.
- Arguments are validated by the request models themselves, so every client (MCP, LangChain, LlamaIndex, the
  worker) gets the same error messages naming the field; errors are raised, and the SDK returns them as
  ``isError`` results, after which the server keeps serving.
- Progress notifications (tokens generated) are sent while generating, to clients that ask for them.
- The engine (a local model, or a client of a shared ``gar-tools worker``) lives in the server lifespan.
- Resources ``gar://guide`` (usage guide), ``gar://examples`` (bundled example images with ready-made calls) and
  ``gar://examples/{filename}`` (the images themselves); prompt ``gar_tour``.

Run it with ``gar-tools serve --transport stdio|http`` (see :mod:`gar_tools.servers.commands`) or build it with
:func:`create_server` and pass it to ``mcp.Client`` in tests.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import pydantic
from gar_tools.servers.common import BearerTokenMiddleware, server_policy
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import Field, SkipValidation
from starlette.types import ASGIApp

from gar_tools import __version__
from gar_tools.adapters.common import (
    ASSETS_DIR,
    TINY_MODEL_NOTE,
    TOOL_TITLES,
    example_catalog,
    result_json,
    tool_description,
    usage_guide,
)
from gar_tools.engine import Engine, LocalEngine, make_engine
from gar_tools.engine.base import REQUEST_MODELS, RESULT_MODELS, TOOL_NAMES, ToolName
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy
from gar_tools.results import ToolResult
from gar_tools.toolkit import GarToolkit

__all__ = [
    "GarServerState",
    "ServeSettings",
    "create_server",
    "http_app",
    "output_model",
    "tool_result",
]

logger = logging.getLogger("gar_tools.mcp")

INSTRUCTIONS = (
    "GAR (Grasp Any Region) tools: describe, compare and answer questions about specific regions of an image. "
    "Each call takes one image (path, data: URI or base64) and up to 5 regions (mask, COCO RLE, polygon or box). "
    "Read the gar://guide resource for formats and gar://examples for example images. "
    "If a result has tiny_model=true, the server runs random test weights and the text is meaningless."
)


@dataclass(frozen=True)
class ServeSettings:
    """How ``gar-tools serve`` runs the tools.

    Attributes:
        engine: ``"local"`` (the model in this process) or a worker URL ``http(s)://host:port``.
        model: the model a local engine loads (``"tiny"``: random weights, meaningless text).
        policy: which images and masks callers may pass (allowed folders, URLs, size limits).
        worker_token: bearer token for the worker (http engine).
        engine_kwargs: ``dtype``, ``device``, ``geometry`` for a local engine.
        preload: start loading a local model when the server starts (in the background) rather than on the
            first call.
    """

    engine: str = "local"
    model: str = "tiny"
    policy: ImagePolicy = field(default_factory=server_policy)
    worker_token: str | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    preload: bool = True


@dataclass
class GarServerState:
    """What the server lifespan holds: the toolkit (and its engine) shared by every session."""

    toolkit: GarToolkit
    settings: ServeSettings
    loader: asyncio.Task[None] | None = None


# --- schemas ---------------------------------------------------------------------------------------------------------


def output_model(tool: ToolName) -> type[pydantic.BaseModel]:
    """The MCP output schema model of ``tool``: its result model without ``overlay_png`` (sent as an image)."""
    result_cls = RESULT_MODELS[tool]
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in result_cls.model_fields.items() if name != "overlay_png"
    }
    return pydantic.create_model(  # type: ignore[call-overload, no-any-return]
        result_cls.__name__,
        __config__=pydantic.ConfigDict(extra="forbid"),
        __doc__=(result_cls.__doc__ or "") + " A requested overlay comes as an image content block.",
        __module__=__name__,
        **fields,
    )


def _schema_only(info: pydantic.fields.FieldInfo) -> Any:
    """A parameter annotation that publishes the request field's JSON schema but leaves validation to us.

    ``SkipValidation`` keeps the SDK from validating (and from writing its own error messages); the request model
    validates the whole call instead, with messages that name the field.
    """
    inner = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return Annotated[
        SkipValidation[inner], Field(description=info.description, json_schema_extra=info.json_schema_extra)
    ]


def tool_result(result: ToolResult) -> CallToolResult:
    """A tool result as MCP content: JSON text (+ tiny-model note) and structured content; overlay as an image."""
    content: list[ContentBlock] = [TextContent(type="text", text=result_json(result))]
    if result.tiny_model:
        content.append(TextContent(type="text", text=TINY_MODEL_NOTE))
    if result.overlay_png:
        content.append(ImageContent(type="image", data=result.overlay_png, mime_type="image/png"))
    return CallToolResult(content=content, structured_content=result.model_dump(mode="json", exclude={"overlay_png"}))


def _tool_function(tool: ToolName) -> Callable[..., Awaitable[CallToolResult]]:
    """The async function registered for ``tool``, with a signature built from its request model's fields."""
    request_model = REQUEST_MODELS[tool]

    async def run_tool(ctx: Context, **arguments: Any) -> CallToolResult:
        state: GarServerState = ctx.request_context.lifespan_context

        async def progress(done: float, total: float | None, message: str | None) -> None:
            text = message or (f"generated {int(done)} of at most {int(total)} tokens" if total else None)
            await ctx.report_progress(done, total, text)

        try:
            result = await state.toolkit.arun(tool, arguments, progress=progress)
        except GarToolsError as exc:
            raise ToolError(str(exc)) from exc
        return tool_result(result)

    parameters = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            annotation=_schema_only(info),
            default=inspect.Parameter.empty if info.is_required() else info.default,
        )
        for name, info in request_model.model_fields.items()
    ]
    parameters.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    returns = Annotated[CallToolResult, output_model(tool)]
    run_tool.__name__ = run_tool.__qualname__ = tool
    run_tool.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    run_tool.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": returns}
    return run_tool


# --- server ----------------------------------------------------------------------------------------------------------


def _log_load_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("loading the model failed (calls will report the error): %s", task.exception())


def create_server(
    settings: ServeSettings | None = None, *, engine_factory: Callable[[], Engine] | None = None
) -> MCPServer[GarServerState]:
    """The GAR MCP server.

    Args:
        settings: engine, model and image policy (default: the local tiny model, bundled examples only).
        engine_factory: builds the engine in the lifespan instead of ``settings.engine`` (e.g. a
            :class:`LocalEngine` over an already loaded pipeline, in tests). Give it ``settings.policy``.
    """
    settings = settings or ServeSettings()
    policy = settings.policy

    @asynccontextmanager
    async def lifespan(server: MCPServer[GarServerState]) -> AsyncIterator[GarServerState]:
        if engine_factory is not None:
            engine = engine_factory()
        else:
            engine = make_engine(
                settings.engine,
                model=settings.model,
                policy=policy,
                token=settings.worker_token,
                **settings.engine_kwargs,
            )
        state = GarServerState(toolkit=GarToolkit(engine), settings=settings)
        if settings.preload and isinstance(engine, LocalEngine) and not (await engine.info()).loaded:
            state.loader = asyncio.create_task(engine.load())
            state.loader.add_done_callback(_log_load_failure)
        try:
            yield state
        finally:
            await state.toolkit.aclose()  # waits for a model load still running on the model thread

    server: MCPServer[GarServerState] = MCPServer(
        "gar-tools",
        title="GAR region tools",
        description="Describe, compare and ask about image regions with GAR (Grasp Any Region).",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )
    for tool in TOOL_NAMES:
        server.add_tool(
            _tool_function(tool),
            name=tool,
            title=TOOL_TITLES[tool],
            description=tool_description(tool, policy, limit=4000),
            annotations=ToolAnnotations(
                title=TOOL_TITLES[tool],
                read_only_hint=True,
                destructive_hint=False,
                idempotent_hint=True,
                open_world_hint=policy.allow_urls,
            ),
        )
    _add_resources(server, policy)
    return server


def _add_resources(server: MCPServer[GarServerState], policy: ImagePolicy) -> None:
    example_files = {p.name: p for p in sorted(ASSETS_DIR.glob("demo_*.png"))}

    @server.resource("gar://guide", name="guide", title="How to use the GAR tools", mime_type="text/markdown")
    def guide() -> str:
        """Formats of images, regions and questions, what results contain, and limits."""
        return usage_guide(policy)

    @server.resource(
        "gar://examples", name="examples", title="Example images and regions", mime_type="application/json"
    )
    def examples() -> str:
        """Bundled example images with their region masks (as local paths) and a ready-made call for each."""
        return json.dumps(example_catalog(), indent=2)

    @server.resource(
        "gar://examples/{filename}", name="example_file", title="An example image or mask", mime_type="image/png"
    )
    def example_file(filename: str) -> bytes:
        """One bundled example image or mask, e.g. gar://examples/demo_image_1.png."""
        path = example_files.get(filename)
        if path is None:
            raise ResourceNotFoundError(f"no example {filename!r}; there are {', '.join(example_files)}")
        return path.read_bytes()

    @server.prompt(name="gar_tour", title="Try the GAR tools on the examples")
    def gar_tour() -> str:
        """Ask the assistant to run the three tools on the bundled example images."""
        catalog = {item["name"]: item for item in example_catalog()}
        slipper, tennis = catalog["slipper"], catalog["tennis"]
        return (
            "Try the GAR region tools on the bundled examples:\n"
            f"1. describe_region on image {slipper['image']} with region {json.dumps(slipper['regions'][0])}.\n"
            f"2. compare_regions on image {tennis['image']} with regions {json.dumps(tennis['regions'][:2])}, "
            "focus 'what they are doing'.\n"
            f"3. answer_about_regions on image {tennis['image']} with regions {json.dumps(tennis['regions'])} "
            "and the question 'What is <person> doing with <racket> and <ball>?', with overlay true.\n"
            "Summarize each answer. If a result says tiny_model is true, say that the text is meaningless."
        )


def http_app(
    server: MCPServer[GarServerState], *, host: str = "127.0.0.1", token: str | None = None, path: str = "/mcp"
) -> ASGIApp:
    """The streamable-HTTP ASGI app of ``server`` at ``path``, with ``GET /healthz``; bearer token if given.

    With a token, every request but ``/healthz`` needs ``Authorization: Bearer <token>`` (401 otherwise).
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app: ASGIApp = server.streamable_http_app(streamable_http_path=path, host=host)
    if token:
        app = BearerTokenMiddleware(app, token, open_paths={"/healthz"})
    return app
