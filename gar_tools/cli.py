"""``gar-tools``: run the GAR tools from the command line, and serve them.

    gar-tools describe IMAGE (--mask PNG | --box X1,Y1,X2,Y2) [--model tiny|PATH|HUB_ID]
    gar-tools compare IMAGE --mask A.png --mask B.png [--focus TEXT]
    gar-tools ask IMAGE "What is <r0> holding?" --mask A.png [--choice TEXT ...]
    gar-tools demo [--out DIR]
    gar-tools serve ... / gar-tools worker ... / gar-tools ray-serve ...   (see --help of each)

One subcommand per registered tool (:mod:`gar_tools.tools`), built from its request model. Regions are given with
``--mask`` and ``--box`` (repeatable) and named with ``--id`` in the same order. With the tiny model (random
weights) a one-line notice says its text is meaningless. The CLI only parses arguments and translates: the tools
run through :class:`~gar_tools.toolkit.GarToolkit`, the servers through the functions of ``gar_tools.servers``.
Nothing heavy (torch, the MCP SDK) is imported until a command needs it.
"""

from __future__ import annotations

import argparse
import base64
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gar_tools.errors import GarToolsError, InputError
from gar_tools.results import TINY_MODEL_NOTE, ToolResult
from gar_tools.tools import ToolSpec, get_tool, tools

__all__ = ["build_parser", "main"]

_COMMON_FIELDS = ("image", "max_new_tokens", "overlay")


# --- argument types and actions --------------------------------------------------------------------------------------


def _box(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected four numbers X1,Y1,X2,Y2 in pixels") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected four numbers X1,Y1,X2,Y2, got {len(values)}")
    return values


class _RegionAction(argparse.Action):
    """Appends ``{format: value}`` to ``namespace.regions``, so regions keep their command-line order."""

    def __init__(self, *args: Any, region_format: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.region_format = region_format

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        namespace.regions = [*(getattr(namespace, "regions", None) or []), {self.region_format: value}]


def _first_sentence(text: str | None) -> str:
    text = (text or "").strip()
    return text.split(". ")[0].rstrip(".") if text else ""


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


# --- options ---------------------------------------------------------------------------------------------------------


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="tiny",
        help="tiny (random weights, for testing), a checkpoint folder, or "
        "a hub id such as HaochenWang/GAR-1B (default: tiny)",
    )
    parser.add_argument(
        "--dtype",
        choices=["bf16", "fp16", "fp32"],
        default=None,
        help="weights dtype (default: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: CUDA when available)")
    parser.add_argument(
        "--geometry",
        choices=["checkpoint", "paper"],
        default="checkpoint",
        help="RoI replay box convention (default: checkpoint, what the released weights expect)",
    )


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"dtype": args.dtype, "device": args.device, "geometry": args.geometry}


def _add_region_options(parser: argparse.ArgumentParser, spec: ToolSpec) -> None:
    count = "one region" if spec.single_region else f"{spec.min_regions}–{spec.max_regions} regions; repeat"
    parser.set_defaults(regions=[])
    parser.add_argument(
        "--mask",
        action=_RegionAction,
        region_format="mask",
        metavar="PNG",
        help=f"region mask (non-zero = inside); {count}",
    )
    parser.add_argument(
        "--box",
        action=_RegionAction,
        region_format="box",
        type=_box,
        metavar="X1,Y1,X2,Y2",
        help="region as a filled box in pixels (an approximation: GAR was trained on masks)",
    )
    parser.add_argument(
        "--id", action="append", default=[], metavar="ID", help="region ids, in the order the regions are given"
    )


def _add_tool_fields(parser: argparse.ArgumentParser, spec: ToolSpec) -> None:
    """The tool's own request fields (question, focus, choices, …) as positionals or flags."""
    for name, info in spec.request_model.model_fields.items():
        if name in (*_COMMON_FIELDS, spec.regions_field):
            continue
        help_text = _first_sentence(info.description)
        if name in spec.cli_positionals:
            parser.add_argument(name, help=help_text)
        elif _is_list(info.annotation):
            flag = spec.cli_flags.get(name, f"--{name.replace('_', '-')}")
            parser.add_argument(
                flag, dest=name, action="append", default=None, metavar="TEXT", help=help_text + "; repeat"
            )
        else:
            flag = spec.cli_flags.get(name, f"--{name.replace('_', '-')}")
            parser.add_argument(flag, dest=name, default=None, metavar="TEXT", help=help_text)


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="most tokens to generate (default 1024)")
    parser.add_argument("--json", action="store_true", help="print the whole result model as JSON")
    parser.add_argument(
        "--overlay",
        type=Path,
        default=None,
        metavar="PNG",
        help="also write a PNG of the image with the regions outlined and labelled",
    )
    parser.add_argument("--allow-urls", action="store_true", help="allow http(s) image URLs")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gar-tools", description="GAR (Grasp Any Region) tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    for spec in tools():
        tool_parser = sub.add_parser(spec.cli_command or spec.name, help=spec.title, description=spec.description)
        tool_parser.add_argument("image", help="image path, data: URI, base64 or URL (--allow-urls)")
        _add_tool_fields(tool_parser, spec)
        _add_region_options(tool_parser, spec)
        _add_model_options(tool_parser)
        _add_output_options(tool_parser)
        tool_parser.set_defaults(handler=_run_tool, tool=spec.name)

    demo = sub.add_parser("demo", help="run each tool on the bundled examples and write the overlay PNGs")
    demo.add_argument("--out", type=Path, default=Path("gar-demo-out"), help="folder for the overlays")
    _add_model_options(demo)
    demo.add_argument("--max-new-tokens", type=int, default=64)
    demo.set_defaults(handler=_demo)

    serve = sub.add_parser(
        "serve",
        help="run the MCP server (stdio for desktop clients, streamable HTTP for remote ones)",
        description="Serve the GAR tools over MCP.",
    )
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio", help="default: stdio")
    _add_http_options(serve, port=8000, what="HTTP clients")
    _add_policy_options(serve)
    serve.add_argument(
        "--engine",
        default="local",
        metavar="local|URL|ray[://APP]",
        help="local (load the model here, default), the URL of a gar-tools worker (or of a ray-serve ingress), "
        "e.g. http://127.0.0.1:8001, to share one model between servers, or ray / ray://APP for the ray-serve "
        "application's deployment handle (from a process inside the Ray cluster)",
    )
    serve.add_argument(
        "--worker-token-env",
        default=None,
        metavar="NAME",
        help="environment variable holding the worker's bearer token (with --engine URL)",
    )
    _add_model_options(serve)
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser(
        "worker",
        help="run the model behind an HTTP API that MCP servers started with --engine URL share",
        description="Serve the GAR model over HTTP: POST /v1/{tool}[/stream] for every tool, GET /v1/model, "
        "GET /healthz.",
    )
    _add_http_options(worker, port=8001, what="clients")
    _add_policy_options(worker)
    _add_model_options(worker)
    worker.set_defaults(handler=_worker)

    ray_serve = sub.add_parser(
        "ray-serve",
        help="run the worker as a Ray Serve application: replicas across GPUs and machines, the same HTTP API",
        description="Deploy the GAR worker on Ray Serve (pip install 'gar-tools[ray]'): POST /v1/{tool}[/stream], "
        "GET /v1/model, GET /healthz on Ray's HTTP proxy, replicas placed on GPUs, fixed or autoscaled.",
    )
    scale = ray_serve.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=int, default=1, metavar="N", help="a fixed number of replicas (default 1)")
    scale.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    ray_serve.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=16.0,
        metavar="N",
        help="autoscaling target per replica (default 16)",
    )
    ray_serve.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per replica; 0.5 packs two replicas on one GPU (default: 1 when the cluster has GPUs, else 0)",
    )
    ray_serve.add_argument("--num-cpus", type=float, default=1.0, metavar="C", help="CPUs per replica (default 1)")
    ray_serve.add_argument(
        "--max-ongoing-requests", type=int, default=64, metavar="N", help="requests one replica takes at once (64)"
    )
    ray_serve.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto (the one `ray start` made here) or ray://HOST:10001 (default: start a "
        "local Ray instance)",
    )
    ray_serve.add_argument("--name", default="gar", help="Serve application name (--engine ray://NAME; default gar)")
    _add_http_options(ray_serve, port=8001, what="clients")
    _add_policy_options(ray_serve)
    _add_model_options(ray_serve)
    ray_serve.set_defaults(handler=_ray_serve)
    return parser


# --- handlers --------------------------------------------------------------------------------------------------------


def _regions(args: argparse.Namespace, spec: ToolSpec) -> Any:
    regions: list[dict[str, Any]] = [dict(r) for r in args.regions]
    if args.id and len(args.id) != len(regions):
        raise InputError(
            f"--id given {len(args.id)} times for {len(regions)} regions; give one id per region or none", field="id"
        )
    for region, region_id in zip(regions, args.id, strict=False):
        region["id"] = region_id
    if not spec.single_region:
        return regions
    if len(regions) != 1:
        raise InputError(
            f"{spec.cli_command or spec.name} needs exactly one region: --mask PNG or --box X1,Y1,X2,Y2 "
            f"({len(regions)} given)",
            field=spec.regions_field,
        )
    return regions[0]


def _toolkit(args: argparse.Namespace) -> Any:
    from gar_tools.images import ImagePolicy
    from gar_tools.toolkit import GarToolkit

    policy = ImagePolicy(allow_urls=bool(getattr(args, "allow_urls", False)))
    return GarToolkit(args.model, policy=policy, **_engine_kwargs(args))


def _tiny_notice(results: Sequence[ToolResult]) -> None:
    if any(result.tiny_model for result in results):
        print(f"note: {TINY_MODEL_NOTE}", file=sys.stderr)


def _run_tool(args: argparse.Namespace) -> None:
    spec = get_tool(args.tool)
    fields = {
        name: getattr(args, name)
        for name in spec.request_model.model_fields
        if name not in (*_COMMON_FIELDS, spec.regions_field) and getattr(args, name, None) is not None
    }
    request = {
        "image": args.image,
        spec.regions_field: _regions(args, spec),
        "max_new_tokens": args.max_new_tokens,
        "overlay": args.overlay is not None,
        **fields,
    }
    with _toolkit(args) as toolkit:
        result = toolkit.run(spec.name, request)
    _tiny_notice([result])
    if args.overlay is not None and result.overlay_png:
        args.overlay.write_bytes(base64.b64decode(result.overlay_png))
    if args.json:
        print(result.model_dump_json(indent=2, exclude={"overlay_png"}))
        return
    print(result.text)
    for name, value in result.model_dump().items():  # the tool's own result fields, e.g. the parsed choice
        if name not in ToolResult.model_fields and value is not None:
            print(f"{name}: {value}")


def _demo(args: argparse.Namespace) -> None:
    from gar_tools.catalog import example_calls

    args.out.mkdir(parents=True, exist_ok=True)
    with _toolkit(args) as toolkit:
        runs = {
            tool: toolkit.run(tool, {**arguments, "max_new_tokens": args.max_new_tokens, "overlay": True})
            for tool, arguments in example_calls().items()
        }
    _tiny_notice(list(runs.values()))
    for tool, result in runs.items():
        path = args.out / f"{tool}.png"
        path.write_bytes(base64.b64decode(result.overlay_png or ""))
        extra = "".join(
            f" ({name}: {value})"
            for name, value in result.model_dump().items()
            if name not in ToolResult.model_fields and value is not None
        )
        print(f"{tool}: {result.text}{extra}\n  overlay: {path}")


def _serve(args: argparse.Namespace) -> None:
    try:
        from gar_tools.servers.mcp_server import run_server
        from gar_tools.servers.settings import ServeSettings, server_policy, token_from_env
    except ImportError as exc:
        raise GarToolsError(f"serve needs the MCP extra: pip install 'gar-tools[mcp]' ({exc})") from exc

    engine = args.engine.strip()
    if engine.lower() not in ("local", "ray") and not engine.lower().startswith(("http://", "https://", "ray://")):
        raise InputError(
            f"must be 'local', a worker URL such as http://127.0.0.1:8001, or ray[://APP], got {engine!r}",
            field="--engine",
        )
    if engine.lower() != "local" and args.model != "tiny":
        print(
            "gar-tools serve: note: --model is ignored with --engine URL (the worker serves its model)", file=sys.stderr
        )
    if args.transport == "stdio" and args.token_env is not None:
        print("gar-tools serve: note: --token-env applies to --transport http only", file=sys.stderr)
    settings = ServeSettings(
        engine=engine,
        model=args.model,
        policy=server_policy(args.allow_dir, allow_urls=args.allow_urls),
        worker_token=token_from_env(args.worker_token_env),
        engine_kwargs=_engine_kwargs(args),
        transport=args.transport,
        host=args.host,
        port=args.port,
        token=token_from_env(args.token_env) if args.transport == "http" else None,
    )
    run_server(settings)


def _worker(args: argparse.Namespace) -> None:
    try:
        from gar_tools.servers.settings import WorkerSettings, server_policy, token_from_env
        from gar_tools.servers.worker_app import run_worker
    except ImportError as exc:
        raise GarToolsError(f"worker needs the server extra: pip install 'gar-tools[server]' ({exc})") from exc

    settings = WorkerSettings(
        model=args.model,
        policy=server_policy(args.allow_dir, allow_urls=args.allow_urls),
        engine_kwargs=_engine_kwargs(args),
        host=args.host,
        port=args.port,
        token=token_from_env(args.token_env),
    )
    run_worker(settings)


def _ray_serve(args: argparse.Namespace) -> None:
    try:
        from gar_tools.servers.ray_app import RayServeSettings, parse_autoscale, run_ray_serve
        from gar_tools.servers.settings import WorkerSettings, server_policy, token_from_env
    except ImportError as exc:
        raise GarToolsError(f"ray-serve needs the ray extra: pip install 'gar-tools[ray]' ({exc})") from exc

    worker = WorkerSettings(
        model=args.model,
        policy=server_policy(args.allow_dir, allow_urls=args.allow_urls),
        engine_kwargs=_engine_kwargs(args),
        host=args.host,
        port=args.port,
        token=token_from_env(args.token_env),
    )
    settings = RayServeSettings(
        worker=worker,
        replicas=args.replicas,
        autoscale=parse_autoscale(args.autoscale) if args.autoscale is not None else None,
        target_ongoing_requests=args.target_ongoing_requests,
        num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        max_ongoing_requests=args.max_ongoing_requests,
        address=args.address,
        name=args.name,
    )
    settings.deployment_options()  # bad numbers fail here, before Ray starts
    run_ray_serve(settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        handler(args)
    except GarToolsError as exc:
        print(f"gar-tools {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
