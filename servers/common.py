"""What the HTTP servers share: bearer-token protection, the loopback check, and running an ASGI app.

:class:`BearerTokenMiddleware` is a pure ASGI middleware, so it wraps any Starlette app (streaming responses
included) without buffering: HTTP requests without ``Authorization: Bearer <token>`` get ``401`` with a JSON error
body, websockets are closed, lifespan events pass through. Tokens are compared in constant time. Paths in
``open_paths`` (health checks) need no token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import sys
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["BearerTokenMiddleware", "is_loopback", "serve_app"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 in brackets or not) only accepts local connections."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_app(app: ASGIApp, *, host: str, port: int, token: str | None, what: str) -> None:
    """Run ``app`` with uvicorn until interrupted; warn when it is reachable from other machines without a token."""
    import uvicorn

    if not is_loopback(host) and token is None:
        print(
            f"gar-tools: warning: {what} listens on {host} without a token (--token-env); anyone who can reach "
            "it can use the model",
            file=sys.stderr,
        )
    uvicorn.run(app, host=host, port=port, log_level="warning")


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
