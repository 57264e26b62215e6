"""The names of the decode loop's attention choices, importable without torch (the CLI and the server settings list
them before any model is loaded)."""

from __future__ import annotations

__all__ = ["DECODE_ATTENTIONS", "DECODE_ATTENTION_CHOICES"]

#: A :class:`~gar_tools.model.decoder.BatchDecoder`'s attention over its KV cache.
DECODE_ATTENTIONS = ("sdpa", "matmul", "triton")
#: What an engine, the servers and the CLI accept: ``auto`` is ``triton`` on CUDA (with Triton installed), else
#: ``sdpa``.
DECODE_ATTENTION_CHOICES = ("auto", *DECODE_ATTENTIONS)
