"""The local engine: GAR in this process, many requests in one continuously batched decode loop.

A request goes through three places:

1. off the event loop (a worker thread): read and validate the image and regions, build the question text
   (:func:`build_job`), then the model inputs (:meth:`GarPipeline.prepare`) and the image's digest;
2. the model thread of a :class:`~gar_tools.engine.scheduler.ContinuousBatcher`: the vision tower (only on the tiles
   the regions touch; the others come from the per-image :class:`~gar_tools.model.tile_cache.TileFeatureCache`),
   RoI replay, prefill, and decode steps shared with every other running request; a question about the same image
   and regions as an earlier one skips the vision tower and the image's prefill: the keys and values of the
   prompt's shared prefix are kept (:class:`~gar_tools.model.prefix_cache.PrefixKVCache`) and only its own text
   is prefilled;
3. back on the event loop: text deltas as tokens arrive (``progress``), then the result.

The model is loaded on first use or by :meth:`LocalEngine.start`. Queue, batch size, KV budget and tile-cache
size are bounded (see the constructor); a full queue raises :class:`~gar_tools.errors.EngineBusyError`.
Cancelling a request (its task) frees its slot.

With a segmenter (``LocalEngine(segmenter=...)``), points and ``segment: true`` boxes are checked while decoding and
turned into masks by one call on the engine's auxiliary thread (which also loads the model), before the request is
prepared for GAR (:func:`gar_tools.segment.resolve.resolve_regions`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pydantic
from PIL import Image

from gar_tools.engine.base import Engine, ItemCallback, Progress
from gar_tools.engine.scheduler import ContinuousBatcher
from gar_tools.engine.threads import run_in_fresh_thread, serial_torch_thread
from gar_tools.errors import GarToolsError, InputError, RegionError
from gar_tools.images import ImagePolicy, load_image, read_source_bytes
from gar_tools.inputs import Region, ToolRequest, validation_error_to_input_error
from gar_tools.kernels.decode_attention import decode_attention_backend
from gar_tools.model.decoder import BatchDecoder, DecodeAttention
from gar_tools.model.detokenize import TextStream
from gar_tools.model.modeling import TOKENS_PER_TILE, Geometry
from gar_tools.model.pipeline import GarPipeline, load
from gar_tools.model.prefix_cache import PrefixKVCache, SharedPrefix, prefix_key, shared_prefix_length
from gar_tools.model.processing import PreparedInputs
from gar_tools.model.prompts import SINGLE_REGION_PROMPT_INDEX, prompt_token
from gar_tools.model.rgb import image_digest, to_rgb
from gar_tools.model.tile_cache import TileFeatureCache
from gar_tools.regions import DecodedRegion, decode_region, decode_regions, draw_overlay, encode_png_base64, mask_rle
from gar_tools.results import ModelInfo, RegionDescription, RegionFailure, RegionInfo, Timings, ToolResult
from gar_tools.segment.cache import ImageValueCache
from gar_tools.segment.prompts import SegmentPrompt, segment_prompt
from gar_tools.tools import ToolName, ToolSpec, get_tool

if TYPE_CHECKING:
    from gar_tools.segment.segmenter import Segmenter

__all__ = ["LocalEngine", "Job", "build_job", "read_image", "shared_prefix", "DEFAULT_IMAGE_CACHE_BYTES"]

#: Default bound of the decoded-image cache: 128 MiB (13 RGB images of 1792², 55 of 896²).
DEFAULT_IMAGE_CACHE_BYTES = 128 * 2**20

T = TypeVar("T")

#: Text tokens of a prompt beyond its image and slot tokens (upstream's framing + a long question), for sizing.
_TEXT_TOKENS = 1024


@dataclass
class Job:
    """A decoded request, ready for the model."""

    spec: ToolSpec
    request: ToolRequest
    image: Image.Image
    regions: list[DecodedRegion | SegmentPrompt]  # SegmentPrompt until the segmenter has run
    question: str | None  # None: the single-region describe prompt
    prompt_indices: list[int]
    load_ms: float = 0.0
    segment_ms: float = 0.0
    digest: str | None = None  # image_digest(image), when reading it gave one (a kept decoded image)


def read_image(
    source: str, policy: ImagePolicy, cache: ImageValueCache | None = None
) -> tuple[Image.Image, str | None]:
    """:func:`~gar_tools.images.load_image` of ``source`` (the request's ``image`` field) and, with a ``cache``, its
    :func:`image_digest` (the per-image tile caches' key), both computed once per distinct encoded image: the bytes
    are read and checked against ``policy`` on every call, and a decoded image is reused only for the very same
    bytes (SHA-256), so the result is exactly what decoding gives. An agent sends its image with every question;
    decoding it is the slow part of reading it (``load_ms`` of ``benchmarks/serving.py --only
    known_image_encode``). The image returned may be shared with other requests: read it, never modify it.
    Without a cache the digest is None (computed later, where needed)."""
    if cache is None:
        return load_image(source, policy, field="image"), None
    data = read_source_bytes(source, policy, field="image")

    def decode() -> tuple[Image.Image, str]:
        image = load_image(data, policy, field="image")
        return image, image_digest(image)

    return cache.get_or_compute(hashlib.sha256(data).hexdigest(), decode)


def build_job(
    tool: ToolName,
    request: ToolRequest,
    policy: ImagePolicy,
    *,
    segmenter: bool = False,
    images: ImageValueCache | None = None,
) -> Job:
    """Read the image and regions and build the question text; every user error is raised here, with its field
    (but an empty mask from the segmenter, found when it runs). ``segmenter``: whether points and segment boxes will
    be segmented (else they are an error saying how to enable a segmenter). ``images``: decoded images to reuse
    (:func:`read_image`)."""
    start = time.perf_counter()
    spec = get_tool(tool)
    image, digest = read_image(request.image, policy, images)
    given = spec.regions(request)
    regions = decode_regions(
        given,
        image.size,
        policy=policy,
        field=spec.regions_field,
        fields=[spec.region_field(i) for i in range(len(given))],
        min_count=spec.min_regions,
        max_count=spec.max_regions,
        segmenter=segmenter,
    )
    question = spec.question(request, [r.id for r in regions])
    indices = [SINGLE_REGION_PROMPT_INDEX] if question is None else list(range(len(regions)))
    return Job(
        spec=spec,
        request=request,
        image=image,
        regions=regions,
        question=question,
        prompt_indices=indices,
        load_ms=(time.perf_counter() - start) * 1000,
        digest=digest,
    )


def shared_prefix(
    pipeline: GarPipeline, prepared: PreparedInputs, digest: str, batcher: ContinuousBatcher | None = None
) -> SharedPrefix | None:
    """The prompt's shared prefix (its image and regions), for the scheduler's prefix cache; None when ``batcher``
    could not keep it (no cache, or its K/V exceed the bound). Hashes the prompt map (a few milliseconds for 17
    tiles): call it off the event loop."""
    length = shared_prefix_length(prepared, pipeline.config.image_token_id)
    if batcher is not None and not batcher.keeps_prefix(length):
        return None
    key = prefix_key(prepared, digest, length, pipeline.model, pipeline.geometry)
    return SharedPrefix(key, length, lambda: pipeline.embed_suffix(prepared, length))


def _region_info(region: DecodedRegion, prompt_index: int) -> RegionInfo:
    """A decoded region as results report it: ``mask_rle`` whenever the mask is not exactly the caller's."""
    return RegionInfo(
        id=region.id,
        prompt=prompt_token(prompt_index),
        box=list(region.box),
        area=region.area,
        source=region.source,  # type: ignore[arg-type]
        mask_rle=None if region.from_caller else mask_rle(region.mask),  # type: ignore[arg-type]
        score=region.score,
    )


async def _report(deltas: asyncio.Queue[tuple[int, str] | None], progress: Progress | None, total: int) -> None:
    """Hand ``(tokens so far, text delta)`` items to ``progress`` in order, one at a time, until ``None``."""
    while (item := await deltas.get()) is not None:
        if progress is not None:
            done, delta = item
            await progress(float(done), float(total), delta)


def _speed_options(device: Any, settings: Mapping[str, Any]) -> tuple[DecodeAttention, bool, bool]:
    """The decode attention, fused decode ops and vision CUDA graphs an engine on ``device`` runs: what
    ``settings`` asks for, and for ``"auto"`` / None the fastest measured — on CUDA the split-KV Triton attention
    (when Triton is installed), the fused ops and the vision graphs; elsewhere SDPA and neither."""
    on_cuda = str(device).split(":")[0] == "cuda"
    attention = settings["decode_attention"]
    if attention == "auto":
        attention = "triton" if on_cuda and decode_attention_backend(device) == "triton" else "sdpa"
    fused, vision = settings["decode_fused_ops"], settings["vision_cuda_graphs"]
    return attention, on_cuda if fused is None else bool(fused), on_cuda if vision is None else bool(vision)


class _Runtime:
    """What serving a loaded pipeline needs: the batcher (and its model thread), the decoder, the tile cache."""

    def __init__(self, pipeline: GarPipeline, settings: dict[str, Any]) -> None:
        config = pipeline.config
        max_tiles = pipeline.processor.max_num_tiles
        needed = (1 + max_tiles) * TOKENS_PER_TILE + config.prompt_numbers * TOKENS_PER_TILE + _TEXT_TOKENS
        max_len = settings["max_seq_len"] or needed + settings["max_new_tokens_limit"] + 1
        on_cuda = pipeline.device.type == "cuda"
        slots = settings["max_batch_size"] or (16 if on_cuda else 8)
        chunk = settings["prefill_chunk_tokens"]
        self.prefixes = PrefixKVCache(settings["prefix_cache_bytes"], device=pipeline.device)
        self.pipeline = pipeline
        attention, fused, vision_graphs = _speed_options(pipeline.device, settings)
        self.decoder = BatchDecoder(pipeline.model, slots=slots, max_len=max_len, attention=attention, fused_ops=fused)
        self.batcher = ContinuousBatcher(
            self.decoder,
            max_batch_size=slots,
            kv_budget_tokens=settings["kv_budget_tokens"],
            max_queue=settings["max_queue"],
            prefill_chunk_tokens=None if chunk == "auto" else chunk,
            prefix_cache=self.prefixes,
        ).start()
        self.tiles = TileFeatureCache(settings["tile_cache_bytes"], device=pipeline.device, cuda_graphs=vision_graphs)
        # uint8 resized tiles per image (host memory), bounded like the feature cache
        self.image_tiles = ImageValueCache(self.tiles.max_bytes)
        tokenizer = pipeline.processor.tokenizer
        self.eos_token_ids = [tokenizer.eos_token_id]

    def close(self) -> None:
        self.batcher.close()


class LocalEngine(Engine):
    """GAR in this process, continuously batched.

    Args:
        model: ``"tiny"`` (random weights: meaningless text), a checkpoint folder, or a hub id
            (see :func:`gar_tools.model.load`).
        dtype, device, geometry: passed to :func:`gar_tools.model.load`.
        policy: what images and masks may be read (size limits, allowed folders, URLs).
        pipeline: an already loaded pipeline to use instead of loading ``model``.
        max_batch_size: sequences decoded together (slots of the KV cache); default 16 on CUDA, 8 on CPU.
        kv_budget_tokens: tokens (prompt + ``max_new_tokens``) reserved in the KV cache at once; default: every
            slot full. Requests beyond it, or beyond ``max_batch_size``, wait in the queue.
        max_queue: requests waiting at once; one more gets :class:`~gar_tools.errors.EngineBusyError`.
        max_seq_len: positions per slot (prompt + generated); default: the largest prompt the checkpoint can
            produce plus the largest ``max_new_tokens``.
        prefill_chunk_tokens: prompt tokens prefilled between two decode steps (None: whole prompts). Default
            ``"auto"``: whole prompts, on CPU and CUDA alike — a later chunk's masked attention costs about as
            much as the whole causal prompt (``benchmarks/serving.py --only prefill_chunking``, 4.7k tokens: tiny
            on CPU 69 ms whole, 127 ms in 2048-token chunks; GAR-1B size in bf16 on an H200 26 ms whole, 49 ms
            in 2048-token chunks).
        decode_attention: the decode step's attention over the cache, ``"sdpa"``, ``"matmul"`` or ``"triton"``
            (see :class:`~gar_tools.model.decoder.BatchDecoder`, with what each measured); ``"auto"``: ``"triton"``
            on CUDA (when Triton is installed), ``"sdpa"`` elsewhere.
        decode_fused_ops: run each decode layer's element-wise work (residual add + RMSNorm, rotary + KV write,
            SiLU · up) in fused Triton kernels and its q/k/v projections in one GEMV (see
            :class:`~gar_tools.model.decoder.BatchDecoder`). None (default): on CUDA — with ``"triton"`` attention
            a GAR-1B step at batch 1 took 1.55 ms instead of SDPA's unfused 3.59 on an H200
            (``benchmarks/results/2026-11-27-decode_batching-nvidia-h200-run4.json``); off on CPU, where their
            references would run (the same results, no faster).
        vision_cuda_graphs: replay the vision tower's fixed-size tile chunks from CUDA graphs (see
            :class:`~gar_tools.model.tile_cache.TileFeatureCache`). None (default): on CUDA — 17 tiles in 68 ms
            instead of 104, features equal (``…-profile_request-nvidia-h200-run4.json``).
        tile_cache_bytes: bound of the per-image tile-feature cache; default 256 MiB on CPU, 2 GiB on CUDA.
        image_cache_bytes: bound of the decoded images kept for the next request that sends the same image
            (:func:`read_image`; default :data:`DEFAULT_IMAGE_CACHE_BYTES`, 0 disables it).
        prefix_cache_bytes: bound of the keys and values kept of prompts' image-and-regions prefixes, for later
            questions about the same image and regions (:mod:`gar_tools.model.prefix_cache`); default 1 GiB on CPU,
            2 GiB on CUDA (a 17-tile prompt's prefix is about 150 MB at GAR-1B size in bf16, 300 MB in fp32, by the
            arithmetic in :mod:`gar_tools.model.prefix_cache`). With it on, every prompt whose prefix fits the bound
            is prefilled in two calls split at its prefix end, so an answer never depends on earlier questions; 0
            disables it, and prompts are prefilled whole (as are those whose prefix could never be kept).
        segmenter: a SAM-family checkpoint (hub id, folder, ``"tiny-sam"``) or a loaded
            :class:`~gar_tools.segment.segmenter.Segmenter`, to turn points and segment boxes into masks; loaded
            beside GAR, on its device and in its dtype. None: points and segment boxes are refused.
    """

    def __init__(
        self,
        model: str = "tiny",
        *,
        dtype: str | None = None,
        device: str | None = None,
        geometry: Geometry = "checkpoint",
        policy: ImagePolicy | None = None,
        pipeline: GarPipeline | None = None,
        max_batch_size: int | None = None,
        kv_budget_tokens: int | None = None,
        max_queue: int = 64,
        max_seq_len: int | None = None,
        prefill_chunk_tokens: int | Literal["auto"] | None = "auto",
        decode_attention: DecodeAttention | Literal["auto"] = "auto",
        decode_fused_ops: bool | None = None,
        vision_cuda_graphs: bool | None = None,
        tile_cache_bytes: int | None = None,
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
        prefix_cache_bytes: int | None = None,
        segmenter: str | Segmenter | None = None,
    ) -> None:
        from gar_tools.inputs import MAX_NEW_TOKENS_LIMIT

        self.model_name = pipeline.name if pipeline is not None else model
        self._load_args = {"dtype": dtype, "device": device, "geometry": geometry}
        self._settings: dict[str, Any] = {
            "max_batch_size": max_batch_size,
            "kv_budget_tokens": kv_budget_tokens,
            "max_queue": max_queue,
            "max_seq_len": max_seq_len,
            "prefill_chunk_tokens": prefill_chunk_tokens,
            "decode_attention": decode_attention,
            "decode_fused_ops": decode_fused_ops,
            "vision_cuda_graphs": vision_cuda_graphs,
            "tile_cache_bytes": tile_cache_bytes,
            "prefix_cache_bytes": prefix_cache_bytes,
            "max_new_tokens_limit": MAX_NEW_TOKENS_LIMIT,
        }
        self.policy = policy or ImagePolicy()
        self._images = ImageValueCache(image_cache_bytes)  # decoded request images, by their encoded bytes
        self._segmenter: Segmenter | None = None if segmenter is None or isinstance(segmenter, str) else segmenter
        self.segmenter_name: str | None = (
            segmenter if segmenter is None or isinstance(segmenter, str) else segmenter.name
        )
        self._pipeline = pipeline
        self._runtime: _Runtime | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Auxiliary threads run torch on one OpenMP thread each, so the model thread keeps its speed (threads.py).
        self._loader = ThreadPoolExecutor(  # loading, segmenting
            max_workers=1, thread_name_prefix="gar-aux", initializer=serial_torch_thread
        )
        self._aux = ThreadPoolExecutor(  # reading images, prepare, results: off the event loop
            max_workers=4, thread_name_prefix="gar-prepare", initializer=serial_torch_thread
        )

    # --- model ---------------------------------------------------------------------------------------------------
    @property
    def pipeline(self) -> GarPipeline:
        """The loaded pipeline (loads it on first access)."""
        return self._ready().pipeline

    def _ready(self) -> _Runtime:
        """The runtime, loading the model and starting the batcher on first use (thread-safe)."""
        if self._runtime is None:
            with self._lock:
                if self._closed:
                    from gar_tools.errors import EngineError

                    raise EngineError("the local engine is closed")
                if self._runtime is None:
                    # in a thread that ends afterwards: loading uses every core, and leaves no OpenMP workers behind
                    self._runtime = run_in_fresh_thread(self._load)
        return self._runtime

    def _load(self) -> _Runtime:
        pipeline = self._pipeline or load(self.model_name, **self._load_args)  # type: ignore[arg-type]
        self._pipeline = pipeline
        return _Runtime(pipeline, self._settings)

    @property
    def segmenter(self) -> Segmenter | None:
        """The loaded segmenter, if one was configured (loads it, after GAR, on GAR's device and dtype)."""
        if self._segmenter is None and self.segmenter_name is not None:
            pipeline = self.pipeline
            with self._lock:
                if self._segmenter is None:
                    from gar_tools.segment.loading import load_segmenter

                    name = self.segmenter_name
                    self._segmenter = run_in_fresh_thread(
                        lambda: load_segmenter(name, device=pipeline.device, dtype=pipeline.dtype)
                    )
        return self._segmenter

    async def start(self) -> None:
        """Load the model (and segmenter) and start the decode loop now (on the auxiliary thread; the event loop
        keeps running)."""
        await asyncio.get_running_loop().run_in_executor(self._loader, lambda: (self._ready(), self.segmenter))

    async def info(self) -> ModelInfo:
        runtime = self._runtime
        if runtime is None:
            tiny = self.model_name == "tiny"
            return ModelInfo(model=self.model_name, tiny_model=tiny, loaded=False, segmenter=self.segmenter_name)
        pipeline = runtime.pipeline
        batch, tiles = runtime.batcher.stats(), runtime.tiles.stats()
        return ModelInfo(
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            loaded=True,
            device=str(pipeline.device),
            dtype=str(pipeline.dtype).removeprefix("torch."),
            max_regions=pipeline.config.prompt_numbers,
            geometry=pipeline.geometry,
            max_batch_size=batch["max_batch_size"],
            max_queue=batch["max_queue"],
            kv_budget_tokens=batch["kv_budget_tokens"],
            kv_cache_bytes=batch["kv_cache_bytes"],
            tile_cache_max_bytes=tiles["max_bytes"],
            tile_cache_bytes=tiles["bytes"] + runtime.image_tiles.nbytes,
            image_cache_bytes=self._images.nbytes,
            image_cache_max_bytes=self._images.max_bytes,
            prefix_cache_bytes=batch["prefix_cache_bytes"],
            prefix_cache_max_bytes=batch["prefix_cache_max_bytes"],
            prefill_chunk_tokens=runtime.batcher.prefill_chunk_tokens,
            decode_cuda_graphs=runtime.decoder.use_cuda_graphs,
            decode_attention=runtime.decoder.attention,
            decode_fused_ops=runtime.decoder.fused_ops,
            vision_cuda_graphs=runtime.tiles.cuda_graphs and pipeline.device.type == "cuda",
            vision_fused_rope=runtime.tiles.fused_rope_kept,
            queued=batch["queued"],
            running=batch["running"],
            segmenter=self.segmenter_name,
        )

    async def segment(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """The segmenter's mask for one points or box prompt on an image (the region picker's previews)."""
        if self.segmenter_name is None:
            return await super().segment(request)
        data = dict(request)
        image_source = data.pop("image", None)
        if not isinstance(image_source, str) or not image_source:
            raise InputError("give the image as a path, data: URI or base64 string", field="image")
        if "box" in data:
            data["segment"] = True
        try:
            region = Region.model_validate(data)
        except pydantic.ValidationError as exc:
            raise validation_error_to_input_error(exc) from None
        if region.points is None and not region.segment:
            raise InputError("give points (with optional labels) or a box to segment", field="region")
        image, _ = await self._off_loop(read_image, image_source, self.policy, self._images)  # each click sends it
        prompt = segment_prompt(region, image.size, field="region", rid="preview")
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(
            self._loader, lambda: self._ready() and self.segmenter.segment(image, prompt)
        )
        return {"rle": await self._off_loop(mask_rle, result.mask), "score": result.score}

    @staticmethod
    def _image_tiles(runtime: _Runtime, image: Image.Image, digest: str | None) -> tuple[str, Any]:
        """The image's digest (``digest`` when known) and its resized uint8 tiles, kept per image for the next
        question on it (exact: they depend only on the image). Off the event loop."""
        digest = digest or image_digest(image)
        # Resizing a new image is the one helper step that gains much from all cores (its torch ops are parallel):
        # in a thread of its own, whose OpenMP workers end with it (engine/threads.py). Once per image: requests
        # on an image being resized wait for that resize.
        tiles = runtime.image_tiles.get_or_compute(
            digest,
            lambda: run_in_fresh_thread(
                lambda: runtime.pipeline.processor.image_tiles(to_rgb(image, copy=False)), name="gar-resize"
            ),
        )
        return digest, tiles

    def _segment_regions(self, job: Job) -> None:
        """The segmenter hook (auxiliary thread): replace ``job.regions``' prompts by the segmenter's masks."""
        if not any(isinstance(region, SegmentPrompt) for region in job.regions):
            return
        from gar_tools.segment.resolve import resolve_regions

        started = time.perf_counter()
        segmenter = self.segmenter
        job.regions = list(resolve_regions(job.image, job.regions, segmenter))
        job.segment_ms = (time.perf_counter() - started) * 1000

    # --- running -------------------------------------------------------------------------------------------------
    async def run(
        self,
        tool: ToolName,
        request: ToolRequest,
        progress: Progress | None = None,
        on_item: ItemCallback | None = None,
    ) -> ToolResult:
        if get_tool(tool).fan_out:
            return await self._run_fan_out(get_tool(tool), request, progress, on_item)
        loop = asyncio.get_running_loop()
        segmenting = self.segmenter_name is not None
        job = await self._off_loop(
            functools.partial(build_job, segmenter=segmenting, images=self._images), tool, request, self.policy
        )
        loaded_before = self._runtime is not None
        started = time.perf_counter()
        runtime = self._runtime or await loop.run_in_executor(self._loader, self._ready)
        model_load_ms = 0.0 if loaded_before else (time.perf_counter() - started) * 1000
        pipeline = runtime.pipeline
        await loop.run_in_executor(self._loader, self._segment_regions, job)

        def prepare() -> tuple[Any, str, SharedPrefix | None, float]:
            begin = time.perf_counter()
            digest, tiles = self._image_tiles(runtime, job.image, job.digest)
            prepared = pipeline.prepare(job.image, [r.mask for r in job.regions], job.question, image_tiles=tiles)
            prefix = shared_prefix(pipeline, prepared, digest, runtime.batcher)
            return prepared, digest, prefix, (time.perf_counter() - begin) * 1000

        prepared, digest, prefix, prepare_ms = await self._off_loop(prepare)
        stream = TextStream(pipeline.processor.tokenizer)
        deltas: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
        generated = 0

        def on_token(ids: list[int]) -> None:  # runs on this event loop (the batcher hands ids over with loop=)
            nonlocal generated
            generated += len(ids)
            deltas.put_nowait((generated, stream.push(ids)))

        handle = runtime.batcher.submit(
            lambda: pipeline.embed(prepared, runtime.tiles.image_features(pipeline.model, prepared, digest)),
            max_new_tokens=request.max_new_tokens,
            eos_token_ids=runtime.eos_token_ids,
            on_token=on_token,
            loop=loop,
            prefix=prefix,
        )
        reporter = asyncio.create_task(_report(deltas, progress, request.max_new_tokens))
        try:
            output = await handle  # cancelling this task cancels the request and frees its slot
        finally:
            deltas.put_nowait(None)
            await reporter
        tail = stream.finish()
        if tail and progress is not None:
            await progress(float(generated), float(request.max_new_tokens), tail)
        overlay = None
        if request.overlay:
            overlay = encode_png_base64(await self._off_loop(draw_overlay, job.image, job.regions))
        regions = await self._off_loop(  # RLE-encoding large masks is not free: off the event loop
            lambda: [_region_info(r, k) for r, k in zip(job.regions, job.prompt_indices, strict=True)]  # type: ignore[arg-type]
        )
        return job.spec.result_model(
            text=stream.text,
            regions=regions,
            image_size=list(job.image.size),
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            timings=Timings(
                load_ms=job.load_ms + model_load_ms,
                queue_ms=output.queue_ms + output.wait_ms,
                encode_ms=prepare_ms + output.encode_ms,
                prefill_ms=output.prefill_ms,
                generate_ms=output.prefill_ms + output.decode_ms,
                tokens_generated=len(output.token_ids),
                prompt_tokens=output.prompt_tokens,
                prompt_tokens_reused=output.reused_prompt_tokens,
                segment_ms=job.segment_ms,
            ),
            overlay_png=overlay,
            **job.spec.finish(request, stream.text),
        )

    # --- fan-out tools (describe_regions) ---------------------------------------------------------------------------
    def _fan_out_regions(self, spec: ToolSpec, request: ToolRequest, image: Image.Image) -> list[Any]:
        """Auxiliary thread: per region, a :class:`DecodedRegion` or the :class:`GarToolsError` it failed with; for
        ``"auto"``, the segmenter's proposals. Errors about the request as a whole (duplicate ids, no segmenter for
        ``"auto"``) are raised."""
        if getattr(request, spec.regions_field) == "auto":
            if self.segmenter_name is None:
                from gar_tools.segment.prompts import SEGMENTER_HINT

                raise InputError(
                    f'regions: "auto" has the segmenter propose the regions, but none is configured; {SEGMENTER_HINT}',
                    field=spec.regions_field,
                )
            from gar_tools.segment.automatic import generate_masks, proposed_regions

            return proposed_regions(generate_masks(self.segmenter, image, getattr(request, "auto", None)))  # type: ignore[arg-type]
        given = spec.regions(request)
        seen: dict[str, int] = {}
        for i, region in enumerate(given):
            rid = region.id if region.id is not None else f"r{i}"
            if rid in seen:
                raise RegionError(
                    f"id {rid!r} is already used by {spec.region_field(seen[rid])}; ids must be unique (regions "
                    "without an id get r0, r1, ... by position)",
                    field=f"{spec.region_field(i)}.id",
                )
            seen[rid] = i
        out: list[Any] = []
        segmenting = self.segmenter_name is not None
        for i, region in enumerate(given):
            try:
                out.append(
                    decode_region(
                        region,
                        image.size,
                        index=i,
                        policy=self.policy,
                        field=spec.region_field(i),
                        segmenter=segmenting,
                    )
                )
            except GarToolsError as exc:
                out.append(exc)
        if any(isinstance(r, SegmentPrompt) for r in out):
            from gar_tools.segment.resolve import resolve_regions

            segmenter = self.segmenter
            for i, r in enumerate(out):
                if isinstance(r, SegmentPrompt):
                    try:
                        out[i] = resolve_regions(image, [r], segmenter)[0]
                    except GarToolsError as exc:
                        out[i] = exc
        return out

    async def _run_fan_out(
        self, spec: ToolSpec, request: ToolRequest, progress: Progress | None, on_item: ItemCallback | None
    ) -> ToolResult:
        """Each region its own single-region generation (``spec.question`` for it alone), all submitted to the
        batcher together over one decoded image (and so one set of cached tile features); items stream out as
        regions finish. Cancelling cancels every region's request."""
        loop = asyncio.get_running_loop()
        begin = time.perf_counter()
        image, digest = await self._off_loop(read_image, request.image, self.policy, self._images)
        runtime = self._runtime or await loop.run_in_executor(self._loader, self._ready)
        load_ms = (time.perf_counter() - begin) * 1000
        pipeline = runtime.pipeline
        proposed = getattr(request, spec.regions_field) == "auto"
        segment_start = time.perf_counter()
        outcomes = await loop.run_in_executor(self._loader, self._fan_out_regions, spec, request, image)
        segmented = proposed or any(getattr(r, "source", "").startswith("sam:") for r in outcomes)
        segment_ms = (time.perf_counter() - segment_start) * 1000 if segmented else 0.0
        digest, image_tiles = await self._off_loop(self._image_tiles, runtime, image, digest)  # once for all regions
        total = len(outcomes)
        items: list[RegionDescription | None] = [None] * total
        summed = ("encode_ms", "prefill_ms", "queue_ms", "tokens", "prompt_tokens", "prompt_tokens_reused")
        stats = dict.fromkeys(summed, 0.0)
        done = 0

        async def finished(item: RegionDescription) -> None:
            nonlocal done
            items[item.index] = item
            done += 1
            if on_item is not None:
                await on_item(item)
            if progress is not None:
                await progress(float(done), float(total), f"{done} of {total} regions done")

        def failure(index: int, rid: str, exc: GarToolsError) -> RegionDescription:
            reason, field = getattr(exc, "reason", None), getattr(exc, "field", None)
            return RegionDescription(
                index=index,
                id=rid,
                error=RegionFailure(type=type(exc).__name__, message=str(exc), field=field, reason=reason),
            )

        # At most one batch (plus one being prepared) in flight: the batch stays full and the queue stays free for
        # other callers.
        window = asyncio.Semaphore(int(runtime.batcher.stats()["max_batch_size"]) + 1)

        async def describe(index: int, region: DecodedRegion) -> None:
            async with window:
                await describe_now(index, region)

        async def describe_now(index: int, region: DecodedRegion) -> None:
            question = spec.question(request, [region.id])
            indices = [SINGLE_REGION_PROMPT_INDEX] if question is None else [0]
            started = time.perf_counter()

            def prepare() -> tuple[PreparedInputs, SharedPrefix | None]:
                prepared = pipeline.prepare(image, [region.mask], question, image_tiles=image_tiles)
                return prepared, shared_prefix(pipeline, prepared, digest, runtime.batcher)

            prepared, prefix = await self._off_loop(prepare)
            stats["encode_ms"] += (time.perf_counter() - started) * 1000
            stream = TextStream(pipeline.processor.tokenizer)
            handle = runtime.batcher.submit(
                lambda: pipeline.embed(prepared, runtime.tiles.image_features(pipeline.model, prepared, digest)),
                max_new_tokens=request.max_new_tokens,
                eos_token_ids=runtime.eos_token_ids,
                on_token=lambda ids: stream.push(ids),
                loop=loop,
                prefix=prefix,  # as describe_region's: the same prefill chunks, so the same ids
            )
            output = await handle  # cancelling this task cancels the request and frees its slot
            stream.finish()
            stats["encode_ms"] += output.encode_ms
            stats["prefill_ms"] += output.prefill_ms
            stats["queue_ms"] = max(stats["queue_ms"], output.queue_ms + output.wait_ms)
            stats["tokens"] += len(output.token_ids)
            stats["prompt_tokens"] += output.prompt_tokens
            stats["prompt_tokens_reused"] += output.reused_prompt_tokens
            info = await self._off_loop(_region_info, region, indices[0])
            await finished(
                RegionDescription(
                    index=index, id=region.id, text=stream.text, region=info, tokens_generated=len(output.token_ids)
                )
            )

        generate_start = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        try:
            for index, outcome in enumerate(outcomes):
                if isinstance(outcome, GarToolsError):
                    rid = spec.regions(request)[index].id or f"r{index}"
                    await finished(failure(index, rid, outcome))
                else:
                    tasks.append(asyncio.create_task(describe(index, outcome)))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        generate_ms = (time.perf_counter() - generate_start) * 1000
        results = [item for item in items if item is not None]
        described = [item for item in results if item.region is not None]
        overlay = None
        if request.overlay:
            shown = [r for r in outcomes if isinstance(r, DecodedRegion)]
            overlay = encode_png_base64(await self._off_loop(draw_overlay, image, shown))
        return spec.result_model(
            text="\n".join(f"{item.id}: {item.text}" for item in described),
            regions=[item.region for item in described],
            image_size=list(image.size),
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            timings=Timings(
                load_ms=load_ms,
                queue_ms=stats["queue_ms"],
                encode_ms=stats["encode_ms"],
                prefill_ms=stats["prefill_ms"],
                generate_ms=generate_ms,
                tokens_generated=int(stats["tokens"]),
                prompt_tokens=int(stats["prompt_tokens"]),
                prompt_tokens_reused=int(stats["prompt_tokens_reused"]),
                segment_ms=segment_ms,
            ),
            overlay_png=overlay,
            descriptions=results,
            proposed=proposed,
        )

    async def _off_loop(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on an auxiliary thread (one OpenMP thread for its torch ops), awaited."""
        return await asyncio.get_running_loop().run_in_executor(self._aux, functools.partial(fn, *args, **kwargs))

    # --- lifecycle -----------------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop the decode loop (running requests are cancelled) without blocking the event loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        with self._lock:
            self._closed = True
            runtime, self._runtime = self._runtime, None
        self._loader.shutdown(wait=True, cancel_futures=True)
        self._aux.shutdown(wait=False, cancel_futures=True)
        if runtime is not None:
            runtime.close()
