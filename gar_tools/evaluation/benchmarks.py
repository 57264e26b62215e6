"""The GAR-Bench tasks: which annotation fields each needs and the exact question upstream asked.

The prompts follow the authors' evaluation script (``evaluation/GAR-Bench/inference.py`` in
github.com/Haochen-Wang409/Grasp-Any-Region, modes ``vqa``, ``simple`` and ``detailed``); written here from that
script's behaviour, not copied. Upstream sends every item's masks as ``<Prompt0>…`` in annotation order, greedy,
``max_new_tokens=1024``. Our requests go through :meth:`GarToolkit.arun` (``answer_about_regions``), whose
multiple-choice format gives byte for byte :func:`upstream_question`'s text for GAR-Bench-VQA's lettered options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Benchmark",
    "BENCHMARKS",
    "DETAILED_QUESTION",
    "upstream_question",
    "build_request",
]

#: GAR-Bench-Caption-Detailed's question (upstream's ``--mode detailed``), the same for every item.
DETAILED_QUESTION = "Describe <Prompt0> in detail, including the relationship with <Prompt1>."


@dataclass(frozen=True)
class Benchmark:
    """One GAR-Bench task.

    Attributes:
        name: the ``gar-tools eval`` sub-command.
        mode: upstream's ``--mode`` (also the suffix of upstream's output file name).
        fields: annotation fields every item must have.
        scored_here: whether ``gar-tools eval`` can score it (VQA: exact match) or it needs an external judge model.
        judge_script: upstream's judge script for the caption tasks.
    """

    name: str
    mode: str
    fields: tuple[str, ...]
    scored_here: bool
    judge_script: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gar-bench-vqa", "vqa", ("image", "mask_rles", "question", "choices", "answer", "type"), True),
        Benchmark(
            "gar-bench-caption-simple",
            "simple",
            ("image", "mask_rles", "question"),
            False,
            "evaluation/GAR-Bench/eval_simple.py",
        ),
        Benchmark(
            "gar-bench-caption-detailed",
            "detailed",
            ("image", "mask_rles"),
            False,
            "evaluation/GAR-Bench/eval_detailed.py",
        ),
    )
}


def upstream_question(mode: str, item: dict[str, Any]) -> str:
    """The question text upstream's script puts after the region list, for reference and tests.

    ``vqa``: ``Question: {question}\\nOptions:`` then each choice as given on its own line (GAR-Bench-VQA's choices
    already start with ``A. ``, ``B. ``…), then ``\\nAnswer with the correct option's letter directly.``;
    ``simple``: the item's question; ``detailed``: :data:`DETAILED_QUESTION`.
    """
    if mode == "vqa":
        lines = [f"Question: {item['question']}", "Options:", *item["choices"]]
        return "\n".join(lines) + "\nAnswer with the correct option's letter directly."
    if mode == "simple":
        return str(item["question"])
    if mode == "detailed":
        return DETAILED_QUESTION
    raise ValueError(f"unknown GAR-Bench mode {mode!r}")


def build_request(benchmark: Benchmark, item: dict[str, Any], image_folder: Path, max_new_tokens: int) -> dict:
    """The ``answer_about_regions`` request for one item: its image, its masks in order as ``<Prompt0>…``, and
    upstream's question (the choices passed separately, so the toolkit also parses the letter)."""
    request: dict[str, Any] = {
        "image": str(image_folder / item["image"]),
        "regions": [{"rle": rle} for rle in item["mask_rles"]],
        "max_new_tokens": max_new_tokens,
    }
    if benchmark.mode == "vqa":
        request["question"] = item["question"]
        request["choices"] = list(item["choices"])
    else:
        request["question"] = upstream_question(benchmark.mode, item)
    return request
