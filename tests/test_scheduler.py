"""The continuous-batching scheduler (tiny model, fp32, CPU): same ids as batch 1, slots, budget, cancel, busy."""

from __future__ import annotations

import asyncio
import threading

import pytest
import torch

from gar_tools.engine.scheduler import ContinuousBatcher, GenerationOutput
from gar_tools.errors import EngineBusyError, InputError
from gar_tools.model.decoder import BatchDecoder, PendingTokens


def _decoder(pipeline, requests, slots: int) -> BatchDecoder:
    longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in requests)
    return BatchDecoder(pipeline.model, slots=slots, max_len=longest + 1)


def test_sixteen_mixed_requests_equal_batch_one(tiny_pipeline, mixed_requests) -> None:
    """16 requests, 5 slots, chunked prefill; one stops at EOS early, one is submitted mid-batch by a callback."""
    batcher = ContinuousBatcher(_decoder(tiny_pipeline, mixed_requests, 5), prefill_chunk_tokens=1500)
    streamed: dict[int, list[int]] = {i: [] for i in range(len(mixed_requests))}
    late = mixed_requests[15]
    handles: dict[int, object] = {}
    joined = threading.Event()

    def on_token(i: int):
        def callback(ids: list[int]) -> None:
            streamed[i].extend(ids)
            if i == 0 and len(streamed[0]) == 3 and not joined.is_set():  # request 0 is decoding: 15 joins now
                joined.set()
                handles[15] = batcher.submit(
                    late.build_embeds, max_new_tokens=late.max_new_tokens, on_token=on_token(15)
                )

        return callback

    with batcher:
        for i, request in enumerate(mixed_requests[:15]):
            handles[i] = batcher.submit(
                request.build_embeds,
                max_new_tokens=request.max_new_tokens,
                eos_token_ids=request.eos_token_ids,
                on_token=on_token(i),
            )
        results: dict[int, GenerationOutput] = {i: handles[i].result(timeout=120) for i in range(15)}
        assert joined.wait(timeout=5)
        results[15] = handles[15].result(timeout=120)
        stats = batcher.stats()
    for i, request in enumerate(mixed_requests):
        assert results[i].token_ids == request.expected, i
        assert streamed[i] == request.expected, i
        assert results[i].prompt_tokens == request.prepared.input_ids.shape[1]
        assert results[i].prefill_ms > 0 and results[i].queue_ms >= 0
    assert results[9].stopped_by_eos and len(results[9].token_ids) < mixed_requests[9].max_new_tokens
    assert not results[3].stopped_by_eos
    assert 1 < stats["peak_batch"] <= 5 and stats["running"] == 0 and stats["queued"] == 0


def _fake_embeds(length: int, hidden: int, seed: int):
    return lambda: torch.randn(length, hidden, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("max_batch_size", "kv_budget_tokens"), [(2, None), (4, 70)])
def test_max_batch_size_and_kv_budget_are_respected(tiny_pipeline, max_batch_size, kv_budget_tokens) -> None:
    """4 slots; either the batch is capped at 2, or the budget (70 tokens) holds only two of 32–36 reserved."""
    hidden = tiny_pipeline.model.mllm.config.text_config.hidden_size
    decoder = BatchDecoder(tiny_pipeline.model, slots=4, max_len=64)
    batcher = ContinuousBatcher(decoder, max_batch_size=max_batch_size, kv_budget_tokens=kv_budget_tokens)
    running_seen: list[int] = []
    reserved_seen: list[int] = []

    def watch(_ids: list[int]) -> None:
        stats = batcher.stats()
        running_seen.append(stats["running"])
        reserved_seen.append(stats["kv_reserved_tokens"])

    with batcher:
        handles = [batcher.submit(_fake_embeds(20 + i, hidden, i), max_new_tokens=12, on_token=watch) for i in range(5)]
        outputs = [h.result(timeout=60) for h in handles]
    assert all(len(o.token_ids) == 12 for o in outputs)
    assert max(running_seen) == 2 and batcher.peak_batch == 2
    assert max(reserved_seen) <= (kv_budget_tokens or 4 * 63)


def test_model_thread_seconds_say_where_the_loop_spent_its_time(tiny_pipeline) -> None:
    """Idle until a request comes; then its embeddings (admit), prefill and steps; the parts add up to the wall time
    and each counts only its own work (a slow build_embeds shows in admit alone)."""
    import time

    hidden = tiny_pipeline.model.mllm.config.text_config.hidden_size
    batcher = ContinuousBatcher(BatchDecoder(tiny_pipeline.model, slots=2, max_len=128))
    assert set(batcher.model_thread_seconds()) == {"idle", "admit", "prefill", "decode", "read", "flush"}
    slow = _fake_embeds(30, hidden, 0)

    def build() -> torch.Tensor:
        time.sleep(0.2)
        return slow()

    started = time.perf_counter()
    with batcher:
        time.sleep(0.2)
        before = batcher.model_thread_seconds()
        batcher.submit(build, max_new_tokens=8).result(timeout=60)
        after = batcher.model_thread_seconds()
    wall = time.perf_counter() - started
    spent = {k: after[k] - before[k] for k in after}
    assert before["idle"] >= 0.15 and after["idle"] >= before["idle"]  # the 0.2 s before the request, up to now
    assert 0.2 <= spent["admit"] < 0.2 + 0.15  # the slow build, not the prefill or the steps
    assert spent["prefill"] > 0 and spent["decode"] > 0
    assert 0.35 <= sum(after.values()) <= wall


def test_cancelled_request_frees_its_slot(tiny_pipeline) -> None:
    hidden = tiny_pipeline.model.mllm.config.text_config.hidden_size
    decoder = BatchDecoder(tiny_pipeline.model, slots=1, max_len=512)
    batcher = ContinuousBatcher(decoder)
    got: list[int] = []
    handle_box: list = []

    def cancel_after_three(ids: list[int]) -> None:
        got.extend(ids)
        if len(got) == 3:
            handle_box[0].cancel()

    with batcher:
        handle_box.append(batcher.submit(_fake_embeds(16, hidden, 0), max_new_tokens=400, on_token=cancel_after_three))
        follower = batcher.submit(_fake_embeds(16, hidden, 1), max_new_tokens=4)  # needs the only slot
        assert len(follower.result(timeout=60).token_ids) == 4
        assert handle_box[0].cancelled()
        assert 3 <= len(got) < 400
        assert batcher.stats()["running"] == 0


def test_cancelling_the_awaiting_task_cancels_the_request(tiny_pipeline) -> None:
    hidden = tiny_pipeline.model.mllm.config.text_config.hidden_size
    decoder = BatchDecoder(tiny_pipeline.model, slots=1, max_len=512)

    async def main(batcher: ContinuousBatcher) -> None:
        first = asyncio.Event()
        loop = asyncio.get_running_loop()
        handle = batcher.submit(
            _fake_embeds(16, hidden, 0), max_new_tokens=400, on_token=lambda _ids: first.set(), loop=loop
        )
        task = asyncio.ensure_future(_wait(handle))
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert handle.cancelled()
        done = await batcher.submit(_fake_embeds(8, hidden, 2), max_new_tokens=2)
        assert len(done.token_ids) == 2

    async def _wait(handle):
        return await handle

    with ContinuousBatcher(decoder) as batcher:
        asyncio.run(main(batcher))


def test_full_queue_raises_busy_and_bad_requests_fail_alone(tiny_pipeline) -> None:
    hidden = tiny_pipeline.model.mllm.config.text_config.hidden_size
    decoder = BatchDecoder(tiny_pipeline.model, slots=1, max_len=64)
    batcher = ContinuousBatcher(decoder, max_queue=2, retry_after_s=3.0)  # not started: nothing leaves the queue
    queued = [batcher.submit(_fake_embeds(8, hidden, i), max_new_tokens=2) for i in range(2)]
    with pytest.raises(EngineBusyError) as info:
        batcher.submit(_fake_embeds(8, hidden, 2), max_new_tokens=2)
    assert info.value.retry_after_s == 3.0 and "max_queue=2" in str(info.value)
    with pytest.raises(InputError):
        batcher.submit(_fake_embeds(8, hidden, 2), max_new_tokens=0)
    queued[1].cancel()  # a cancelled request makes room at once (the model thread is not even running)
    queued[1] = batcher.submit(_fake_embeds(8, hidden, 5), max_new_tokens=2)
    with pytest.raises(EngineBusyError):
        batcher.submit(_fake_embeds(8, hidden, 2), max_new_tokens=2)
    with batcher:
        assert [len(h.result(timeout=60).token_ids) for h in queued] == [2, 2]
        too_long = batcher.submit(_fake_embeds(60, hidden, 3), max_new_tokens=10)  # 70 > 63 tokens per slot
        with pytest.raises(InputError, match="does not fit"):
            too_long.result(timeout=60)
        assert len(batcher.submit(_fake_embeds(8, hidden, 4), max_new_tokens=3).result(timeout=60).token_ids) == 3


class _LateTokens(PendingTokens):
    """Ids that reach the host only after ``lag`` more decode steps, as on CUDA when the copy is slow."""

    def __init__(self, ids: list[int], decoder: _LaggingDecoder, lag: int) -> None:
        super().__init__(ids=ids)
        self.decoder, self.ready_at = decoder, decoder.launched + lag

    def ready(self) -> bool:
        ready = self.decoder.launched >= self.ready_at
        self.decoder.not_ready += not ready
        return ready


class _LaggingDecoder(BatchDecoder):
    launched = 0
    not_ready = 0  # polls that found a step's ids still in flight

    def step(self, n: int) -> PendingTokens:
        self.launched += 1
        return _LateTokens(super().step(n).tolist(), self, lag=3)


def test_late_readback_still_gives_batch_one_ids(tiny_pipeline, mixed_requests) -> None:
    """Ids read several steps late (the CUDA path): EOS and max_new_tokens still cut each request exactly."""
    chosen = [mixed_requests[i] for i in (1, 5, 9, 10, 12, 13)]  # 5: one token; 9: stops at EOS
    longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in chosen)
    decoder = _LaggingDecoder(tiny_pipeline.model, slots=3, max_len=longest + 1)
    with ContinuousBatcher(decoder, readback_lag=4) as batcher:
        handles = [
            batcher.submit(r.build_embeds, max_new_tokens=r.max_new_tokens, eos_token_ids=r.eos_token_ids)
            for r in chosen
        ]
        outputs = [h.result(timeout=120) for h in handles]
    assert [o.token_ids for o in outputs] == [r.expected for r in chosen]
    assert outputs[2].stopped_by_eos and decoder.not_ready > 0


@pytest.mark.gpu
def test_cuda_graph_scheduler_equals_generate_on_cuda(tiny_pipeline, mixed_requests) -> None:
    """On CUDA (graphs, ids read back late): the same ids as generate alone on CUDA, EOS cut included."""
    model = tiny_pipeline.model.to("cuda")
    try:
        chosen = [mixed_requests[i] for i in (1, 5, 9, 12, 13)]
        expected = []
        for r in chosen:
            ids = r.pipeline.generate(r.prepared, max_new_tokens=r.max_new_tokens).token_ids
            cut = [i for i, t in enumerate(ids) if t in r.eos_token_ids]
            expected.append(ids[: cut[0] + 1] if cut else ids)
        longest = max(r.prepared.input_ids.shape[1] + r.max_new_tokens for r in chosen)
        decoder = BatchDecoder(model, slots=4, max_len=longest + 1)
        assert decoder.use_cuda_graphs
        with ContinuousBatcher(decoder, readback_lag=4, prefill_chunk_tokens=1024) as batcher:
            handles = [
                batcher.submit(r.build_embeds, max_new_tokens=r.max_new_tokens, eos_token_ids=r.eos_token_ids)
                for r in chosen
            ]
            outputs = [h.result(timeout=120) for h in handles]
        assert [o.token_ids for o in outputs] == expected
    finally:
        tiny_pipeline.model.to("cpu")


def test_engine_style_use_streams_the_generate_text(tiny_pipeline, demo3) -> None:
    """As the module docstring shows: tile cache + TextStream + event loop; four requests on one image."""
    from batching_requests import with_max_tiles

    from gar_tools.model.detokenize import TextStream
    from gar_tools.model.tile_cache import TileFeatureCache, image_digest

    image, masks = demo3
    pipeline = with_max_tiles(tiny_pipeline, 4)
    tokenizer = pipeline.processor.tokenizer
    jobs = [
        (masks[2:], None),
        (masks, "<Prompt0>, <Prompt1>, <Prompt2>?"),
        (masks[:2], "<Prompt1> vs <Prompt0>"),
        (masks[2:], "What is <Prompt0>?"),  # the first request's untouched tiles come from the cache
    ]
    prepared = [pipeline.prepare(image, m, q) for m, q in jobs]
    expected = [pipeline.generate(p, max_new_tokens=6).text for p in prepared]
    longest = max(p.input_ids.shape[1] for p in prepared) + 6
    tiles = TileFeatureCache()
    digest = image_digest(image)

    async def one(batcher: ContinuousBatcher, p) -> tuple[str, str]:
        stream, sent = TextStream(tokenizer), []
        handle = batcher.submit(
            lambda: pipeline.embed(p, tiles.image_features(pipeline.model, p, digest)),
            max_new_tokens=6,
            eos_token_ids=[tokenizer.eos_token_id],
            on_token=lambda ids: sent.append(stream.push(ids)),
            loop=asyncio.get_running_loop(),
        )
        await handle
        await asyncio.sleep(0)  # the last on_token call was scheduled on this loop before the result
        sent.append(stream.finish())
        return "".join(sent), stream.text

    async def main(batcher: ContinuousBatcher) -> list[tuple[str, str]]:
        return await asyncio.gather(*(one(batcher, p) for p in prepared))

    with ContinuousBatcher(BatchDecoder(pipeline.model, slots=4, max_len=longest + 1)) as batcher:
        results = asyncio.run(main(batcher))
    assert [r[0] for r in results] == expected and [r[1] for r in results] == expected
    assert tiles.stats()["tile_hits"] > 0


def test_loop_callbacks_get_every_id_in_order_one_wakeup_per_step(tiny_pipeline) -> None:
    """Callbacks bound to an event loop get all ids, in order, before the result; the ids of one step reach the loop
    in one wake-up (not one per request); a callback that raises is reported and does not starve the others."""
    hidden = tiny_pipeline.model.mllm.config.text_config.hidden_size
    decoder = BatchDecoder(tiny_pipeline.model, slots=3, max_len=64)

    async def main(batcher: ContinuousBatcher) -> tuple[list[list[int]], list[GenerationOutput], int, list[dict]]:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal wakeups
            if getattr(callback, "__name__", "") == "_run_callbacks":
                wakeups += 1
            return original(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        seen: list[list[int]] = [[], [], []]

        def failing(ids: list[int]) -> None:
            seen[2].extend(ids)
            raise ValueError("a broken consumer")

        callbacks = [seen[0].extend, seen[1].extend, failing]
        handles = [
            batcher.submit(_fake_embeds(8 + i, hidden, i), max_new_tokens=12, on_token=callbacks[i], loop=loop)
            for i in range(3)
        ]
        outputs = [await handle for handle in handles]
        return seen, outputs, wakeups, errors

    with ContinuousBatcher(decoder) as batcher:
        seen, outputs, wakeups, errors = asyncio.run(main(batcher))
    assert [len(o.token_ids) for o in outputs] == [12, 12, 12]
    assert seen == [o.token_ids for o in outputs]
    assert 12 <= wakeups <= 3 * 12 // 2  # ~one per step (plus first tokens), far below one per id (36)
    assert len(errors) == 12 and all(isinstance(e["exception"], ValueError) for e in errors)
