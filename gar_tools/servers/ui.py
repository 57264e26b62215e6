"""The region picker: one static page (``gar_tools/ui/``) served at ``GET /ui`` and as an MCP App.

The page is plain HTML/JS/CSS shipped as package data; :func:`page_html` inlines the script and the stylesheet into
one document, with a small JSON configuration (which transport, the tools from the registry, the bundled examples),
so the same document works

- over HTTP (``mode: "http"``), on ``gar-tools worker`` and ``gar-tools serve --transport http``: it calls
  ``{api}/{tool}/stream`` (the worker's server-sent-events contract) with the bearer token the user typed, and
  reads :func:`ui_routes`' ``/ui/config``, ``/ui/examples/{file}`` and ``/ui/segment``;
- as an MCP App (``mode: "mcp-app"``): the ``ui://`` resource of the MCP server; it talks to the host over
  ``postMessage`` JSON-RPC (``ui/initialize``, then ``tools/call`` and ``resources/read``), never over HTTP.

Routes (every one but ``GET /ui`` needs the bearer token when the server has one; the page itself holds no secret)::

    GET  /ui                       the page
    GET  /ui/config                {"mode", "api", "model": ModelInfo, "segmenter": bool, "tools": [...],
                                   "region_fields": the fields a region may have (``points``, ``segment`` once
                                   the server's Region model takes them)}
    GET  /ui/examples              the bundled examples: file names, region ids, ready-made arguments (no paths)
    GET  /ui/examples/{file}       one bundled example image or mask (PNG)
    POST /ui/segment               {"image", "points"?, "labels"?, "box"?} -> {"rle": COCO RLE, "score"}; 404 with a
                                   clear error when the server has no segmenter

An engine whose ``info()`` names a ``segmenter`` (``--segmenter``) answers ``Engine.segment(request)`` with
``{"rle", "score"}``; ``/ui/config`` then reports ``segmenter: true`` and the page offers mask previews for points
and boxes.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any, Literal

from gar_tools.catalog import ASSETS_DIR
from gar_tools.inputs import Region, ToolRequest
from gar_tools.regions import OVERLAY_PALETTE
from gar_tools.results import TINY_MODEL_NOTE
from gar_tools.tools import tools

__all__ = [
    "UI_MIME_TYPE",
    "UI_OPEN_PATHS",
    "UI_RESOURCE_URI",
    "example_manifest",
    "page_html",
    "tool_routes",
    "tool_catalog",
    "ui_resource_meta",
    "ui_routes",
    "ui_tool_meta",
]

UI_RESOURCE_URI = "ui://gar-tools/region-picker.html"
"""The MCP App resource of the region picker."""

UI_MIME_TYPE = "text/html;profile=mcp-app"
"""The MCP Apps mime type of an HTML view."""

UI_OPEN_PATHS = frozenset({"/ui"})
"""Paths served without the bearer token: only the page (the browser cannot send a header when navigating)."""

PAGE_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)
"""The HTTP page's content-security policy: its own inline script and style, images from data/blob, fetch to its
own origin only. Nothing is loaded from anywhere else."""

_EXAMPLES = (
    ("slipper", "demo_image_1.png", (("slipper", "demo_mask_1.png"),)),
    (
        "tennis",
        "demo_image_3.png",
        tuple((n, f"demo_mask_3_{i}.png") for i, n in enumerate(("person", "ball", "racket"))),
    ),
)
_COMMON_FIELDS = frozenset(ToolRequest.model_fields)


def _field_kind(annotation: Any) -> str:
    """How the page asks for a request field: ``list`` (one item a line), ``boolean``, ``number`` or ``text``."""
    kinds = [annotation, *typing.get_args(annotation)]
    if any(kind is list or typing.get_origin(kind) is list for kind in kinds):
        return "list"
    if bool in kinds:
        return "boolean"
    if any(kind in (int, float) for kind in kinds):
        return "number"
    return "text"


def tool_catalog() -> list[dict[str, Any]]:
    """What the page needs to know about every registered tool: name, title, regions, extra fields, CLI spelling."""
    catalog = []
    for spec in tools():
        fields = [
            {
                "name": name,
                "kind": _field_kind(info.annotation),
                "required": info.is_required(),
                "description": info.description or "",
            }
            for name, info in spec.request_model.model_fields.items()
            if name not in _COMMON_FIELDS and name != spec.regions_field
        ]
        catalog.append(
            {
                "name": spec.name,
                "title": spec.title,
                "regions_field": spec.regions_field,
                "single_region": spec.single_region,
                "min_regions": spec.min_regions,
                "max_regions": spec.max_regions,
                "fields": fields,
                "cli_command": spec.cli_command or spec.name,
                "cli_positionals": list(spec.cli_positionals),
                "cli_flags": dict(spec.cli_flags),
            }
        )
    return catalog


def example_manifest() -> list[dict[str, Any]]:
    """The bundled examples by file name (never a filesystem path) and a ready-made call on each."""
    from gar_tools.catalog import example_calls

    calls = example_calls()
    manifest = []
    for name, image, regions in _EXAMPLES:
        example_calls_here = []
        for tool, arguments in calls.items():
            if arguments["image"] != str(ASSETS_DIR / image):
                continue
            extra = {k: v for k, v in arguments.items() if k not in ("image", "region", "regions")}
            used = arguments.get("regions") or [arguments.get("region")]
            example_calls_here.append({"tool": tool, "arguments": extra, "regions": [r["id"] for r in used if r]})
        manifest.append(
            {
                "name": name,
                "image": image,
                "regions": [{"id": rid, "mask": mask} for rid, mask in regions],
                "calls": example_calls_here,
            }
        )
    return manifest


def _example_files() -> dict[str, str]:
    files = {}
    for _, image, regions in _EXAMPLES:
        files[image] = image
        files.update({mask: mask for _, mask in regions})
    return files


@cache
def _static(name: str) -> str:
    return resources.files("gar_tools").joinpath("ui", name).read_text(encoding="utf-8")


def page_html(mode: Literal["http", "mcp-app"], *, api: str = "/v1", token_required: bool = False) -> str:
    """The region picker as one self-contained HTML document (script, style and configuration inlined).

    Args:
        mode: ``"http"`` (calls ``{api}/{tool}/stream`` on its own origin) or ``"mcp-app"`` (calls tools through
            the MCP host over ``postMessage``).
        api: the base path of the tool routes in ``"http"`` mode.
        token_required: whether the server wants a bearer token (the page asks for it before its first request).
    """
    config = {
        "mode": mode,
        "api": api,
        "token_required": token_required,
        "tools": tool_catalog(),
        "region_fields": list(Region.model_fields),
        "examples": example_manifest(),
        "tiny_model_note": TINY_MODEL_NOTE,
        "examples_uri": "gar://examples/",
        "palette": [list(c) for c in OVERLAY_PALETTE],
    }
    # "</" never appears inside the inlined JSON, so it cannot close the script element.
    config_json = json.dumps(config).replace("</", "<\\/")
    html = _static("index.html")
    return (
        html.replace("/*GAR_STYLE*/", _static("app.css"))
        .replace("/*GAR_CONFIG*/", f"window.GAR_CONFIG = {config_json};")
        .replace("/*GAR_SCRIPT*/", _static("app.js"))
    )


def ui_tool_meta() -> dict[str, Any]:
    """The ``_meta`` of every tool: links it to the region picker for hosts that render MCP Apps."""
    return {"ui": {"resourceUri": UI_RESOURCE_URI}, "ui/resourceUri": UI_RESOURCE_URI}


def ui_resource_meta() -> dict[str, Any]:
    """The ``_meta`` of the ``ui://`` resource: a content-security policy that allows nothing outside the page."""
    return {"ui": {"csp": {"connectDomains": [], "resourceDomains": []}, "prefersBorder": True}}


# --- HTTP routes -----------------------------------------------------------------------------------------------------


def _error(status: int, kind: str, message: str, field: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"type": kind, "message": message, "field": field, "reason": message}}, status)


def ui_routes(engine_of: Callable[[Any], Any], *, api: str, token_required: bool = False) -> list[Any]:
    """The region picker's Starlette routes.

    Args:
        engine_of: ``request -> Engine`` (or None while the server is not ready) of the server serving them.
        api: the base path the page calls tools under (``/v1`` on the worker).
        token_required: whether the server checks a bearer token (the page then asks for it up front).
    """
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    files = _example_files()

    async def page(request: Request) -> Response:
        return HTMLResponse(
            page_html("http", api=api, token_required=token_required),
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    def engine_or_error(request: Request) -> Any:
        engine = engine_of(request)
        if engine is None:
            return None, _error(503, "EngineError", "the server is still starting; try again in a moment")
        return engine, None

    async def config(request: Request) -> Response:
        engine, error = engine_or_error(request)
        if error is not None:
            return error
        info = await engine.info()
        return JSONResponse(
            {
                "mode": "http",
                "api": api,
                "model": info.model_dump(mode="json"),
                "segmenter": info.segmenter is not None,
                "tools": tool_catalog(),
                "region_fields": list(Region.model_fields),
            }
        )

    async def examples(request: Request) -> Response:
        return JSONResponse(example_manifest())

    async def example_file(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in files:
            return _error(404, "InputError", f"no example file {name!r}; there are {', '.join(files)}", "file")
        return Response((ASSETS_DIR / files[name]).read_bytes(), media_type="image/png")

    async def segment(request: Request) -> Response:
        engine, error = engine_or_error(request)
        if error is not None:
            return error
        if (await engine.info()).segmenter is None:
            return _error(
                404,
                "NotConfigured",
                "this server has no segmenter configured: points and boxes are sent as they are (box as a filled "
                "rectangle); draw a mask with the brush or a polygon for a precise region",
            )
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return _error(400, "InputError", "the request body is not valid JSON", "body")
        if not isinstance(payload, dict):
            return _error(400, "InputError", "the request body must be a JSON object", "body")
        from gar_tools.errors import GarToolsError
        from gar_tools.servers.worker_app import error_status

        try:
            result = await engine.segment(payload)
        except GarToolsError as exc:
            return _error(error_status(exc), type(exc).__name__, str(exc), getattr(exc, "field", None))
        return JSONResponse(result)

    return [
        Route("/ui", page, methods=["GET"]),
        Route("/ui/config", config, methods=["GET"]),
        Route("/ui/examples", examples, methods=["GET"]),
        Route("/ui/examples/{file}", example_file, methods=["GET"]),
        Route("/ui/segment", segment, methods=["POST"]),
    ]


def tool_routes(engine_of: Callable[[Any], Any], *, api: str) -> list[Any]:
    """``POST {api}/{tool}`` and ``{api}/{tool}/stream`` with the worker's contract, over the engine of another
    server (the MCP HTTP server), so the page calls tools the same way wherever it is served."""
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from gar_tools.servers import worker_app

    def with_engine(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            engine = engine_of(request)
            if engine is None:
                return _error(503, "EngineError", "the server is still starting; try again in a moment")
            request.state.engine = engine
            return await handler(request)

        return endpoint

    return [
        Route(f"{api}/{{tool}}", with_engine(worker_app._run_tool), methods=["POST"]),
        Route(f"{api}/{{tool}}/stream", with_engine(worker_app._stream_tool), methods=["POST"]),
    ]
