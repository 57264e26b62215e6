"""``gar-tools``: describe, compare and ask about image regions from the command line; serve the tools.

    gar-tools describe IMAGE (--mask PNG | --box X1,Y1,X2,Y2) [--model tiny|PATH|HUB_ID]
    gar-tools compare IMAGE --mask A.png --mask B.png [--focus TEXT]
    gar-tools ask IMAGE --mask A.png "What is <r0> holding?" [--choice TEXT ...]
    gar-tools demo [--out DIR]
    gar-tools eval gar-bench-vqa --annotations GAR-Bench-VQA.json [--model ...]   /   gar-tools eval score OUT.json
    gar-tools serve ... / gar-tools worker ...   (see --help of each)

With the tiny model (random weights) a one-line notice says its text is meaningless.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gar_tools.errors import GarToolsError

__all__ = ["main", "build_parser"]

ASSETS = Path(__file__).resolve().parent / "assets"


def _box(text: str) -> list[float]:
    parts = text.replace(" ", "").split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected four numbers X1,Y1,X2,Y2 in pixels") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"--box {text!r}: expected four numbers X1,Y1,X2,Y2, got {len(values)}")
    return values


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


def _add_region_options(parser: argparse.ArgumentParser, *, many: bool) -> None:
    action = "append" if many else "store"
    parser.add_argument(
        "--mask",
        action=action,
        default=[] if many else None,
        metavar="PNG",
        help="region mask image (non-zero = inside)" + ("; repeat for several regions" if many else ""),
    )
    parser.add_argument(
        "--box",
        action=action,
        type=_box,
        default=[] if many else None,
        metavar="X1,Y1,X2,Y2",
        help="region as a filled box in pixels (an approximation: GAR was trained on masks)",
    )
    if many:
        parser.add_argument(
            "--id",
            action="append",
            default=[],
            metavar="ID",
            help="ids for the regions in order (default r0, r1, …); masks come before boxes",
        )


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gar-tools", description="GAR (Grasp Any Region) tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    describe = sub.add_parser("describe", help="describe one region in detail")
    describe.add_argument("image", help="image path, data: URI, base64 or URL (--allow-urls)")
    _add_region_options(describe, many=False)
    _add_model_options(describe)
    _add_output_options(describe)
    describe.add_argument("--allow-urls", action="store_true", help="allow http(s) image URLs")

    compare = sub.add_parser("compare", help="describe 2–5 regions and how they relate")
    compare.add_argument("image")
    _add_region_options(compare, many=True)
    compare.add_argument("--focus", default=None, help="aspect to concentrate on, e.g. 'size'")
    _add_model_options(compare)
    _add_output_options(compare)
    compare.add_argument("--allow-urls", action="store_true", help="allow http(s) image URLs")

    ask = sub.add_parser("ask", help="answer a question about 1–5 regions (name them <r0>, <r1>… or by --id)")
    ask.add_argument("image")
    ask.add_argument("question")
    _add_region_options(ask, many=True)
    ask.add_argument(
        "--choice",
        action="append",
        default=[],
        metavar="TEXT",
        help="a multiple-choice option; repeat (letters A, B, … are added)",
    )
    _add_model_options(ask)
    _add_output_options(ask)
    ask.add_argument("--allow-urls", action="store_true", help="allow http(s) image URLs")

    demo = sub.add_parser("demo", help="run the three tools on the bundled examples and write the overlay PNGs")
    demo.add_argument("--out", type=Path, default=Path("gar-demo-out"), help="folder for the overlays")
    _add_model_options(demo)
    demo.add_argument("--max-new-tokens", type=int, default=64)

    _add_eval_parser(sub)
    _add_server_commands(sub)
    return parser


def _add_server_commands(sub: Any) -> None:
    """``serve`` and ``worker`` (their implementations live in ``gar_tools.servers``)."""
    try:
        from gar_tools.servers.commands import add_server_commands
    except ImportError:  # servers not installed in this build
        return
    add_server_commands(sub)


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


def _eval(args: argparse.Namespace) -> None:
    from gar_tools.evaluation.commands import run_command, score_command

    (score_command if args.eval_command == "score" else run_command)(args)


def _regions(args: argparse.Namespace) -> list[dict[str, Any]]:
    regions: list[dict[str, Any]] = [{"mask": m} for m in args.mask] + [{"box": b} for b in args.box]
    ids: list[str] = getattr(args, "id", [])
    if ids and len(ids) != len(regions):
        raise GarToolsError(f"--id given {len(ids)} times for {len(regions)} regions; give one id per region or none")
    for region, region_id in zip(regions, ids, strict=False):
        region["id"] = region_id
    return regions


def _toolkit(args: argparse.Namespace):
    from gar_tools.images import ImagePolicy
    from gar_tools.toolkit import GarToolkit

    policy = ImagePolicy(allow_urls=bool(getattr(args, "allow_urls", False)))
    return GarToolkit(args.model, policy=policy, dtype=args.dtype, device=args.device, geometry=args.geometry)


def _emit(result: Any, args: argparse.Namespace) -> None:
    from gar_tools.model import TINY_NOTICE

    if result.tiny_model:
        print(TINY_NOTICE, file=sys.stderr)
    if getattr(args, "overlay", None) is not None and result.overlay_png:
        import base64

        args.overlay.write_bytes(base64.b64decode(result.overlay_png))
    if args.json:
        print(result.model_dump_json(indent=2, exclude={"overlay_png"}))
    else:
        print(result.text)
        if getattr(result, "choice", None):
            print(f"choice: {result.choice}")


def _describe(args: argparse.Namespace) -> None:
    if (args.mask is None) == (args.box is None):
        raise GarToolsError("describe needs exactly one region: --mask PNG or --box X1,Y1,X2,Y2")
    region = {"mask": args.mask} if args.mask is not None else {"box": args.box}
    with _toolkit(args) as toolkit:
        result = toolkit.describe_region(
            image=args.image, region=region, max_new_tokens=args.max_new_tokens, overlay=args.overlay is not None
        )
    _emit(result, args)


def _compare(args: argparse.Namespace) -> None:
    with _toolkit(args) as toolkit:
        result = toolkit.compare_regions(
            image=args.image,
            regions=_regions(args),
            focus=args.focus,
            max_new_tokens=args.max_new_tokens,
            overlay=args.overlay is not None,
        )
    _emit(result, args)


def _ask(args: argparse.Namespace) -> None:
    with _toolkit(args) as toolkit:
        result = toolkit.answer_about_regions(
            image=args.image,
            regions=_regions(args),
            question=args.question,
            choices=args.choice or None,
            max_new_tokens=args.max_new_tokens,
            overlay=args.overlay is not None,
        )
    _emit(result, args)


def _demo(args: argparse.Namespace) -> None:
    import base64

    from gar_tools.model import TINY_NOTICE

    args.out.mkdir(parents=True, exist_ok=True)
    image1, image3 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_image_3.png")
    masks3 = [
        {"id": name, "mask": str(ASSETS / f"demo_mask_3_{i}.png")}
        for i, name in enumerate(("person", "ball", "racket"))
    ]
    with _toolkit(args) as toolkit:
        runs = {
            "describe_region": toolkit.describe_region(
                image=image1,
                region={"id": "slipper", "mask": str(ASSETS / "demo_mask_1.png")},
                max_new_tokens=args.max_new_tokens,
                overlay=True,
            ),
            "compare_regions": toolkit.compare_regions(
                image=image3,
                regions=masks3[:2],
                focus="what they are doing",
                max_new_tokens=args.max_new_tokens,
                overlay=True,
            ),
            "answer_about_regions": toolkit.answer_about_regions(
                image=image3,
                regions=masks3,
                question="What is the relationship between <person>, <ball>, and <racket>?",
                choices=[
                    "<person> is throwing <ball> without using <racket>.",
                    "<person> is holding <racket> and <ball> is on the ground.",
                    "<person> is swinging <racket> and is about to hit <ball>.",
                    "<person> is catching <ball> with <racket>.",
                ],
                max_new_tokens=args.max_new_tokens,
                overlay=True,
            ),
        }
    if any(r.tiny_model for r in runs.values()):
        print(TINY_NOTICE, file=sys.stderr)
    for tool, result in runs.items():
        path = args.out / f"{tool}.png"
        path.write_bytes(base64.b64decode(result.overlay_png or ""))
        choice = f" (choice: {result.choice})" if getattr(result, "choice", None) else ""
        print(f"{tool}: {result.text}{choice}\n  overlay: {path}")


COMMANDS = {"describe": _describe, "compare": _compare, "ask": _ask, "demo": _demo, "eval": _eval}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
    if handler is None:
        parser.error(f"unknown command {args.command}")
    try:
        handler(args)
    except GarToolsError as exc:
        print(f"gar-tools {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
