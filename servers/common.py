"""What the servers share: bearer-token protection for the HTTP apps, tokens from the environment, image policy.

:class:`BearerTokenMiddleware` is a pure ASGI middleware, so it wraps any Starlette app (streaming responses
included) without buffering: HTTP requests without ``Authorization: Bearer <token>`` get ``401`` with a JSON error
body, websockets are closed, lifespan events pass through. Tokens are compared in constant time. Paths in
``open_paths`` (health checks) need no token.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from gar_tools.adapters.common import ASSETS_DIR
from gar_tools.errors import GarToolsError
from gar_tools.images import ImagePolicy

__all__ = ["BearerTokenMiddleware", "server_policy", "token_from_env"]


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
