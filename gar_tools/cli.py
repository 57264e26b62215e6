"""``gar-tools``: run the GAR tools from the command line, and serve them.

    gar-tools describe IMAGE (--mask PNG | --box X1,Y1,X2,Y2 [--segment] | --point X,Y ... | --scribble X0,Y0,...)
                         [--model tiny|PATH|HUB_ID] [--segmenter tiny-sam|PATH|HUB_ID]
    gar-tools compare IMAGE --mask A.png --mask B.png [--focus TEXT]
    gar-tools ask IMAGE "What is <r0> holding?" --mask A.png [--choice TEXT ...]
    gar-tools describe-all IMAGE (--mask A.png ... | --rle-file regions.json | --auto) [--json] [--overlay out.png]
    gar-tools demo [--out DIR]
    gar-tools eval gar-bench-vqa --annotations GAR-Bench-VQA.json [--model ...]   /   gar-tools eval score OUT.json
    gar-tools serve ... / gar-tools worker ... / gar-tools ray-serve ...   (see --help of each)

One subcommand per registered tool (:mod:`gar_tools.tools`), built from its request model. Regions are given with
``--mask``, ``--box`` (``--segment`` after it: cut out by the segmenter), ``--point`` / ``--neg-point`` (consecutive
ones form one points region; ``--next-region`` starts another) and ``--scribble`` (``--width`` after it), all
repeatable, and named with ``--id`` in the same order. With the tiny model (random
weights) a one-line notice says its text is meaningless. The CLI only parses arguments and translates: the tools
run through :class:`~gar_tools.toolkit.GarToolkit`, the servers through the functions of ``gar_tools.servers``.
Nothing heavy (torch, the MCP SDK) is imported until a command needs it.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gar_tools.errors import GarToolsError, InputError
from gar_tools.model.options import DECODE_ATTENTION_CHOICES
from gar_tools.results import TINY_MODEL_NOTE, ToolResult
from gar_tools.tools import ToolSpec, get_tool, tools

__all__ = ["build_parser", "main"]

_COMMON_FIELDS = ("image", "max_new_tokens", "overlay")


# --- argument types and actions --------------------------------------------------------------------------------------


def _numbers(text: str, names: str) -> list[float]:
    """``X1,Y1,…`` as floats, exactly as many as ``names`` has comma-separated parts (an argparse type)."""
    count = names.count(",") + 1
    try:
        values = [float(p) for p in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {count} numbers {names} in pixels") from None
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{text!r}: expected {count} numbers {names}, got {len(values)}")
    return values


def _box(text: str) -> list[float]:
    return _numbers(text, "X1,Y1,X2,Y2")


def _point(text: str) -> list[float]:
    return _numbers(text, "X,Y")


def _scribble(text: str) -> list[list[float]]:
    lines = []
    for part in text.split(";"):
        try:
            values = [float(p) for p in part.replace(" ", "").split(",") if p != ""]
        except ValueError:
            raise argparse.ArgumentTypeError(f"--scribble {text!r}: expected X0,Y0,X1,Y1,... in pixels") from None
        if not values or len(values) % 2:
            raise argparse.ArgumentTypeError(
                f"--scribble {text!r}: each stroke is X0,Y0,X1,Y1,... (pairs of numbers); separate strokes with ;"
            )
        lines.append(values)
    return lines


class _PointAction(argparse.Action):
    """Adds a point (label 1, or 0 for ``--neg-point``) to the open points region, or opens one."""

    def __init__(self, *args: Any, label: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.label = label

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        regions = list(getattr(namespace, "regions", None) or [])
        if regions and "points" in regions[-1] and getattr(namespace, "points_open", False):
            last = regions[-1]
            regions[-1] = {**last, "points": [*last["points"], value], "labels": [*last["labels"], self.label]}
        else:
            regions.append({"points": [value], "labels": [self.label]})
        namespace.regions = regions
        namespace.points_open = True


class _NextRegionAction(argparse.Action):
    """Closes the open points region: the next ``--point`` starts a new one."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        namespace.points_open = False


class _ModifierAction(argparse.Action):
    """Sets ``key`` on the region just given, which must be a ``needs`` region (``--segment`` after ``--box``,
    ``--width`` after ``--scribble``)."""

    def __init__(self, *args: Any, key: str, needs: str, constant: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key, self.needs, self.constant = key, needs, constant

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        regions = list(getattr(namespace, "regions", None) or [])
        if not regions or self.needs not in regions[-1]:
            raise argparse.ArgumentError(self, f"must follow a --{self.needs} (it applies to the region just given)")
        regions[-1] = {**regions[-1], self.key: self.constant if self.nargs == 0 else value}
        namespace.regions = regions


class _RegionAction(argparse.Action):
    """Appends ``{format: value}`` to ``namespace.regions``, so regions keep their command-line order."""

    def __init__(self, *args: Any, region_format: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.region_format = region_format

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        namespace.regions = [*(getattr(namespace, "regions", None) or []), {self.region_format: value}]
        namespace.points_open = False


class _RleFileAction(argparse.Action):
    """``--rle-file regions.json``: appends each region the file holds."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, value: Any, option: str | None = None) -> None:
        import json

        path = Path(value).expanduser()
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentError(self, f"cannot read {value!r} as JSON: {exc}") from None
        if isinstance(data, dict):
            data = data.get("regions", data.get("annotations", [data]))
        if not isinstance(data, list):
            raise argparse.ArgumentError(self, f"{value!r} must hold a list of regions")
        regions = list(getattr(namespace, "regions", None) or [])
        for item in data:
            if isinstance(item, dict) and "counts" in item and "size" in item:
                regions.append({"rle": item})
            elif isinstance(item, dict) and isinstance(item.get("segmentation"), dict):
                region: dict[str, Any] = {"rle": item["segmentation"]}
                if isinstance(item.get("id"), str):
                    region["id"] = item["id"]
                regions.append(region)
            else:
                regions.append(item)
        namespace.regions = regions


def _json_object(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


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


def _add_segmenter_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--segmenter",
        default=None,
        metavar="HUB_ID|PATH|tiny-sam",
        help="a SAM-family checkpoint that turns --point regions and --box ... --segment into masks, e.g. "
        "facebook/sam-vit-base, facebook/sam2.1-hiera-tiny, Zigeng/SlimSAM-uniform-77, a folder, or tiny-sam "
        "(random weights, for testing); loaded beside the model on its device and dtype (default: none)",
    )


def _add_serving_options(parser: argparse.ArgumentParser) -> None:
    """How a long-running local engine batches and bounds its work (servers only)."""
    group = parser.add_argument_group("serving (local engine)")
    group.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="requests decoded together (default 16 on CUDA, 8 on CPU)",
    )
    group.add_argument(
        "--kv-budget-tokens",
        type=int,
        default=None,
        metavar="N",
        help="tokens (prompt + max_new_tokens) the KV cache holds for running requests; more wait (default: all slots)",
    )
    group.add_argument(
        "--max-queue", type=int, default=64, metavar="N", help="requests waiting at once; more are refused as busy (64)"
    )
    group.add_argument(
        "--prefill-chunk-tokens",
        default=None,
        metavar="N|auto",
        help="prompt tokens prefilled between two decode steps, so running requests wait less for a new one's long "
        "prompt (default auto: whole prompts, the fastest on CPU and on an H200)",
    )
    group.add_argument(
        "--decode-attention",
        choices=DECODE_ATTENTION_CHOICES,
        default=None,
        help="a decode step's attention over the KV cache (default auto: triton, the split-KV kernel, on CUDA; "
        "sdpa elsewhere)",
    )
    group.add_argument(
        "--fused-ops",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fused Triton kernels for each decode layer's element-wise work and one GEMV for q/k/v (default: on "
        "with CUDA)",
    )
    group.add_argument(
        "--vision-graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay the vision tower's tile chunks from CUDA graphs (default: on with CUDA)",
    )
    group.add_argument(
        "--tile-cache-mb",
        type=float,
        default=None,
        metavar="MB",
        help="bound of the per-image tile-feature cache (default 256 on CPU, 2048 on CUDA)",
    )
    group.add_argument(
        "--image-cache-mb",
        type=float,
        default=None,
        metavar="MB",
        help="bound of the decoded images kept for the next request sending the same image (default 128; 0: off)",
    )
    group.add_argument(
        "--prefix-cache-mb",
        type=float,
        default=None,
        metavar="MB",
        help="bound of the keys and values kept of prompts' image and regions, for later questions about the same "
        "image and regions (default 1024 on CPU, 2048 on CUDA; 0: off)",
    )


def _engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The local engine's keyword arguments from the flags this command has (checked, errors name the flag)."""
    from gar_tools.servers.settings import ENGINE_OPTIONS, local_engine_kwargs

    given = {name: getattr(args, name) for name in ENGINE_OPTIONS if hasattr(args, name)}
    return local_engine_kwargs(given, field=lambda name: "--" + name.replace("_", "-"))


def _local_engine_flags_given(args: argparse.Namespace) -> list[str]:
    """The local engine's flags ``serve`` was given other than --model and --segmenter (noted apart), e.g.
    ``["--fused-ops"]``: those whose value is not the parser's default."""
    from gar_tools.servers.settings import ENGINE_OPTIONS

    defaults = build_parser().parse_args(["serve"])
    return [
        "--" + name.replace("_", "-")
        for name in ENGINE_OPTIONS
        if name != "segmenter" and getattr(args, name, None) != getattr(defaults, name, None)
    ]


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
        "--segment",
        action=_ModifierAction,
        nargs=0,
        key="segment",
        needs="box",
        constant=True,
        help="after --box: have the segmenter (--segmenter) cut the object out of the box instead of the rectangle",
    )
    parser.add_argument(
        "--point",
        action=_PointAction,
        label=1,
        type=_point,
        metavar="X,Y",
        help="a click on the object in pixels; consecutive --point/--neg-point form one region, which the segmenter "
        "(--segmenter) turns into a mask",
    )
    parser.add_argument(
        "--neg-point",
        action=_PointAction,
        label=0,
        type=_point,
        metavar="X,Y",
        help="a point NOT on the object (label 0), in the same points region",
    )
    parser.add_argument(
        "--next-region",
        action=_NextRegionAction,
        nargs=0,
        help="end the current points region: the next --point starts a new region",
    )
    parser.add_argument(
        "--scribble",
        action=_RegionAction,
        region_format="scribble",
        type=_scribble,
        metavar="X0,Y0,X1,Y1,...",
        help="a region painted as strokes in pixels (several strokes: separate with ;); no segmenter needed",
    )
    parser.add_argument(
        "--width",
        action=_ModifierAction,
        key="width",
        needs="scribble",
        type=float,
        metavar="W",
        help="after --scribble: stroke width in pixels (default 5)",
    )
    parser.add_argument(
        "--id", action="append", default=[], metavar="ID", help="region ids, in the order the regions are given"
    )
    if spec.fan_out:
        parser.add_argument(
            "--rle-file",
            action=_RleFileAction,
            metavar="JSON",
            help="a JSON file of regions: a list of COCO RLEs ({size, counts}), of COCO annotations (segmentation: "
            "RLE) or of region objects; added after the regions given before it",
        )
        parser.add_argument(
            "--auto",
            action="store_true",
            help="have the segmenter (--segmenter) propose every object it finds and describe each",
        )
        parser.add_argument(
            "--auto-options",
            type=_json_object,
            default=None,
            metavar="JSON",
            help='with --auto: proposal settings, e.g. \'{"points_per_side": 8, "max_regions": 16, "min_area": 200}\'',
        )


def _add_tool_fields(parser: argparse.ArgumentParser, spec: ToolSpec) -> None:
    """The tool's own request fields (question, focus, choices, …) as positionals or flags."""
    for name, info in spec.request_model.model_fields.items():
        if name in (*_COMMON_FIELDS, spec.regions_field) or (spec.fan_out and name == "auto"):
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
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="with --allow-urls: also fetch URLs on loopback, private or link-local addresses (off by default)",
    )


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
    parser.add_argument(
        "--allow-private-urls",
        action="store_true",
        help="with --allow-urls: also fetch URLs on loopback, private or link-local addresses (off by default: "
        "callers could otherwise reach services on this machine's network)",
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
        _add_segmenter_option(tool_parser)
        _add_output_options(tool_parser)
        tool_parser.set_defaults(handler=_run_tool, tool=spec.name)

    demo = sub.add_parser("demo", help="run each tool on the bundled examples and write the overlay PNGs")
    demo.add_argument("--out", type=Path, default=Path("gar-demo-out"), help="folder for the overlays")
    _add_model_options(demo)
    _add_segmenter_option(demo)
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
    _add_serving_options(serve)
    _add_segmenter_option(serve)
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser(
        "worker",
        help="run the model behind an HTTP API that MCP servers started with --engine URL share",
        description="Serve the GAR model over HTTP: POST /v1/{tool}[/stream] for every tool, GET /v1/model, "
        "GET /healthz.",
    )
    _add_http_options(worker, port=8001, what="clients")
    _add_policy_options(worker)
    worker.add_argument(
        "--allow-host",
        action="append",
        default=None,
        metavar="HOST[:PORT|:*]",
        help="Host header value clients may use, e.g. gpu-box:8001 or gpu-box:*; repeat for several (default: "
        "loopback names when bound to loopback, any otherwise)",
    )
    worker.add_argument(
        "--allow-origin",
        action="append",
        default=None,
        metavar="ORIGIN",
        help="browser Origin allowed to call the worker, e.g. https://app.example; repeat for several (default: "
        "loopback origins; requests without Origin always pass)",
    )
    worker.add_argument(
        "--max-body-mb",
        type=float,
        default=None,
        metavar="MB",
        help="largest request body in MiB (default: the image limit as base64 plus 4 MiB)",
    )
    _add_model_options(worker)
    _add_serving_options(worker)
    _add_segmenter_option(worker)
    worker.set_defaults(handler=_worker)

    _add_eval_parser(sub)

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
    _add_serving_options(ray_serve)
    _add_segmenter_option(ray_serve)
    ray_serve.set_defaults(handler=_ray_serve)
    return parser


# --- eval (handlers in gar_tools.evaluation.commands) -----------------------------------------------------------
def _add_eval_parser(sub: Any) -> None:
    """``eval gar-bench-vqa|gar-bench-caption-simple|gar-bench-caption-detailed|score``."""
    from gar_tools.evaluation.benchmarks import BENCHMARKS

    evaluate = sub.add_parser("eval", help="run GAR-Bench (the paper's benchmark) or score an outputs file")
    modes = evaluate.add_subparsers(dest="eval_command", required=True)
    for benchmark in BENCHMARKS.values():
        scoring = (
            "prints upstream's accuracy table (exact match) and ours (parsed choice)"
            if benchmark.scored_here
            else "scoring needs an external judge model: prints how to run upstream's judge, no score"
        )
        mode = modes.add_parser(benchmark.name, help=f"ask every {benchmark.name} item; {scoring}")
        mode.add_argument(
            "--annotations",
            type=Path,
            required=True,
            help="the annotation JSON in the authors' layout (item images relative to its folder)",
        )
        mode.add_argument("--image-folder", type=Path, default=None, help="item images root (default: its folder)")
        mode.add_argument(
            "--output",
            type=Path,
            default=None,
            help="outputs file in upstream's model_outputs format; an existing one is resumed "
            "(default gar-bench-outputs/MODEL_MODE.json)",
        )
        mode.add_argument("--restart", action="store_true", help="ignore an existing outputs file and ask everything")
        mode.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
        mode.add_argument("--limit", type=int, default=None, help="only the first N items")
        mode.add_argument("--max-new-tokens", type=int, default=1024, help="as upstream: 1024")
        mode.add_argument("--json", action="store_true", help="print a machine-readable summary")
        _add_model_options(mode)
    score = modes.add_parser("score", help="score a GAR-Bench-VQA outputs file (ours or upstream's)")
    score.add_argument("outputs", type=Path, help="outputs JSON: items with model_output")
    score.add_argument("--json", action="store_true", help="print a machine-readable summary")
    evaluate.set_defaults(handler=_eval)


def _eval(args: argparse.Namespace) -> None:
    from gar_tools.evaluation.commands import run_command, score_command

    (score_command if args.eval_command == "score" else run_command)(args)


# --- handlers --------------------------------------------------------------------------------------------------------


def _regions(args: argparse.Namespace, spec: ToolSpec) -> Any:
    regions: list[dict[str, Any]] = [dict(r) for r in args.regions]
    if args.id and len(args.id) != len(regions):
        raise InputError(
            f"--id given {len(args.id)} times for {len(regions)} regions; give one id per region or none", field="id"
        )
    for region, region_id in zip(regions, args.id, strict=False):
        region["id"] = region_id
    if getattr(args, "auto", False):
        if regions:
            raise InputError("give either --auto or regions (--mask, --rle-file, ...), not both", field="--auto")
        return "auto"
    if not spec.single_region:
        return regions
    if len(regions) != 1:
        raise InputError(
            f"{spec.cli_command or spec.name} needs exactly one region: --mask PNG, --box X1,Y1,X2,Y2, "
            f"--point X,Y (repeatable) or --scribble X0,Y0,X1,Y1,... ({len(regions)} given)",
            field=spec.regions_field,
        )
    return regions[0]


def _url_flags(args: argparse.Namespace) -> tuple[bool, bool]:
    """``(allow_urls, allow_private_urls)``; private URLs only on top of ``--allow-urls``."""
    allow_urls, allow_private = (
        bool(getattr(args, "allow_urls", False)),
        bool(getattr(args, "allow_private_urls", False)),
    )
    if allow_private and not allow_urls:
        raise InputError("needs --allow-urls (it only widens which URLs are fetched)", field="--allow-private-urls")
    return allow_urls, allow_private


def _allowed_dirs(args: argparse.Namespace) -> list[Path]:
    """The ``--allow-dir`` folders, each checked to exist (a typo must not silently allow nothing)."""
    for folder in args.allow_dir:
        if not folder.expanduser().is_dir():
            what = "is not a folder" if folder.expanduser().exists() else "does not exist"
            raise InputError(f"{str(folder)!r} {what}; give existing folders", field="--allow-dir")
    return list(args.allow_dir)


def _server_policy(args: argparse.Namespace) -> Any:
    from gar_tools.servers.settings import server_policy

    allow_urls, allow_private = _url_flags(args)
    return server_policy(_allowed_dirs(args), allow_urls=allow_urls, allow_private_urls=allow_private)


def _check_writable(path: Path, option: str) -> None:
    """Refuse an output file that cannot be written, before the model runs."""
    target = path.expanduser()
    parent = target.parent
    if target.is_dir():
        raise InputError(f"{str(path)!r} is a folder; give a file name such as out.png", field=option)
    if not parent.is_dir():
        raise InputError(f"the folder {str(parent)!r} does not exist; create it first", field=option)
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InputError(f"{str(path)!r} cannot be written (permission denied)", field=option)


def _write(path: Path, data: bytes, option: str) -> None:
    try:
        path.expanduser().write_bytes(data)
    except OSError as exc:
        raise InputError(f"could not write {str(path)!r}: {exc.strerror or exc}", field=option) from exc


def _toolkit(args: argparse.Namespace) -> Any:
    from gar_tools.images import ImagePolicy
    from gar_tools.toolkit import GarToolkit

    allow_urls, allow_private = _url_flags(args)
    policy = ImagePolicy(allow_urls=allow_urls, allow_private_urls=allow_private)
    return GarToolkit(args.model, policy=policy, **_engine_kwargs(args))


def _tiny_notice(results: Sequence[ToolResult]) -> None:
    if any(result.tiny_model for result in results):
        print(f"note: {TINY_MODEL_NOTE}", file=sys.stderr)


def _run_tool(args: argparse.Namespace) -> None:
    spec = get_tool(args.tool)
    fields = {
        name: getattr(args, name)
        for name in spec.request_model.model_fields
        if name not in (*_COMMON_FIELDS, spec.regions_field)
        and not (spec.fan_out and name == "auto")  # --auto / --auto-options, below
        and getattr(args, name, None) is not None
    }
    request = {
        "image": args.image,
        spec.regions_field: _regions(args, spec),
        "max_new_tokens": args.max_new_tokens,
        "overlay": args.overlay is not None,
        **fields,
    }
    if getattr(args, "auto_options", None) is not None:
        if request[spec.regions_field] != "auto":
            raise InputError("applies only with --auto", field="--auto-options")
        request["auto"] = args.auto_options
    if args.overlay is not None:
        _check_writable(args.overlay, "--overlay")
    with _toolkit(args) as toolkit:
        if spec.fan_out:
            result = toolkit.run(spec.name, request, on_item=_region_printer(args.json))
        else:
            result = toolkit.run(spec.name, request)
    _tiny_notice([result])
    if spec.fan_out:
        if args.overlay is not None and result.overlay_png:
            _write(args.overlay, base64.b64decode(result.overlay_png), "--overlay")
        if args.json:
            print(result.model_dump_json(exclude={"overlay_png"}), flush=True)
        return
    if args.overlay is not None and result.overlay_png:
        _write(args.overlay, base64.b64decode(result.overlay_png), "--overlay")
    if args.json:
        print(result.model_dump_json(indent=2, exclude={"overlay_png"}))
        return
    print(result.text)
    for name, value in result.model_dump().items():  # the tool's own result fields, e.g. the parsed choice
        if name not in ToolResult.model_fields and value is not None:
            print(f"{name}: {value}")


def _region_printer(as_json: bool) -> Callable[[Any], Any]:
    """For a fan-out tool: print each region's description as it finishes (``--json``: one JSON line each; the
    whole result follows as the last line)."""

    async def show(item: Any) -> None:
        if as_json:
            print(item.model_dump_json(), flush=True)
        elif item.error is not None:
            print(f"{item.id}: error: {item.error.message}", flush=True)
        else:
            print(f"{item.id}: {item.text}", flush=True)

    return show


def _demo(args: argparse.Namespace) -> None:
    from gar_tools.catalog import example_calls

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {str(args.out)!r}: {exc.strerror or exc}", field="--out") from exc
    _check_writable(args.out / "describe_region.png", "--out")
    with _toolkit(args) as toolkit:
        runs = {
            tool: toolkit.run(tool, {**arguments, "max_new_tokens": args.max_new_tokens, "overlay": True})
            for tool, arguments in example_calls().items()
        }
    _tiny_notice(list(runs.values()))
    for tool, result in runs.items():
        path = args.out / f"{tool}.png"
        _write(path, base64.b64decode(result.overlay_png or ""), "--out")
        extra = "".join(
            f" ({name}: {value})"
            for name, value in result.model_dump().items()
            if name not in ToolResult.model_fields and value is not None
        )
        print(f"{tool}: {result.text}{extra}\n  overlay: {path}")


def _serve(args: argparse.Namespace) -> None:
    try:
        from gar_tools.servers.mcp_server import run_server
        from gar_tools.servers.settings import ServeSettings, token_from_env
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
    if engine.lower() != "local" and args.segmenter is not None:
        print(
            "gar-tools serve: note: --segmenter is ignored with --engine URL (start the worker with --segmenter)",
            file=sys.stderr,
        )
    if engine.lower() != "local" and (given := _local_engine_flags_given(args)):
        print(
            f"gar-tools serve: note: {', '.join(given)}: options of a local engine, ignored with --engine URL (give "
            "them to the worker or the Ray application)",
            file=sys.stderr,
        )
    if args.transport == "stdio" and args.token_env is not None:
        print("gar-tools serve: note: --token-env applies to --transport http only", file=sys.stderr)
    settings = ServeSettings(
        engine=engine,
        model=args.model,
        policy=_server_policy(args),
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
        from gar_tools.servers.worker_app import run_worker
    except ImportError as exc:
        raise GarToolsError(f"worker needs the server extra: pip install 'gar-tools[server]' ({exc})") from exc

    run_worker(_worker_settings(args))


def _worker_settings(args: argparse.Namespace) -> Any:
    """The worker's settings from ``worker`` or ``ray-serve`` options (ray-serve has no Host/Origin/body options:
    Ray's proxy fronts it)."""
    from gar_tools.servers.settings import WorkerSettings, token_from_env

    allow_host, allow_origin = getattr(args, "allow_host", None), getattr(args, "allow_origin", None)
    return WorkerSettings(
        model=args.model,
        policy=_server_policy(args),
        engine_kwargs=_engine_kwargs(args),
        host=args.host,
        port=args.port,
        token=token_from_env(args.token_env),
        allowed_hosts=tuple(allow_host) if allow_host else None,
        allowed_origins=tuple(allow_origin) if allow_origin else None,
        max_body_bytes=_max_body_bytes(getattr(args, "max_body_mb", None)),
    )


def _max_body_bytes(megabytes: float | None) -> int | None:
    if megabytes is None:
        return None
    if not megabytes > 0:
        raise InputError(f"must be a positive number of MiB, got {megabytes}", field="--max-body-mb")
    return int(megabytes * 2**20)


def _ray_serve(args: argparse.Namespace) -> None:
    try:
        from gar_tools.servers.ray_app import RayServeSettings, parse_autoscale, run_ray_serve
    except ImportError as exc:
        raise GarToolsError(f"ray-serve needs the ray extra: pip install 'gar-tools[ray]' ({exc})") from exc

    worker = _worker_settings(args)
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
