"""The ray engine: calls the GAR worker deployment (:mod:`gar_tools.servers.ray_app`) through a ``DeploymentHandle``.

For processes inside the Ray cluster — an MCP front-end running as its own deployment, or a driver that joined the
cluster — that should reach the replicas without going through the HTTP proxy. Like the http engine, it reads local
images and masks here, under this process's :class:`~gar_tools.images.ImagePolicy`, and sends them inline; the
replicas answer with the worker's JSON results and error payloads, which come back as the same result models and
the same exception classes (message and ``field`` included) as the local engine gives.

Needs ``pip install 'gar-tools[ray]'``; this module and ``gar_tools.servers.ray_app`` are the only ones that import
``ray``.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

from gar_tools.engine.base import Engine, Progress
from gar_tools.engine.http import error_from_payload, inline_request
from gar_tools.errors import EngineError, GarToolsError, InputError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import ToolRequest
from gar_tools.results import ModelInfo, ToolResult
from gar_tools.tools import ToolName, get_tool

__all__ = ["DEFAULT_APP", "RayEngine", "parse_ray_spec"]

DEFAULT_APP = "gar"
"""The Serve application ``--engine ray`` calls (the name ``gar-tools ray-serve`` deploys under)."""


def parse_ray_spec(spec: str) -> str | None:
    """The application name in an engine spec ``ray`` / ``ray://<app>``, or None when ``spec`` is not one."""
    text = spec.strip()
    if text.lower() == "ray":
        return DEFAULT_APP
    if text.lower().startswith("ray://"):
        app = text[len("ray://") :].strip("/")
        if not app or "/" in app or ":" in app:
            raise InputError(
                f"expected ray://<application name> (e.g. ray://{DEFAULT_APP}), got {spec!r}; to reach the "
                "deployment from outside the cluster use its HTTP ingress, http://<ray-host>:<port>",
                field="engine",
            )
        return app
    return None


class RayEngine(Engine):
    """Runs requests on the replicas of a GAR Serve application, through its deployment handle.

    Args:
        app: the Serve application name (``gar-tools ray-serve --name``, default ``gar``).
        policy: what local images and masks this process may read and inline (allowed folders, URLs, limits).
        address: the cluster to join when this process is not connected to Ray yet (default: ``RAY_ADDRESS``, else
            ``"auto"``, the cluster ``ray start`` made on this machine). Inside a deployment Ray is connected.
        timeout_s: the longest one request may take, in seconds (None: no limit).
    """

    def __init__(
        self,
        app: str = DEFAULT_APP,
        *,
        policy: ImagePolicy | None = None,
        address: str | None = None,
        timeout_s: float | None = 600.0,
    ) -> None:
        try:
            import ray
            from ray import serve
        except ImportError as exc:
            raise EngineError("the ray engine needs Ray Serve: pip install 'gar-tools[ray]'") from exc
        self._ray, self._serve = ray, serve
        self.app = app
        self.policy = policy or ImagePolicy()
        self.address = address
        self.timeout_s = timeout_s
        self._handle: Any = None
        self._connect_lock = threading.Lock()  # start() and a first request may both connect

    def __repr__(self) -> str:
        return f"RayEngine({self.app!r})"

    # --- plumbing ------------------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        """The application's ingress handle (joins the cluster first if needed). Blocking: run it off the loop."""
        with self._connect_lock:
            if self._handle is not None:
                return self._handle
            if not self._ray.is_initialized():
                address = self.address or os.environ.get("RAY_ADDRESS") or "auto"
                try:
                    self._ray.init(address=address, log_to_driver=False)
                except Exception as exc:  # noqa: BLE001 - no cluster there, version mismatch, …
                    raise EngineError(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
            try:
                self._handle = self._serve.get_app_handle(self.app)
            except Exception as exc:  # noqa: BLE001 - Ray raises several types for a missing application
                raise EngineError(f"no Ray Serve application named {self.app!r} is running: {exc}") from exc
            return self._handle

    async def _handle_async(self) -> Any:
        if self._handle is not None:
            return self._handle
        return await asyncio.to_thread(self._connect)

    def _failed(self, exc: Exception) -> EngineError:
        if isinstance(exc, TimeoutError):
            return EngineError(f"the GAR application {self.app!r} did not answer within {self.timeout_s} s")
        return EngineError(f"the GAR application {self.app!r} failed: {type(exc).__name__}: {exc}")

    def _unwrap(self, reply: Any) -> Any:
        if isinstance(reply, dict) and "error" in reply:
            raise error_from_payload(reply, url=f"ray://{self.app}")
        if not isinstance(reply, dict) or "result" not in reply:
            raise EngineError(f"the GAR application {self.app!r} sent an unexpected reply: {reply!r:.300}")
        return reply["result"]

    # --- Engine --------------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Join the cluster and find the application now rather than on the first request."""
        await self._handle_async()

    async def run(self, tool: ToolName, request: ToolRequest, progress: Progress | None = None) -> ToolResult:
        result_model = get_tool(tool).result_model
        body = await asyncio.to_thread(inline_request, tool, request, self.policy)
        handle = await self._handle_async()
        try:
            if progress is None:
                payload = self._unwrap(await asyncio.wait_for(handle.run_tool.remote(tool, body), self.timeout_s))
            else:
                payload = await asyncio.wait_for(self._stream(handle, tool, body, progress), self.timeout_s)
        except GarToolsError:
            raise
        except Exception as exc:  # noqa: BLE001 - replica died, timeout, …: an engine failure naming the app
            raise self._failed(exc) from exc
        try:
            return result_model.model_validate(payload)
        except ValueError as exc:
            raise EngineError(f"the GAR application {self.app!r} sent a malformed {tool} result: {exc}") from exc

    async def _stream(self, handle: Any, tool: ToolName, body: dict[str, Any], progress: Progress) -> Any:
        async for event, data in handle.options(stream=True).stream_tool.remote(tool, body):
            if event == "progress" and isinstance(data, dict):
                await progress(float(data.get("progress", 0)), data.get("total"), data.get("message"))
            elif event == "result":
                return data
            elif event == "error":
                raise error_from_payload(data, url=f"ray://{self.app}")
        raise EngineError(f"the GAR application {self.app!r} ended the stream without a result")

    async def info(self) -> ModelInfo:
        handle = await self._handle_async()
        try:
            data = await asyncio.wait_for(handle.model_info.remote(), self.timeout_s)
        except Exception as exc:  # noqa: BLE001
            raise self._failed(exc) from exc
        return ModelInfo.model_validate(data)
