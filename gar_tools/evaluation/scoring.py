"""GAR-Bench-VQA accuracy, scored the way the authors score it and, beside it, with our parsed choice.

Upstream (``evaluation/GAR-Bench/inference.py``) counts an item correct when the generated text equals the answer
letter ignoring case (``model_output.lower() == answer.lower()``), per ``type`` and overall, and prints
``{type}: [{correct}/{total}]={round(100 * correct / total, 1)}`` then ``=> overall: [...]``. The parsed score
reads the letter with :func:`gar_tools.prompts.parse_choice` (``"C."``, ``"(C) …"``, ``"The answer is C"``).
Skipped items (``skipped`` set: GAR could not be asked faithfully) count as wrong in the tables over all items; the
overall accuracy over the items actually run is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gar_tools.prompts import parse_choice

__all__ = ["Tally", "Table", "VqaScore", "score_vqa", "format_vqa_score"]


@dataclass
class Tally:
    """``correct`` of ``total``."""

    correct: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float | None:
        """Percentage rounded to one decimal as upstream prints it; ``None`` for no items."""
        return round(self.correct / self.total * 100, 1) if self.total else None

    def line(self, label: str) -> str:
        """``label: [correct/total]=acc`` in upstream's format."""
        accuracy = "n/a" if self.accuracy is None else str(self.accuracy)
        return f"{label}: [{self.correct}/{self.total}]={accuracy}"

    def as_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "accuracy": self.accuracy}


@dataclass
class Table:
    """Per-type tallies (in order of first appearance), overall over every item, and overall over items run."""

    by_type: dict[str, Tally] = field(default_factory=dict)
    overall: Tally = field(default_factory=Tally)
    overall_run: Tally = field(default_factory=Tally)

    def add(self, kind: str, correct: bool, run: bool) -> None:
        tally = self.by_type.setdefault(kind, Tally())
        for t in (tally, self.overall, *((self.overall_run,) if run else ())):
            t.total += 1
            t.correct += int(correct)

    def lines(self) -> list[str]:
        """Upstream's table: one line per type, then ``=> overall``."""
        return [t.line(kind) for kind, t in self.by_type.items()] + [self.overall.line("=> overall")]

    def as_dict(self) -> dict[str, Any]:
        return {
            "by_type": {kind: t.as_dict() for kind, t in self.by_type.items()},
            "overall": self.overall.as_dict(),
            "overall_run": self.overall_run.as_dict(),
        }


@dataclass
class VqaScore:
    """Both scorings of one outputs file, and the items that were skipped (``index``, ``image``, ``reason``)."""

    items: int
    run: int
    exact: Table
    parsed: Table
    skipped: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "run": self.run,
            "skipped": len(self.skipped),
            "skipped_items": self.skipped,
            "exact_match": self.exact.as_dict(),
            "parsed_choice": self.parsed.as_dict(),
        }


def score_vqa(outputs: list[dict[str, Any]]) -> VqaScore:
    """Score an outputs file's items (each with ``model_output``, ``answer``, ``type``, ``choices``)."""
    exact, parsed = Table(), Table()
    skipped: list[dict[str, Any]] = []
    for index, item in enumerate(outputs):
        output = str(item.get("model_output", ""))
        answer = str(item.get("answer", ""))
        kind = str(item.get("type", "unknown"))
        reason = item.get("skipped")
        run = not reason
        if not run:
            skipped.append(
                {
                    "index": index,
                    "image": item.get("image"),
                    "regions": len(item.get("mask_rles") or []),
                    "reason": reason,
                }
            )
        exact.add(kind, run and output.lower() == answer.lower(), run)
        letter = parse_choice(output, len(item.get("choices") or [])) if run else None
        parsed.add(kind, letter is not None and letter == answer.strip().upper(), run)
    return VqaScore(items=len(outputs), run=len(outputs) - len(skipped), exact=exact, parsed=parsed, skipped=skipped)


def format_vqa_score(score: VqaScore) -> str:
    """The text summary: upstream's table (exact match), the same with our parsed choice, and the skipped items."""
    out = [f"GAR-Bench-VQA: {score.items} items, {score.run} run, {len(score.skipped)} skipped"]
    if score.skipped:
        for entry in score.skipped:
            out.append(f"  skipped #{entry['index']} {entry['image']} ({entry['regions']} regions): {entry['reason']}")
    sections = (
        ("exact match (upstream's scoring: output == answer letter, case-insensitive)", score.exact),
        ("parsed choice (the letter read from the output)", score.parsed),
    )
    for title, table in sections:
        out.append("")
        out.append(title + (", skipped items counted wrong:" if score.skipped else ":"))
        out.extend(table.lines())
        if score.skipped:
            out.append(table.overall_run.line(f"=> over the {score.run} items run"))
    return "\n".join(out)
