"""The local engine: GAR in this process, on one dedicated worker thread.

Requests are decoded (image, regions, prompt) off the event loop, then run one at a time on the thread that owns
the model, so async callers never block their loop and the model is never used by two threads at once. The model
is loaded on first use (or by :meth:`LocalEngine.load`).

With a segmenter (``LocalEngine(segmenter=...)``), points and ``segment: true`` boxes are checked while decoding and
turned into masks by one call on the model thread, before the request is prepared for GAR
(:func:`gar_tools.segment.resolve.resolve_regions`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from gar_tools.engine.base import Engine, Progress
from gar_tools.images import ImagePolicy, load_image
from gar_tools.inputs import ToolRequest
from gar_tools.model.modeling import Geometry
from gar_tools.model.pipeline import GarPipeline, Generation, load
from gar_tools.model.prompts import SINGLE_REGION_PROMPT_INDEX, prompt_token
from gar_tools.regions import DecodedRegion, decode_regions, draw_overlay, encode_png_base64, mask_rle
from gar_tools.results import ModelInfo, RegionInfo, Timings, ToolResult
from gar_tools.segment.prompts import SegmentPrompt
from gar_tools.tools import ToolName, ToolSpec, get_tool

if TYPE_CHECKING:
    from gar_tools.segment.segmenter import Segmenter

__all__ = ["LocalEngine", "Job", "build_job"]


@dataclass
class Job:
    """A decoded request, ready for the model."""

    spec: ToolSpec
    request: ToolRequest
    image: Image.Image
    regions: list[DecodedRegion | SegmentPrompt]  # SegmentPrompt until the segmenter has run (model thread)
    question: str | None  # None: the single-region describe prompt
    prompt_indices: list[int]
    load_ms: float = 0.0
    segment_ms: float = 0.0


def build_job(tool: ToolName, request: ToolRequest, policy: ImagePolicy, *, segmenter: bool = False) -> Job:
    """Read the image and regions and build the question text; every user error is raised here, with its field
    (but an empty mask from the segmenter, found on the model thread). ``segmenter``: whether points and segment
    boxes will be segmented (else they are an error saying how to enable a segmenter)."""
    start = time.perf_counter()
    spec = get_tool(tool)
    image = load_image(request.image, policy, field="image")
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
    )


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


class _TokenCounter:
    """A ``generate`` streamer that reports progress to the event loop as tokens come."""

    def __init__(self, loop: asyncio.AbstractEventLoop, progress: Progress, total: int) -> None:
        self.loop, self.progress, self.total = loop, progress, total
        self.count = -1  # the first put() is the prompt

    def put(self, value: Any) -> None:
        self.count += 1
        if self.count > 0:
            asyncio.run_coroutine_threadsafe(self.progress(float(self.count), float(self.total), None), self.loop)

    def end(self) -> None:
        pass


class LocalEngine(Engine):
    """GAR in this process.

    Args:
        model: ``"tiny"``, a checkpoint folder, or a hub id (see :func:`gar_tools.model.load`).
        dtype, device, geometry: passed to :func:`gar_tools.model.load`.
        policy: what images and masks may be read (size limits, allowed folders, URLs).
        pipeline: an already loaded pipeline to use instead of loading ``model``.
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
        segmenter: str | Segmenter | None = None,
    ) -> None:
        self.model_name = pipeline.name if pipeline is not None else model
        self._segmenter: Segmenter | None = None if segmenter is None or isinstance(segmenter, str) else segmenter
        self.segmenter_name: str | None = (
            segmenter if segmenter is None or isinstance(segmenter, str) else segmenter.name
        )
        self._load_args = {"dtype": dtype, "device": device, "geometry": geometry}
        self.policy = policy or ImagePolicy()
        self._pipeline = pipeline
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gar-model")

    # --- model ---------------------------------------------------------------------------------------------------
    @property
    def pipeline(self) -> GarPipeline:
        """The loaded pipeline (loads it on first access)."""
        if self._pipeline is None:
            with self._load_lock:
                if self._pipeline is None:
                    self._pipeline = load(self.model_name, **self._load_args)  # type: ignore[arg-type]
        return self._pipeline

    @property
    def segmenter(self) -> Segmenter | None:
        """The loaded segmenter, if one was configured (loads it, after GAR, on GAR's device and dtype)."""
        if self._segmenter is None and self.segmenter_name is not None:
            pipeline = self.pipeline
            with self._load_lock:
                if self._segmenter is None:
                    from gar_tools.segment.loading import load_segmenter

                    self._segmenter = load_segmenter(self.segmenter_name, device=pipeline.device, dtype=pipeline.dtype)
        return self._segmenter

    async def start(self) -> None:
        """Load the model (and segmenter) now, on the model thread (the event loop keeps running)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, lambda: (self.pipeline, self.segmenter))

    async def info(self) -> ModelInfo:
        pipeline = self._pipeline
        if pipeline is None:
            tiny = self.model_name == "tiny"
            return ModelInfo(model=self.model_name, tiny_model=tiny, loaded=False, segmenter=self.segmenter_name)
        return ModelInfo(
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            loaded=True,
            device=str(pipeline.device),
            dtype=str(pipeline.dtype).removeprefix("torch."),
            max_regions=pipeline.config.prompt_numbers,
            geometry=pipeline.geometry,
            segmenter=self.segmenter_name,
        )

    # --- running -------------------------------------------------------------------------------------------------
    def _generate(self, job: Job, streamer: _TokenCounter | None) -> tuple[Generation, float]:
        loaded_before = self._pipeline is not None
        started = time.perf_counter()
        pipeline = self.pipeline
        load_ms = 0.0 if loaded_before else (time.perf_counter() - started) * 1000
        self._segment_regions(job)
        prepared = pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)
        return pipeline.generate(prepared, max_new_tokens=job.request.max_new_tokens, streamer=streamer), load_ms

    def _segment_regions(self, job: Job) -> None:
        """The segmenter hook (model thread): replace ``job.regions``' prompts by the segmenter's masks."""
        if not any(isinstance(region, SegmentPrompt) for region in job.regions):
            return
        from gar_tools.segment.resolve import resolve_regions

        started = time.perf_counter()
        segmenter = self.segmenter
        job.regions = list(resolve_regions(job.image, job.regions, segmenter))
        job.segment_ms = (time.perf_counter() - started) * 1000

    async def run(self, tool: ToolName, request: ToolRequest, progress: Progress | None = None) -> ToolResult:
        loop = asyncio.get_running_loop()
        job = await asyncio.to_thread(
            functools.partial(build_job, segmenter=self.segmenter_name is not None), tool, request, self.policy
        )
        max_new_tokens = request.max_new_tokens
        streamer = _TokenCounter(loop, progress, max_new_tokens) if progress is not None else None
        generation, model_load_ms = await loop.run_in_executor(self._executor, self._generate, job, streamer)
        overlay = None
        if request.overlay:
            png = await asyncio.to_thread(draw_overlay, job.image, job.regions)
            overlay = encode_png_base64(png)
        pipeline = self.pipeline
        regions = await asyncio.to_thread(  # RLE-encoding large masks is not free: off the event loop
            lambda: [_region_info(r, k) for r, k in zip(job.regions, job.prompt_indices, strict=True)]  # type: ignore[arg-type]
        )
        return job.spec.result_model(
            text=generation.text,
            regions=regions,
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            timings=Timings(
                load_ms=job.load_ms + model_load_ms,
                encode_ms=generation.encode_ms,
                generate_ms=generation.generate_ms,
                tokens_generated=len(generation.token_ids),
                segment_ms=job.segment_ms,
            ),
            overlay_png=overlay,
            **job.spec.finish(request, generation.text),
        )

    async def aclose(self) -> None:
        """Stop the model thread once its current step is done, without blocking the event loop."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        self._executor.shutdown(wait=True, cancel_futures=True)
