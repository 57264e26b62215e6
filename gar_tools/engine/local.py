"""The local engine: GAR in this process, on one dedicated worker thread.

Requests are decoded (image, regions, prompt) off the event loop, then run one at a time on the thread that owns
the model, so async callers never block their loop and the model is never used by two threads at once. The model
is loaded on first use (or by :meth:`LocalEngine.load`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from PIL import Image

from gar_tools.engine.base import Engine, Progress
from gar_tools.images import ImagePolicy, load_image
from gar_tools.inputs import ToolRequest
from gar_tools.model.modeling import Geometry
from gar_tools.model.pipeline import GarPipeline, Generation, load
from gar_tools.model.prompts import SINGLE_REGION_PROMPT_INDEX, prompt_token
from gar_tools.regions import DecodedRegion, decode_regions, draw_overlay, encode_png_base64
from gar_tools.results import ModelInfo, RegionInfo, Timings, ToolResult
from gar_tools.tools import ToolName, ToolSpec, get_tool

__all__ = ["LocalEngine", "Job", "build_job"]


@dataclass
class Job:
    """A decoded request, ready for the model."""

    spec: ToolSpec
    request: ToolRequest
    image: Image.Image
    regions: list[DecodedRegion]
    question: str | None  # None: the single-region describe prompt
    prompt_indices: list[int]
    load_ms: float = 0.0


def build_job(tool: ToolName, request: ToolRequest, policy: ImagePolicy) -> Job:
    """Read the image and regions and build the question text; every user error is raised here, with its field."""
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
    ) -> None:
        self.model_name = pipeline.name if pipeline is not None else model
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

    async def start(self) -> None:
        """Load the model now, on the model thread (the event loop keeps running)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, lambda: self.pipeline)

    async def info(self) -> ModelInfo:
        pipeline = self._pipeline
        if pipeline is None:
            tiny = self.model_name == "tiny"
            return ModelInfo(model=self.model_name, tiny_model=tiny, loaded=False)
        return ModelInfo(
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            loaded=True,
            device=str(pipeline.device),
            dtype=str(pipeline.dtype).removeprefix("torch."),
            max_regions=pipeline.config.prompt_numbers,
            geometry=pipeline.geometry,
        )

    # --- running -------------------------------------------------------------------------------------------------
    def _generate(self, job: Job, streamer: _TokenCounter | None) -> tuple[Generation, float]:
        loaded_before = self._pipeline is not None
        started = time.perf_counter()
        pipeline = self.pipeline
        load_ms = 0.0 if loaded_before else (time.perf_counter() - started) * 1000
        prepared = pipeline.prepare(job.image, [r.mask for r in job.regions], job.question)
        return pipeline.generate(prepared, max_new_tokens=job.request.max_new_tokens, streamer=streamer), load_ms

    async def run(self, tool: ToolName, request: ToolRequest, progress: Progress | None = None) -> ToolResult:
        loop = asyncio.get_running_loop()
        job = await asyncio.to_thread(build_job, tool, request, self.policy)
        max_new_tokens = request.max_new_tokens
        streamer = _TokenCounter(loop, progress, max_new_tokens) if progress is not None else None
        generation, model_load_ms = await loop.run_in_executor(self._executor, self._generate, job, streamer)
        overlay = None
        if request.overlay:
            png = await asyncio.to_thread(draw_overlay, job.image, job.regions)
            overlay = encode_png_base64(png)
        pipeline = self.pipeline
        return job.spec.result_model(
            text=generation.text,
            regions=[
                RegionInfo(id=r.id, prompt=prompt_token(k), box=list(r.box), area=r.area)
                for r, k in zip(job.regions, job.prompt_indices, strict=True)
            ],
            image_size=list(job.image.size),
            model=pipeline.name,
            tiny_model=pipeline.is_tiny,
            timings=Timings(
                load_ms=job.load_ms + model_load_ms,
                encode_ms=generation.encode_ms,
                generate_ms=generation.generate_ms,
                tokens_generated=len(generation.token_ids),
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
