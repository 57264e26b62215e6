"""Streamed text from generated token ids: deltas whose concatenation is exactly the final text.

The final text of a generation is ``tokenizer.decode(ids, skip_special_tokens=True).strip()`` (gar-model.md §5).
:class:`TextStream` turns ids, as they arrive, into text deltas that add up to that string:

* a byte-level BPE token can end in the middle of a UTF-8 character; such a tail decodes to ``"\\ufffd"`` and is
  held back until the character is complete (the usual prefix/read-offset window, so each push decodes only a
  few tokens);
* leading whitespace is dropped, trailing whitespace is held until more text follows (``strip()``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["TextStream"]


class _Decoder(Protocol):
    def decode(self, token_ids: list[int], *, skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    """Incremental detokenizer for one generation.

    ``push(ids)`` returns the new text (possibly ``""``); ``finish()`` returns what is left (nothing but held-back
    incomplete bytes, rendered as the tokenizer renders them). ``text`` is everything emitted so far.
    """

    def __init__(self, tokenizer: _Decoder) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix_offset = 0  # ids[prefix:read] is context already turned into text
        self._read_offset = 0
        self._raw = ""  # decoded text so far (unstripped), complete characters only
        self.text = ""  # emitted: _raw stripped on the left, trailing whitespace held back

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def push(self, ids: Iterable[int]) -> str:
        self.ids.extend(int(i) for i in ids)
        before = self._decode(self.ids[self._prefix_offset : self._read_offset])
        after = self._decode(self.ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._raw += after[len(before) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._emit(self._raw.strip())

    def finish(self) -> str:
        """The rest of the text: held-back bytes decoded as they are, then stripped like the final text."""
        return self._emit(self._decode(self.ids).strip())

    def _emit(self, stable: str) -> str:
        if not stable.startswith(self.text):  # cannot happen for concatenative decoders; never emit twice
            return ""
        delta = stable[len(self.text) :]
        self.text = stable
        return delta
