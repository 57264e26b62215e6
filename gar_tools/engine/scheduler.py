"""Continuous batching on one model thread: requests join the running decode batch and leave it at once.

One thread owns the model and loops:

1. drop cancelled requests (queued ones leave the queue, running ones free their slot);
2. admit: the request at the head of the queue gets its embeddings built (its ``build_embeds`` callable, run on
   this thread: vision tower, RoI replay…), and a slot once one is free within ``max_batch_size`` and the KV
   budget (prompt + ``max_new_tokens`` tokens reserved); then one prefill chunk of one request runs — so running
   sequences never wait for more than one chunk between two decode steps. With a prefix cache, a request with a
   :class:`~gar_tools.model.prefix_cache.SharedPrefix` whose keys and values are stored (an earlier question about
   the same image and regions) builds only the embeddings after it and starts its prefill there; one whose prefix
   another request is prefilling now waits for it; every prefill is split at the prefix end (two calls, no decode
   step between), and the prefix is stored then;
3. one decode step for every running slot (:meth:`BatchDecoder.step`); a request whose last token is launched
   frees its slot at once;
4. hand new token ids to their requests as their copies reach the host (every step on CPU; on CUDA when ready,
   at most ``readback_lag`` steps late), stopping a request at its EOS ids.

Slots are taken lowest first and a step runs rows ``0 … highest running slot``, so the batch stays compact.
A full queue raises :class:`EngineBusyError`. Results are :class:`concurrent.futures.Future` objects behind
:class:`GenerationHandle`, awaitable from an event loop; cancelling the handle (or the awaiting task) frees the
slot.

How an engine drives it (one batcher per loaded model; the model thread is the batcher's)::

    decoder = BatchDecoder(pipeline.model, slots=16, max_len=8192)        # CUDA graphs captured here on GPU
    batcher = ContinuousBatcher(decoder, kv_budget_tokens=..., max_queue=64, prefill_chunk_tokens=2048).start()
    tiles = TileFeatureCache(device=pipeline.device)                      # touched only on the model thread
    digest = image_digest(image)                                          # off the model thread
    prepared = pipeline.prepare(image, masks, question)                   # off the model thread
    stream = TextStream(pipeline.processor.tokenizer)
    handle = batcher.submit(
        lambda: pipeline.embed(prepared, tiles.image_features(pipeline.model, prepared, digest)),
        max_new_tokens=n,
        eos_token_ids=[pipeline.processor.tokenizer.eos_token_id],
        on_token=lambda ids: send(stream.push(ids)),                      # with loop=…: runs on the event loop
        loop=asyncio.get_running_loop(),
    )
    output = await handle                     # (EngineBusyError came from submit if the queue was full)
    send(stream.finish())
    text = stream.text                        # == tokenizer.decode(output.token_ids, skip_special_tokens=True).strip()
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from gar_tools.errors import EngineBusyError, EngineError, InputError
from gar_tools.model.decoder import BatchDecoder, PendingTokens
from gar_tools.model.prefix_cache import PrefixKVCache, SavedPrefix, SharedPrefix

__all__ = ["ContinuousBatcher", "GenerationHandle", "GenerationOutput", "TokenCallback"]

#: Called on the model thread with the new token ids of one request, in order (a text delta once detokenized).
TokenCallback = Callable[[list[int]], None]

#: The parts of the model thread's loop, as :meth:`ContinuousBatcher.model_thread_seconds` names them.
_PHASES = ("idle", "admit", "prefill", "decode", "read", "flush")


@dataclass
class GenerationOutput:
    """A finished request: the generated ids (EOS included when it stopped there) and where its time went."""

    token_ids: list[int]
    stopped_by_eos: bool
    prompt_tokens: int
    queue_ms: float  # submit → its embeddings start building
    encode_ms: float  # build_embeds (vision tower, replay)
    wait_ms: float  # embeddings built → slot granted (batch or KV budget full)
    prefill_ms: float  # first chunk → first token known (other requests' decode steps in between included)
    decode_ms: float  # first token → last token delivered
    reused_prompt_tokens: int = 0  # prompt tokens whose K/V came from the prefix cache (not computed)


@dataclass(eq=False)
class _Request:
    build_embeds: Callable[[], torch.Tensor]
    max_new_tokens: int
    eos_token_ids: frozenset[int]
    on_token: TokenCallback | None
    future: Future[GenerationOutput]
    loop: asyncio.AbstractEventLoop | None = None  # where on_token runs (None: on the model thread)
    prefix: SharedPrefix | None = None
    submitted: float = field(default_factory=time.perf_counter)
    embeds: torch.Tensor | None = None  # [L - embeds_start, hidden] once built, until prefilled
    embeds_start: int = 0  # the position of embeds[0]: the prefix length when its K/V are reused
    reuse: SavedPrefix | None = None  # stored prefix K/V to copy into the slot once granted
    prompt_tokens: int = 0  # L
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    launched: int = 0  # tokens whose computation was started (the prefill's first token included)
    token_ids: list[int] = field(default_factory=list)
    done: bool = False
    times: dict[str, float] = field(default_factory=dict)

    @property
    def reserved_tokens(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


def _run_callbacks(loop: asyncio.AbstractEventLoop, items: list[tuple[TokenCallback, list[int]]]) -> None:
    """On the event loop: each request's ``on_token`` with its ids; a failing one is reported, the others run."""
    for callback, ids in items:
        try:
            callback(ids)
        except Exception as exc:  # noqa: BLE001 - as asyncio reports an exception in a scheduled callback
            loop.call_exception_handler({"message": "exception in an on_token callback", "exception": exc})


class GenerationHandle:
    """A submitted request: ``await handle``, or :meth:`result`; :meth:`cancel` frees its slot."""

    def __init__(self, future: Future[GenerationOutput], wake: Callable[[], None]) -> None:
        self.future = future
        self._wake = wake

    def result(self, timeout: float | None = None) -> GenerationOutput:
        return self.future.result(timeout)

    def cancel(self) -> bool:
        cancelled = self.future.cancel()
        self._wake()
        return cancelled

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def done(self) -> bool:
        return self.future.done()

    def __await__(self) -> Any:
        wrapped = asyncio.wrap_future(self.future)  # cancelling the awaiting task cancels self.future too
        return wrapped.__await__()


class ContinuousBatcher:
    """The continuous-batching scheduler around one :class:`BatchDecoder`.

    Args:
        decoder: prefill/decode over the static KV cache (its ``slots`` bound the batch).
        max_batch_size: most sequences decoding together (default: the decoder's slots).
        kv_budget_tokens: most tokens reserved in the cache at once, prompt + ``max_new_tokens`` per request
            (default: all slots full).
        max_queue: requests waiting beyond the running ones; one more raises :class:`EngineBusyError`.
        prefill_chunk_tokens: prompt tokens prefilled between two decode steps (``None``: whole prompts).
        readback_lag: decode steps that may run before their ids are read on the host (CUDA; CPU reads each).
        retry_after_s: the hint given with :class:`EngineBusyError`.
        prefix_cache: where shared prefixes' keys and values are kept for later requests. Every prefill whose
            prefix the store could keep (:meth:`keeps_prefix`: its K/V fit the store's bound) is split at the prefix
            end, whether the K/V are then kept, reused or neither — so results never depend on earlier requests;
            None, a 0-byte store or a prefix larger than the bound: prompts are prefilled whole, as before.
    """

    def __init__(
        self,
        decoder: BatchDecoder,
        *,
        max_batch_size: int | None = None,
        kv_budget_tokens: int | None = None,
        max_queue: int = 64,
        prefill_chunk_tokens: int | None = None,
        readback_lag: int = 4,
        retry_after_s: float = 1.0,
        prefix_cache: PrefixKVCache | None = None,
    ) -> None:
        self.decoder = decoder
        self.max_batch_size = min(max_batch_size or decoder.slots, decoder.slots)
        self.kv_budget_tokens = kv_budget_tokens or decoder.slots * decoder.usable_len
        self.max_queue = max_queue
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self.readback_lag = max(1, readback_lag)
        self.retry_after_s = retry_after_s
        self.prefix_cache = prefix_cache
        # fixed for the scheduler's life, so a request's prefill never depends on what happened before it
        self.uses_prefixes = prefix_cache is not None and prefix_cache.max_bytes > 0
        # the bound as configured: a store that stops growing later (out of memory) does not change which prefills
        # are split
        self._prefix_bound = prefix_cache.max_bytes if prefix_cache is not None else 0
        self._lock = threading.Condition()
        self._queue: deque[_Request] = deque()  # waiting for a slot (guarded by _lock)
        self._slots: list[_Request | None] = [None] * decoder.slots  # running or prefilling (model thread only)
        self._inflight: deque[tuple[PendingTokens, list[_Request]]] = deque()  # launched steps not yet read
        # ids for callbacks that run on an event loop, sent there together: one wake-up per loop per step, not
        # one per request (each wake-up takes the GIL from the model thread)
        self._outbox: dict[asyncio.AbstractEventLoop, list[tuple[TokenCallback, list[int]]]] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self.peak_batch = 0  # most slots decoding in one step so far
        self.steps = 0
        # host seconds the model thread spent in each part of its loop (model_thread_seconds)
        self._seconds = dict.fromkeys(_PHASES, 0.0)
        self._idle_since: float | None = None  # when the model thread began waiting for work (guarded by _lock)

    # --- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> ContinuousBatcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gar-batcher", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the loop; requests not finished fail with :class:`EngineError` (they do not hang)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> ContinuousBatcher:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- submitting ----------------------------------------------------------------------------------------------
    def submit(
        self,
        build_embeds: Callable[[], torch.Tensor],
        *,
        max_new_tokens: int,
        eos_token_ids: Iterable[int] = (),
        on_token: TokenCallback | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        prefix: SharedPrefix | None = None,
    ) -> GenerationHandle:
        """Queue a request. ``build_embeds`` runs on the model thread and returns ``[L, hidden]`` (or
        ``[1, L, hidden]``) prompt embeddings; ``on_token`` gets new ids on the model thread, or through
        ``loop.call_soon_threadsafe`` on that event loop when ``loop`` is given. ``prefix``: the prompt's shared
        prefix (its K/V are reused from, or stored into, the prefix cache).

        Raises:
            InputError: ``max_new_tokens`` < 1.
            EngineBusyError: the queue already holds ``max_queue`` requests.
            EngineError: the scheduler is closed.
        """
        if max_new_tokens < 1:
            raise InputError("must be at least 1", field="max_new_tokens")
        future: Future[GenerationOutput] = Future()
        request = _Request(
            build_embeds,
            int(max_new_tokens),
            frozenset(int(i) for i in eos_token_ids),
            on_token,
            future,
            loop=loop if on_token is not None else None,
            prefix=prefix if prefix is not None and self.keeps_prefix(prefix.length) else None,
        )
        with self._lock:
            if self._closed:
                raise EngineError("the model scheduler is closed")
            if len(self._queue) >= self.max_queue:  # cancelled requests leave now, not at the model thread's turn
                for cancelled in [r for r in self._queue if r.future.cancelled()]:
                    self._queue.remove(cancelled)
            if len(self._queue) >= self.max_queue:
                raise EngineBusyError(
                    f"the model is busy: {len(self._queue)} requests are already waiting (max_queue="
                    f"{self.max_queue}); retry in about {self.retry_after_s:g} s",
                    retry_after_s=self.retry_after_s,
                )
            self._queue.append(request)
            self._lock.notify_all()
        future.add_done_callback(lambda _f: self._wake())
        return GenerationHandle(future, self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def keeps_prefix(self, length: int) -> bool:
        """Whether a shared prefix of ``length`` tokens could be kept in the prefix cache (then its request's
        prefill is split at it): its K/V fit the store's bound as configured. The same answer for a given length
        for the scheduler's whole life, like :attr:`uses_prefixes`."""
        return self.uses_prefixes and 0 < length * self.decoder.cache.bytes_per_token <= self._prefix_bound

    def stats(self) -> dict[str, int]:
        """Queue, batch and KV-cache figures (for health endpoints and reports)."""
        running = [r for r in self._slots if r is not None]
        with self._lock:
            queued = len(self._queue)
        return {
            "queued": queued,
            "running": len(running),
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "kv_reserved_tokens": sum(r.reserved_tokens for r in running),
            "kv_budget_tokens": self.kv_budget_tokens,
            "kv_cache_bytes": self.decoder.cache.nbytes,
            "prefix_cache_bytes": self.prefix_cache.nbytes if self.prefix_cache is not None else 0,
            "prefix_cache_max_bytes": self.prefix_cache.max_bytes if self.prefix_cache is not None else 0,
            "peak_batch": self.peak_batch,
            "steps": self.steps,
        }

    def model_thread_seconds(self) -> dict[str, float]:
        """Host seconds the model thread has spent so far in each part of its loop: ``idle`` (no request to work
        on), ``admit`` (the head request's embeddings — vision tower, RoI replay — and a kept prefix's K/V copied
        into its slot), ``prefill``, ``decode`` (the steps), ``read`` (token ids to their requests; waiting for
        them when nothing else can run, on CUDA mostly GPU time), ``flush`` (ids handed to the event loops).
        Differences between two calls say where a run's time went (benchmarks); on CUDA a phase ends when its host
        work does, unless it waits for the GPU."""
        with self._lock:  # a consistent snapshot; a wait going on now counts up to now
            seconds = dict(self._seconds)
            if self._idle_since is not None:
                seconds["idle"] += time.perf_counter() - self._idle_since
        return seconds

    # --- the model thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        seconds, clock = self._seconds, time.perf_counter
        parts: tuple[tuple[str, Callable[[], None]], ...] = (  # one turn of the loop, in order
            ("admit", self._drop_cancelled_and_admit),
            ("prefill", self._prefill_one_chunk),
            ("decode", self._decode),
            ("read", lambda: self._read_tokens(block=not self._has_work_besides_reading())),
            ("flush", self._flush),
        )
        try:
            while True:
                with self._lock:
                    self._idle_since = waiting = clock()
                    while not self._closed and not self._queue and not self._busy():
                        self._lock.wait()
                    seconds["idle"] += clock() - waiting
                    self._idle_since = None
                    if self._closed:
                        break
                for phase, work in parts:
                    start = clock()
                    work()
                    seconds[phase] += clock() - start
        except Exception as exc:  # noqa: BLE001 - never leave callers waiting on a dead thread
            with self._lock:
                self._closed = True
            self._shutdown(EngineError(f"the model thread failed: {type(exc).__name__}: {exc}"))
            raise
        self._shutdown(None)

    def _busy(self) -> bool:
        return any(r is not None for r in self._slots) or bool(self._inflight)

    def _has_work_besides_reading(self) -> bool:
        with self._lock:
            queued = bool(self._queue)
        return queued or any(r is not None and not r.done and r.launched < r.max_new_tokens for r in self._slots)

    def _drop_cancelled_and_admit(self) -> None:
        self._drop_cancelled()
        self._admit()

    def _drop_cancelled(self) -> None:
        with self._lock:
            for request in [r for r in self._queue if r.future.cancelled()]:
                self._queue.remove(request)
        for request in self._slots:
            if request is not None and request.future.cancelled():
                self._free(request)

    def _free(self, request: _Request) -> None:
        """Give the request's slot back (its later in-flight ids are ignored)."""
        request.done = True
        if request.slot >= 0 and self._slots[request.slot] is request:
            self.decoder.release(request.slot)
            self._slots[request.slot] = None
        request.embeds = request.reuse = None

    def _awaits_prefix(self, request: _Request) -> bool:
        """Whether a running request is prefilling ``request``'s prefix now, to be stored for it to reuse."""
        prefix, store = request.prefix, self.prefix_cache
        if prefix is None or store is None or prefix.key in store:
            return False
        if not store.fits(prefix.length * self.decoder.cache.bytes_per_token):
            return False
        return any(
            r is not None and not r.done and r.prefix is not None and r.prefix.key == prefix.key
            and r.prefilled < r.prefix.length
            for r in self._slots
        )  # fmt: skip

    def _admit(self) -> None:
        """Build the head request's embeddings; give it a slot if one is free within the batch and KV budget."""
        with self._lock:
            request = self._queue[0] if self._queue else None
        if request is None:
            return
        if request.embeds is None:
            if self._awaits_prefix(request):
                return  # admitted once that prefix is stored (prefills run one at a time anyway)
            request.times["encode_start"] = time.perf_counter()
            try:
                prefix = request.prefix
                saved = self.prefix_cache.get(prefix.key) if prefix and self.prefix_cache is not None else None
                if prefix is not None and saved is not None:  # only the text after the prefix is embedded
                    embeds = prefix.suffix_embeds()
                    request.reuse, request.embeds_start = saved, prefix.length
                else:
                    embeds = request.build_embeds()
                request.embeds = embeds[0] if embeds.dim() == 3 else embeds  # [L - embeds_start, hidden]
                request.prompt_tokens = request.embeds_start + int(request.embeds.shape[0])
                if prefix is not None and prefix.length >= request.prompt_tokens:
                    request.prefix = None  # nothing would be left to prefill after it: not a shared prefix
                if request.reserved_tokens > self.decoder.usable_len:
                    raise InputError(
                        f"the prompt ({request.prompt_tokens} tokens) plus max_new_tokens ({request.max_new_tokens}) "
                        f"does not fit the KV cache's {self.decoder.usable_len} tokens per sequence",
                        field="max_new_tokens",
                    )
            except Exception as exc:  # noqa: BLE001 - the request's own failure goes to its caller
                with self._lock:
                    self._queue.remove(request)
                self._fail(request, exc)
                return
            request.times["encoded"] = time.perf_counter()
        running = [r for r in self._slots if r is not None]
        free = [i for i, r in enumerate(self._slots) if r is None]
        reserved = sum(r.reserved_tokens for r in running)
        if not free or len(running) >= self.max_batch_size:
            return
        if reserved + request.reserved_tokens > self.kv_budget_tokens and running:
            return  # waits for budget (a lone request always runs: it fits one slot)
        with self._lock:
            self._queue.popleft()
        request.slot = free[0]
        request.times["admitted"] = time.perf_counter()
        self._slots[request.slot] = request
        if request.reuse is not None:
            request.prefilled = self.decoder.cache.write(request.slot, request.reuse)
            request.reuse = None

    def _prefill_one_chunk(self) -> None:
        """One prefill chunk (``prefill_chunk_tokens``, or the whole prompt) of the earliest-admitted request still
        prefilling; its first token when complete. A chunk that spans the request's prefix end runs as two calls
        (the prefix, then the rest) with no decode step between them."""
        prefilling = [r for r in self._slots if r is not None and r.embeds is not None and not r.done]
        if not prefilling:
            return
        request = min(prefilling, key=lambda r: r.times["admitted"])
        assert request.embeds is not None
        total = request.prompt_tokens
        budget_end = min(total, request.prefilled + (self.prefill_chunk_tokens or total))  # this chunk's last + 1
        prefix = request.prefix
        request.times.setdefault("prefill_start", time.perf_counter())
        logits = None
        while request.prefilled < budget_end:
            start, end = request.prefilled, budget_end
            if prefix is not None and start < prefix.length:
                end = min(end, prefix.length)  # a call ends at the prefix end, whether its K/V are stored or reused
            offset = request.embeds_start
            try:
                embeds = request.embeds[start - offset : end - offset]  # [end - start, hidden]
                logits = self.decoder.prefill(request.slot, embeds, start=start, logits=end == total)  # [vocab]|None
            except Exception as exc:  # noqa: BLE001
                self._free(request)
                self._fail(request, exc)
                return
            request.prefilled = end
            if prefix is not None and end == prefix.length:
                self._store_prefix(request.slot, prefix)
        if logits is None:
            return
        first = int(logits.argmax())  # one host sync per request, at its first token
        request.embeds = None
        request.launched = 1
        request.times["first_token"] = time.perf_counter()
        if self._deliver(request, [first]) and request.launched < request.max_new_tokens:
            self.decoder.activate(request.slot, first, total)

    def _store_prefix(self, slot: int, prefix: SharedPrefix) -> None:
        """Keep the K/V of ``prefix``, just prefilled in ``slot``, for later requests (unless kept already). Out of
        device memory, nothing is kept and the store's bound shrinks to what it holds (with a warning)."""
        store = self.prefix_cache
        if store is None or prefix.key in store or not store.fits(prefix.length * self.decoder.cache.bytes_per_token):
            return
        try:
            saved = self.decoder.cache.read(slot, prefix.length)
        except torch.OutOfMemoryError:
            warnings.warn(
                f"out of device memory keeping a prompt prefix: the prefix cache stays at {store.nbytes} bytes "
                f"(was bounded at {store.max_bytes}); set prefix_cache_bytes / --prefix-cache-mb lower",
                RuntimeWarning,
                stacklevel=2,
            )
            store.max_bytes = store.nbytes
            return
        store.put(prefix.key, saved)

    def _decode(self) -> None:
        """One decode step for every slot whose sequence still has tokens to launch."""
        rows = [
            r
            for r in self._slots
            if r is not None and not r.done and r.embeds is None and 0 < r.launched < r.max_new_tokens
        ]
        if not rows:
            return
        n = max(r.slot for r in rows) + 1
        try:
            pending = self.decoder.step(n)
        except Exception as exc:  # noqa: BLE001 - a failed step fails the requests in it
            for request in rows:
                self._free(request)
                self._fail(request, exc)
            return
        self.steps += 1
        self.peak_batch = max(self.peak_batch, len(rows))
        for request in rows:
            request.launched += 1
            if request.launched >= request.max_new_tokens:
                self.decoder.release(request.slot)  # its last token is computed: the slot is free for others
                self._slots[request.slot] = None
        self._inflight.append((pending, rows))

    def _read_tokens(self, block: bool) -> None:
        """Deliver ids of steps whose copies have landed; wait when nothing else can run or too many are late."""
        while self._inflight:
            pending, rows = self._inflight[0]
            if not (pending.ready() or block or len(self._inflight) > self.readback_lag):
                return
            self._inflight.popleft()
            ids = pending.tolist()
            for request in rows:
                if not request.done:
                    self._deliver(request, [ids[request.slot]])

    def _deliver(self, request: _Request, ids: list[int]) -> bool:
        """Append ids to a request; finish it at EOS or ``max_new_tokens``. Returns whether it still runs."""
        if request.future.cancelled():
            self._free(request)
            return False
        stopped, new = False, []
        for token in ids:
            new.append(token)
            if token in request.eos_token_ids:
                stopped = True
                break
        request.token_ids.extend(new)
        if request.on_token is not None and request.loop is not None:
            self._outbox.setdefault(request.loop, []).append((request.on_token, new))
        elif request.on_token is not None:
            try:
                request.on_token(new)
            except Exception as exc:  # noqa: BLE001 - a failing callback fails its own request only
                self._free(request)
                self._fail(request, exc)
                return False
        if stopped or len(request.token_ids) >= request.max_new_tokens:
            self._finish(request, stopped)
            return False
        return True

    def _flush(self) -> None:
        """Send the ids gathered for event-loop callbacks: one ``call_soon_threadsafe`` per loop, in order."""
        outbox, self._outbox = self._outbox, {}
        for loop, items in outbox.items():
            try:
                loop.call_soon_threadsafe(_run_callbacks, loop, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

    def _finish(self, request: _Request, stopped: bool) -> None:
        self._flush()  # its last ids reach its callback before its result does
        self._free(request)
        now = time.perf_counter()
        t = request.times
        output = GenerationOutput(
            token_ids=list(request.token_ids),
            stopped_by_eos=stopped,
            prompt_tokens=request.prompt_tokens,
            queue_ms=(t["encode_start"] - request.submitted) * 1000,
            encode_ms=(t["encoded"] - t["encode_start"]) * 1000,
            wait_ms=(t["admitted"] - t["encoded"]) * 1000,
            prefill_ms=(t["first_token"] - t["prefill_start"]) * 1000,
            decode_ms=(now - t["first_token"]) * 1000,
            reused_prompt_tokens=request.embeds_start,
        )
        try:
            request.future.set_result(output)
        except InvalidStateError:  # cancelled meanwhile
            pass

    def _fail(self, request: _Request, exc: BaseException) -> None:
        self._flush()
        request.done = True
        try:
            request.future.set_exception(exc)
        except InvalidStateError:
            pass

    def _shutdown(self, error: EngineError | None) -> None:
        """Fail every request not finished, with ``error`` or, when closing, an error saying so."""
        with self._lock:
            waiting = list(self._queue)
            self._queue.clear()
        unfinished = [*waiting, *(r for r in self._slots if r is not None)]
        unfinished += [r for _pending, rows in self._inflight for r in rows if not r.done]
        error = error or EngineError("the model scheduler was closed before the request finished")
        for request in unfinished:
            self._free(request)
            self._fail(request, error)
        self._inflight.clear()
