"""What the HTTP servers share: bearer-token protection, Host/Origin checks, request body limits and timeouts, the
loopback check, and running an ASGI app with a request-head timeout.

:class:`BearerTokenMiddleware` is a pure ASGI middleware, so it wraps any Starlette app (streaming responses
included) without buffering: HTTP requests without ``Authorization: Bearer <token>`` get ``401`` with a JSON error
body, websockets are closed, lifespan events pass through. Tokens are compared in constant time. Paths in
``open_paths`` (health checks) need no token.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import sys
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "LOOPBACK_HOSTS",
    "LOOPBACK_ORIGINS",
    "BearerTokenMiddleware",
    "HostOriginMiddleware",
    "RequestLimitsMiddleware",
    "header_timeout_protocol",
    "is_loopback",
    "send_json_error",
    "serve_app",
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOOPBACK_HOSTS = ("127.0.0.1:*", "localhost:*", "[::1]:*")
"""Host header values a loopback server accepts by default (``:*``: any port), as the MCP SDK's DNS-rebinding
protection."""
LOOPBACK_ORIGINS = ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*")
"""Origin header values accepted by default (requests without an Origin header, i.e. not from a browser, pass)."""


async def send_json_error(
    send: Send,
    status: int,
    error_type: str,
    message: str,
    *,
    field: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Send the servers' JSON error body ``{"error": {"type", "message", "field", "reason"}}`` with ``status``."""
    body = json.dumps(
        {"error": {"type": error_type, "message": message, "field": field, "reason": message if field else None}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1")
    return None


def _matches(value: str, patterns: Iterable[str]) -> bool:
    """Whether ``value`` equals a pattern, or a ``base:*`` pattern's base with any port (or none, for hosts)."""
    for pattern in patterns:
        if value == pattern:
            return True
        if pattern.endswith(":*"):
            base = pattern[:-2]
            if value == base or (value.startswith(base + ":") and value[len(base) + 1 :].isdigit()):
                return True
    return False


class HostOriginMiddleware:
    """Refuse requests whose ``Host`` or ``Origin`` header is not allowed (DNS-rebinding and cross-site protection).

    Like the MCP SDK's transport security: a web page the user visits cannot drive the server through the browser,
    neither by pointing a name of its own at 127.0.0.1 (``Host`` check: 421) nor by posting cross-site (``Origin``
    check: 403; requests without an ``Origin``, i.e. not from a browser, pass).

    Args:
        app: the ASGI app to protect.
        allowed_hosts: allowed ``Host`` values (``name:*`` allows any port); None: no Host check.
        allowed_origins: allowed ``Origin`` values (``scheme://name:*`` allows any port).
    """

    def __init__(
        self, app: ASGIApp, *, allowed_hosts: Iterable[str] | None, allowed_origins: Iterable[str] = LOOPBACK_ORIGINS
    ) -> None:
        self.app = app
        self.allowed_hosts = None if allowed_hosts is None else tuple(allowed_hosts)
        self.allowed_origins = tuple(allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host, origin = _header(scope, b"host"), _header(scope, b"origin")
        if self.allowed_hosts is not None and not _matches(host or "", self.allowed_hosts):
            refusal = (421, "InvalidHost", f"Host {host!r} is not allowed; allowed: {', '.join(self.allowed_hosts)}")
        elif origin is not None and not _matches(origin, self.allowed_origins):
            refusal = (403, "InvalidOrigin", f"Origin {origin!r} is not allowed (cross-site requests are refused)")
        else:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send_json_error(send, *refusal)


class RequestLimitsMiddleware:
    """Bound how a request body arrives: its size, how long between chunks and overall; optionally require JSON.

    The body of a ``POST``/``PUT``/``PATCH`` is read here, then handed to the app in one piece. A body larger than
    ``max_body_bytes`` gets ``413`` (from ``Content-Length`` before reading, or as soon as it has grown too large),
    one whose next chunk does not arrive within ``chunk_timeout_s`` or that is not complete within
    ``body_timeout_s`` gets ``408``, and with ``require_json`` a body that is not ``Content-Type:
    application/json`` gets ``415``; each in the JSON error format, and the connection is closed. Other methods
    and streaming responses pass untouched.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int | None = None,
        body_timeout_s: float | None = 30.0,
        chunk_timeout_s: float | None = 10.0,
        require_json: bool = False,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s
        self.chunk_timeout_s = chunk_timeout_s
        self.require_json = require_json

    def _too_large(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_body_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if self.require_json:
            content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if content_type != "application/json":
                shown = content_type or "none"
                await send_json_error(
                    send, 415, "UnsupportedMediaType", f"send Content-Type: application/json, not {shown}"
                )
                return
        declared = _header(scope, b"content-length")
        if self.max_body_bytes is not None and declared is not None and declared.isdigit():
            if int(declared) > self.max_body_bytes:
                await send_json_error(send, 413, "PayloadTooLarge", self._too_large())
                return
        loop = asyncio.get_running_loop()
        deadline = None if self.body_timeout_s is None else loop.time() + self.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            waits = [
                t for t in (self.chunk_timeout_s, None if deadline is None else deadline - loop.time()) if t is not None
            ]
            try:
                message = await asyncio.wait_for(receive(), timeout=max(min(waits), 0.0) if waits else None)
            except TimeoutError:
                await send_json_error(
                    send, 408, "RequestTimeout", "the request body did not arrive in time; send it without pausing"
                )
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if self.max_body_bytes is not None and size > self.max_body_bytes:
                await send_json_error(send, 413, "PayloadTooLarge", self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def header_timeout_protocol(seconds: float) -> type[Any]:
    """A uvicorn h11 protocol class that closes connections whose request head does not arrive within ``seconds``.

    uvicorn bounds idle keep-alive connections but not a client that sends its request line and headers a byte at
    a time. The timer starts when the connection opens and again after each response, and stops when a complete
    request head has been parsed. (Bodies are bounded by :class:`RequestLimitsMiddleware`.)
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def _start_head_timer(self) -> None:
            self._stop_head_timer()
            self._head_timer = self.loop.call_later(seconds, self._head_timed_out)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            scope = getattr(self, "scope", None)
            super().handle_events()
            if getattr(self, "scope", None) is not scope:  # a complete request head was parsed
                self._stop_head_timer()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._start_head_timer()  # the next request on this connection has as long for its head
            super().on_response_complete()

    return HeaderTimeoutH11Protocol


def serve_app(
    app: ASGIApp,
    *,
    host: str,
    port: int,
    token: str | None,
    what: str,
    path: str = "",
    details: str = "",
    header_timeout_s: float | None = 10.0,
) -> None:
    """Run ``app`` with uvicorn until interrupted.

    Once the socket is bound, one line goes to stderr: ``gar-tools: WHAT listening on http://HOST:PORT/PATH
    (DETAILS, token required: yes|no)``. Warns when the server is reachable from other machines without a token.
    Clients that do not send a request head within ``header_timeout_s`` are disconnected.
    """
    import uvicorn

    if not is_loopback(host) and token is None:
        print(
            f"gar-tools: warning: {what} listens on {host} without a token (--token-env); anyone who can reach "
            "it can use the model",
            file=sys.stderr,
        )
    protocol = header_timeout_protocol(header_timeout_s) if header_timeout_s else "h11"
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=protocol, timeout_keep_alive=5)
    required = "yes" if token else "no"

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = port
                for server in getattr(self, "servers", []):
                    for sock in server.sockets or ():
                        bound = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                extra = f"{details}, " if details else ""
                print(
                    f"gar-tools: {what} listening on http://{shown}:{bound}{path} ({extra}token required: {required})",
                    file=sys.stderr,
                    flush=True,
                )

    AnnouncingServer(config).run()


class BearerTokenMiddleware:
    """Reject HTTP requests that do not carry ``Authorization: Bearer <token>`` with ``401``.

    Args:
        app: the ASGI app to protect.
        token: the expected token.
        open_paths: paths served without a token (e.g. ``/healthz``).
    """

    def __init__(self, app: ASGIApp, token: str, *, open_paths: Iterable[str] = ()) -> None:
        if not token:
            raise ValueError("BearerTokenMiddleware needs a non-empty token")
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._open_paths = frozenset(open_paths)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope.get("headers") or ():
            if name == b"authorization":
                return hmac.compare_digest(value.strip(), self._expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope.get("path") in self._open_paths
            or self._authorized(scope)
        ):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps(
            {
                "error": {
                    "type": "AuthenticationError",
                    "message": "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                    "field": None,
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="gar-tools"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
