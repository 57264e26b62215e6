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

__all__ = ["ServeSettings", "WorkerSettings", "server_policy", "token_from_env"]


def server_policy(allowed_dirs: Iterable[str | Path] = (), *, allow_urls: bool = False) -> ImagePolicy:
    """The image policy of a server: the given folders plus the bundled examples; URLs only if enabled."""
    dirs = [ASSETS_DIR, *(Path(d) for d in allowed_dirs)]
    return ImagePolicy(allowed_dirs=tuple(dict.fromkeys(dirs)), allow_urls=allow_urls)


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
    """

    model: str = "tiny"
    policy: ImagePolicy = field(default_factory=server_policy)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    preload: bool = True
    host: str = "127.0.0.1"
    port: int = 8001
    token: str | None = None
