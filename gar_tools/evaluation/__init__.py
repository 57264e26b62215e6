"""GAR-Bench evaluation: reproduce the paper's numbers with this package's model path (``gar-tools eval``).

* :mod:`~gar_tools.evaluation.benchmarks`: the tasks and upstream's exact questions;
* :mod:`~gar_tools.evaluation.items`: annotation and outputs files in the authors' layout;
* :mod:`~gar_tools.evaluation.runner`: concurrent, resumable runs through a toolkit;
* :mod:`~gar_tools.evaluation.scoring`: upstream's exact-match table and our parsed-choice table;
* :mod:`~gar_tools.evaluation.progress`: the stderr progress bar;
* :mod:`~gar_tools.evaluation.commands`: the ``gar-tools eval`` handlers.
"""

from __future__ import annotations

from gar_tools.evaluation.benchmarks import BENCHMARKS, DETAILED_QUESTION, Benchmark, build_request, upstream_question
from gar_tools.evaluation.items import item_key, load_items, load_outputs, write_outputs
from gar_tools.evaluation.runner import EvalRun, run_benchmark
from gar_tools.evaluation.scoring import Table, Tally, VqaScore, format_vqa_score, score_vqa

__all__ = [
    "BENCHMARKS",
    "DETAILED_QUESTION",
    "Benchmark",
    "EvalRun",
    "Table",
    "Tally",
    "VqaScore",
    "build_request",
    "format_vqa_score",
    "item_key",
    "load_items",
    "load_outputs",
    "run_benchmark",
    "score_vqa",
    "upstream_question",
    "write_outputs",
]
