"""The http engine: a client of a ``gar-tools worker`` that holds the model.

Many front-ends (MCP servers, agents) can share one GPU worker this way; they hold no model themselves. The
request and result models travel as JSON (see :mod:`gar_tools.servers.worker_app` for the API).

Images and masks given as local paths (or URLs) are read here, on the front-end side, under the front-end's
:class:`~gar_tools.images.ImagePolicy`, and sent inline as ``data:`` URIs, so the worker never needs to see the
front-end's filesystem and the front-end's allowed folders are what count. Errors the worker reports come back as
the same exception classes, with the same message and ``field``, as the local engine raises; a worker that cannot
be reached is an :class:`~gar_tools.errors.EngineError` naming its URL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from gar_tools.engine.base import Engine, ItemCallback, Progress
from gar_tools.errors import (
    CheckpointError,
    EngineBusyError,
    EngineError,
    GarToolsError,
    ImageError,
    InputError,
    RegionError,
)
from gar_tools.images import ImagePolicy, read_source_bytes
from gar_tools.inputs import ToolRequest
from gar_tools.regions import mask_read_error
from gar_tools.results import ModelInfo, RegionDescription, ToolResult
from gar_tools.tools import ToolName, get_tool

if TYPE_CHECKING:
    import httpx

__all__ = ["HttpEngine", "error_from_payload", "error_payload", "inline_request"]

_ERROR_TYPES: dict[str, type[GarToolsError]] = {
    cls.__name__: cls
    for cls in (GarToolsError, InputError, ImageError, RegionError, CheckpointError, EngineError, EngineBusyError)
}
_MIME_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


# --- the JSON error contract shared with the worker ------------------------------------------------------------------


def error_payload(exc: GarToolsError) -> dict[str, Any]:
    """The worker's JSON body for an error: ``{"error": {"type", "message", "field", "reason"}}``.

    ``message`` is ``str(exc)`` (``field: reason`` for input errors); ``field`` and ``reason`` are null for errors
    that are not about a field of the request.
    """
    field, reason = (exc.field, exc.reason) if isinstance(exc, InputError) else (None, str(exc))
    error: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "field": field, "reason": reason}
    if isinstance(exc, EngineBusyError):
        error["retry_after_s"] = exc.retry_after_s
    return {"error": error}


def error_from_payload(payload: Any, *, status: int | None = None, url: str = "") -> GarToolsError:
    """Rebuild the exception a worker reported, so callers see the same class, message and ``field``.

    Unknown types and malformed bodies become :class:`~gar_tools.errors.EngineError`.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        where = f" (HTTP {status})" if status is not None else ""
        return EngineError(f"the GAR worker at {url} answered with an unexpected error{where}: {payload!r:.300}")
    cls = _ERROR_TYPES.get(str(error.get("type")))
    message = error["message"]
    if cls is None:
        return EngineError(f"the GAR worker at {url} failed: {message}")
    if issubclass(cls, InputError):
        field, reason = error.get("field"), error.get("reason")
        if not isinstance(reason, str):  # a worker that sends no reason: the message is all there is
            field, reason = None, message
        return cls(reason, field=field if isinstance(field, str) else None)
    if cls is EngineBusyError:
        retry = error.get("retry_after_s")
        return EngineBusyError(message, retry_after_s=float(retry) if isinstance(retry, (int, float)) else 1.0)
    return cls(message)


# --- inlining local sources ------------------------------------------------------------------------------------------


def _data_uri(data: bytes) -> str:
    mime = next((m for magic, m in _MIME_MAGIC if data.startswith(magic)), None)
    if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    return f"data:{mime or 'application/octet-stream'};base64,{base64.b64encode(data).decode('ascii')}"


def inline_request(tool: ToolName, request: ToolRequest, policy: ImagePolicy) -> dict[str, Any]:
    """The request as JSON-ready data with the image and every mask inlined as a ``data:`` URI.

    Sources are read under ``policy`` (allowed folders, URL permission, size limits) exactly as the local engine
    would read them, and errors name the same fields. Blocking (file and network I/O): run it off the event loop.
    """
    spec = get_tool(tool)
    data = request.model_dump(mode="json", exclude_none=True)
    data["image"] = _data_uri(read_source_bytes(request.image, policy, field="image"))
    regions = spec.regions(request)
    items = [data[spec.regions_field]] if spec.single_region else data[spec.regions_field]
    if isinstance(items, str):  # regions: "auto" (describe_regions): nothing to inline
        items = []
    names = [spec.region_field(i) for i in range(len(regions))]
    for index, (region, item, name) in enumerate(zip(regions, items, names, strict=True)):
        if region.mask is None:
            continue
        field = f"{name}.mask"
        try:
            item["mask"] = _data_uri(read_source_bytes(region.mask, policy, field=field))
        except ImageError as exc:
            raise mask_read_error(exc, field, region.id or f"r{index}") from exc
    return data


# --- the engine ------------------------------------------------------------------------------------------------------


class HttpEngine(Engine):
    """Runs requests on a remote ``gar-tools worker``.

    Args:
        url: the worker's base URL, e.g. ``http://127.0.0.1:8001``.
        token: bearer token the worker expects (``gar-tools worker --token-env``), if any.
        policy: what local images and masks this front-end may read and inline (allowed folders, URLs, limits).
        timeout_s: the longest one request may take, in seconds (None: no limit). Generation of long texts on a
            busy worker can take minutes.
        connect_timeout_s: how long to wait for a connection to the worker.

    The engine keeps one HTTP connection pool per event loop, so it works from the toolkit's sync API and from
    async callers alike. It needs ``httpx`` (``pip install 'gar-tools[server]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        policy: ImagePolicy | None = None,
        timeout_s: float | None = 600.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise InputError(f"worker URL must start with http:// or https://, got {url!r}", field="engine")
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - httpx comes with the server and mcp extras
            raise EngineError("the http engine needs httpx: pip install 'gar-tools[server]'") from exc
        self._httpx = httpx
        self.url = url.rstrip("/")
        self.policy = policy or ImagePolicy()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"HttpEngine({self.url!r})"

    # --- plumbing ------------------------------------------------------------------------------------------------
    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._httpx.AsyncClient(base_url=self.url, headers=self._headers, timeout=self._timeout)
            self._clients[loop] = client
        return client

    def _unreachable(self, exc: httpx.HTTPError) -> EngineError:
        if isinstance(exc, self._httpx.TimeoutException):
            return EngineError(f"the GAR worker at {self.url} did not answer in time ({type(exc).__name__})")
        return EngineError(f"cannot reach the GAR worker at {self.url}: {type(exc).__name__}: {exc}")

    def _raise_for_error(self, status: int, body: bytes) -> None:
        if status < 400:
            return
        try:
            payload = json.loads(body)
        except ValueError:
            payload = body.decode("utf-8", "replace")
        if status == 401:
            raise EngineError(
                f"the GAR worker at {self.url} rejected the request as unauthorized (HTTP 401); "
                "check the worker token (serve --worker-token-env)"
            )
        raise error_from_payload(payload, status=status, url=self.url)

    # --- Engine --------------------------------------------------------------------------------------------------
    async def run(
        self,
        tool: ToolName,
        request: ToolRequest,
        progress: Progress | None = None,
        on_item: ItemCallback | None = None,
    ) -> ToolResult:
        result_model = get_tool(tool).result_model
        body = await asyncio.to_thread(inline_request, tool, request, self.policy)
        if progress is None and on_item is None:
            payload = await self._post(f"/v1/{tool}", body)
        else:
            payload = await self._post_streaming(f"/v1/{tool}/stream", body, progress, on_item)
        try:
            return result_model.model_validate(payload)
        except ValueError as exc:
            raise EngineError(f"the GAR worker at {self.url} sent a malformed {tool} result: {exc}") from exc

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = await self._client().post(path, json=body)
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._raise_for_error(response.status_code, response.content)
        try:
            return response.json()
        except ValueError as exc:
            raise EngineError(f"the GAR worker at {self.url} sent a body that is not JSON") from exc

    async def _post_streaming(
        self, path: str, body: dict[str, Any], progress: Progress | None, on_item: ItemCallback | None = None
    ) -> Any:
        try:
            async with self._client().stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    self._raise_for_error(response.status_code, await response.aread())
                async for event, data in _sse_events(response.aiter_lines()):
                    if event == "text" and isinstance(data, dict) and progress is not None:
                        await progress(float(data.get("progress", 0)), data.get("total"), str(data.get("delta", "")))
                    elif event == "progress" and isinstance(data, dict) and progress is not None:
                        await progress(float(data.get("done", 0)), data.get("total"), str(data.get("message", "")))
                    elif event == "region" and on_item is not None:
                        try:
                            item = RegionDescription.model_validate(data)
                        except ValueError as exc:
                            raise EngineError(f"the GAR worker at {self.url} sent a malformed region: {exc}") from exc
                        await on_item(item)
                    elif event == "result":
                        return data
                    elif event == "error":
                        raise error_from_payload(data, url=self.url)
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        raise EngineError(f"the GAR worker at {self.url} closed the stream without a result")

    async def segment(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The worker's segmenter preview (``POST /ui/segment``); a local image path is read here and sent inline."""
        body = dict(request)
        if isinstance(body.get("image"), str):
            body["image"] = _data_uri(
                await asyncio.to_thread(read_source_bytes, body["image"], self.policy, field="image")
            )
        payload = await self._post("/ui/segment", body)
        if not isinstance(payload, dict):
            raise EngineError(f"the GAR worker at {self.url} sent a malformed segmentation")
        return payload

    async def info(self) -> ModelInfo:
        try:
            response = await self._client().get("/v1/model")
        except self._httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._raise_for_error(response.status_code, response.content)
        try:
            return ModelInfo.model_validate_json(response.content)
        except ValueError as exc:
            raise EngineError(f"the GAR worker at {self.url} sent malformed model info: {exc}") from exc

    async def aclose(self) -> None:
        current = asyncio.get_running_loop()
        clients, self._clients = dict(self._clients), weakref.WeakKeyDictionary()
        for loop, client in clients.items():
            if loop is current:
                await client.aclose()
            elif not loop.is_closed() and loop.is_running():
                asyncio.run_coroutine_threadsafe(client.aclose(), loop)


async def _sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    """``(event, data)`` pairs of a server-sent-events stream whose data lines are JSON."""
    event, data_lines = "message", []
    async for line in lines:
        if not line:
            if data_lines:
                try:
                    yield event, json.loads("\n".join(data_lines))
                except ValueError as exc:
                    raise EngineError(f"malformed event from the GAR worker: {exc}") from exc
            event, data_lines = "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data_lines.append(value)
