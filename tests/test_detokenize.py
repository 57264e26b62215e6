"""Streamed text deltas add up to the final text (``decode(ids, skip_special_tokens=True).strip()``)."""

from __future__ import annotations

from gar_tools.model.detokenize import TextStream


def _stream(tokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    stream = TextStream(tokenizer)
    deltas = [stream.push(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    deltas.append(stream.finish())
    assert stream.text == "".join(deltas)
    return deltas


def test_deltas_of_generated_ids_add_up_to_the_generation_text(tiny_pipeline, mixed_requests) -> None:
    tokenizer = tiny_pipeline.processor.tokenizer
    for request in mixed_requests:
        final = tokenizer.decode(request.expected, skip_special_tokens=True).strip()
        for chunk in (1, 3):
            assert "".join(_stream(tokenizer, request.expected, chunk)) == final


def test_split_utf8_characters_are_held_back_and_whitespace_stripped(tiny_pipeline) -> None:
    tokenizer = tiny_pipeline.processor.tokenizer
    text = "  héllo 🙂 wörld  "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [128009]  # bytes, then <|eot_id|>
    assert len(ids) > len(text)  # the tiny tokenizer has no merges: multi-byte characters span several tokens
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == "héllo 🙂 wörld"
    assert all("\ufffd" not in d for d in deltas)
    assert not deltas[0] and not deltas[1]  # leading spaces are not emitted
    assert " 🙂" in deltas  # whole, once its four bytes are in (with the space held back before it)
    assert deltas[-1] == ""  # trailing spaces were held back and the final text drops them
