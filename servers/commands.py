"""``gar-tools serve`` (the MCP server) and ``gar-tools worker`` (the shared model worker).

    gar-tools serve --transport stdio|http [--host 127.0.0.1] [--port 8000] [--token-env NAME]
                    [--allow-dir DIR ...] [--allow-urls] [--engine local|http://WORKER] [--worker-token-env NAME]
                    [--model tiny|PATH|HUB_ID] [--dtype ...] [--device ...] [--geometry ...]
    gar-tools worker [--host 127.0.0.1] [--port 8001] [--token-env NAME] [--allow-dir DIR ...] [--allow-urls]
                     [--model ...] [--dtype ...] [--device ...] [--geometry ...]

Tokens are read from environment variables (``--token-env NAME``), never from the command line, so they do not
show up in process listings. The MCP SDK, Starlette and uvicorn are imported inside the handlers, so the core CLI
works without the ``mcp`` extra.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

from gar_tools.errors import GarToolsError

__all__ = ["add_server_commands", "serve", "worker"]

_LOOPBACK_NAMES = ("localhost",)


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"dtype": args.dtype, "device": args.device, "geometry": args.geometry}


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-dir",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="folder whose images and masks callers may pass as local paths; repeat for several "
        "(the bundled examples are always allowed; data: URIs and base64 always work)",
    )
    parser.add_argument(
        "--allow-urls", action="store_true", help="let callers pass http(s) image URLs (this process fetches them)"
    )


def _add_http_options(parser: argparse.ArgumentParser, *, port: int, what: str) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=port, help=f"port to listen on (default {port})")
    parser.add_argument(
        "--token-env",
        default=None,
        metavar="NAME",
        help=f"environment variable holding a bearer token that {what} must send "
        "('Authorization: Bearer <token>'); requests without it get 401",
    )


def _warn_if_exposed(host: str, token: str | None, what: str) -> None:
    if not _is_loopback(host) and token is None:
        print(
            f"gar-tools: warning: {what} listens on {host} without a token (--token-env); anyone who can reach "
            "it can use the model",
            file=sys.stderr,
        )


def add_server_commands(sub: Any) -> None:
    """Add the ``serve`` and ``worker`` subcommands to the CLI's subparsers."""
    from gar_tools.cli import _add_model_options

    serve_parser = sub.add_parser(
        "serve",
        help="run the MCP server (stdio for desktop clients, streamable HTTP for remote ones)",
        description="Serve describe_region, compare_regions and answer_about_regions over MCP.",
    )
    serve_parser.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    _add_http_options(serve_parser, port=8000, what="HTTP clients")
    _add_policy_options(serve_parser)
    serve_parser.add_argument(
        "--engine",
        default="local",
        metavar="local|URL",
        help="local (load the model here, default) or the URL of a gar-tools worker, e.g. http://127.0.0.1:8001, "
        "to share one model between servers",
    )
    serve_parser.add_argument(
        "--worker-token-env",
        default=None,
        metavar="NAME",
        help="environment variable holding the worker's bearer token (with --engine URL)",
    )
    _add_model_options(serve_parser)
    serve_parser.set_defaults(handler=serve)

    worker_parser = sub.add_parser(
        "worker",
        help="run the model behind an HTTP API that MCP servers started with --engine URL share",
        description="Serve the GAR model over HTTP: POST /v1/{describe_region,compare_regions,"
        "answer_about_regions}[/stream], GET /v1/model, GET /healthz.",
    )
    _add_http_options(worker_parser, port=8001, what="clients")
    _add_policy_options(worker_parser)
    _add_model_options(worker_parser)
    worker_parser.set_defaults(handler=worker)


def serve(args: argparse.Namespace) -> None:
    """Run the MCP server until interrupted (``gar-tools serve``)."""
    try:
        from gar_tools.servers.common import server_policy, token_from_env
        from gar_tools.servers.mcp_server import ServeSettings, create_server, http_app
    except ImportError as exc:
        raise GarToolsError(f"serve needs the MCP extra: pip install 'gar-tools[mcp]' ({exc})") from exc

    engine = args.engine.strip()
    if engine.lower() != "local" and not engine.lower().startswith(("http://", "https://")):
        raise GarToolsError(f"--engine must be 'local' or a worker URL such as http://127.0.0.1:8001, got {engine!r}")
    if engine.lower() != "local" and args.model != "tiny":
        print(
            "gar-tools serve: note: --model is ignored with --engine URL (the worker serves its model)", file=sys.stderr
        )
    settings = ServeSettings(
        engine=engine,
        model=args.model,
        policy=server_policy(args.allow_dir, allow_urls=args.allow_urls),
        worker_token=token_from_env(args.worker_token_env),
        engine_kwargs=_engine_kwargs(args),
    )
    server = create_server(settings)
    if args.transport == "stdio":
        if args.token_env is not None:
            print("gar-tools serve: note: --token-env applies to --transport http only", file=sys.stderr)
        server.run("stdio")
        return

    import uvicorn

    token = token_from_env(args.token_env)
    _warn_if_exposed(args.host, token, "the MCP server")
    app = http_app(server, host=args.host, token=token)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def worker(args: argparse.Namespace) -> None:
    """Run the model worker until interrupted (``gar-tools worker``)."""
    try:
        import uvicorn
        from gar_tools.servers.common import server_policy, token_from_env
        from gar_tools.servers.worker_app import create_worker_app
    except ImportError as exc:
        raise GarToolsError(f"worker needs the server extra: pip install 'gar-tools[server]' ({exc})") from exc

    token = token_from_env(args.token_env)
    _warn_if_exposed(args.host, token, "the worker")
    app = create_worker_app(
        model=args.model,
        token=token,
        policy=server_policy(args.allow_dir, allow_urls=args.allow_urls),
        **_engine_kwargs(args),
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
