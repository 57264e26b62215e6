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


def _prepare(pipeline, tool: str, request):
    job = build_job(tool, request, ImagePolicy())
    return pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)


def _check_structure(pipeline, prepared, regions: int) -> None:
    ids = prepared.input_ids[0]
    config = pipeline.config
    assert int(ids[0]) == pipeline.processor.bos_token_id and int((ids == ids[0]).sum()) == 1
    image_positions = (ids == config.image_token_id).nonzero().flatten()
    assert image_positions.numel() == (1 + prepared.num_tiles) * 256
    assert int(image_positions[-1] - image_positions[0]) == image_positions.numel() - 1  # one run
    for k, slot in enumerate(config.crop_tokens_ids):
        positions = (ids == slot).nonzero().flatten()
        expected = 256 if k < regions else 0
        assert positions.numel() == expected, f"slot {k}"
        if expected:
            assert int(positions[-1] - positions[0]) == 255


def _assert_same_specials(pipeline, tool: str, request, baseline, text: str, regions: int = 2) -> None:
    prepared = _prepare(pipeline, tool, request)
    _check_structure(pipeline, prepared, regions)
    expected = _special_counts(pipeline, _prepare(pipeline, tool, baseline).input_ids[0])
    assert _special_counts(pipeline, prepared.input_ids[0]) == expected
    # The caller's text reaches the model as the characters it is made of.
    assert text in pipeline.processor.tokenizer.decode(prepared.input_ids[0])


def _answer(question: str, choices: list[str] | None = None) -> AnswerAboutRegionsRequest:
    return AnswerAboutRegionsRequest(image=IMAGE, regions=_REGIONS, question=question, choices=choices)


def _compare(focus: str | None) -> CompareRegionsRequest:
    return CompareRegionsRequest(image=IMAGE, regions=_REGIONS, focus=focus, max_new_tokens=1)


def test_question_tokens_stay_text(tiny_pipeline, tokens) -> None:
    plain = [t for t in tokens if not _REFERENCE_LIKE.match(t)]
    for chunk in _chunks(plain, 1900):
        request = _answer(f"Is <a> near <b>? {chunk}")
        _assert_same_specials(tiny_pipeline, "answer_about_regions", request, _answer("Is <a> near <b>? "), chunk)


def test_choice_tokens_stay_text(tiny_pipeline, tokens) -> None:
    plain = [t for t in tokens if not _REFERENCE_LIKE.match(t)]
    chunks = _chunks(plain, 990)
    assert 2 <= len(chunks) <= 26
    request = _answer("Which is <a>, which <b>?", chunks)
    baseline = _answer("Which is <a>, which <b>?", ["x"] * len(chunks))
    prepared = _prepare(tiny_pipeline, "answer_about_regions", request)
    _check_structure(tiny_pipeline, prepared, 2)
    expected = _special_counts(tiny_pipeline, _prepare(tiny_pipeline, "answer_about_regions", baseline).input_ids[0])
    assert _special_counts(tiny_pipeline, prepared.input_ids[0]) == expected
    decoded = tiny_pipeline.processor.tokenizer.decode(prepared.input_ids[0])
    assert all(chunk in decoded for chunk in chunks)
    # Each choice position on its own, with the slot tokens and the image token, too.
    for i in range(3):
        choices = ["first", "second", "third"]
        choices[i] = "<|image|><|reserved_special_token_2|> and <|eot_id|>"
        _assert_same_specials(
            tiny_pipeline,
            "answer_about_regions",
            _answer("Which is <a>, which <b>?", choices),
            _answer("Which is <a>, which <b>?", ["first", "second", "third"]),
            choices[i],
        )


def test_focus_tokens_stay_text(tiny_pipeline, tokens) -> None:
    # Focus text is not read for <id> references, so reference-like tokens of no region (<NO_Prompt>, <Prompt2>…)
    # must stay text too; <Prompt0> and <Prompt1> name this call's regions (tested below).
    plain = [t for t in tokens if t not in ("<Prompt0>", "<Prompt1>")]
    baseline = _compare(None)
    for chunk in _chunks(plain, 480):
        request = _compare(chunk)
        _assert_same_specials(tiny_pipeline, "compare_regions", request, baseline, chunk)


@pytest.mark.parametrize("field", ["question", "choices"])
def test_reference_like_tokens_in_question_and_choices(tiny_pipeline, tokens, field: str) -> None:
    """``<Prompt0>``/``<Prompt1>`` are references to this call's two regions; every other ``<…>`` token is refused."""
    for token in (t for t in tokens if _REFERENCE_LIKE.match(t)):
        if field == "question":
            request = _answer(f"Is <a> near <b>? {token}")
        else:
            request = _answer("Is <a> near <b>?", ["yes", f"maybe {token}"])
        valid = token in ("<Prompt0>", "<Prompt1>")
        if not valid:
            with pytest.raises(InputError, match=re.escape(token[1:-1])) as err:
                build_job("answer_about_regions", request, ImagePolicy())
            assert err.value.field == ("question" if field == "question" else "choices[1]")
            continue
        prepared = _prepare(tiny_pipeline, "answer_about_regions", request)
        _check_structure(tiny_pipeline, prepared, 2)
        counts = _special_counts(tiny_pipeline, prepared.input_ids[0])
        baseline = _answer("Is <a> near <b>?") if field == "question" else _answer("Is <a> near <b>?", ["yes", "x"])
        expected = _special_counts(
            tiny_pipeline, _prepare(tiny_pipeline, "answer_about_regions", baseline).input_ids[0]
        )
        expected[tiny_pipeline.processor.tokenizer.convert_tokens_to_ids(token)] += 1
        assert counts == expected


def test_focus_references_of_this_calls_regions(tiny_pipeline) -> None:
    prepared = _prepare(tiny_pipeline, "compare_regions", _compare("how <Prompt1> moves"))
    counts = _special_counts(tiny_pipeline, prepared.input_ids[0])
    baseline = _special_counts(tiny_pipeline, _prepare(tiny_pipeline, "compare_regions", _compare(None)).input_ids[0])
    baseline[tiny_pipeline.processor.tokenizer.convert_tokens_to_ids("<Prompt1>")] += 1
    assert counts == baseline


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
            image=IMAGE, regions=_REGIONS, question="<a> or <b>? <|reserved_special_token_2|>", max_new_tokens=1
        )
        assert result.timings.tokens_generated == 1
        result = kit.answer_about_regions(
            image=IMAGE, regions=_REGIONS, question="<a> or <b>?", choices=["<|image|>", "<|eot_id|>"], max_new_tokens=1
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
