"""What the servers are configured with: plain dataclasses the CLI fills in (no server framework imported here).

:func:`server_policy` is the image policy of a server: its allowed folders plus the bundled examples.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gar_tools.catalog import ASSETS_DIR
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy

__all__ = ["ServeSettings", "WorkerSettings", "default_max_body_bytes", "server_policy", "token_from_env"]

BODY_ALLOWANCE_BYTES = 4 * 2**20
"""What a worker request body may hold beyond the base64 of one largest image: masks, regions, the question."""


def default_max_body_bytes(policy: ImagePolicy) -> int:
    """The worker's default body limit: the largest image as base64 (4/3 of ``policy.max_bytes``) plus 4 MiB."""
    return -(-policy.max_bytes * 4 // 3) + BODY_ALLOWANCE_BYTES


def server_policy(
    allowed_dirs: Iterable[str | Path] = (), *, allow_urls: bool = False, allow_private_urls: bool = False
) -> ImagePolicy:
    """The image policy of a server: the given folders plus the bundled examples; URLs only if enabled (and those
    on private, loopback or link-local addresses only with ``allow_private_urls``)."""
    dirs = [ASSETS_DIR, *(Path(d) for d in allowed_dirs)]
    return ImagePolicy(
        allowed_dirs=tuple(dict.fromkeys(dirs)), allow_urls=allow_urls, allow_private_urls=allow_private_urls
    )


def token_from_env(name: str | None) -> str | None:
    """The token held in environment variable ``name`` (None when ``name`` is None).

    Raises:
        GarToolsError: when ``name`` is given but the variable is unset or empty (a server must not silently run
            without the protection it was asked for).
    """
    if name is None:
        return None
    value = os.environ.get(name, "").strip()
    if not value:
        raise GarToolsError(f"environment variable {name} (named by a --*token-env option) is unset or empty")
    return value


@dataclass(frozen=True)
class ServeSettings:
    """How ``gar-tools serve`` runs the tools over MCP.

    Attributes:
        engine: ``"local"`` (the model in this process) or a worker URL ``http(s)://host:port``.
        model: the model a local engine loads (``"tiny"``: random weights, meaningless text).
        policy: which images and masks callers may pass (allowed folders, URLs, size limits).
        worker_token: bearer token for the worker (http engine).
        engine_kwargs: ``dtype``, ``device``, ``geometry`` for a local engine.
        preload: start the engine (load a local model) when the server starts, in the background, rather than
            on the first call.
        transport: ``"stdio"`` or ``"http"`` (streamable HTTP at ``path``).
        host, port, path: where the HTTP transport listens.
        token: bearer token HTTP clients must send (None: no token).
        header_timeout_s: HTTP clients that do not send a complete request head within this many seconds (after
            connecting, or after the previous response) are disconnected.
        body_timeout_s: a request body must arrive within this many seconds (408 otherwise), with no pause longer
            than ``chunk_timeout_s``.
    """

    engine: str = "local"
    model: str = "tiny"
    policy: ImagePolicy = field(default_factory=server_policy)
    worker_token: str | None = None
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    preload: bool = True
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = 8000
    path: str = "/mcp"
    token: str | None = None
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    chunk_timeout_s: float = 10.0


@dataclass(frozen=True)
class WorkerSettings:
    """How ``gar-tools worker`` serves the model over HTTP.

    Attributes:
        model: the model to serve (``"tiny"`` — random weights, meaningless text —, a folder or a hub id).
        policy: which images and masks callers may pass.
        engine_kwargs: ``dtype``, ``device``, ``geometry`` for the local engine.
        preload: load the model at startup, before the server accepts requests.
        host, port: where it listens.
        token: bearer token clients must send (None: no token).
        allowed_hosts: ``Host`` header values accepted (``name:*``: any port). None (default): loopback names
            when ``host`` is a loopback address (DNS-rebinding protection, as the MCP SDK), no Host check otherwise.
        allowed_origins: ``Origin`` header values accepted; requests from browsers on other origins get 403.
            Default: loopback origins only. Requests without ``Origin`` (not from a browser) pass.
        max_body_bytes: largest request body (413 beyond it). None (default): :func:`default_max_body_bytes`,
            the largest image as base64 plus 4 MiB.
        header_timeout_s, body_timeout_s, chunk_timeout_s: as in :class:`ServeSettings`.
    """

    model: str = "tiny"
    policy: ImagePolicy = field(default_factory=server_policy)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    preload: bool = True
    host: str = "127.0.0.1"
    port: int = 8001
    token: str | None = None
    allowed_hosts: tuple[str, ...] | None = None
    allowed_origins: tuple[str, ...] | None = None
    max_body_bytes: int | None = None
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    chunk_timeout_s: float = 10.0
