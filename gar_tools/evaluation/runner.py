"""Run a GAR-Bench task through a toolkit: concurrent requests, resumable outputs file, progress bar.

Every item goes through :meth:`GarToolkit.arun` (``answer_about_regions``), at most ``concurrency`` at a time, so
an engine that batches requests gets several to batch. After each item the outputs file is rewritten atomically
in annotation order; a later run with the same outputs path keeps the items already answered and asks only the
rest. Items with more regions than GAR's prompt slots are not asked (they cannot be asked faithfully): they are
written with ``model_output: ""`` and ``skipped``, as are items the tool rejects (the reason is kept).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gar_tools.errors import InputError
from gar_tools.evaluation.benchmarks import Benchmark, build_request
from gar_tools.evaluation.items import item_key, load_outputs, write_outputs
from gar_tools.evaluation.progress import ProgressBar
from gar_tools.inputs import MAX_REGIONS

__all__ = ["EvalRun", "run_benchmark"]


@dataclass
class EvalRun:
    """What a run did: the outputs (annotation order), how many were resumed, asked and skipped, and timing."""

    outputs: list[dict[str, Any]]
    resumed: int = 0
    asked: int = 0
    skipped: int = 0
    seconds: float = 0.0
    tiny_model: bool = False
    model: str = ""


def _resume(path: Path, items: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Outputs already in ``path`` for these items (answered ones only; skipped ones are decided again)."""
    if not path.is_file():
        return {}
    by_key = {item_key(o): o for o in load_outputs(path) if not o.get("skipped")}
    return {i: by_key[item_key(item)] for i, item in enumerate(items) if item_key(item) in by_key}


def _running_accuracy(outputs: list[dict[str, Any] | None]) -> str:
    """Exact-match accuracy over the items answered so far (skipped ones left out)."""
    done = [o for o in outputs if o is not None and not o.get("skipped") and "answer" in o]
    if not done:
        return ""
    correct = sum(str(o["model_output"]).lower() == str(o["answer"]).lower() for o in done)
    return f"acc {correct / len(done) * 100:.1f}% ({correct}/{len(done)})"


async def run_benchmark(
    toolkit: Any,
    benchmark: Benchmark,
    items: list[dict[str, Any]],
    *,
    image_folder: Path,
    output: Path,
    concurrency: int = 4,
    max_new_tokens: int = 1024,
    resume: bool = True,
    stream: TextIO | None = None,
) -> EvalRun:
    """Ask every item of ``benchmark`` through ``toolkit`` and write upstream-format outputs to ``output``.

    Args:
        toolkit: a :class:`~gar_tools.toolkit.GarToolkit` (anything with its async ``arun``).
        items: the annotation items (see :func:`~gar_tools.evaluation.items.load_items`).
        image_folder: what item ``image`` paths are relative to (upstream: the annotation file's folder).
        output: the outputs file; with ``resume`` the items it already answers are kept and not asked again.
        concurrency: requests in flight at once.
        stream: where the progress bar goes (default stderr).
    """
    if concurrency < 1:
        raise InputError("must be at least 1", field="concurrency")
    started = time.perf_counter()
    outputs: list[dict[str, Any] | None] = [None] * len(items)
    resumed = _resume(output, items) if resume else {}
    for index, done in resumed.items():
        outputs[index] = done
    run = EvalRun(outputs=[], resumed=len(resumed))
    for index, item in enumerate(items):
        if outputs[index] is None and len(item["mask_rles"]) > MAX_REGIONS:
            reason = f"{len(item['mask_rles'])} regions; GAR has {MAX_REGIONS} prompt slots"
            outputs[index] = {**item, "model_output": "", "skipped": reason}
            run.skipped += 1
    pending = [i for i, o in enumerate(outputs) if o is None]
    bar = ProgressBar(len(items), label=benchmark.name, initial=len(items) - len(pending), stream=stream)
    if resumed:
        bar.stream.write(
            f"resuming {output}: {len(resumed)} of {len(items)} items already answered there are kept "
            "(whatever model answered them; --restart to ask everything again)\n"
        )
    semaphore = asyncio.Semaphore(concurrency)

    def save() -> None:
        write_outputs(output, [o for o in outputs if o is not None])

    save()

    async def ask(index: int) -> None:
        item = items[index]
        request = build_request(benchmark, item, image_folder, max_new_tokens)
        async with semaphore:
            try:
                result = await toolkit.arun("answer_about_regions", request)
            except InputError as exc:
                outputs[index] = {**item, "model_output": "", "skipped": f"rejected: {exc}"}
                run.skipped += 1
            else:
                outputs[index] = {**item, "model_output": result.text}
                run.asked += 1
                run.tiny_model = run.tiny_model or bool(result.tiny_model)
                run.model = result.model
        save()
        bar.update(extra=_running_accuracy(outputs) if benchmark.scored_here else None)

    try:
        await asyncio.gather(*(ask(i) for i in pending))
    finally:
        bar.close()
    run.outputs = [o for o in outputs if o is not None]
    run.seconds = time.perf_counter() - started
    return run
