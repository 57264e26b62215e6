"""Caller-written text never produces a special or added token (issue 11).

Every special and added token of the tiny checkpoint's tokenizer (the same as upstream's) is written into each text
field a caller controls (question, each choice, focus, region ids); the final ``input_ids`` must hold exactly the
special ids of the same request without that text: one ``<|begin_of_text|>``, one image-token run, 256 slot tokens
per region and none for other slots, the template's headers, and ``<PromptK>`` only where the tool layer wrote it.
"""

from __future__ import annotations

import base64
import io
import re
from collections import Counter

import pytest
import torch
from PIL import Image

from gar_tools.engine.local import LocalEngine, build_job
from gar_tools.errors import InputError
from gar_tools.images import ImagePolicy
from gar_tools.inputs import AnswerAboutRegionsRequest, CompareRegionsRequest
from gar_tools.toolkit import GarToolkit

_REFERENCE_LIKE = re.compile(r"^<[A-Za-z_][A-Za-z0-9_.\-]{0,31}>$")  # what map_region_references reads as <id>
_REGIONS = [{"id": "a", "box": [2, 2, 20, 20]}, {"id": "b", "box": [24, 10, 46, 38]}]


def _image_uri() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (120, 60, 200)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


IMAGE = _image_uri()


@pytest.fixture(scope="module")
def tokens(tiny_pipeline) -> list[str]:
    tokenizer = tiny_pipeline.processor.tokenizer
    found = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()))
    assert {"<|begin_of_text|>", "<|eot_id|>", "<|image|>", "<|reserved_special_token_2|>", "<NO_Prompt>"} <= set(found)
    assert len(found) >= 262
    return found


def _chunks(tokens: list[str], limit: int) -> list[str]:
    """The tokens joined (with a space, and some glued together) into texts of at most ``limit`` characters."""
    out: list[str] = []
    current = ""
    for i, token in enumerate(tokens):
        sep = "" if i % 3 == 0 else " "
        if current and len(current) + len(sep) + len(token) > limit:
            out.append(current)
            current, sep = "", ""
        current += sep + token
    return [*out, current] if current else out


def _special_counts(pipeline, ids: torch.Tensor) -> Counter[int]:
    special = set(pipeline.processor.tokenizer.get_added_vocab().values())
    return Counter(int(i) for i in ids.tolist() if int(i) in special)


_NUM_TILES = 16  # tiles the tiny checkpoint cuts the 48x40 test image into (checked in test_fast_path_is_prepare)


def _input_ids(pipeline, tool: str, request) -> torch.Tensor:
    """The request's prompt ids as ``pipeline.prepare`` builds them, without its image work (which takes 0.3 s and
    is the same for every request here): build_job, then the processor's prompt parts and encode_text."""
    job = build_job(tool, request, ImagePolicy())
    processor = pipeline.processor
    return processor.encode_text(processor.prompt_parts(job.prompt_indices, job.question), _NUM_TILES)[0]


def _check_structure(pipeline, ids: torch.Tensor, regions: int) -> None:
    config = pipeline.config
    assert int(ids[0]) == pipeline.processor.bos_token_id and int((ids == ids[0]).sum()) == 1
    image_positions = (ids == config.image_token_id).nonzero().flatten()
    assert image_positions.numel() == (1 + _NUM_TILES) * 256
    assert int(image_positions[-1] - image_positions[0]) == image_positions.numel() - 1  # one run
    for k, slot in enumerate(config.crop_tokens_ids):
        positions = (ids == slot).nonzero().flatten()
        expected = 256 if k < regions else 0
        assert positions.numel() == expected, f"slot {k}"
        if expected:
            assert int(positions[-1] - positions[0]) == 255


def _assert_same_specials(pipeline, tool: str, request, expected: Counter[int], text: str, regions: int = 2) -> None:
    ids = _input_ids(pipeline, tool, request)
    _check_structure(pipeline, ids, regions)
    assert _special_counts(pipeline, ids) == expected
    # The caller's text reaches the model as the characters it is made of.
    assert text in pipeline.processor.tokenizer.decode(ids)


def _counts(pipeline, tool: str, request) -> Counter[int]:
    return _special_counts(pipeline, _input_ids(pipeline, tool, request))


def _answer(question: str, choices: list[str] | None = None) -> AnswerAboutRegionsRequest:
    return AnswerAboutRegionsRequest(image=IMAGE, regions=_REGIONS, question=question, choices=choices)


def _compare(focus: str | None) -> CompareRegionsRequest:
    return CompareRegionsRequest(image=IMAGE, regions=_REGIONS, focus=focus, max_new_tokens=1)


def test_question_tokens_stay_text(tiny_pipeline, tokens) -> None:
    plain = [t for t in tokens if not _REFERENCE_LIKE.match(t)]
    expected = _counts(tiny_pipeline, "answer_about_regions", _answer("Is <a> near <b>? "))
    for chunk in _chunks(plain, 1900):
        request = _answer(f"Is <a> near <b>? {chunk}")
        _assert_same_specials(tiny_pipeline, "answer_about_regions", request, expected, chunk)


def test_fast_path_is_prepare(tiny_pipeline) -> None:
    """The helper these tests use gives exactly ``prepare``'s ids (with its slot and image-token checks)."""
    for tool, request in [
        ("answer_about_regions", _answer("<a> <b>? <|eot_id|><|reserved_special_token_2|>", ["<|image|>", "b"])),
        ("compare_regions", _compare("<|start_header_id|> <NO_Prompt> <Prompt1>")),
    ]:
        job = build_job(tool, request, ImagePolicy())
        prepared = tiny_pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)
        assert prepared.num_tiles == _NUM_TILES
        assert torch.equal(prepared.input_ids[0], _input_ids(tiny_pipeline, tool, request))


def test_choice_tokens_stay_text(tiny_pipeline, tokens) -> None:
    plain = [t for t in tokens if not _REFERENCE_LIKE.match(t)]
    chunks = _chunks(plain, 990)
    assert 2 <= len(chunks) <= 26
    expected = _counts(tiny_pipeline, "answer_about_regions", _answer("Which is <a>, which <b>?", ["x"] * len(chunks)))
    ids = _input_ids(tiny_pipeline, "answer_about_regions", _answer("Which is <a>, which <b>?", chunks))
    _check_structure(tiny_pipeline, ids, 2)
    assert _special_counts(tiny_pipeline, ids) == expected
    decoded = tiny_pipeline.processor.tokenizer.decode(ids)
    assert all(chunk in decoded for chunk in chunks)
    # Each choice position on its own, with the slot tokens and the image token, too.
    expected = _counts(tiny_pipeline, "answer_about_regions", _answer("Which is <a>, which <b>?", ["f", "s", "t"]))
    for i in range(3):
        choices = ["f", "s", "t"]
        choices[i] = "<|image|><|reserved_special_token_2|> and <|eot_id|>"
        request = _answer("Which is <a>, which <b>?", choices)
        _assert_same_specials(tiny_pipeline, "answer_about_regions", request, expected, choices[i])


def test_focus_tokens_stay_text(tiny_pipeline, tokens) -> None:
    # Focus text is not read for <id> references, so reference-like tokens of no region (<NO_Prompt>, <Prompt2>…)
    # must stay text too; <Prompt0> and <Prompt1> name this call's regions (tested below).
    plain = [t for t in tokens if t not in ("<Prompt0>", "<Prompt1>")]
    expected = _counts(tiny_pipeline, "compare_regions", _compare(None))
    for chunk in _chunks(plain, 480):
        _assert_same_specials(tiny_pipeline, "compare_regions", _compare(chunk), expected, chunk)


@pytest.mark.parametrize("field", ["question", "choices"])
def test_reference_like_tokens_in_question_and_choices(tiny_pipeline, tokens, field: str) -> None:
    """``<Prompt0>``/``<Prompt1>`` are references to this call's two regions; every other ``<…>`` token is refused."""
    if field == "question":
        baseline = _counts(tiny_pipeline, "answer_about_regions", _answer("Is <a> near <b>? "))
    else:
        baseline = _counts(tiny_pipeline, "answer_about_regions", _answer("Is <a> near <b>?", ["yes", "maybe "]))
    for token in (t for t in tokens if _REFERENCE_LIKE.match(t)):
        if field == "question":
            request = _answer(f"Is <a> near <b>? {token}")
        else:
            request = _answer("Is <a> near <b>?", ["yes", f"maybe {token}"])
        if token not in ("<Prompt0>", "<Prompt1>"):
            with pytest.raises(InputError, match=re.escape(token[1:-1])) as err:
                build_job("answer_about_regions", request, ImagePolicy())
            assert err.value.field == ("question" if field == "question" else "choices[1]")
            continue
        ids = _input_ids(tiny_pipeline, "answer_about_regions", request)
        _check_structure(tiny_pipeline, ids, 2)
        expected = baseline.copy()
        expected[tiny_pipeline.processor.tokenizer.convert_tokens_to_ids(token)] += 1
        assert _special_counts(tiny_pipeline, ids) == expected


def test_focus_references_of_this_calls_regions(tiny_pipeline) -> None:
    expected = _counts(tiny_pipeline, "compare_regions", _compare(None))
    expected[tiny_pipeline.processor.tokenizer.convert_tokens_to_ids("<Prompt1>")] += 1
    assert _counts(tiny_pipeline, "compare_regions", _compare("how <Prompt1> moves")) == expected


def test_region_ids_cannot_carry_special_tokens(tiny_pipeline) -> None:
    kit = GarToolkit(LocalEngine(pipeline=tiny_pipeline))
    try:
        with pytest.raises(InputError) as err:
            kit.answer_about_regions(
                image=IMAGE, regions=[{"id": "<|eot_id|>", "box": [2, 2, 20, 20]}], question="<|eot_id|>?"
            )
        assert "regions" in (err.value.field or "")
        # An id spelled like an added token is only a name: it maps to its region's <PromptK>.
        request = AnswerAboutRegionsRequest(
            image=IMAGE, regions=[{"id": "NO_Prompt", "box": [2, 2, 20, 20]}], question="What is <NO_Prompt>?"
        )
        job = build_job("answer_about_regions", request, ImagePolicy())
        assert job.question == "What is <Prompt0>?"
    finally:
        kit.close()


def test_findings_run_end_to_end(tiny_pipeline) -> None:
    """The findings of issue 11: these crashed (slot token) or failed inside (image token) before."""
    kit = GarToolkit(LocalEngine(pipeline=tiny_pipeline))
    try:
        result = kit.answer_about_regions(
            image=IMAGE,
            regions=_REGIONS,
            question="<a> or <b>? <|reserved_special_token_2|>",
            choices=["<|image|>", "<|eot_id|>"],
            max_new_tokens=1,
        )
        assert result.timings.tokens_generated == 1
        result = kit.compare_regions(
            image=IMAGE, regions=_REGIONS, focus="<|reserved_special_token_2|><|start_header_id|>", max_new_tokens=1
        )
        assert result.timings.tokens_generated == 1
    finally:
        kit.close()


def test_benign_prompts_tokenize_as_before(tiny_pipeline) -> None:
    """For text without special-token strings, the ids are what tokenizing the whole rendered prompt gives."""
    processor = tiny_pipeline.processor
    cases = [
        ([1], None),
        ([0, 1, 2], "  What is <Prompt0> doing\n\n with <Prompt1> and <Prompt2>?  \n"),
        ([0], "naïve 🐶 <Prompt0>"),
    ]
    for indices, question in cases:
        text = processor.prompt_text(indices, question)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        rendered = processor.tokenizer.apply_chat_template(
            messages, chat_template=processor.chat_template, tokenize=False, add_generation_prompt=True
        )
        whole = processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        at = whole.index(processor.image_token_id)
        whole = whole[:at] + [processor.image_token_id] * 512 + whole[at + 1 :]
        assert processor.encode_text(processor.prompt_parts(indices, question), 1)[0].tolist() == whole
