"""What the servers are configured with: plain dataclasses the CLI fills in (no server framework imported here).

:func:`server_policy` is the image policy of a server: its allowed folders plus the bundled examples.
:func:`local_engine_kwargs` turns the local engine's options (CLI flags, a Serve config file's ``args``) into
:class:`~gar_tools.engine.local.LocalEngine` keyword arguments, checked once, here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gar_tools.catalog import ASSETS_DIR
from gar_tools.errors import GarToolsError, InputError
from gar_tools.images import ImagePolicy
from gar_tools.model.options import DECODE_ATTENTION_CHOICES

__all__ = [
    "ENGINE_OPTIONS",
    "ServeSettings",
    "WorkerSettings",
    "default_max_body_bytes",
    "local_engine_kwargs",
    "parse_bool",
    "server_policy",
    "token_from_env",
]

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


def parse_bool(value: Any, name: str) -> bool:
    """``value`` as a bool (``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0`` as text too)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InputError(f"expected true or false, got {value!r}", field=name)


def _integer(value: Any, name: str, least: int) -> int:
    number = None
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            number = int(value)
        except ValueError:
            pass
    if number is None or number < least:
        raise InputError(f"expected a whole number of at least {least}, got {value!r}", field=name)
    return number


def _megabytes(value: Any, name: str) -> int:
    mb = None
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            mb = float(value)
        except ValueError:
            pass
    if mb is None or not 0 <= mb < float("inf"):
        raise InputError(f"expected a size in MB, 0 or more, got {value!r}", field=name)
    return int(mb * 2**20)


def _choice(allowed: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(value: Any, name: str) -> str:
        if str(value) not in allowed:
            raise InputError(f"expected one of {', '.join(allowed)}, got {value!r}", field=name)
        return str(value)

    return check


def _chunk_tokens(value: Any, name: str) -> int | str:
    return "auto" if str(value) == "auto" else _integer(value, name, 1)


#: The local engine's options, by the name servers and Serve config files use: (its keyword argument, how the
#: value is read and checked). Sizes are in MB here and in bytes for the engine.
ENGINE_OPTIONS: dict[str, tuple[str, Callable[[Any, str], Any]]] = {
    "dtype": ("dtype", _choice(("bf16", "fp16", "fp32"))),
    "device": ("device", lambda value, name: str(value)),
    "geometry": ("geometry", _choice(("checkpoint", "paper"))),
    "segmenter": ("segmenter", lambda value, name: str(value)),
    "max_batch_size": ("max_batch_size", lambda value, name: _integer(value, name, 1)),
    "kv_budget_tokens": ("kv_budget_tokens", lambda value, name: _integer(value, name, 1)),
    "max_queue": ("max_queue", lambda value, name: _integer(value, name, 0)),
    "prefill_chunk_tokens": ("prefill_chunk_tokens", _chunk_tokens),
    "decode_attention": ("decode_attention", _choice(DECODE_ATTENTION_CHOICES)),
    "fused_ops": ("decode_fused_ops", parse_bool),
    "vision_graphs": ("vision_cuda_graphs", parse_bool),
    "tile_cache_mb": ("tile_cache_bytes", _megabytes),
    "image_cache_mb": ("image_cache_bytes", _megabytes),
    "prefix_cache_mb": ("prefix_cache_bytes", _megabytes),
}


def local_engine_kwargs(options: Mapping[str, Any], *, field: Callable[[str], str] = str) -> dict[str, Any]:
    """:class:`~gar_tools.engine.local.LocalEngine` keyword arguments from :data:`ENGINE_OPTIONS` names.

    An option that is absent or None is left to the engine's default. ``field`` names an option in errors (the
    CLI's ``--max-batch-size``, a config file's ``max_batch_size``).

    Raises:
        InputError: an unknown option, or a value that is not allowed (naming it and what is).
    """
    kwargs: dict[str, Any] = {}
    for name, value in options.items():
        if name not in ENGINE_OPTIONS:
            raise InputError(f"unknown engine option; allowed: {', '.join(ENGINE_OPTIONS)}", field=field(name))
        if value is None:
            continue
        keyword, read = ENGINE_OPTIONS[name]
        kwargs[keyword] = read(value, field(name))
    return kwargs


@dataclass(frozen=True)
class ServeSettings:
    """How ``gar-tools serve`` runs the tools over MCP.

    Attributes:
        engine: ``"local"`` (the model in this process) or a worker URL ``http(s)://host:port``.
        model: the model a local engine loads (``"tiny"``: random weights, meaningless text).
        policy: which images and masks callers may pass (allowed folders, URLs, size limits).
        worker_token: bearer token for the worker (http engine).
        engine_kwargs: keyword arguments of a local engine (:func:`local_engine_kwargs`).
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
        engine_kwargs: keyword arguments of the local engine (:func:`local_engine_kwargs`).
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
