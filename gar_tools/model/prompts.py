"""The prompt texts the released GAR checkpoints were trained and evaluated with (gar-model.md §4).

Change them and a real checkpoint no longer sees what it learned. Region ``k`` is written ``<Prompt{k}>``; its
replay slot is 256 copies of the checkpoint's crop token ``k``. Tool-level question building (region ids, focus,
parsing answers) lives in :mod:`gar_tools.prompts`; this module imports nothing from the tool layer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "DESCRIBE_QUESTION",
    "SINGLE_REGION_PROMPT_INDEX",
    "prompt_token",
    "single_region_text",
    "multi_region_text",
    "relationship_question",
    "multiple_choice_question",
    "choice_letters",
]

#: The question of upstream's single-region describe prompt.
DESCRIBE_QUESTION = "Describe this masked region in detail."
#: Upstream puts a lone described region in prompt slot 1, not 0.
SINGLE_REGION_PROMPT_INDEX = 1

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


def relationship_question(count: int) -> str:
    """GAR-Bench's relationship description question, for 2–5 regions.

    With two regions this is exactly GAR-Bench "detailed": ``Describe <Prompt0> in detail, including the
    relationship with <Prompt1>.`` More regions are listed the same way (``<Prompt1>, <Prompt2> and <Prompt3>``).
    """
    if count < 2:
        raise ValueError("a relationship needs at least two regions")
    others = [prompt_token(k) for k in range(1, count)]
    named = others[0] if len(others) == 1 else ", ".join(others[:-1]) + " and " + others[-1]
    return f"Describe {prompt_token(0)} in detail, including the relationship with {named}."


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
