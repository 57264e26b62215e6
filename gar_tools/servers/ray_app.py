"""The GAR worker as a Ray Serve application: replicas across GPUs and machines, the same wire contract.

Each replica of the :class:`GarWorker` deployment holds one :class:`~gar_tools.engine.local.LocalEngine` (the
engine's own scheduler does the batching, so ``max_ongoing_requests`` is set high enough to keep it fed) and serves
two ways:

- **HTTP**, through Ray Serve's proxy: the replica's ASGI app *is* the worker app
  (:func:`gar_tools.servers.worker_app.create_worker_app` over the replica's engine), so ``POST /v1/{tool}``,
  ``POST /v1/{tool}/stream`` (SSE), ``GET /v1/model``, ``GET /healthz``, the bearer token, the error payloads and
  the status codes are exactly the worker's; :class:`~gar_tools.engine.http.HttpEngine` and
  ``gar-tools serve --engine http://<ray-host>:<port>`` work unchanged. Every response names the replica that
  answered in the :data:`REPLICA_HEADER` header.
- **Deployment handle**, for processes inside the Ray cluster (:class:`~gar_tools.engine.ray.RayEngine`):
  :meth:`GarWorker.run_tool`, :meth:`GarWorker.stream_tool` and :meth:`GarWorker.model_info` take and return the
  same JSON-ready data as the HTTP API (errors as the worker's error payload, never as exceptions).

Replicas ask for ``num_gpus`` each (fractions allowed) and run as a fixed number or autoscale between
``min_replicas`` and ``max_replicas``. Start it with ``gar-tools ray-serve`` (:func:`run_ray_serve`) or a Serve
config file whose ``import_path`` is ``gar_tools.servers.ray_app:app_builder`` (``examples/ray_serve.yaml``).

Only this module and :mod:`gar_tools.engine.ray` import ``ray`` (``pip install 'gar-tools[ray]'``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gar_tools.engine import Engine, make_engine
from gar_tools.engine.allocator import tune_allocator
from gar_tools.engine.http import error_payload
from gar_tools.errors import EngineError, GarToolsError, InputError
from gar_tools.servers.common import is_loopback
from gar_tools.servers.settings import (
    ENGINE_OPTIONS,
    WorkerSettings,
    local_engine_kwargs,
    parse_bool,
    server_policy,
    token_from_env,
)
from gar_tools.servers.worker_app import create_worker_app
from gar_tools.toolkit import coerce_request

__all__ = [
    "DEFAULT_APP_NAME",
    "DEFAULT_MAX_ONGOING_REQUESTS",
    "REPLICA_HEADER",
    "GarWorker",
    "RayServeSettings",
    "app_builder",
    "build_app",
    "parse_autoscale",
    "run_ray_serve",
]

logger = logging.getLogger("gar_tools.ray")

DEFAULT_APP_NAME = "gar"
"""The Serve application name ``gar-tools ray-serve`` deploys, and the one ``--engine ray`` calls."""

DEFAULT_MAX_ONGOING_REQUESTS = 64
"""Requests one replica accepts at once (Ray's default of 5 would starve the engine's batching)."""

REPLICA_HEADER = "x-gar-replica"
"""Response header naming the replica that answered (its Ray Serve replica id)."""


@dataclass(frozen=True)
class RayServeSettings:
    """How ``gar-tools ray-serve`` runs the worker on Ray Serve.

    Attributes:
        worker: what every replica serves (model, image policy, engine options, token); its ``host`` and ``port``
            are where Ray Serve's HTTP proxy listens.
        replicas: a fixed number of replicas (ignored when ``autoscale`` is set); None leaves it to Ray (one
            replica, or what a Serve config file's ``deployments:`` entry says).
        autoscale: ``(min_replicas, max_replicas)`` to autoscale between, or None for a fixed number.
        target_ongoing_requests: the load per replica autoscaling aims at.
        num_gpus: GPUs each replica asks Ray for (fractions share a GPU between replicas; 0 runs on CPU); None:
            one when the cluster has GPUs, else none (decided by :func:`run_ray_serve` once it has joined).
        num_cpus: CPUs each replica asks Ray for.
        max_ongoing_requests: requests one replica takes at once before Ray queues them.
        address: the Ray cluster to join (``"auto"`` for the one ``ray start`` made on this machine,
            ``ray://host:10001``), or None to start a local Ray instance for this process.
        name: the Serve application name (``--engine ray://<name>`` calls it).
        route_prefix: where the application's HTTP routes live on the proxy.
    """

    worker: WorkerSettings = field(default_factory=WorkerSettings)
    replicas: int | None = 1
    autoscale: tuple[int, int] | None = None
    target_ongoing_requests: float = 16.0
    num_gpus: float | None = None
    num_cpus: float = 1.0
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS
    address: str | None = None
    name: str = DEFAULT_APP_NAME
    route_prefix: str = "/"

    def deployment_options(self) -> dict[str, Any]:
        """The ``Deployment.options`` these settings give: replicas or autoscaling, resources, concurrency."""
        if self.replicas is not None and self.replicas < 1:
            raise InputError(f"must be at least 1, got {self.replicas}", field="replicas")
        num_gpus = self.num_gpus or 0.0
        for name, value in (("num_gpus", num_gpus), ("num_cpus", self.num_cpus)):
            if value < 0:
                raise InputError(f"must not be negative, got {value}", field=name)
        if self.max_ongoing_requests < 1:
            raise InputError(f"must be at least 1, got {self.max_ongoing_requests}", field="max_ongoing_requests")
        options: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "ray_actor_options": {"num_gpus": num_gpus, "num_cpus": self.num_cpus},
        }
        if self.autoscale is None:
            if self.replicas is not None:
                options["num_replicas"] = self.replicas
        else:
            low, high = self.autoscale
            options["autoscaling_config"] = {
                "min_replicas": low,
                "max_replicas": high,
                "target_ongoing_requests": self.target_ongoing_requests,
            }
        return options


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` as ``(min_replicas, max_replicas)``; raises :class:`InputError` naming ``autoscale``."""
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low), int(high)) if sep else None
    except ValueError:
        bounds = None
    if bounds is None or bounds[0] < 0 or bounds[1] < max(bounds[0], 1):
        raise InputError(
            f"expected MIN:MAX replicas with 0 <= MIN <= MAX and MAX >= 1, got {text!r}", field="autoscale"
        )
    return bounds


# --- the deployment --------------------------------------------------------------------------------------------------


class _ReplicaApp:
    """Pure ASGI wrapper of a replica's app: lifespan state reaches requests, and responses name the replica.

    Uvicorn hands every request a copy of the state the app's lifespan set up (where the worker app keeps its
    engine); Ray Serve runs the lifespan but calls the app for requests without that state, so this wrapper keeps
    the lifespan's state dict and copies it into each request's scope, as uvicorn does. Every HTTP response
    (streams included) gets ``x-gar-replica: <replica id>``.
    """

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self._header = (REPLICA_HEADER.encode(), replica.encode())
        self._state: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self._state = scope.setdefault("state", self._state)
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            await send(message)

        scope = {**scope, "state": {**self._state, **scope.get("state", {})}}
        await self.app(scope, receive, send_with_header)


def _failure(exc: Exception) -> dict[str, Any]:
    """The error payload for an exception from the engine: its own for our errors, an EngineError otherwise."""
    if isinstance(exc, GarToolsError):
        return error_payload(exc)
    logger.exception("replica request failed", exc_info=exc)
    return error_payload(EngineError(f"the worker failed while running the request: {type(exc).__name__}: {exc}"))


@serve.deployment(max_ongoing_requests=DEFAULT_MAX_ONGOING_REQUESTS)
@serve.ingress()
class GarWorker:
    """One replica: a local engine, served as the worker HTTP app and through deployment-handle methods.

    Args:
        settings: what the replica serves (model, image policy, engine options, token, preload).
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.replica = serve.get_replica_context().replica_tag
        tune_allocator()  # the replica's process holds the model: keep its resident memory flat
        self.engine: Engine = make_engine(
            "local", model=settings.model, policy=settings.policy, **settings.engine_kwargs
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        """The worker app over this replica's engine (Ray Serve runs its lifespan: the model loads before the
        replica takes requests, and the engine closes when the replica stops)."""
        app = create_worker_app(self.settings, engine_factory=lambda: self.engine)
        return _ReplicaApp(app, self.replica)

    async def run_tool(self, tool: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Run ``tool`` on a JSON-ready request: ``{"result": …}`` or the worker's error payload ``{"error": …}``."""
        try:
            result = await self.engine.run(tool, coerce_request(tool, payload))
        except Exception as exc:  # noqa: BLE001 - every failure goes back as an error payload
            return _failure(exc)
        return {"result": result.model_dump(mode="json"), "replica": self.replica}

    async def stream_tool(self, tool: str, payload: Mapping[str, Any]) -> AsyncIterator[tuple[str, Any]]:
        """Like :meth:`run_tool`, as ``(event, data)`` pairs: ``progress`` events, then one ``result`` or ``error``
        (the same events as the worker's ``/v1/{tool}/stream``). Call with ``handle.options(stream=True)``."""
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def progress(done: float, total: float | None, message: str | None) -> None:
            queue.put_nowait(("progress", {"progress": done, "total": total, "message": message}))

        async def produce() -> None:
            try:
                result = await self.engine.run(tool, coerce_request(tool, payload), progress)
            except Exception as exc:  # noqa: BLE001 - reported as an error event
                queue.put_nowait(("error", _failure(exc)))
            else:
                queue.put_nowait(("result", result.model_dump(mode="json")))

        task = asyncio.create_task(produce())
        try:
            while True:
                event, data = await queue.get()
                yield event, data
                if event != "progress":
                    return
        finally:
            if not task.done():  # the caller went away
                task.cancel()

    async def model_info(self) -> dict[str, Any]:
        """The engine's :class:`~gar_tools.results.ModelInfo` as JSON-ready data."""
        return (await self.engine.info()).model_dump(mode="json")


def build_app(settings: RayServeSettings) -> Application:
    """The Serve application for ``settings``: pass it to ``serve.run`` (:func:`run_ray_serve` does)."""
    return GarWorker.options(**settings.deployment_options()).bind(settings.worker)


# --- Serve config files ----------------------------------------------------------------------------------------------

_BUILDER_KEYS = frozenset(
    {
        "model",
        "allow_dirs",
        "allow_urls",
        "token_env",
        "preload",
        "replicas",
        "autoscale",
        "target_ongoing_requests",
        "num_gpus",
        "num_cpus",
        "max_ongoing_requests",
        *ENGINE_OPTIONS,
    }
)


def app_builder(args: Mapping[str, Any] | None = None) -> Application:
    """The application for a Serve config file (``import_path: gar_tools.servers.ray_app:app_builder``).

    ``args`` (all optional): ``model``, ``allow_dirs`` (a list of folders), ``allow_urls``, ``token_env`` (an
    environment variable holding the bearer token, read where the application is built), ``preload``, ``replicas``,
    ``autoscale`` (``"MIN:MAX"``), ``target_ongoing_requests``, ``num_gpus``, ``num_cpus``,
    ``max_ongoing_requests``, and every replica's engine options, named as the CLI's flags
    (:data:`~gar_tools.servers.settings.ENGINE_OPTIONS`: ``dtype``, ``device``, ``geometry``, ``segmenter``,
    ``max_batch_size``, ``kv_budget_tokens``, ``max_queue``, ``prefill_chunk_tokens``, ``decode_attention``,
    ``fused_ops``, ``vision_graphs``, ``tile_cache_mb``, ``image_cache_mb``, ``prefix_cache_mb``). Settings under
    the config file's ``deployments:`` entry for ``GarWorker`` (``num_replicas``, ``autoscaling_config``,
    ``ray_actor_options`` …) override these.
    """
    args = dict(args or {})
    unknown = sorted(set(args) - _BUILDER_KEYS)
    if unknown:
        raise InputError(f"unknown argument(s) {unknown}; allowed: {sorted(_BUILDER_KEYS)}", field="args")
    allow_dirs = args.get("allow_dirs") or []
    if isinstance(allow_dirs, str):
        allow_dirs = [allow_dirs]
    engine_kwargs = local_engine_kwargs({name: args[name] for name in ENGINE_OPTIONS if name in args})
    worker = WorkerSettings(
        model=str(args.get("model", "tiny")),
        policy=server_policy(allow_dirs, allow_urls=parse_bool(args.get("allow_urls", False), "allow_urls")),
        engine_kwargs=engine_kwargs,
        preload=parse_bool(args.get("preload", True), "preload"),
        token=token_from_env(args.get("token_env")),
    )
    autoscale = args.get("autoscale")
    settings = RayServeSettings(
        worker=worker,
        replicas=int(args["replicas"]) if "replicas" in args else None,
        autoscale=parse_autoscale(str(autoscale)) if autoscale is not None else None,
        target_ongoing_requests=float(args.get("target_ongoing_requests", 16.0)),
        num_gpus=float(args.get("num_gpus", 0.0)),
        num_cpus=float(args.get("num_cpus", 1.0)),
        max_ongoing_requests=int(args.get("max_ongoing_requests", DEFAULT_MAX_ONGOING_REQUESTS)),
    )
    return build_app(settings)


# --- gar-tools ray-serve ---------------------------------------------------------------------------------------------


def run_ray_serve(settings: RayServeSettings) -> None:
    """Deploy the application and serve until interrupted (``gar-tools ray-serve``).

    Joins the cluster at ``settings.address`` (or starts a local Ray instance), starts Serve's HTTP proxy on the
    worker settings' host and port, deploys, waits for every replica to load its model, and on Ctrl-C deletes the
    application (a cluster started here goes away with this process).
    """
    import ray

    worker = settings.worker
    if not is_loopback(worker.host) and worker.token is None:
        print(
            f"gar-tools: warning: the Ray Serve ingress listens on {worker.host} without a token (--token-env); "
            "anyone who can reach it can use the model",
            file=sys.stderr,
        )
    # Replicas on this machine inherit the cache location and offline mode from this process.
    env = {k: os.environ[k] for k in ("GAR_TOOLS_CACHE", "HF_HUB_OFFLINE", "HF_HOME") if k in os.environ}
    ray.init(address=settings.address, runtime_env={"env_vars": env} if env else None, log_to_driver=True)
    try:
        if settings.num_gpus is None:
            settings = replace(settings, num_gpus=1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0)
        serve.start(http_options={"host": worker.host, "port": worker.port})
        serve.run(build_app(settings), name=settings.name, route_prefix=settings.route_prefix)
        print(
            f"gar-tools ray-serve: application {settings.name!r} serving at "
            f"http://{worker.host}:{worker.port}{settings.route_prefix.rstrip('/')}/v1/… (Ctrl-C to stop)",
            file=sys.stderr,
        )
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.delete(settings.name)
        finally:
            ray.shutdown()
