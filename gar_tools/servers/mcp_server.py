"""The MCP server: every registered GAR tool over the official ``mcp`` SDK (2.x ``MCPServer``).

- One MCP tool per :class:`~gar_tools.tools.ToolSpec` (``describe_region``, ``compare_regions``,
  ``answer_about_regions``, …). Input schemas are exactly the fields of the tools' request models (with the
  LLM-oriented descriptions), output schemas their result models minus ``overlay_png``: results come back as
  ``structuredContent`` plus a JSON text block, and a requested overlay as an ``ImageContent`` PNG beside them.
- Arguments are validated by the request models only (:func:`mcp_tool`): the SDK passes them through unvalidated,
  so an unknown or misspelt argument is an error naming it, and missing or wrongly typed ones get the same
  message, naming the field (``regions[1].box``), as from the toolkit, LangChain, LlamaIndex and the worker; no
  raw pydantic or SDK text. Errors are raised, and the SDK returns them as ``isError`` results, after which the
  server keeps serving.
- Progress notifications (tokens generated) are sent while generating, to clients that ask for them.
- The engine (a local model, or a client of a shared ``gar-tools worker``) lives in the server lifespan.
- Resources ``gar://guide`` (usage guide), ``gar://examples`` (bundled example images with ready-made calls) and
  ``gar://examples/{filename}`` (the images themselves); prompt ``gar_tour``.
- The region picker (:mod:`gar_tools.servers.ui`) as an MCP App: resource ``ui://gar-tools/region-picker.html``
  (``text/html;profile=mcp-app``), linked from every tool's ``_meta.ui.resourceUri``; over HTTP also at ``GET /ui``.

Run it with ``gar-tools serve --transport stdio|http`` (:func:`run_server`) or build it with :func:`create_server`
and pass it to ``mcp.Client`` in tests.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import pydantic
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from mcp_types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import Field, SkipValidation
from starlette.types import ASGIApp

from gar_tools import __version__
from gar_tools.adapters.common import result_json, tool_description, usage_guide
from gar_tools.catalog import ASSETS_DIR, example_calls, example_catalog
from gar_tools.engine import Engine, make_engine
from gar_tools.engine.allocator import tune_allocator
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import MAX_REGIONS
from gar_tools.results import TINY_MODEL_NOTE, RegionDescription, ToolResult
from gar_tools.servers.common import BearerTokenMiddleware, RequestLimitsMiddleware, serve_app
from gar_tools.servers.settings import ServeSettings
from gar_tools.servers.ui import (
    UI_MIME_TYPE,
    UI_OPEN_PATHS,
    UI_RESOURCE_URI,
    page_html,
    tool_routes,
    ui_resource_meta,
    ui_routes,
    ui_tool_meta,
)
from gar_tools.toolkit import GarToolkit
from gar_tools.tools import ToolName, ToolSpec, tools

__all__ = [
    "GarServerState",
    "create_server",
    "http_app",
    "mcp_tool",
    "output_model",
    "run_server",
    "tool_result",
    "worker_health",
]

logger = logging.getLogger("gar_tools.mcp")

PROGRESS_TEXT_CHARS = 400
"""Progress messages carry the number of tokens and the last this-many characters of the text so far."""

INSTRUCTIONS = (
    "GAR (Grasp Any Region) tools: describe, compare and answer questions about specific regions of an image. "
    f"Each call takes one image (path, data: URI or base64) and up to {MAX_REGIONS} regions (mask, COCO RLE, "
    "polygon, scribble, points or box). Read the gar://guide resource for formats and gar://examples for example "
    "images. "
    f"If a result has tiny_model=true: {TINY_MODEL_NOTE}"
)


@dataclass
class GarServerState:
    """What the server lifespan holds: the toolkit (and its engine) shared by every session."""

    toolkit: GarToolkit
    settings: ServeSettings
    loader: asyncio.Task[None] | None = None


# --- schemas ---------------------------------------------------------------------------------------------------------


def output_model(spec: ToolSpec) -> type[pydantic.BaseModel]:
    """The MCP output schema model of a tool: its result model without ``overlay_png`` (sent as an image)."""
    result_cls = spec.result_model
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


class _RequestModelArguments(FuncMetadata):
    """Hands a call's arguments to the tool function as they came, for the request model to validate.

    The SDK would validate them against the function's signature first, drop unknown keys silently and answer
    missing or wrongly typed ones with raw pydantic text. Here only the SDK's pre-parsing of JSON-encoded objects
    and lists (some clients send ``"region": "{...}"``) is kept; the request model (``extra="forbid"``, strict
    types) then names every unknown, missing or wrongly typed argument in the toolkit's own words.
    """

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        parsed = self.pre_parse_json(arguments_to_validate)
        return {
            key: parsed[key] if isinstance(parsed[key], (dict, list)) else value
            for key, value in arguments_to_validate.items()
        }


def tool_result(result: ToolResult) -> CallToolResult:
    """A tool result as MCP content: JSON text (+ tiny-model note) and structured content; overlay as an image."""
    content: list[ContentBlock] = [TextContent(type="text", text=result_json(result))]
    if result.tiny_model:
        content.append(TextContent(type="text", text=TINY_MODEL_NOTE))
    if result.overlay_png:
        content.append(ImageContent(type="image", data=result.overlay_png, mime_type="image/png"))
    return CallToolResult(content=content, structured_content=result.model_dump(mode="json", exclude={"overlay_png"}))


def _tool_function(spec: ToolSpec) -> Callable[..., Awaitable[CallToolResult]]:
    """The async function registered for a tool, with a signature built from its request model's fields."""
    tool: ToolName = spec.name

    async def run_tool(gar_mcp_context: Context, **arguments: Any) -> CallToolResult:
        # The context's name is one no request model uses: the SDK passes it beside the caller's arguments.
        ctx = gar_mcp_context
        state: GarServerState = ctx.request_context.lifespan_context

        text_so_far = ""

        last: list[RegionDescription] = []

        async def on_item(item: RegionDescription) -> None:
            last[:] = [item]

        async def progress(done: float, total: float | None, delta: str | None) -> None:
            nonlocal text_so_far
            if spec.fan_out:  # "k of N regions done", and the region just finished
                item = last[0] if last else None
                said = (item.text or "")[-PROGRESS_TEXT_CHARS:] if item and item.error is None else "failed"
                message = f"{delta}; {item.id}: {said}" if item else (delta or "")
                await ctx.report_progress(done, total, message)
                return
            text_so_far += delta or ""
            tokens = f"{int(done)} of at most {int(total)} tokens" if total else f"{int(done)} tokens"
            tail = text_so_far[-PROGRESS_TEXT_CHARS:]
            await ctx.report_progress(done, total, f"{tokens}: {tail}" if tail else tokens)

        try:
            extra = {"on_item": on_item} if spec.fan_out else {}
            result = await state.toolkit.arun(tool, arguments, progress=progress, **extra)
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
        for name, info in spec.request_model.model_fields.items()
    ]
    parameters.append(inspect.Parameter("gar_mcp_context", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    returns = Annotated[CallToolResult, output_model(spec)]
    run_tool.__name__ = run_tool.__qualname__ = tool
    run_tool.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
    run_tool.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": returns}
    return run_tool


def mcp_tool(spec: ToolSpec, policy: ImagePolicy | None = None) -> Tool:
    """The MCP tool of ``spec``: the request model's schema, arguments validated by the request model only."""
    tool = Tool.from_function(
        _tool_function(spec),
        name=spec.name,
        title=spec.title,
        description=tool_description(spec.name, policy, limit=4000),
        annotations=ToolAnnotations.model_validate({"title": spec.title, **spec.annotations}),
        meta=ui_tool_meta(),
    )
    metadata = _RequestModelArguments(
        arg_model=tool.fn_metadata.arg_model,
        output_schema=tool.fn_metadata.output_schema,
        output_model=tool.fn_metadata.output_model,
        wrap_output=tool.fn_metadata.wrap_output,
    )
    return tool.model_copy(update={"fn_metadata": metadata})


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
    running: dict[str, GarServerState] = {}  # the lifespan's state, for the /ui routes (HTTP transport)

    @asynccontextmanager
    async def lifespan(server: MCPServer[GarServerState]) -> AsyncIterator[GarServerState]:
        if engine_factory is not None:
            engine = engine_factory()
        else:
            if settings.engine == "local":
                tune_allocator()  # this process holds the model: keep its resident memory flat (engine/allocator.py)
            engine = make_engine(
                settings.engine,
                model=settings.model,
                policy=policy,
                token=settings.worker_token,
                **settings.engine_kwargs,
            )
        state = GarServerState(toolkit=GarToolkit(engine), settings=settings)
        running["state"] = state
        if settings.preload:  # in the background: the server answers `initialize` while a model loads
            state.loader = asyncio.create_task(engine.start())
            state.loader.add_done_callback(_log_load_failure)
        try:
            yield state
        finally:
            running.pop("state", None)
            await state.toolkit.aclose()  # lets a model load still running on the model thread finish

    server: MCPServer[GarServerState] = MCPServer(
        "gar-tools",
        tools=[mcp_tool(spec, policy) for spec in tools()],
        title="GAR region tools",
        description="Describe, compare and ask about image regions with GAR (Grasp Any Region).",
        instructions=INSTRUCTIONS,
        version=__version__,
        lifespan=lifespan,
        log_level="WARNING",
    )
    _add_resources(server, policy)
    _add_ui(server, lambda: running.get("state"), token_required=bool(settings.token))
    return server


def _add_ui(
    server: MCPServer[GarServerState], state_of: Callable[[], GarServerState | None], *, token_required: bool
) -> None:
    """The region picker: the ``ui://`` MCP App resource, and ``/ui`` routes for the HTTP transport."""

    @server.resource(
        UI_RESOURCE_URI,
        name="region_picker",
        title="GAR region picker",
        description="Draw regions on an image and run the GAR tools on them (an MCP App for hosts that show them).",
        mime_type=UI_MIME_TYPE,
        meta=ui_resource_meta(),
    )
    def region_picker() -> str:
        """The region picker page; it calls the tools through the host (MCP Apps), never over the network."""
        return page_html("mcp-app")

    def engine_of(request: object) -> Engine | None:
        state = state_of()
        return state.toolkit.engine if state is not None else None

    routes = [*ui_routes(engine_of, api="/ui/v1", token_required=token_required), *tool_routes(engine_of, api="/ui/v1")]
    for route in routes:
        server.custom_route(route.path, methods=sorted((route.methods or set()) - {"HEAD"}))(route.endpoint)


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
        """Ask the assistant to run each tool on the bundled example images."""
        steps = "".join(
            f"{k}. {tool} with the arguments {json.dumps(arguments)}.\n"
            for k, (tool, arguments) in enumerate(example_calls().items(), start=1)
        )
        return (
            "Try the GAR region tools on the bundled examples:\n"
            + steps
            + f"Summarize each answer. If a result says tiny_model is true, say so: {TINY_MODEL_NOTE}"
        )


def run_server(settings: ServeSettings) -> None:
    """Run the MCP server until interrupted (``gar-tools serve``), over stdio or streamable HTTP.

    Prints one line to stderr once it serves: the URL (HTTP) or ``stdio``, the engine, the model and whether a
    token is required.
    """
    server = create_server(settings)
    engine = settings.engine if settings.engine.strip().lower() != "local" else "local"
    model = f"model {settings.model}" if engine == "local" else "model served by the worker"
    if settings.transport == "stdio":
        print(f"gar-tools: the MCP server serves over stdio (engine {engine}, {model})", file=sys.stderr, flush=True)
        server.run("stdio")
        return
    worker = None if engine == "local" else engine
    app = http_app(
        server,
        host=settings.host,
        token=settings.token,
        path=settings.path,
        worker_url=worker,
        body_timeout_s=settings.body_timeout_s,
        chunk_timeout_s=settings.chunk_timeout_s,
    )
    serve_app(
        app,
        host=settings.host,
        port=settings.port,
        token=settings.token,
        what="the MCP server",
        path=settings.path,
        details=f"engine {engine}, {model}",
        header_timeout_s=settings.header_timeout_s,
    )


async def worker_health(url: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """Whether the worker at ``url`` answers its ``/healthz``: ``{"worker": "ok" | "unreachable", ...}``."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(f"{url.rstrip('/')}/healthz")
    except httpx.HTTPError as exc:
        return {"worker": "unreachable", "worker_url": url, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if response.status_code != 200:
        return {"worker": "unreachable", "worker_url": url, "error": f"HTTP {response.status_code}"}
    return {"worker": "ok", "worker_url": url}


def http_app(
    server: MCPServer[GarServerState],
    *,
    host: str = "127.0.0.1",
    token: str | None = None,
    path: str = "/mcp",
    worker_url: str | None = None,
    body_timeout_s: float | None = 30.0,
    chunk_timeout_s: float | None = 10.0,
) -> ASGIApp:
    """The streamable-HTTP ASGI app of ``server`` at ``path``, with ``GET /healthz`` and the region picker at
    ``GET /ui``; bearer token if given.

    With a token, every request but ``/healthz`` and the ``/ui`` page needs ``Authorization: Bearer <token>`` (401
    otherwise). With ``worker_url`` (a front-end of a ``gar-tools worker``), ``/healthz`` also reports whether the
    worker answers: ``503`` with ``"worker": "unreachable"`` when it does not. Request bodies must arrive within the
    body timeouts (408 otherwise); the SDK checks ``Host``, ``Origin``, content type and body size.
    """
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> JSONResponse:
        if worker_url is None:
            return JSONResponse({"status": "ok", "engine": "local"})
        worker = await worker_health(worker_url)
        healthy = worker["worker"] == "ok"
        return JSONResponse(
            {"status": "ok" if healthy else "degraded", "engine": "http", **worker}, status_code=200 if healthy else 503
        )

    app: ASGIApp = server.streamable_http_app(streamable_http_path=path, host=host)
    app = RequestLimitsMiddleware(app, body_timeout_s=body_timeout_s, chunk_timeout_s=chunk_timeout_s)
    if token:
        app = BearerTokenMiddleware(app, token, open_paths={"/healthz", *UI_OPEN_PATHS})
    return app
