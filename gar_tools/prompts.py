"""Tool-level question text: region references in questions, the compare focus, and reading answers.

The checkpoint's own templates (what the weights were trained with) are in :mod:`gar_tools.model.prompts`; this
module builds on them and never changes their wording.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gar_tools.errors import InputError
from gar_tools.model.prompts import choice_letters, prompt_token, relationship_question

__all__ = ["REFERENCE_PATTERN", "compare_question", "map_region_references", "parse_choice"]

REFERENCE_PATTERN = re.compile(r"<([A-Za-z_][A-Za-z0-9_.\-]{0,31})>")
"""A region reference in a question: ``<id>`` (ids follow :data:`gar_tools.inputs.REGION_ID_PATTERN`)."""

_UPSTREAM = re.compile(r"^Prompt(\d+)$")


def compare_question(count: int, focus: str | None = None) -> str:
    """The relationship question for ``count`` regions (:func:`~gar_tools.model.prompts.relationship_question`),
    plus one sentence ``Focus on {focus}.`` when a focus is given."""
    question = relationship_question(count)
    if focus and focus.strip():
        question += f" Focus on {focus.strip().rstrip('.')}."
    return question


def map_region_references(
    texts: Sequence[str], ids: Sequence[str], *, fields: Sequence[str], require_all: bool
) -> list[str]:
    """Rewrite ``<id>`` references to ``<PromptK>`` (K = the region's position in ``ids``).

    Upstream's own spelling ``<PromptK>`` is accepted when K is a region's position. Unknown references are an
    error naming the field; with ``require_all``, so is a region that no text mentions (the model would not know
    what it is asked about it).
    """
    index = {region_id: k for k, region_id in enumerate(ids)}
    used: set[int] = set()

    def replace(match: re.Match[str], field: str) -> str:
        name = match.group(1)
        if name in index:
            used.add(index[name])
            return prompt_token(index[name])
        upstream = _UPSTREAM.match(name)
        if upstream and int(upstream.group(1)) < len(ids):
            used.add(int(upstream.group(1)))
            return match.group(0)
        known = ", ".join(f"<{i}>" for i in ids)
        raise InputError(
            f"refers to <{name}>, which is not one of this call's regions; use one of {known} "
            f"(or <Prompt0>…<Prompt{len(ids) - 1}>)",
            field=field,
        )

    out = [REFERENCE_PATTERN.sub(lambda m, f=field: replace(m, f), t) for t, field in zip(texts, fields, strict=True)]
    if require_all:
        missing = [ids[k] for k in range(len(ids)) if k not in used]
        if missing:
            names = ", ".join(f"<{i}>" for i in missing)
            raise InputError(
                f"region(s) {names} are never referred to; name every region in the question or the choices "
                f"(as <id>), or leave the unused ones out of `regions`",
                field=fields[0],
            )
    return out


# Read in order; the first pattern that yields exactly one valid letter wins. Option letters are uppercase only
# (so the article "a" is never option A); the keywords match in any case.
_CHOICE_PATTERNS = (
    re.compile(r"^\s*\(?([A-Z])\s*(?:[).:,]|$|(?i:is)\b)"),  # "C", "C.", "(C) …", "C: …", "C is correct"
    re.compile(  # "The answer is C", "Answer: (C)", "the correct option is C"; not "option A is wrong"
        r"(?i:\b(?:answer|option|choice))\s*(?:(?i:is)\b|:)?\s*(?:(?i:option)\s*)?\(?([A-Z])\b(?![-'’])"
        r"(?!\)?\s+(?i:is\s+(?:wrong|incorrect|not)))"
    ),
    re.compile(r"\(([A-Z])\)"),  # "… so (C)"
)


def parse_choice(answer: str, count: int) -> str | None:
    """The option letter of a multiple-choice answer (``"C"``, ``"C."``, ``"(C) …"``, ``"The answer is C"``).

    Only an uppercase letter among the ``count`` options counts. Returns ``None`` when no single letter can be
    read (none, or several different ones named the same way).
    """
    letters = set(choice_letters(count))
    for pattern in _CHOICE_PATTERNS:
        found = {m for m in pattern.findall(answer) if m in letters}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None
    return None
