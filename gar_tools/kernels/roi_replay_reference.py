"""Pure-torch reference of GAR's RoI feature replay (gar-model.md §5), plus the shared input checks.

The replay samples the merged tile feature map of an image with RoIAlign and returns one 16x16 grid of
features per region, flattened row-major to 256 rows. The semantics are exactly those of

    torchvision.ops.roi_align(M[None].float(), [b], output_size=(16, 16), spatial_scale=s,
                              sampling_ratio=2, aligned=True)

where ``M`` is the merged map ``[C, 16*nch, 16*ncw]`` and ``b`` the normalized box scaled to feature
units. torchvision is not used here (it is the tests' oracle); the arithmetic mirrors its CPU kernel
operation by operation so that float32 results agree to the last bit or two.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "BINS",
    "GEOMETRIES",
    "TILE",
    "Geometry",
    "roi_replay_reference",
    "spatial_scale",
]

Geometry = Literal["checkpoint", "paper"]

TILE = 16
"""Side of one tile's feature map (16x16 tokens after the projector's 2x2 pooling)."""

BINS = TILE * TILE
"""Rows one region's replay writes: a 16x16 output grid, row-major."""

GEOMETRIES: dict[str, float] = {"checkpoint": 1.0 / 28.0, "paper": 1.0}
"""RoIAlign ``spatial_scale`` per geometry. ``checkpoint`` (default) reproduces the upstream quirk the
released weights were trained with (feature-unit boxes scaled again by 1/28); ``paper`` samples the box."""

_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def spatial_scale(geometry: str) -> float:
    """The RoIAlign spatial scale of ``geometry`` (``"checkpoint"`` -> 1/28, ``"paper"`` -> 1)."""
    if not isinstance(geometry, str) or geometry not in GEOMETRIES:
        raise ValueError(f"geometry: must be one of {sorted(GEOMETRIES)}, got {geometry!r}")
    return GEOMETRIES[geometry]


def _check_grid(grid: object) -> tuple[int, int]:
    if (
        not isinstance(grid, tuple | list)
        or len(grid) != 2
        or not all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid)
    ):
        raise ValueError(f"grid: must be a pair of positive ints (ncw, nch), got {grid!r}")
    return int(grid[0]), int(grid[1])


def _check_tile_features(tile_features: object, grid: tuple[int, int]) -> torch.Tensor:
    if not isinstance(tile_features, torch.Tensor):
        raise TypeError(f"tile_features: must be a torch.Tensor, got {type(tile_features).__name__}")
    if tile_features.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"tile_features: dtype must be float32, float16 or bfloat16, got {tile_features.dtype}")
    if tile_features.dim() != 3 or tile_features.shape[1] != BINS:
        raise ValueError(
            f"tile_features: must have shape [T, {BINS}, C] (16x16 tokens per tile, thumbnail excluded), "
            f"got {list(tile_features.shape)}"
        )
    ncw, nch = grid
    if tile_features.shape[0] != ncw * nch:
        raise ValueError(
            f"tile_features: holds {tile_features.shape[0]} tiles but grid (ncw={ncw}, nch={nch}) needs "
            f"ncw*nch = {ncw * nch}"
        )
    if tile_features.shape[2] < 1:
        raise ValueError("tile_features: channel dimension C must be >= 1")
    return tile_features


def _check_boxes(boxes: object, device: torch.device) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"boxes: must be a torch.Tensor, got {type(boxes).__name__}")
    if not boxes.is_floating_point():
        raise TypeError(f"boxes: dtype must be floating point (normalized x1, y1, x2, y2), got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] < 1:
        raise ValueError(f"boxes: must have shape [R, 4] with R >= 1, got {list(boxes.shape)}")
    if boxes.device != device:
        raise ValueError(f"boxes: must be on the same device as tile_features ({device}), got {boxes.device}")
    if boxes.device.type == "cpu" and not bool(torch.isfinite(boxes).all()):
        # Checked on CPU only: on an accelerator this would be a host sync (no CUDA-graph capture).
        raise ValueError("boxes: must be finite, got NaN or infinity")
    return boxes.to(torch.float32).contiguous()


def _check_common(
    tile_features: object, grid: object, boxes: object, geometry: object
) -> tuple[torch.Tensor, tuple[int, int], torch.Tensor, float]:
    """Validate the arguments shared by every replay entry point; return them normalized."""
    scale = spatial_scale(geometry)  # type: ignore[arg-type]
    g = _check_grid(grid)
    tf = _check_tile_features(tile_features, g)
    b = _check_boxes(boxes, tf.device)
    return tf, g, b, scale


def _axis_samples(
    start: torch.Tensor, bin_size: torch.Tensor, sample: int, size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis for sample ``sample`` (0 or 1) of every bin: (low, high, w_low, w_high).

    ``start``/``bin_size`` are [R]; results are [R, 16]. Invalid samples (beyond one cell outside the map)
    get zero weights and index 0, as in torchvision.
    """
    bins = torch.arange(TILE, device=start.device, dtype=torch.float32)
    # torchvision: start + p * bin + ((i + .5) * bin) / grid, with grid = 2 samples per bin
    coord = start[:, None] + bins[None, :] * bin_size[:, None] + (bin_size[:, None] * (sample + 0.5)) * 0.5
    valid = (coord >= -1.0) & (coord <= float(size))
    coord = coord.clamp_min(0.0)
    low = coord.to(torch.int64)  # coord >= 0: truncation == floor
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    coord = torch.where(edge, low.to(torch.float32), coord)
    w_high = coord - low.to(torch.float32)
    w_low = 1.0 - w_high
    zero = torch.zeros_like(w_low)
    return (
        torch.where(valid, low, 0),
        torch.where(valid, high, 0),
        torch.where(valid, w_low, zero),
        torch.where(valid, w_high, zero),
    )


def _replay_features(tf: torch.Tensor, grid: tuple[int, int], boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Unchecked reference: float32 [R, 256, C] from contiguous-able tile features and float32 boxes."""
    ncw, nch = grid
    h, w, c = TILE * nch, TILE * ncw, tf.shape[2]
    r = boxes.shape[0]
    # Merged map, one row per map cell (y * w + x): M[y, x] = tile[(y//16)*ncw + x//16][(y%16)*16 + x%16].
    merged = tf.float().reshape(nch, ncw, TILE, TILE, c).permute(0, 2, 1, 3, 4).reshape(h * w, c)

    # Box in feature units, then scaled and shifted by half a cell (aligned=True), all in float32: python
    # scalars are applied in the tensor's dtype, like torchvision's float spatial_scale.
    x1, y1, x2, y2 = boxes.unbind(1)
    start_x, end_x = (x1 * float(w)) * scale - 0.5, (x2 * float(w)) * scale - 0.5
    start_y, end_y = (y1 * float(h)) * scale - 0.5, (y2 * float(h)) * scale - 0.5
    bin_w = (end_x - start_x) / TILE  # aligned: the roi size is not forced to >= 1
    bin_h = (end_y - start_y) / TILE

    out = torch.zeros(r, TILE, TILE, c, dtype=torch.float32, device=tf.device)
    for iy in range(2):
        y_lo, y_hi, wy_lo, wy_hi = _axis_samples(start_y, bin_h, iy, h)
        for ix in range(2):
            x_lo, x_hi, wx_lo, wx_hi = _axis_samples(start_x, bin_w, ix, w)
            # [R, 16 (ph), 16 (pw)] indices and weights of the 4 corners
            w1 = wy_lo[:, :, None] * wx_lo[:, None, :]
            w2 = wy_lo[:, :, None] * wx_hi[:, None, :]
            w3 = wy_hi[:, :, None] * wx_lo[:, None, :]
            w4 = wy_hi[:, :, None] * wx_hi[:, None, :]
            v1 = merged[y_lo[:, :, None] * w + x_lo[:, None, :]]
            v2 = merged[y_lo[:, :, None] * w + x_hi[:, None, :]]
            v3 = merged[y_hi[:, :, None] * w + x_lo[:, None, :]]
            v4 = merged[y_hi[:, :, None] * w + x_hi[:, None, :]]
            out += w1[..., None] * v1 + w2[..., None] * v2 + w3[..., None] * v3 + w4[..., None] * v4
    out /= 4.0  # 2x2 samples per bin
    return out.reshape(r, BINS, c)


def roi_replay_reference(
    tile_features: torch.Tensor,
    grid: tuple[int, int],
    boxes: torch.Tensor,
    geometry: Geometry = "checkpoint",
) -> torch.Tensor:
    """RoI feature replay in plain torch (no torchvision, no Triton).

    Args:
        tile_features: ``[T, 256, C]`` projected tile features (thumbnail excluded), float32/float16/bfloat16;
            tiles row-major over the grid, each tile a row-major 16x16 map.
        grid: ``(ncw, nch)``, tile columns and rows; ``T == ncw * nch``.
        boxes: ``[R, 4]`` normalized ``(x1, y1, x2, y2)`` boxes (fractions of image width/height), R >= 1.
            Any finite values are accepted; samples beyond one cell outside the map contribute 0.
        geometry: ``"checkpoint"`` (default, RoIAlign spatial scale 1/28 as the released weights were trained)
            or ``"paper"`` (scale 1, samples the box itself).

    Returns:
        ``[R, 256, C]`` float32: per region the 16x16 RoIAlign output (2x2 samples per bin, aligned=True),
        flattened row-major.

    Raises:
        TypeError, ValueError: an argument has the wrong type, dtype, shape or device (message names it).
    """
    tf, g, b, scale = _check_common(tile_features, grid, boxes, geometry)
    return _replay_features(tf, g, b, scale)
