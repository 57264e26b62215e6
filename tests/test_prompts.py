"""Reading the option letter out of a multiple-choice answer, and the prompt texts built for the tools."""

from __future__ import annotations

import pytest

from gar_tools.model.prompts import multiple_choice_question, relationship_question
from gar_tools.prompts import compare_question, parse_choice

CHOICES = [
    # (answer text, number of options, expected letter)
    ("C", 4, "C"),
    ("C.", 4, "C"),
    ("  B  ", 4, "B"),
    ("(B) the dog", 4, "B"),
    ("D: it is a ball", 4, "D"),
    ("A, because it is red", 4, "A"),
    ("C is correct", 4, "C"),
    ("The answer is C", 4, "C"),
    ("the answer is B.", 4, "B"),
    ("Answer: (D)", 4, "D"),
    ("The correct option is A.", 4, "A"),
    ("Option B", 4, "B"),
    ("I think so (B).", 4, "B"),
    ("The answer is a dog.", 4, None),  # the article "a" is no option letter
    ("Option a is wrong, the answer is C", 4, "C"),  # only uppercase letters count
    ("Option A is wrong, the answer is C", 4, "C"),  # a rejected option is not the answer
    ("A dog is sitting on the bench.", 4, None),
    ("E", 4, None),  # not one of the four options
    ("The answer is E", 4, None),
    ("The answer is A or the answer is B", 4, None),  # two letters: no single answer
    ("", 4, None),
    ("yes", 2, None),
    ("The answer is Cat-like", 4, None),
    ("Z", 26, "Z"),
]


@pytest.mark.parametrize(("answer", "count", "expected"), CHOICES)
def test_parse_choice(answer: str, count: int, expected: str | None) -> None:
    assert parse_choice(answer, count) == expected


def test_relationship_and_focus_text() -> None:
    assert relationship_question(2) == "Describe <Prompt0> in detail, including the relationship with <Prompt1>."
    assert relationship_question(4).endswith("with <Prompt1>, <Prompt2> and <Prompt3>.")
    assert compare_question(2, " size. ") == relationship_question(2) + " Focus on size."
    assert compare_question(3, "   ") == relationship_question(3)


def test_multiple_choice_format_is_gar_bench_vqa() -> None:
    text = multiple_choice_question("Is <Prompt0> red?", ["Yes.", "B. No."])
    assert (
        text
        == "Question: Is <Prompt0> red?\nOptions:\nA. Yes.\nB. No.\nAnswer with the correct option's letter directly."
    )
