"""Prefill and batched greedy decode over GAR's Llama, from a static KV cache with one slot per sequence.

transformers' generation takes one request at a time here (``inputs_embeds`` in, dynamic cache); this module runs
the same modules of ``model.mllm.model.language_model`` (embeddings, RMSNorms, q/k/v/o projections, the model's
own rotary embedding — so Llama 3.x rope scaling is whatever transformers computes — MLP, final norm, ``lm_head``)
so that many sequences at different lengths decode together:

* :meth:`BatchDecoder.prefill` runs one sequence's prompt embeddings (or one chunk of them) and writes its K/V
  into its slot; it returns the float32 logits of the last position.
* :meth:`BatchDecoder.step` runs one greedy decode step for slots ``0 … n-1``: each row reads its last token and
  position from device buffers, writes its new K/V at its own position, attends over its slot with a per-row
  length mask, and leaves the argmax token and the next position in the same buffers. No host value enters the
  step, so on CUDA the whole step (all layers, final norm, lm_head, argmax) is replayed from a CUDA graph captured
  per batch-size bucket; on CPU the same code runs eagerly.
* the new ids come back to the host as :class:`PendingTokens`: on CUDA one non-blocking copy into pinned memory
  per step, read when the caller wants (no sync per token); on CPU at once.

Rows of the batch that hold no running sequence have their position parked on the cache's scratch column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from gar_tools.kernels.decode_attention import decode_attention, default_split
from gar_tools.kernels.rms_norm import rms_norm
from gar_tools.kernels.rotary_kv import rotary_kv
from gar_tools.kernels.silu_mul import silu_mul
from gar_tools.model.kv_cache import StaticKVCache
from gar_tools.model.modeling import GarModel
from gar_tools.model.options import DECODE_ATTENTIONS

__all__ = [
    "BatchDecoder",
    "DecodeAttention",
    "PendingTokens",
    "decode_layer",
    "fused_decode_layer",
    "pack_qkv",
    "default_buckets",
    "default_span_buckets",
]


def default_buckets(slots: int) -> list[int]:
    """Batch-size buckets 1, 2, 4, 8, … and ``slots`` itself: a step over ``n`` rows runs the smallest ≥ ``n``."""
    buckets, b = [], 1
    while b < slots:
        buckets.append(b)
        b *= 2
    buckets.append(slots)
    return buckets


def default_span_buckets(max_len: int) -> list[int]:
    """Attention spans (cache columns a decode step reads): ``max_len`` and up to three halvings ≥ 512.

    A step attends over the smallest span holding every running row's position, so short sequences do not pay
    for reading the whole cache.
    """
    spans, span = [max_len], max_len // 2
    while span >= 512 and len(spans) < 4:
        spans.insert(0, span)
        span //= 2
    return spans


DecodeAttention = Literal["sdpa", "matmul", "triton"]


def decode_layer(
    layer: nn.Module,
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    seen: torch.Tensor,
    span: int,
    rows: torch.Tensor,
    positions: torch.Tensor,
    num_kv_heads: int,
    attention: DecodeAttention,
    split: int | None = None,
) -> torch.Tensor:
    """One Llama decoder layer for ``B`` rows of one new token each: ``x`` [B, 1, hidden] → [B, 1, hidden].

    ``keys``/``values`` are the layer's whole cache [S, KV, max_len, D]; row ``r`` (slot ``rows[r]``) writes its new
    K/V at column ``positions[r]`` and attends over what ``seen`` marks among the first ``span`` columns: for
    ``"triton"`` the count of columns each row sees [B], otherwise the bool mask [B, 1, 1, span]. The G query heads
    sharing a KV head act as G query positions (GQA without copying K/V). ``split``: the Triton kernel's chunk
    size (:func:`~gar_tools.kernels.decode_attention.decode_attention`; None: its default).
    """
    attn = layer.self_attn
    b = x.shape[0]
    head_dim = keys.shape[-1]
    groups = attn.config.num_attention_heads // num_kv_heads
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(b, 1, num_kv_heads * groups, head_dim).transpose(1, 2)  # [B, H, 1, D]
    k = attn.k_proj(h).view(b, 1, num_kv_heads, head_dim).transpose(1, 2)  # [B, KV, 1, D]
    v = attn.v_proj(h).view(b, 1, num_kv_heads, head_dim).transpose(1, 2)  # [B, KV, 1, D]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    keys[rows, :, positions] = k[:, :, 0]  # each row writes its own column
    values[rows, :, positions] = v[:, :, 0]
    q = q.reshape(b, num_kv_heads, groups, head_dim)  # [B, KV, G, D]
    out = _attend(q, keys, values, seen, span, attn.scaling, attention, split)  # [B, KV, G, D]
    x = x + attn.o_proj(out.reshape(b, 1, num_kv_heads * groups * head_dim))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    seen: torch.Tensor,
    span: int,
    scale: float,
    attention: DecodeAttention,
    split: int | None = None,
) -> torch.Tensor:
    """Queries [B, KV, G, D] against the first ``span`` cache columns, as ``seen`` says (see :func:`decode_layer`)."""
    if attention == "triton":  # split-KV kernel over the whole cache (gar_tools.kernels.decode_attention)
        return decode_attention(q, keys, values, seen, scale=scale, span=span, split=split)
    b = q.shape[0]
    k_span, v_span = keys[:b, :, :span], values[:b, :, :span]  # [B, KV, span, D]
    if attention == "matmul":
        scores = torch.matmul(q, k_span.transpose(-1, -2)).float() * scale  # [B, KV, G, span]
        scores = scores.masked_fill(~seen, float("-inf"))
        return torch.matmul(scores.softmax(dim=-1).to(v_span.dtype), v_span)  # [B, KV, G, D]
    return F.scaled_dot_product_attention(q, k_span, v_span, attn_mask=seen, scale=scale)


def pack_qkv(layer: nn.Module) -> torch.Tensor | None:
    """The layer's q, k and v projection weights as row blocks of one ``[(H + 2·KV)·D, hidden]`` matrix, so that one
    GEMV computes all three (at batch 1 the k and v GEMVs, 2 MB each at GAR-1B size, are too small to reach the
    GPU's memory bandwidth on their own). None when a projection has a bias.

    The modules' weights become views of the returned matrix — same values, no second copy, so every other path
    (prefill, ``generate``) computes what it did. Calling again returns the same matrix while the weights are still
    its views; after the model moved (``.to``), the weights are packed anew.
    """
    attn = layer.self_attn
    linears = (attn.q_proj, attn.k_proj, attn.v_proj)
    if any(lin.bias is not None for lin in linears):
        return None
    packed = getattr(attn, "_gar_packed_qkv", None)
    if packed is not None:
        row, still_views = 0, True
        for lin in linears:
            rows = lin.weight.shape[0]
            still_views &= lin.weight.data_ptr() == packed[row : row + rows].data_ptr()
            row += rows
        if still_views and packed.device == attn.q_proj.weight.device:
            return packed
    with torch.no_grad():
        packed = torch.cat([lin.weight.detach() for lin in linears])  # [(H + 2·KV)·D, hidden]
    row = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight = nn.Parameter(packed[row : row + rows], requires_grad=lin.weight.requires_grad)
        row += rows
    attn._gar_packed_qkv = packed  # a plain attribute: not a parameter or buffer of the model
    return packed


def fused_decode_layer(
    layer: nn.Module,
    x: torch.Tensor,
    pending: torch.Tensor | None,
    keys: torch.Tensor,
    values: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    seen: torch.Tensor,
    span: int,
    positions: torch.Tensor,
    num_kv_heads: int,
    attention: DecodeAttention,
    split: int | None = None,
    qkv: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_layer` with its element-wise work in fused kernels (:mod:`gar_tools.kernels`: residual add +
    RMSNorm, rotary + KV write, SiLU · up), the same math: with ``"triton"`` attention a layer is 13 launches —
    7 projections, 2 norms, rotary, 2 attention, SiLU · up.

    ``x`` [B, hidden] is the residual stream *before* ``pending`` (the previous layer's MLP output, None for the
    first layer) is added: that add happens inside this layer's first norm. Returns ``(x, mlp_out)`` the same way;
    the caller adds the last ``mlp_out`` in the final norm. Row ``r`` writes slot ``r`` (rows are slots here).
    ``qkv``: the layer's :func:`pack_qkv` matrix, to compute the three projections in one GEMV.
    """
    attn, mlp = layer.self_attn, layer.mlp
    b = x.shape[0]
    head_dim = keys.shape[-1]
    heads = attn.config.num_attention_heads
    norm = layer.input_layernorm
    if pending is None:
        h, x = rms_norm(x, norm.weight, norm.variance_epsilon)  # [B, hidden] each
    else:
        h, x = rms_norm(pending, norm.weight, norm.variance_epsilon, residual=x)
    if qkv is None:
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    else:  # one GEMV, three views of its rows: [B, H·D], [B, KV·D], [B, KV·D]
        q, k, v = F.linear(h, qkv).split([heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], -1)
    q = q.view(b, heads, head_dim)  # [B, H, D]
    k = k.view(b, num_kv_heads, head_dim)  # [B, KV, D]
    v = v.view(b, num_kv_heads, head_dim)  # [B, KV, D]
    q = rotary_kv(q, k, v, cos, sin, keys, values, positions)  # [B, H, D]; K/V written at each row's position
    out = _attend(
        q.view(b, num_kv_heads, heads // num_kv_heads, head_dim),
        keys,
        values,
        seen,
        span,
        attn.scaling,
        attention,
        split,
    )
    norm = layer.post_attention_layernorm
    h, x = rms_norm(attn.o_proj(out.reshape(b, heads * head_dim)), norm.weight, norm.variance_epsilon, residual=x)
    return x, mlp.down_proj(silu_mul(mlp.gate_proj(h), mlp.up_proj(h)))  # [B, hidden] each


class PendingTokens:
    """The next ids of one decode step for rows ``0 … n-1``, on their way to the host.

    On CUDA the ids are copied into pinned host memory with ``non_blocking=True`` and an event is recorded behind
    the copy: :meth:`ready` polls the event, :meth:`tolist` waits for it only if it has not completed yet.
    """

    def __init__(
        self, host: torch.Tensor | None = None, event: torch.cuda.Event | None = None, *, ids: list[int] | None = None
    ) -> None:
        self._host = host
        self._event = event
        self._ids: list[int] | None = ids

    def ready(self) -> bool:
        return self._ids is not None or self._event is None or self._event.query()

    def tolist(self) -> list[int]:
        """The ids (blocks until the copy has landed; later calls return the same list)."""
        if self._ids is None:
            if self._event is not None:
                self._event.synchronize()
            assert self._host is not None
            self._ids = [int(t) for t in self._host.tolist()]
            self._host = None
        return self._ids


class BatchDecoder:
    """Greedy prefill + batched decode for a loaded :class:`GarModel`, with its own static KV cache.

    Args:
        model: the loaded model (its LLM is used; weights are shared, not copied).
        slots: sequences that can be resident at once (rows of the cache).
        max_len: positions per slot; a sequence can hold ``max_len - 1`` tokens (prompt + generated).
        cuda_graphs: capture the decode step per bucket (default: when the model is on CUDA).
        buckets: decode batch sizes to capture (default :func:`default_buckets`).
        span_buckets: cache columns a step may attend over (default :func:`default_span_buckets`); one graph per
            (batch bucket, span bucket).
        readback_depth: pinned host buffers for :class:`PendingTokens` on CUDA (steps that may be in flight).
        attention: how a decode step attends over the cache: ``"sdpa"`` (``F.scaled_dot_product_attention`` with
            a per-row length mask) or ``"matmul"`` (scores, masked float32 softmax, weighted sum: two batched
            matmuls that split the cache columns over the whole GPU, where SDPA's kernel gets one block per KV
            head at batch 1). Same math; roundings differ. On an H200, GAR-1B size in bf16, batch 1, 4.7k cached
            tokens: a graph-replayed step takes 3.57 ms with ``"sdpa"``, 3.16 ms with ``"matmul"``
            (``benchmarks/results/2026-11-27-profile_request-nvidia-h200-run2.json``); larger batches unmeasured.
            ``"triton"``: the split-KV kernels of :mod:`gar_tools.kernels.decode_attention` (on CPU the pure-torch
            reference unless Triton's interpreter is on). On an H100, GAR-1B size, bf16, 4.7 k cached tokens, its
            first version gave 3.20 ms per step at batch 1 (SDPA 3.76, matmul 3.38) but 8.54 ms at batch 16 (SDPA
            4.19): ``benchmarks/results/2026-11-27-decode_batching-nvidia-h100-80gb-hbm3-run3.json``. Rewritten
            for the tensor cores, on an H200 with ``fused_ops``: 1.55 ms at batch 1, 1.93 ms at 16 (SDPA unfused
            3.59 / 3.95 ms): ``…-decode_batching-nvidia-h200-run4.json``.
        fused_ops: run each layer's element-wise work in fused kernels (:func:`fused_decode_layer`: residual add +
            RMSNorm, rotary + KV write, SiLU · up — on CUDA Triton kernels, on CPU their pure-torch references,
            bit-identical to the unfused step). Eagerly a GAR-1B decode step is 746 kernels, 291 fused (with SDPA
            attention: ``benchmarks/results/2026-11-27-profile_request-nvidia-h100-80gb-hbm3-run3.json``); from
            CUDA graphs at batch 1 on that H100, 3.38 → 2.47 ms per step with matmul attention, 3.20 → 2.33 ms
            with Triton's (the decode_batching file above).
        packed_qkv: with ``fused_ops``, compute each layer's q, k and v projections in one GEMV over
            :func:`pack_qkv`'s matrix (the model's weights become its views: no extra memory). Default: on CUDA
            (on that H200, batch 1: 1.73 → 1.55 ms per step). Off on CPU, where the fused step stays bit-identical
            to the unfused one.
    """

    def __init__(
        self,
        model: GarModel,
        *,
        slots: int,
        max_len: int,
        cuda_graphs: bool | None = None,
        buckets: Sequence[int] | None = None,
        span_buckets: Sequence[int] | None = None,
        readback_depth: int = 8,
        attention: DecodeAttention = "sdpa",
        fused_ops: bool = False,
        packed_qkv: bool | None = None,
    ) -> None:
        self.model = model
        self.lm = model.mllm.model.language_model  # LlamaModel: embed_tokens, layers, norm, rotary_emb
        self.lm_head: nn.Linear = model.mllm.lm_head
        config = self.lm.config
        self.num_heads = int(config.num_attention_heads)
        self.num_kv_heads = int(config.num_key_value_heads)
        self.head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self.num_heads)
        self.device = model.device
        self.dtype = model.dtype
        self.cache = StaticKVCache.allocate(
            layers=len(self.lm.layers),
            slots=slots,
            kv_heads=self.num_kv_heads,
            max_len=max_len,
            head_dim=self.head_dim,
            dtype=self.dtype,
            device=self.device,
        )
        scratch = self.cache.scratch_position
        self.tokens = torch.zeros(slots, dtype=torch.long, device=self.device)  # [S] last token of each slot
        self.positions = torch.full((slots,), scratch, dtype=torch.long, device=self.device)  # [S] next K/V column
        self._rows = torch.arange(slots, device=self.device)  # [S]
        self._columns = torch.arange(max_len, device=self.device)  # [max_len]
        self.buckets = sorted(set(buckets or default_buckets(slots)))
        if self.buckets[0] < 1 or self.buckets[-1] != slots:
            raise ValueError(f"buckets must be positive and end at slots={slots}, got {self.buckets}")
        self.span_buckets = sorted(set(span_buckets or default_span_buckets(max_len)))
        if self.span_buckets[0] < 1 or self.span_buckets[-1] != max_len:
            raise ValueError(f"span buckets must be positive and end at max_len={max_len}, got {self.span_buckets}")
        # Host copy of the positions (the device buffer advances inside the step): picks the span without a sync.
        self._host_positions = [self.cache.scratch_position] * slots
        if attention not in DECODE_ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(DECODE_ATTENTIONS)}, got {attention!r}")
        self.attention: DecodeAttention = attention
        self.fused_ops = bool(fused_ops)
        if packed_qkv and not self.fused_ops:
            raise ValueError("packed_qkv needs fused_ops=True")
        wanted = self.fused_ops and (self.device.type == "cuda" if packed_qkv is None else bool(packed_qkv))
        packed = [pack_qkv(layer) for layer in self.lm.layers] if wanted else []
        self.packed_qkv = wanted and all(w is not None for w in packed)  # not where a projection has a bias
        self._qkv: list[torch.Tensor | None] = packed if self.packed_qkv else [None] * len(self.lm.layers)
        self.use_cuda_graphs = (self.device.type == "cuda") if cuda_graphs is None else bool(cuda_graphs)
        if self.use_cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._readback: list[tuple[torch.Tensor, PendingTokens | None]] = []
        if self.device.type == "cuda":
            self._readback = [
                (torch.empty(slots, dtype=torch.long, pin_memory=True), None) for _ in range(readback_depth)
            ]
        self._steps = 0
        if self.use_cuda_graphs:
            self.capture()

    # --- facts ---------------------------------------------------------------------------------------------------
    @property
    def slots(self) -> int:
        return self.cache.slots

    @property
    def usable_len(self) -> int:
        return self.cache.usable_len

    def bucket_for(self, n: int) -> int:
        """The smallest bucket holding ``n`` rows."""
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(f"a decode batch of {n} rows does not fit {self.slots} slots")

    # --- prefill -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def prefill(
        self, slot: int, inputs_embeds: torch.Tensor, start: int = 0, *, logits: bool = True
    ) -> torch.Tensor | None:
        """Run prompt embeddings ``[L, hidden]`` at positions ``start … start+L-1`` of ``slot``; write their K/V.

        Call with consecutive chunks (``start`` = tokens already prefilled) to split a long prompt. Returns the
        float32 logits ``[vocab]`` of the chunk's last position (the first generated token's, after the last chunk),
        or None with ``logits=False`` (a chunk before the last: no final norm and ``lm_head``).
        """
        length = int(inputs_embeds.shape[0])
        end = start + length
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is not in 0 … {self.slots - 1}")
        if length < 1 or end > self.usable_len:
            raise ValueError(f"positions {start} … {end - 1} do not fit a slot of {self.usable_len} tokens")
        x = inputs_embeds.to(device=self.device, dtype=self.dtype)[None]  # [1, L, hidden]
        positions = torch.arange(start, end, device=self.device)[None]  # [1, L]
        cos, sin = self.lm.rotary_emb(x, positions)  # [1, L, head_dim] each
        causal = None
        if start > 0:  # a later chunk: its queries see everything before them in the slot
            causal = self._columns[:end][None, :] <= positions[0][:, None]  # [L, end]
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, length, self.num_heads, self.head_dim).transpose(1, 2)  # [1, H, L, D]
            k = attn.k_proj(h).view(1, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [1, KV, L, D]
            v = attn.v_proj(h).view(1, length, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [1, KV, L, D]
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            self.cache.keys[i][slot, :, start:end] = k[0]
            self.cache.values[i][slot, :, start:end] = v[0]
            keys = self.cache.keys[i][slot : slot + 1, :, :end]  # [1, KV, end, D]
            values = self.cache.values[i][slot : slot + 1, :, :end]
            if causal is None:  # whole prompt or first chunk: plain causal attention, GQA inside the kernel
                out = F.scaled_dot_product_attention(
                    q, keys, values, is_causal=True, scale=attn.scaling, enable_gqa=True
                )
            else:  # masked kernels take no GQA: repeat each KV head for its query heads (as transformers' repeat_kv)
                groups = self.num_heads // self.num_kv_heads
                keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=causal, scale=attn.scaling)
            # out: [1, H, L, D]
            x = x + attn.o_proj(out.transpose(1, 2).reshape(1, length, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        if not logits:
            return None
        last = self.lm.norm(x[:, -1])  # [1, hidden]
        return self.lm_head(last)[0].float()  # [vocab]

    def activate(self, slot: int, token: int | torch.Tensor, length: int) -> None:
        """Make ``slot`` decode from ``token`` (its last token, not yet in the cache) at position ``length``."""
        if length >= self.usable_len:
            raise ValueError(f"slot {slot} is full ({length} of {self.usable_len} tokens)")
        self.tokens[slot] = token
        self.positions[slot] = length
        self._host_positions[slot] = length

    def release(self, slot: int) -> None:
        """Park ``slot`` on the scratch column: decode steps no longer write into its entries."""
        self.positions[slot] = self.cache.scratch_position
        self._host_positions[slot] = self.cache.scratch_position

    # --- decode --------------------------------------------------------------------------------------------------
    def _split(self, b: int, span_bucket: int) -> int | None:
        """The Triton attention's chunk size for a step of batch bucket ``b`` in span bucket ``span_bucket`` (None
        for the other attentions). A step run eagerly and its captured graph use the same, so both sum in the same
        order."""
        if self.attention != "triton":
            return None
        return default_split(b * self.num_kv_heads, span_bucket, self.device)

    def _decode_step(self, b: int, span: int, split: int | None = None) -> None:
        """The decode step for rows ``0 … b-1`` over ``span`` cache columns, reading and writing only device
        buffers (graph-capturable). Parked rows write on the scratch column; they see all ``span`` columns, with
        ``"triton"`` attention only the first (their output is thrown away: no need to read the span)."""
        positions = self.positions[:b]  # [B]
        x = self.lm.embed_tokens(self.tokens[:b])[:, None]  # [B, 1, hidden]
        cos, sin = self.lm.rotary_emb(x, positions[:, None])  # [B, 1, D]
        # what each row sees of the span, once per step, in the form its attention takes
        if self.attention == "triton":
            parked = positions == self.cache.scratch_position
            seen = torch.where(parked, 1, torch.clamp(positions + 1, max=span))  # [B] columns
        else:
            seen = (self._columns[None, :span] <= positions[:, None])[:, None, None, :]  # [B, 1, 1, span]
        keys, values = self.cache.keys, self.cache.values
        if self.fused_ops:
            x, pending = x[:, 0], None  # [B, hidden]; pending: the last MLP output, added in the next norm
            for i, layer in enumerate(self.lm.layers):
                x, pending = fused_decode_layer(
                    layer, x, pending, keys[i], values[i], cos[:, 0], sin[:, 0], seen, span, positions,
                    self.num_kv_heads, self.attention, split, self._qkv[i],
                )  # fmt: skip
            h, _ = rms_norm(pending, self.lm.norm.weight, self.lm.norm.variance_epsilon, residual=x)  # [B, hidden]
        else:
            for i, layer in enumerate(self.lm.layers):
                x = decode_layer(
                    layer, x, keys[i], values[i], cos, sin, seen, span, self._rows[:b], positions,
                    self.num_kv_heads, self.attention, split,
                )  # fmt: skip
            h = self.lm.norm(x[:, 0])  # [B, hidden]
        logits = self._lm_head(h)  # [B, vocab]
        # greedy: the first index on ties, as torch.argmax in generate (documented for torch.max too, which is the
        # faster of the two on CPU over a 128k vocabulary)
        self.tokens[:b] = logits.max(dim=-1).indices
        self.positions[:b] = torch.clamp(positions + 1, max=self.cache.scratch_position)

    def _lm_head(self, h: torch.Tensor) -> torch.Tensor:
        """``lm_head(h)`` for the decode step's rows [B, hidden] → logits [B, vocab].

        On the CPU, two rows or more are multiplied as ``weight @ hᵀ`` (the same products and sums; MKL rounds a
        batch's rows apart from one row's either way): on a 2-core AVX2 CPU, tiny (a 128 k × 64 head), a decode
        step over 4.7 k cached tokens took 7.7–8.6 instead of 9.3–12.6 ms at 8 rows and 10.2–10.6 instead of
        11.9–12.9 at 16 (two interleaved runs each way of ``benchmarks/decode_batching.py --preset tiny --batch 1 8
        16 --new-tokens 64 --variants eager --skip-generate``:
        ``benchmarks/results/2026-12-07-decode_batching-amd-epyc-avx2-cpu-tiny-head-*.json``). One row keeps
        ``F.linear``, bit for bit the product ``generate`` computes; CUDA keeps it for every batch (its graphs were
        measured with it).
        """
        head = self.lm_head
        if self.device.type == "cuda" or h.shape[0] == 1 or head.bias is not None:
            return head(h)
        return (head.weight @ h.T).T  # [vocab, B] → a [B, vocab] view

    @torch.no_grad()
    def step(self, n: int) -> PendingTokens:
        """One greedy step for slots ``0 … n-1``; their next ids, on their way to the host.

        With CUDA graphs the step runs the captured graph of the smallest batch and span buckets that hold it;
        eagerly it runs exactly ``n`` rows over exactly the columns in use (nothing to pad for). Rows whose slot
        holds no sequence compute throw-away values on the scratch column.
        """
        b = self.bucket_for(n) if self.use_cuda_graphs else n
        scratch = self.cache.scratch_position
        running = [p for p in self._host_positions[:b] if p != scratch]
        span_bucket = next(s for s in self.span_buckets if s > max(running, default=0))
        if self.use_cuda_graphs:
            self._graphs[(b, span_bucket)].replay()
        else:
            if not 1 <= n <= self.slots:
                raise ValueError(f"a decode batch of {n} rows does not fit {self.slots} slots")
            self._decode_step(b, max(running, default=0) + 1, self._split(self.bucket_for(n), span_bucket))
        self._host_positions[:b] = [min(p + 1, scratch) for p in self._host_positions[:b]]
        self._steps += 1
        if self.device.type != "cuda":
            return PendingTokens(ids=[int(t) for t in self.tokens[:n].tolist()])
        index = self._steps % len(self._readback)
        host, previous = self._readback[index]
        if previous is not None:
            previous.tolist()  # that step's ids leave the buffer before it is reused
        host_rows = host[:n]
        host_rows.copy_(self.tokens[:n], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        pending = PendingTokens(host_rows, event)
        self._readback[index] = (host, pending)
        return pending

    # --- CUDA graphs ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def capture(self) -> None:
        """Capture the decode step per (batch, span) bucket (largest first, one shared pool). Needs no active slot:
        warm-up runs write only on the scratch column, and the token/position buffers are reset afterwards."""
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.positions.fill_(self.cache.scratch_position)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b in reversed(self.buckets):
                for span in reversed(self.span_buckets):
                    for _ in range(2):
                        self._decode_step(b, span, self._split(b, span))
                        self.positions.fill_(self.cache.scratch_position)
        torch.cuda.current_stream().wait_stream(stream)
        pool = torch.cuda.graph_pool_handle()
        for b in reversed(self.buckets):
            for span in reversed(self.span_buckets):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    self._decode_step(b, span, self._split(b, span))
                self._graphs[(b, span)] = graph
        torch.cuda.synchronize()
        self.tokens.zero_()
        self.positions.fill_(self.cache.scratch_position)
