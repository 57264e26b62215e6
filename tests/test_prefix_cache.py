"""Prefix K/V reuse across questions about the same image and regions (tiny random-weight model in fp32 on CPU: its
text is meaningless, so ids are compared with ``GarPipeline.generate`` and with the same request computed without
reuse)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from batching_requests import with_max_tiles

from gar_tools.engine.local import shared_prefix
from gar_tools.engine.scheduler import ContinuousBatcher
from gar_tools.model.decoder import BatchDecoder
from gar_tools.model.pipeline import GarPipeline
from gar_tools.model.prefix_cache import PrefixKVCache, prefix_key, shared_prefix_length

QUESTIONS = [
    "What is <Prompt0> doing with <Prompt1> and <Prompt2>?",
    "Is <Prompt1> left of <Prompt2> or of <Prompt0>?",
    "Name <Prompt2>, then <Prompt0>, then <Prompt1>.",
    "Which of <Prompt0>, <Prompt1>, <Prompt2> is largest?",
]


@pytest.fixture(scope="module")
def small(tiny_pipeline) -> GarPipeline:
    """The tiny model behind a processor of at most 2 tiles (short prompts: fast tests)."""
    return with_max_tiles(tiny_pipeline, 2)


@pytest.fixture(scope="module")
def questions(small, demo3):
    """Four questions about the same image and three regions, with their ``generate`` ids (6 new tokens)."""
    image, masks = demo3
    prepared = [small.prepare(image, masks, q) for q in QUESTIONS]
    return [(p, small.generate(p, max_new_tokens=6).token_ids) for p in prepared]


class _Counting:
    """``build_embeds`` of a prepared request, counting its calls (the vision tower runs only in there)."""

    def __init__(self, pipeline: GarPipeline, prepared) -> None:
        self.pipeline, self.prepared, self.calls = pipeline, prepared, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return self.pipeline.embed(self.prepared)


def _batcher(pipeline: GarPipeline, prepared: list, *, store: int | None, slots: int = 4, chunk: int | None = None):
    longest = max(p.input_ids.shape[1] for p in prepared) + 8
    decoder = BatchDecoder(pipeline.model, slots=slots, max_len=longest)
    cache = None if store is None else PrefixKVCache(store)
    return ContinuousBatcher(decoder, prefix_cache=cache, prefill_chunk_tokens=chunk)


def test_the_shared_prefix_ends_after_the_last_slot_and_the_rest_embeds_exactly(small, demo3) -> None:
    image, masks = demo3
    config = small.config
    for prepared in (small.prepare(image, masks, QUESTIONS[0]), small.prepare(image, masks[:1], None)):
        ids = prepared.input_ids[0]
        n = shared_prefix_length(prepared, config.image_token_id)
        assert 0 < n < ids.shape[0]
        assert int(ids[n - 1]) in config.crop_tokens_ids  # the last replay slot token closes the prefix
        rest = ids[n:].tolist()
        assert config.image_token_id not in rest and not set(config.crop_tokens_ids) & set(rest)
        assert torch.equal(small.embed_suffix(prepared, n)[0], small.embed(prepared)[0, n:])
        with pytest.raises(ValueError, match="image or slot tokens"):
            small.embed_suffix(prepared, n - 1)


def test_the_key_changes_with_everything_the_prefix_depends_on(small, demo3) -> None:
    image, masks = demo3

    def key(pipeline, region_masks, question, digest="image-a"):
        prepared = pipeline.prepare(image, region_masks, question)
        length = shared_prefix_length(prepared, pipeline.config.image_token_id)
        return prefix_key(prepared, digest, length, pipeline.model, pipeline.geometry)

    base = key(small, masks, QUESTIONS[0])
    assert key(small, masks, QUESTIONS[1]) == base  # only the question differs: the prefix is shared
    assert key(small, masks, QUESTIONS[0], digest="image-b") != base  # another image
    assert key(small, [masks[1], masks[0], masks[2]], QUESTIONS[0]) != base  # regions in another order
    moved = np.roll(masks[2], 7, axis=1)
    assert key(small, [masks[0], masks[1], moved], QUESTIONS[0]) != base  # one region moved
    paper = GarPipeline(small.model, small.processor, small.name, is_tiny=True, geometry="paper")
    assert key(paper, masks, QUESTIONS[0]) != base  # another replay geometry: other slot embeddings
    assert key(small, masks[:1], None) != key(small, masks[1:2], None)  # describe prompts of two regions


def test_later_questions_reuse_the_prefix_and_give_the_same_ids(small, questions) -> None:
    builds = [_Counting(small, p) for p, _ in questions]
    prefixes = [shared_prefix(small, p, "demo3") for p, _ in questions]
    with _batcher(small, [p for p, _ in questions], store=64 * 2**20) as batcher:
        outputs = [
            batcher.submit(build, max_new_tokens=6, prefix=prefix).result(timeout=120)
            for build, prefix in zip(builds, prefixes, strict=True)
        ]
        stats = batcher.prefix_cache.stats()
    assert [o.token_ids for o in outputs] == [ids for _, ids in questions]
    assert [b.calls for b in builds] == [1, 0, 0, 0]  # no vision tower, no replay for the later questions
    assert [o.reused_prompt_tokens for o in outputs] == [0] + [prefixes[0].length] * 3
    assert [o.prompt_tokens for o in outputs] == [p.input_ids.shape[1] for p, _ in questions]
    assert stats["prefixes"] == 1 and stats["hits"] == 3 and stats["bytes"] > 0


def _computed_then_reused(pipeline: GarPipeline, first, second) -> list[tuple[list[int], list]]:
    """The second question alone (its prefill split at the prefix end, computed), then after the first one (its
    prefix reused): its first token id and its slot's K/V, each time."""
    prefix = shared_prefix(pipeline, second, "demo3")
    length = second.input_ids.shape[1]
    runs = []
    for earlier in ([], [first]):
        with _batcher(pipeline, [first, second], store=64 * 2**20, chunk=300) as batcher:
            for prepared in earlier:
                batcher.submit(
                    _Counting(pipeline, prepared), max_new_tokens=1, prefix=shared_prefix(pipeline, prepared, "demo3")
                ).result(timeout=120)
            output = batcher.submit(_Counting(pipeline, second), max_new_tokens=1, prefix=prefix).result(timeout=120)
            assert output.reused_prompt_tokens == (prefix.length if earlier else 0)
            assert len(batcher.prefix_cache) == 1  # the same image and regions: one prefix, kept by either
            cache = batcher.decoder.cache
            pairs = zip(cache.keys, cache.values, strict=True)
            runs.append((output.token_ids, [(k[0, :, :length].clone(), v[0, :, :length].clone()) for k, v in pairs]))
    return runs


def test_reused_keys_and_values_are_bit_identical_to_computed_ones(small, questions) -> None:
    (first, _), (second, expected) = questions[0], questions[1]
    (ids_computed, computed), (ids_reused, reused) = _computed_then_reused(small, first, second)
    assert ids_computed == ids_reused == expected[:1]
    for (k0, v0), (k1, v1) in zip(computed, reused, strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


@pytest.mark.gpu
def test_reused_keys_and_values_are_bit_identical_on_cuda_in_bf16(demo3) -> None:
    """The same on CUDA, bf16, decode steps from CUDA graphs (the tiny model loaded there)."""
    from gar_tools.model import load

    pipeline = with_max_tiles(load("tiny", device="cuda", dtype="bf16"), 2)
    image, masks = demo3
    first, second = (pipeline.prepare(image, masks, q) for q in QUESTIONS[:2])
    (ids_computed, computed), (ids_reused, reused) = _computed_then_reused(pipeline, first, second)
    assert ids_computed == ids_reused
    for (k0, v0), (k1, v1) in zip(computed, reused, strict=True):
        assert k0.is_cuda and k0.dtype == torch.bfloat16
        assert torch.equal(k0, k1) and torch.equal(v0, v1)


def test_questions_arriving_together_wait_for_the_prefix_being_prefilled(small, questions) -> None:
    builds = [_Counting(small, p) for p, _ in questions]
    with _batcher(small, [p for p, _ in questions], store=64 * 2**20, chunk=256) as batcher:
        handles = [
            batcher.submit(build, max_new_tokens=6, prefix=shared_prefix(small, p, "demo3"))
            for build, (p, _) in zip(builds, questions, strict=True)
        ]
        outputs = [h.result(timeout=120) for h in handles]
    assert [o.token_ids for o in outputs] == [ids for _, ids in questions]
    assert sum(b.calls for b in builds) == 1
    assert sum(o.reused_prompt_tokens > 0 for o in outputs) == 3


def test_without_a_prefix_cache_or_with_a_full_one_the_ids_are_the_same(small, questions) -> None:
    for store in (None, 0, 1024):  # none, disabled, too small for one prefix
        builds = [_Counting(small, p) for p, _ in questions]
        with _batcher(small, [p for p, _ in questions], store=store) as batcher:
            handles = [
                batcher.submit(build, max_new_tokens=6, prefix=shared_prefix(small, p, "demo3"))
                for build, (p, _) in zip(builds, questions, strict=True)
            ]
            outputs = [h.result(timeout=120) for h in handles]
        assert [o.token_ids for o in outputs] == [ids for _, ids in questions]
        assert [b.calls for b in builds] == [1, 1, 1, 1] and not any(o.reused_prompt_tokens for o in outputs)


def test_a_cancelled_prefill_does_not_strand_requests_waiting_for_its_prefix(small, questions) -> None:
    (first, _), (second, expected) = questions[0], questions[1]
    submitted = threading.Event()
    handles: dict[str, object] = {}

    def build_then_cancel() -> torch.Tensor:  # the first request is cancelled once admitted, mid-prefix
        assert submitted.wait(timeout=30)
        handles["first"].cancel()
        return small.embed(first)

    waiting = _Counting(small, second)
    with _batcher(small, [first, second], store=64 * 2**20, chunk=128) as batcher:
        handles["first"] = batcher.submit(
            build_then_cancel, max_new_tokens=6, prefix=shared_prefix(small, first, "demo3")
        )
        handles["second"] = batcher.submit(waiting, max_new_tokens=6, prefix=shared_prefix(small, second, "demo3"))
        submitted.set()
        output = handles["second"].result(timeout=120)
        assert handles["first"].cancelled()
    assert output.token_ids == expected and output.reused_prompt_tokens == 0 and waiting.calls == 1


def test_the_store_is_bounded_and_evicts_the_least_recently_used() -> None:
    def saved(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:  # 2 layers, 1 head, 4 dims, fp32
        return [(torch.zeros(1, tokens, 4), torch.zeros(1, tokens, 4)) for _ in range(2)]

    store = PrefixKVCache(max_bytes=3 * 64 * 10)  # three prefixes of 10 tokens (64 bytes per token)
    for name in "abc":
        store.put(name, saved(10))
    assert store.get("a") is not None  # a is now the most recently used
    store.put("d", saved(10))
    assert "b" not in store and all(k in store for k in "acd")
    assert store.nbytes == 3 * 640 and store.stats()["evictions"] == 1
    store.put("huge", saved(40))  # larger than the bound: not stored, nothing evicted
    assert "huge" not in store and store.nbytes == 3 * 640
    off = PrefixKVCache(0)
    off.put("a", saved(1))
    assert "a" not in off and off.nbytes == 0
    with pytest.raises(ValueError):
        PrefixKVCache(-1)


def _prefill_calls(batcher: ContinuousBatcher, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the start position of every ``prefill`` call the batcher's decoder makes."""
    calls: list[int] = []
    original = batcher.decoder.prefill

    def prefill(slot: int, embeds: torch.Tensor, start: int = 0, **kwargs):  # noqa: ANN202
        calls.append(start)
        return original(slot, embeds, start, **kwargs)

    monkeypatch.setattr(batcher.decoder, "prefill", prefill)
    return calls


def test_a_prefix_too_large_to_keep_is_prefilled_whole(small, questions, monkeypatch) -> None:
    """A store whose bound cannot hold a prompt's prefix: the prompt is prefilled in one call (no split that could
    never be reused), the engine does not hash it, and the ids are generate's."""
    prepared, ids = questions[0]
    length = shared_prefix_length(prepared, small.config.image_token_id)
    with _batcher(small, [prepared], store=1) as probe:
        per_token = probe.decoder.cache.bytes_per_token
    for bound, split in ((length * per_token - 1, False), (length * per_token, True)):
        with _batcher(small, [prepared], store=bound) as batcher:
            calls = _prefill_calls(batcher, monkeypatch)
            assert batcher.keeps_prefix(length) is split
            assert (shared_prefix(small, prepared, "demo3", batcher) is None) is not split
            out = batcher.submit(
                _Counting(small, prepared), max_new_tokens=6, prefix=shared_prefix(small, prepared, "demo3")
            ).result(timeout=120)
        assert out.token_ids == ids and out.reused_prompt_tokens == 0
        assert calls == ([0, length] if split else [0])


def test_running_out_of_memory_keeping_a_prefix_fails_nothing(small, questions, monkeypatch) -> None:
    """Keeping a prefix needs device memory; without it the request still answers and the store stops growing."""

    def no_memory(slot: int, length: int):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    with _batcher(small, [p for p, _ in questions], store=64 * 2**20) as batcher:
        monkeypatch.setattr(batcher.decoder.cache, "read", no_memory)
        calls = _prefill_calls(batcher, monkeypatch)
        with pytest.warns(RuntimeWarning, match="prefix cache"):
            outputs = [
                batcher.submit(_Counting(small, p), max_new_tokens=6, prefix=shared_prefix(small, p, "demo3")).result(
                    timeout=120
                )
                for p, _ in questions[:3]
            ]
        stats = batcher.prefix_cache.stats()
    assert [o.token_ids for o in outputs] == [ids for _, ids in questions[:3]]
    assert [o.reused_prompt_tokens for o in outputs] == [0, 0, 0]
    assert stats["max_bytes"] == 0 and stats["prefixes"] == 0
    # the store stopped growing, but prefills are still split where they were: answers do not depend on it
    assert len(calls) == 6 and calls[0::2] == [0, 0, 0]
