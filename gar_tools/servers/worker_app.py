"""The GAR worker: the local engine behind an HTTP API, shared by many front-ends (``gar-tools worker``).

Endpoints (JSON in and out, the same pydantic models as the Python API), one pair per registered tool
(:mod:`gar_tools.tools`)::

    POST /v1/{tool}                   the tool's request model   -> its result model
                                      (describe_region, compare_regions, answer_about_regions, …)
    POST /v1/{tool}/stream            the same request -> server-sent events: ``text`` events as tokens come
                                      ({"delta": new text, "progress": tokens so far, "total": max_new_tokens}),
                                      then one ``result`` (the result model) or ``error`` event. A fan-out tool
                                      (describe_regions) sends instead one ``region`` event per region as it
                                      finishes (a RegionDescription) and a ``progress`` event after each
                                      ({"done": k, "total": N, "message": "k of N regions done"}).
    GET  /v1/model                    ModelInfo
    GET  /healthz                     {"status": "ok", ...}  (no token needed)
    GET  /ui, /ui/...                 the region picker page (no token needed for the page itself) and its small
                                      JSON routes (:mod:`gar_tools.servers.ui`)

Errors are ``{"error": {"type", "message", "field", "reason"}}`` with status 422 for input the caller can fix
(``InputError``, ``ImageError``, ``RegionError``), 400 for a body that is not a JSON object (or is nested too
deeply), 404 for an unknown tool or route, 405 for a wrong method, 408 for a body that arrives too slowly, 413 for
one over the size limit, 415 for one that is not ``application/json``, 421/403 for a ``Host``/``Origin`` not
allowed, 503 with ``Retry-After`` when the engine's queue is full (``EngineBusyError``), 500 for model or engine
failures, and 401 without the bearer token when one is configured. The model is loaded once, at startup
(``/healthz`` answers once it is ready); concurrent requests are batched by the engine's decode loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from gar_tools.engine import Engine, make_engine
from gar_tools.engine.allocator import tune_allocator
from gar_tools.engine.http import error_payload
from gar_tools.errors import CheckpointError, EngineBusyError, EngineError, GarToolsError, InputError
from gar_tools.inputs import ToolRequest
from gar_tools.results import RegionDescription
from gar_tools.servers.common import (
    LOOPBACK_HOSTS,
    LOOPBACK_ORIGINS,
    BearerTokenMiddleware,
    HostOriginMiddleware,
    RequestLimitsMiddleware,
    is_loopback,
    serve_app,
)
from gar_tools.servers.settings import WorkerSettings, default_max_body_bytes
from gar_tools.servers.ui import UI_OPEN_PATHS, ui_routes
from gar_tools.toolkit import coerce_request
from gar_tools.tools import ToolName, get_tool

__all__ = ["create_worker_app", "error_status", "run_worker"]

logger = logging.getLogger("gar_tools.worker")


def error_status(exc: GarToolsError) -> int:
    """HTTP status for an error: 422 caller-fixable input, 503 busy, 500 model/engine failure, 400 anything else."""
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, EngineBusyError):
        return 503
    if isinstance(exc, (CheckpointError, EngineError)):
        return 500
    return 400


def _error_response(exc: GarToolsError, status: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))} if isinstance(exc, EngineBusyError) else None
    return JSONResponse(error_payload(exc), status_code=status or error_status(exc), headers=headers)


def _internal_error(exc: Exception) -> EngineError:
    logger.exception("worker request failed", exc_info=exc)
    return EngineError(f"the worker failed while running the request: {type(exc).__name__}: {exc}")


def _engine(request: Request) -> Engine:
    return request.state.engine


async def _parse(request: Request) -> tuple[ToolName, ToolRequest] | JSONResponse:
    """The tool and validated request model, or the error response to send."""
    tool = request.path_params["tool"]
    try:
        get_tool(tool)
    except InputError as exc:
        return _error_response(exc, 404)
    try:
        payload = json.loads(await request.body())
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        why = "is nested too deeply" if isinstance(exc, RecursionError) else "is not valid JSON"
        return _error_response(InputError(f"the request body {why}", field="body"), 400)
    if not isinstance(payload, dict):
        return _error_response(InputError("the request body must be a JSON object", field="body"), 400)
    try:
        return tool, coerce_request(tool, payload)
    except InputError as exc:
        return _error_response(exc)
    except RecursionError:
        return _error_response(InputError("the request is nested too deeply", field="body"), 400)


async def _run_tool(request: Request) -> Response:
    parsed = await _parse(request)
    if isinstance(parsed, Response):
        return parsed
    tool, tool_request = parsed
    try:
        result = await _engine(request).run(tool, tool_request)
    except GarToolsError as exc:
        return _error_response(exc)
    except Exception as exc:  # noqa: BLE001 - the worker must answer every request, with the reason
        return _error_response(_internal_error(exc))
    return Response(result.model_dump_json(), media_type="application/json")


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _stream_tool(request: Request) -> Response:
    parsed = await _parse(request)
    if isinstance(parsed, Response):
        return parsed
    tool, tool_request = parsed
    engine = _engine(request)
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    fan_out = get_tool(tool).fan_out

    async def progress(done: float, total: float | None, delta: str | None) -> None:
        if fan_out:
            queue.put_nowait(("progress", {"done": done, "total": total, "message": delta or ""}))
        else:
            queue.put_nowait(("text", {"delta": delta or "", "progress": done, "total": total}))

    async def on_item(item: RegionDescription) -> None:
        queue.put_nowait(("region", item.model_dump(mode="json")))

    async def produce() -> None:
        try:
            if fan_out:
                result = await engine.run(tool, tool_request, progress, on_item)
            else:
                result = await engine.run(tool, tool_request, progress)
        except GarToolsError as exc:
            queue.put_nowait(("error", error_payload(exc)))
        except Exception as exc:  # noqa: BLE001 - reported to the client as an error event
            queue.put_nowait(("error", error_payload(_internal_error(exc))))
        else:
            queue.put_nowait(("result", result.model_dump(mode="json")))

    async def events() -> AsyncIterator[str]:
        task = asyncio.create_task(produce())
        try:
            while True:
                event, data = await queue.get()
                yield _sse(event, data)
                if event not in ("text", "progress", "region"):
                    return
        finally:
            if not task.done():  # the client went away: stop waiting (the model thread finishes its step)
                task.cancel()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _model(request: Request) -> Response:
    info = await _engine(request).info()
    return Response(info.model_dump_json(), media_type="application/json")


async def _healthz(request: Request) -> Response:
    info = await _engine(request).info()
    return JSONResponse({"status": "ok", "model": info.model, "loaded": info.loaded, "tiny_model": info.tiny_model})


_HTTP_ERROR_TYPES = {404: "NotFound", 405: "MethodNotAllowed"}


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route, wrong method) in the worker's JSON error format."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    error_type = _HTTP_ERROR_TYPES.get(status, "HTTPError")
    message = f"{request.method} {request.url.path}: {exc.detail if isinstance(exc, HTTPException) else exc}"
    if status == 404:
        message += "; the worker serves POST /v1/{tool}[/stream], GET /v1/model and GET /healthz"
    body = {"error": {"type": error_type, "message": message, "field": None, "reason": None}}
    return JSONResponse(body, status_code=status, headers=getattr(exc, "headers", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error_response(_internal_error(exc))


def create_worker_app(
    settings: WorkerSettings | None = None, *, engine_factory: Callable[[], Engine] | None = None
) -> ASGIApp:
    """The worker's ASGI app; run it with uvicorn (:func:`run_worker` does).

    Args:
        settings: model, image policy, engine options, token, preload (default: the tiny model — random weights,
            meaningless text —, bundled examples only, no token).
        engine_factory: builds the engine when the app starts instead of a local engine of ``settings.model``
            (e.g. over an already loaded pipeline, in tests).

    With a token, every endpoint but ``/healthz`` and the ``/ui`` page requires ``Authorization: Bearer <token>``.
    Every request is checked first (this is where the hardening lives, for every server that runs this app, Ray Serve
    included): ``Host`` and ``Origin`` against the allow-lists (421/403), then the token (401), then the body: ``POST``
    bodies must be ``application/json`` (415), at most ``settings.max_body_bytes`` (413) and arrive within the
    body timeouts (408). Every error, malformed or too deeply nested JSON and unexpected failures included, is
    answered in the JSON error format.
    """
    settings = settings or WorkerSettings()

    def build() -> Engine:
        if engine_factory is not None:
            return engine_factory()
        tune_allocator()  # this process holds the model: keep its resident memory flat (engine/allocator.py)
        return make_engine("local", model=settings.model, policy=settings.policy, **settings.engine_kwargs)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = build()
        try:
            if settings.preload:
                await engine.start()
            yield {"engine": engine}
        finally:
            await engine.aclose()

    routes = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/v1/model", _model, methods=["GET"]),
        Route("/v1/{tool}", _run_tool, methods=["POST"]),
        Route("/v1/{tool}/stream", _stream_tool, methods=["POST"]),
        *ui_routes(_engine, api="/v1", token_required=bool(settings.token)),
    ]
    app: ASGIApp = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    app = RequestLimitsMiddleware(
        app,
        max_body_bytes=settings.max_body_bytes or default_max_body_bytes(settings.policy),
        body_timeout_s=settings.body_timeout_s,
        chunk_timeout_s=settings.chunk_timeout_s,
        require_json=True,
    )
    if settings.token:
        app = BearerTokenMiddleware(app, settings.token, open_paths={"/healthz", *UI_OPEN_PATHS})
    hosts = settings.allowed_hosts
    if hosts is None and is_loopback(settings.host):
        hosts = LOOPBACK_HOSTS
    return HostOriginMiddleware(app, allowed_hosts=hosts, allowed_origins=settings.allowed_origins or LOOPBACK_ORIGINS)


def run_worker(settings: WorkerSettings) -> None:
    """Run the worker until interrupted (``gar-tools worker``); prints one line with its URL once it listens."""
    app = create_worker_app(settings)
    serve_app(
        app,
        host=settings.host,
        port=settings.port,
        token=settings.token,
        what="the worker",
        details=f"engine local, model {settings.model}",
        header_timeout_s=settings.header_timeout_s,
    )
