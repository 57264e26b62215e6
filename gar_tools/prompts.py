"""GAR prompt text (gar-model.md §4) and region references in questions.

The texts here are the ones the released checkpoints were trained and evaluated with; change them and a real
checkpoint no longer sees what it learned. Region ``k`` is written ``<Prompt{k}>``; its replay slot is 256 copies
of the checkpoint's crop token ``k``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gar_tools.errors import InputError

__all__ = [
    "DESCRIBE_QUESTION",
    "SINGLE_REGION_PROMPT_INDEX",
    "prompt_token",
    "single_region_text",
    "multi_region_text",
    "relationship_question",
    "multiple_choice_question",
    "choice_letters",
    "map_region_references",
    "parse_choice",
]

#: The question of upstream's single-region describe prompt.
DESCRIBE_QUESTION = "Describe this masked region in detail."
#: Upstream puts a lone described region in prompt slot 1, not 0.
SINGLE_REGION_PROMPT_INDEX = 1

_REFERENCE = re.compile(r"<([A-Za-z_][A-Za-z0-9_.\-]{0,31})>")
_UPSTREAM = re.compile(r"^Prompt(\d+)$")
_LETTERED = re.compile(r"^\s*([A-Z])[.)]\s+")


def prompt_token(index: int) -> str:
    """``<Prompt{index}>``."""
    return f"<Prompt{index}>"


def single_region_text(slot: str, index: int = SINGLE_REGION_PROMPT_INDEX, question: str = DESCRIBE_QUESTION) -> str:
    """Upstream's single-region describe prompt: ``…: <Prompt1>;\\n<Prompt1>: {slot}Describe this masked region…``."""
    token = prompt_token(index)
    return f"There are some objects I am curious about: {token};\n{token}: {slot}{question}"


def multi_region_text(indices: Sequence[int], slots: Sequence[str], question: str) -> str:
    """Upstream's several-region prompt: the regions listed in index order, one slot line each, then the question."""
    if len(indices) != len(slots):
        raise ValueError("one slot per prompt index")
    listed = "".join(f"{prompt_token(k)}; " for k in indices)
    lines = "".join(f"{prompt_token(k)}: {slot}\n" for k, slot in zip(indices, slots, strict=True))
    return f"There are some objects I am curious about: {listed}\n{lines}\n{question}"


def relationship_question(count: int, focus: str | None = None) -> str:
    """GAR-Bench's relationship description question, for 2–5 regions.

    With two regions this is exactly GAR-Bench "detailed": ``Describe <Prompt0> in detail, including the
    relationship with <Prompt1>.`` More regions are listed the same way; ``focus`` adds one sentence.
    """
    if count < 2:
        raise ValueError("a relationship needs at least two regions")
    others = [prompt_token(k) for k in range(1, count)]
    named = others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1]
    question = f"Describe {prompt_token(0)} in detail, including the relationship with {named}."
    if focus and focus.strip():
        question += f" Focus on {focus.strip().rstrip('.')}."
    return question


def choice_letters(count: int) -> list[str]:
    """``["A", "B", …]`` for ``count`` options."""
    return [chr(ord("A") + i) for i in range(count)]


def multiple_choice_question(question: str, choices: Sequence[str]) -> str:
    """GAR-Bench-VQA's format: ``Question: {q}\\nOptions:\\nA. …\\nB. …\\nAnswer with the correct option's letter
    directly.`` Options that already start with their letter (``"A. …"``) are kept as they are."""
    lines = [f"Question: {question}", "Options:"]
    for letter, choice in zip(choice_letters(len(choices)), choices, strict=True):
        text = choice.strip()
        match = _LETTERED.match(text)
        lines.append(text if match and match.group(1) == letter else f"{letter}. {text}")
    return "\n".join(lines) + "\nAnswer with the correct option's letter directly."


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

    out = [_REFERENCE.sub(lambda m, f=field: replace(m, f), text) for text, field in zip(texts, fields, strict=True)]
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


def parse_choice(answer: str, count: int) -> str | None:
    """The option letter in a multiple-choice answer (``"C"``, ``"C."``, ``"(C) …"``, ``"The answer is C"``).

    Returns ``None`` when no single valid letter can be read.
    """
    letters = set(choice_letters(count))
    text = answer.strip()
    patterns = (
        r"^\(?([A-Z])(?:[).:,]|\s*$)",  # "C", "C.", "(C) …", "C: …"
        r"\b(?:answer|option)\s*(?:is|:)?\s*\(?([A-Z])\b",  # "The answer is C"
    )
    for pattern in patterns:
        match = re.search(pattern, text, flags=re.IGNORECASE if "answer" in pattern else 0)
        if match and match.group(1).upper() in letters:
            return match.group(1).upper()
    return None
