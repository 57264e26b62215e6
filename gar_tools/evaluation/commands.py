"""``gar-tools eval``: run GAR-Bench against this package's model path, or score an outputs file.

    gar-tools eval gar-bench-vqa --annotations evaluation/GAR-Bench/annotations/GAR-Bench-VQA.json --model M
    gar-tools eval gar-bench-caption-simple --annotations .../GAR-Bench-Caption-Simple.json --model M
    gar-tools eval gar-bench-caption-detailed --annotations .../GAR-Bench-Caption-Detailed.json --model M
    gar-tools eval score OUTPUTS.json

The argument parser lives in :mod:`gar_tools.cli`; these are the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from pathlib import Path
from typing import Any

from gar_tools.errors import InputError
from gar_tools.evaluation.benchmarks import BENCHMARKS, Benchmark
from gar_tools.evaluation.items import load_items, load_outputs
from gar_tools.evaluation.progress import format_duration
from gar_tools.evaluation.runner import EvalRun, run_benchmark
from gar_tools.evaluation.scoring import format_vqa_score, score_vqa
from gar_tools.inputs import MAX_NEW_TOKENS_LIMIT
from gar_tools.results import TINY_MODEL_NOTE

__all__ = ["run_command", "score_command", "default_output", "TINY_CHANCE_NOTE", "judge_instructions"]

TINY_CHANCE_NOTE = f"note: {TINY_MODEL_NOTE} Its accuracy here is chance level by construction."
UPSTREAM_REPO = "https://github.com/Haochen-Wang409/Grasp-Any-Region"


def default_output(benchmark: Benchmark, model: str) -> Path:
    """``gar-bench-outputs/{model}_{mode}.json`` (upstream names its files ``{cache_name}_{mode}.json``)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name if Path(model).exists() else model).strip("_") or "model"
    return Path("gar-bench-outputs") / f"{slug}_{benchmark.mode}.json"


def judge_instructions(benchmark: Benchmark, output: Path) -> str:
    """How to score a caption outputs file with upstream's GPT-4o judge (we do not score captions)."""
    return "\n".join(
        [
            f"{benchmark.name} is scored by an external judge model (GPT-4o in the paper); gar-tools prints no score.",
            f"To score {output} with the authors' judge, in a checkout of {UPSTREAM_REPO}:",
            "  export AZURE_OPENAI_ENDPOINT=... AZURE_OPENAI_KEY=...",
            f"  python3 {benchmark.judge_script} --pred {output.resolve()}",
        ]
    )


def _toolkit(args: argparse.Namespace) -> Any:
    from gar_tools.toolkit import GarToolkit

    return GarToolkit(args.model, dtype=args.dtype, device=args.device, geometry=args.geometry)


async def _run(args: argparse.Namespace, benchmark: Benchmark, items: list[dict[str, Any]], output: Path):
    toolkit = _toolkit(args)
    try:
        run = await run_benchmark(
            toolkit,
            benchmark,
            items,
            image_folder=args.image_folder or args.annotations.parent,  # checked in run_command
            output=output,
            concurrency=args.concurrency,
            max_new_tokens=args.max_new_tokens,
            resume=not args.restart,
        )
        info = await toolkit.ainfo()
    finally:
        await toolkit.aclose()
    run.tiny_model, run.model = info.tiny_model, info.model
    return run


def run_command(args: argparse.Namespace) -> None:
    """``gar-tools eval gar-bench-*``: ask every item, write the outputs, print the summary."""
    benchmark = BENCHMARKS[args.eval_command]
    if args.concurrency < 1:
        raise InputError("--concurrency must be at least 1", field="concurrency")
    if not 1 <= args.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise InputError(f"--max-new-tokens must be 1 to {MAX_NEW_TOKENS_LIMIT}", field="max_new_tokens")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1", field="limit")
    items = load_items(args.annotations, benchmark.fields)
    if args.limit is not None:
        items = items[: args.limit]
    image_folder = args.image_folder or args.annotations.parent
    missing = [item["image"] for item in items if not (image_folder / item["image"]).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(items)} item images are not under {image_folder} (first: {missing[0]}); "
            "put the benchmark's images/ folder beside the annotation file or pass --image-folder",
            field="image_folder",
        )
    output = args.output or default_output(benchmark, args.model)
    run: EvalRun = asyncio.run(_run(args, benchmark, items, output))
    if run.tiny_model:
        print(TINY_CHANCE_NOTE, file=sys.stderr)
    header = (
        f"{benchmark.name}: {len(items)} items ({run.resumed} resumed, {run.asked} asked, {run.skipped} skipped) "
        f"in {format_duration(run.seconds)}; outputs: {output}"
    )
    summary: dict[str, Any] = {
        "benchmark": benchmark.name,
        "model": run.model,
        "tiny_model": run.tiny_model,
        "outputs": str(output),
        "items": len(items),
        "resumed": run.resumed,
        "asked": run.asked,
        "seconds": round(run.seconds, 3),
    }
    if run.tiny_model:
        summary["note"] = TINY_CHANCE_NOTE
    if benchmark.scored_here:
        score = score_vqa(run.outputs)
        summary.update(score.as_dict())
        text = header + "\n" + format_vqa_score(score)
    else:
        skipped = [
            {"index": i, "image": o.get("image"), "regions": len(o.get("mask_rles") or []), "reason": o["skipped"]}
            for i, o in enumerate(run.outputs)
            if o.get("skipped")
        ]
        summary.update(
            {
                "skipped": len(skipped),
                "skipped_items": skipped,
                "score": None,
                "judge": judge_instructions(benchmark, output),
            }
        )
        lines = [f"  skipped #{s['index']} {s['image']} ({s['regions']} regions): {s['reason']}" for s in skipped]
        text = "\n".join([header, *lines, judge_instructions(benchmark, output)])
    if run.tiny_model:
        text += "\n" + TINY_CHANCE_NOTE
    print(json.dumps(summary, indent=2) if args.json else text)


def score_command(args: argparse.Namespace) -> None:
    """``gar-tools eval score OUTPUTS.json``: upstream's table (and ours) for a GAR-Bench-VQA outputs file."""
    outputs = load_outputs(args.outputs)
    if not outputs:
        raise InputError(f"{args.outputs}: the outputs file has no items", field="outputs")
    if not all("answer" in o and "choices" in o for o in outputs):
        raise InputError(
            f"{args.outputs}: not GAR-Bench-VQA outputs (items need `answer` and `choices`); caption outputs need "
            "an external judge model: see `gar-tools eval gar-bench-caption-simple --help`",
            field="outputs",
        )
    score = score_vqa(outputs)
    if args.json:
        print(json.dumps({"benchmark": "gar-bench-vqa", "outputs": str(args.outputs), **score.as_dict()}, indent=2))
    else:
        print(format_vqa_score(score))
