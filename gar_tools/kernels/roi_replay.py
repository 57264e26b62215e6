"""RoI feature replay as one Triton kernel (gar-model.md §5, GitHub issue 5).

GAR replaces the embeddings of each region's 256 slot tokens with a 16x16 RoIAlign of the image's tile
feature map. Upstream merges the tiles into one map, runs ``torchvision.ops.roi_align`` per region and
finds each slot with host-synchronising index look-ups. Here one kernel launch does all regions: it reads
the tiles in place (no merged copy), samples in float32 and writes the 256 rows of every region straight
into ``inputs_embeds`` in the embeddings dtype, without any host sync, so it can be captured in a CUDA graph.

Dispatch of :func:`roi_replay`: CUDA tensors run the compiled Triton kernel; CPU tensors run the same
kernel under Triton's interpreter when ``TRITON_INTERPRET=1`` is set, and the pure-torch reference
(:func:`roi_replay_reference`) otherwise. Without an importable ``triton`` every device uses the reference.
"""

from __future__ import annotations

from typing import Literal

import torch

from ._triton import interpreted, runs_on, tl, triton, triton_available
from .roi_replay_reference import (
    BINS,
    GEOMETRIES,
    TILE,
    Geometry,
    _check_common,
    _replay_features,
    roi_replay_reference,
    spatial_scale,
)

__all__ = [
    "BINS",
    "GEOMETRIES",
    "TILE",
    "Backend",
    "Geometry",
    "roi_replay",
    "roi_replay_backend",
    "roi_replay_features",
    "roi_replay_reference",
    "spatial_scale",
    "triton_available",
]

Backend = Literal["auto", "triton", "torch"]

_EMBED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


if triton is not None:

    @triton.jit
    def _bilinear_taps(v, size_f, size):
        """RoIAlign's two taps along one axis: ``(lo, hi, w_hi, w_lo)`` indices and weights for coordinates ``v``.

        Samples more than one cell outside the map get zero weight; coordinates clamp at 0 and at the last cell.
        """
        ok = (v >= -1.0) & (v <= size_f)
        v = tl.maximum(v, 0.0)
        lo = v.to(tl.int32)
        edge = lo >= size - 1
        lo = tl.where(edge, size - 1, lo)
        hi = tl.where(edge, size - 1, lo + 1)
        v = tl.where(edge, lo.to(tl.float32), v)
        w_hi = v - lo.to(tl.float32)
        w_lo = 1.0 - w_hi
        return tl.where(ok, lo, 0), tl.where(ok, hi, 0), tl.where(ok, w_hi, 0.0), tl.where(ok, w_lo, 0.0)

    @triton.jit
    def _roi_replay_kernel(
        tiles_ptr,  # [T, 256, C] contiguous, fp32/fp16/bf16
        boxes_ptr,  # [R, 4] fp32, normalized (x1, y1, x2, y2)
        slots_ptr,  # [R] int64, first row of each region's slot in out
        out_ptr,  # [L, C] contiguous, fp32/fp16/bf16 (inputs_embeds)
        C,  # channels
        L,  # rows of out (stores outside [0, L) are dropped: never writes out of bounds)
        H,  # map height in feature cells (16 * nch)
        W,  # map width in feature cells (16 * ncw)
        scale,  # RoIAlign spatial scale (fp32)
        BLOCK_B: tl.constexpr,  # output bins per program (divides 256)
        BLOCK_C: tl.constexpr,  # channels per program (power of two)
        ROUND_BF16: tl.constexpr,  # out is bfloat16 and the cast must be done by hand (interpreter)
    ):
        r = tl.program_id(0)
        bins = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)
        cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = cols[None, :] < C
        ph = (bins // 16).to(tl.float32)
        pw = (bins % 16).to(tl.float32)
        h_f = H.to(tl.float32)
        w_f = W.to(tl.float32)
        tile_row_stride = (W // 16) * 256  # rows of tiles_ptr per row of tiles

        # Box in feature units, then RoIAlign's aligned geometry (same operation order as torchvision).
        start_x = (tl.load(boxes_ptr + r * 4 + 0) * w_f) * scale - 0.5
        start_y = (tl.load(boxes_ptr + r * 4 + 1) * h_f) * scale - 0.5
        end_x = (tl.load(boxes_ptr + r * 4 + 2) * w_f) * scale - 0.5
        end_y = (tl.load(boxes_ptr + r * 4 + 3) * h_f) * scale - 0.5
        bin_w = (end_x - start_x) * 0.0625  # / 16 output bins (exact)
        bin_h = (end_y - start_y) * 0.0625

        acc = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32)
        for iy in tl.static_range(2):
            y = start_y + ph * bin_h + (bin_h * (iy + 0.5)) * 0.5
            y_lo, y_hi, ly, hy = _bilinear_taps(y, h_f, H)
            # map row y -> tile row y // 16, row y % 16 inside the tile
            ry_lo = (y_lo // 16) * tile_row_stride + (y_lo % 16) * 16
            ry_hi = (y_hi // 16) * tile_row_stride + (y_hi % 16) * 16
            for ix in tl.static_range(2):
                x = start_x + pw * bin_w + (bin_w * (ix + 0.5)) * 0.5
                x_lo, x_hi, lx, hx = _bilinear_taps(x, w_f, W)
                # map column x -> tile column x // 16, column x % 16 inside the tile
                rx_lo = (x_lo // 16) * 256 + x_lo % 16
                rx_hi = (x_hi // 16) * 256 + x_hi % 16

                w1 = (hy * hx)[:, None]
                w2 = (hy * lx)[:, None]
                w3 = (ly * hx)[:, None]
                w4 = (ly * lx)[:, None]
                p1 = ((ry_lo + rx_lo).to(tl.int64) * C)[:, None] + cols[None, :]
                p2 = ((ry_lo + rx_hi).to(tl.int64) * C)[:, None] + cols[None, :]
                p3 = ((ry_hi + rx_lo).to(tl.int64) * C)[:, None] + cols[None, :]
                p4 = ((ry_hi + rx_hi).to(tl.int64) * C)[:, None] + cols[None, :]
                v1 = tl.load(tiles_ptr + p1, mask=cmask, other=0.0).to(tl.float32)
                v2 = tl.load(tiles_ptr + p2, mask=cmask, other=0.0).to(tl.float32)
                v3 = tl.load(tiles_ptr + p3, mask=cmask, other=0.0).to(tl.float32)
                v4 = tl.load(tiles_ptr + p4, mask=cmask, other=0.0).to(tl.float32)
                acc += w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4
        acc = acc * 0.25  # mean of the 2x2 samples (exact)

        if ROUND_BF16:
            # Round-to-nearest-even float32 -> bfloat16 by hand. Only used under the interpreter, whose own
            # float32 -> bfloat16 cast truncates; compiled kernels use the hardware conversion (also RTNE).
            bits = acc.to(tl.uint32, bitcast=True)
            bits = bits + (0x7FFF + ((bits >> 16) & 1))
            val = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
        else:
            val = acc.to(out_ptr.dtype.element_ty)
        rows = tl.load(slots_ptr + r).to(tl.int64) + bins
        in_bounds = ((rows >= 0) & (rows < L))[:, None]
        tl.store(out_ptr + (rows * C)[:, None] + cols[None, :], val, mask=cmask & in_bounds)

else:  # pragma: no cover - depends on the environment
    _roi_replay_kernel = None


def roi_replay_backend(device: torch.device | str, backend: Backend = "auto") -> Literal["triton", "torch"]:
    """Which implementation :func:`roi_replay` uses for tensors on ``device``.

    ``"auto"``: ``"triton"`` for CUDA, and for CPU when ``TRITON_INTERPRET=1``; ``"torch"`` otherwise
    (other devices, or no Triton). ``"triton"`` raises RuntimeError where the kernel cannot run.

    Triton reads ``TRITON_INTERPRET`` when it is imported: for CPU tensors the variable must already be ``1``
    when triton (and this module) is first imported, else the reference runs.
    """
    dev = torch.device(device)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: must be 'auto', 'triton' or 'torch', got {backend!r}")
    runnable = runs_on(_roi_replay_kernel, dev)
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not runnable:
            raise RuntimeError(
                f"backend: the Triton kernel cannot run on {dev.type} here (needs triton, and CUDA, or for CPU "
                "tensors TRITON_INTERPRET=1 set before triton was imported)"
            )
        return "triton"
    return "triton" if runnable else "torch"


def _block_sizes(c: int, on_interpreter: bool) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_C, num_warps). The interpreter runs programs one by one: few large ones there."""
    if on_interpreter:
        return BINS, min(triton.next_power_of_2(c), 2048), 1
    return 16, min(triton.next_power_of_2(c), 128), 4


def _launch(
    tf: torch.Tensor, grid: tuple[int, int], boxes: torch.Tensor, slots: torch.Tensor, out2d: torch.Tensor, scale: float
) -> None:
    ncw, nch = grid
    c = tf.shape[2]
    on_interpreter = interpreted(_roi_replay_kernel)
    block_b, block_c, num_warps = _block_sizes(c, on_interpreter)
    launch_grid = (boxes.shape[0], BINS // block_b, triton.cdiv(c, block_c))
    _roi_replay_kernel[launch_grid](
        tf,
        boxes,
        slots,
        out2d,
        c,
        out2d.shape[0],
        TILE * nch,
        TILE * ncw,
        float(scale),
        BLOCK_B=block_b,
        BLOCK_C=block_c,
        ROUND_BF16=on_interpreter and out2d.dtype == torch.bfloat16,
        num_warps=num_warps,
    )


def _check_embeds(inputs_embeds: object, device: torch.device, c: int) -> torch.Tensor:
    if not isinstance(inputs_embeds, torch.Tensor):
        raise TypeError(f"inputs_embeds: must be a torch.Tensor, got {type(inputs_embeds).__name__}")
    if inputs_embeds.dtype not in _EMBED_DTYPES:
        raise TypeError(f"inputs_embeds: dtype must be float32, float16 or bfloat16, got {inputs_embeds.dtype}")
    if inputs_embeds.dim() == 3 and inputs_embeds.shape[0] == 1:
        emb2d = inputs_embeds[0]
    elif inputs_embeds.dim() == 2:
        emb2d = inputs_embeds
    else:
        raise ValueError(f"inputs_embeds: must have shape [L, C] or [1, L, C], got {list(inputs_embeds.shape)}")
    if emb2d.shape[1] != c:
        raise ValueError(
            f"inputs_embeds: last dim is {emb2d.shape[1]} but tile_features have C = {c} channels; they must match"
        )
    if emb2d.shape[0] < BINS:
        raise ValueError(f"inputs_embeds: needs at least {BINS} rows for one region slot, got L = {emb2d.shape[0]}")
    if inputs_embeds.device != device:
        raise ValueError(
            f"inputs_embeds: must be on the same device as tile_features ({device}), got {inputs_embeds.device}"
        )
    if not inputs_embeds.is_contiguous():
        raise ValueError("inputs_embeds: must be contiguous (it is written in place)")
    return emb2d


def _check_slots(slot_starts: object, r: int, length: int, device: torch.device) -> torch.Tensor:
    if not isinstance(slot_starts, torch.Tensor):
        raise TypeError(f"slot_starts: must be a torch.Tensor, got {type(slot_starts).__name__}")
    if slot_starts.dtype.is_floating_point or slot_starts.dtype.is_complex or slot_starts.dtype == torch.bool:
        raise TypeError(f"slot_starts: dtype must be an integer type, got {slot_starts.dtype}")
    if slot_starts.dim() != 1 or slot_starts.shape[0] != r:
        raise ValueError(f"slot_starts: must have shape [R] = [{r}] (one per box), got {list(slot_starts.shape)}")
    if slot_starts.device != device:
        raise ValueError(
            f"slot_starts: must be on the same device as tile_features ({device}), got {slot_starts.device}"
        )
    if slot_starts.device.type == "cpu":
        # Range check on CPU only: on an accelerator it would be a host sync (no CUDA-graph capture).
        lo, hi = int(slot_starts.min()), int(slot_starts.max())
        if lo < 0 or hi + BINS > length:
            raise ValueError(
                f"slot_starts: every slot needs 0 <= start and start + {BINS} <= L = {length}, "
                f"got starts in [{lo}, {hi}]"
            )
    return slot_starts.to(torch.int64).contiguous()


def roi_replay(
    tile_features: torch.Tensor,
    boxes: torch.Tensor,
    slot_starts: torch.Tensor,
    inputs_embeds: torch.Tensor,
    *,
    grid: tuple[int, int],
    geometry: Geometry = "checkpoint",
    backend: Backend = "auto",
) -> torch.Tensor:
    """Write every region's RoI replay into its 256-row slot of ``inputs_embeds``, in place.

    Row ``slot_starts[r] + k`` of ``inputs_embeds`` becomes bin ``k`` (row-major 16x16) of
    ``torchvision.ops.roi_align(M.float(), b_r * [W, H, W, H], (16, 16), spatial_scale, 2, aligned=True)``
    over the merged tile map ``M``, computed in float32 and cast to the embeddings dtype. All other rows are
    left untouched. One kernel launch, no host sync on CUDA (safe inside CUDA-graph capture).

    Args:
        tile_features: ``[T, 256, C]`` projected tile features, thumbnail excluded, row-major tiles;
            float32/float16/bfloat16 (a non-contiguous tensor is copied).
        boxes: ``[R, 4]`` normalized ``(x1, y1, x2, y2)`` per region, R >= 1, floating point (used as float32).
        slot_starts: ``[R]`` integer, row of ``inputs_embeds`` where region ``r``'s slot starts.
        inputs_embeds: ``[L, C]`` or ``[1, L, C]``, float32/float16/bfloat16, contiguous; written in place.
        grid: ``(ncw, nch)`` tile columns and rows, ``T == ncw * nch``.
        geometry: ``"checkpoint"`` (default: spatial scale 1/28, the upstream quirk the released weights
            were trained with) or ``"paper"`` (spatial scale 1).
        backend: ``"auto"`` (see :func:`roi_replay_backend`), ``"triton"`` or ``"torch"`` (the reference).

    Returns:
        ``inputs_embeds`` itself. The kernel's write is invisible to autograd (inference only).

    Raises:
        TypeError, ValueError: a wrong type, dtype, shape, device or layout; the message names the argument.
            Non-finite boxes and slot ranges are only checked for CPU tensors (on CUDA that would sync); on
            CUDA the kernel still never reads or writes out of bounds: non-finite boxes sample nothing (zeros)
            and slot rows outside ``inputs_embeds`` are dropped.
    """
    tf, g, b, scale = _check_common(tile_features, grid, boxes, geometry)
    emb2d = _check_embeds(inputs_embeds, tf.device, tf.shape[2])
    slots = _check_slots(slot_starts, b.shape[0], emb2d.shape[0], tf.device)
    if roi_replay_backend(tf.device, backend) == "triton":
        _launch(tf.contiguous(), g, b, slots, emb2d, scale)
    else:
        feats = _replay_features(tf, g, b, scale)
        rows = (slots[:, None] + torch.arange(BINS, device=slots.device)).reshape(-1)
        emb2d.index_copy_(0, rows, feats.reshape(-1, tf.shape[2]).to(emb2d.dtype))
    return inputs_embeds


def roi_replay_features(
    tile_features: torch.Tensor,
    boxes: torch.Tensor,
    grid: tuple[int, int],
    geometry: Geometry = "checkpoint",
    *,
    backend: Backend = "auto",
) -> torch.Tensor:
    """The replay features themselves: ``[R, 256, C]`` float32 (see :func:`roi_replay` for the semantics).

    Uses the kernel where :func:`roi_replay` would (writing into a fresh float32 buffer), else the reference.
    """
    tf, g, b, scale = _check_common(tile_features, grid, boxes, geometry)
    r, c = b.shape[0], tf.shape[2]
    if roi_replay_backend(tf.device, backend) == "triton":
        out = torch.empty(r * BINS, c, dtype=torch.float32, device=tf.device)
        slots = torch.arange(r, dtype=torch.int64, device=tf.device) * BINS
        _launch(tf.contiguous(), g, b, slots, out, scale)
        return out.reshape(r, BINS, c)
    return _replay_features(tf, g, b, scale)
