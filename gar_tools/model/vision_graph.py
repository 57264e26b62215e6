"""GAR's vision pass over a fixed number of tiles, replayed from one CUDA graph.

Run eagerly, the vision tower is bound by the host: on an H200 at GAR-1B size, 17 tiles in calls of 4 launch
3 607 kernels that take 63 ms on the GPU but 129 ms of wall time
(``benchmarks/results/2026-11-27-profile_request-nvidia-h200-run2.json``). The tile cache always calls the tower
on exactly ``chunk_tiles`` tiles on CUDA, so one captured graph — the mask patch embedding, the vision tower with
the mask embeddings added after its patch embedding, the projector — serves every call: the inputs are copied
into the graph's static buffers, the graph replays, the features are copied out.

The graph runs the same computation on the same shapes as :meth:`GarModel.encode_images` (the GPU tests compare
the two with ``torch.equal``). By default it is captured with the attention blocks' q/k rotation in one kernel
(:func:`~gar_tools.model.vision_rope.fused_vision_rope`: about 20 of the 65 ms of vision kernels of 17 tiles on an
H100 were that rotation's element-wise kernels and concatenations, by the operator table of
``benchmarks/results/2026-11-27-profile_request-nvidia-h100-80gb-hbm3-run3.json``); right after the capture, one
replay on random tiles with a region is compared bit for bit with the tower run eagerly as timm defines it, and if
they differ the graph is captured again without the kernel (with a warning).
"""

from __future__ import annotations

import warnings

import torch

from gar_tools.model.modeling import GarModel
from gar_tools.model.vision_rope import fused_vision_rope

__all__ = ["VisionGraph"]


class VisionGraph:
    """``model.encode_images`` on ``[tiles, 3, 448, 448]`` float32 pixel and prompt tiles, from a CUDA graph.

    Args:
        model: a :class:`GarModel` on a CUDA device.
        tiles: tiles per call (the tile cache's ``chunk_tiles``).
        tile_size: the tiles' side in pixels (the processor's; 448 for GAR).
        fused_rope: capture the attention blocks with the q/k rotation in one kernel, kept only if a replay equals
            the eager tower bit for bit (``self.fused_rope`` says whether it was kept).
    """

    def __init__(self, model: GarModel, tiles: int, tile_size: int = 448, *, fused_rope: bool = True) -> None:
        if model.device.type != "cuda":
            raise ValueError("a VisionGraph needs the model on a CUDA device")
        if tiles < 1:
            raise ValueError(f"tiles must be positive, got {tiles}")
        self.model = model
        self.tiles = tiles
        shape = (tiles, 3, tile_size, tile_size)  # every call copies its own values in before the replay
        self.pixels = torch.zeros(shape, dtype=torch.float32, device=model.device)
        self.prompts = torch.zeros(shape, dtype=torch.float32, device=model.device)
        self.fused_rope = False
        captured = False
        if fused_rope:
            problem = "did not reproduce the eager vision tower bit for bit"
            try:
                with fused_vision_rope(model) as swapped:
                    self._capture()
                captured = swapped == 0 or self._equals_eager()  # nothing swapped: the plain tower was captured
                self.fused_rope = captured and swapped > 0
            except Exception as error:  # e.g. the kernel does not compile here: the plain tower still can
                problem = f"failed ({type(error).__name__}: {error})"
            if not captured:
                warnings.warn(
                    f"the vision CUDA graph with the fused q/k rotation {problem}; capturing it without",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if not captured:
            self._capture()

    def _capture(self) -> None:
        """Warm up, then capture ``model.encode_images`` on the static buffers into ``self.graph``."""
        model, device = self.model, self.model.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):  # warm-up: lazy initializations and kernel choices happen outside the capture
                model.encode_images(self.pixels, self.prompts)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # captured lazily, on the model thread, while other threads may use the GPU (a segmenter): only this
        # thread's calls must be capture-safe
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), torch.no_grad():
            self.features = model.encode_images(self.pixels, self.prompts)  # [tiles, 256, hidden]

    def _equals_eager(self) -> bool:
        """One replay on random pixel tiles, the first with a region in a corner, against the eager tower."""
        generator = torch.Generator(device=self.pixels.device).manual_seed(0)
        pixels = torch.rand(self.pixels.shape, generator=generator, device=self.pixels.device) * 2 - 1
        background = self.model.config.prompt_numbers / 127.5 - 1.0  # the normalized "no region" value
        prompts = torch.full_like(self.prompts, background)
        prompts[0, :, : prompts.shape[-1] // 4, : prompts.shape[-1] // 4] = -1.0  # region 0: map value 0
        return torch.equal(self(pixels, prompts), self.model.encode_images(pixels, prompts))

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
        """Features ``[tiles, 256, hidden]`` of ``pixels`` with the masks of ``prompts`` (both ``[tiles, 3, S, S]``,
        normalized float32, any device); a new tensor, not the graph's buffer."""
        if pixels.shape != self.pixels.shape or prompts.shape != self.prompts.shape:
            raise ValueError(
                f"expected pixel and prompt tiles of shape {tuple(self.pixels.shape)}, "
                f"got {tuple(pixels.shape)} and {tuple(prompts.shape)}"
            )
        self.pixels.copy_(pixels)
        self.prompts.copy_(prompts)
        self.graph.replay()
        return self.features.clone()
