"""Thumbnail + tiles, resized exactly as the GAR checkpoints saw them in training and evaluation (gar-model.md §3).

The authors' preprocessing resizes the uint8 ``[1, C, H, W]`` tensor with torchvision's v1 functional ``resize``:
the tensor is cast to float32, resized with ``torch.nn.functional.interpolate`` (bicubic with antialias and
``align_corners=False`` for the image, nearest for the visual-prompt map), clamped to ``[0, 255]`` (bicubic) and
rounded back to uint8. It does so once to ``tile × tile`` (the thumbnail) and once to the whole canvas
``tile·nch × tile·ncw``, which is then cut into tiles row-major; the uint8 tiles are divided by 255 and normalised
with mean = std = 0.5.

transformers 5's PerceptionLM processor resizes with torchvision's v2 uint8 kernel instead, which differs by up to
14/255 on a sixth of the values of a typical photo, so the resize here is our own code on ``interpolate``: it does
not depend on which kernel a torchvision release dispatches to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch.nn import functional

__all__ = ["Resample", "resize_uint8", "tile_uint8", "normalize_tiles", "image_to_uint8_tensor"]

Resample = Literal["bicubic", "nearest"]


def resize_uint8(image: torch.Tensor, size: tuple[int, int], resample: Resample) -> torch.Tensor:
    """Resize a uint8 ``[N, C, H, W]`` tensor to ``size = (height, width)`` the way torchvision's v1
    ``transforms.functional.resize`` does for tensors: in float32, bicubic with antialias (clamped to
    ``[0, 255]``) or nearest, rounded half to even back to uint8; at the tensor's own size, the tensor itself."""
    if image.dtype != torch.uint8 or image.dim() != 4:
        raise ValueError(f"expected a uint8 [N, C, H, W] tensor, got {image.dtype} {tuple(image.shape)}")
    if tuple(image.shape[-2:]) == tuple(size):
        # torchvision returns the tensor as is at its own size (the interpolation would give the same values: the
        # tests check it); a 1792² image on a 4×4 grid skips resizing its 9.6 MB canvas
        return image
    x = image.to(torch.float32)
    if resample == "bicubic":
        out = functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        out = out.clamp_(0, 255)
    elif resample == "nearest":
        out = functional.interpolate(x, size=size, mode="nearest")
    else:
        raise ValueError(f"resample must be 'bicubic' or 'nearest', got {resample!r}")
    return out.round_().to(torch.uint8)


def tile_uint8(image: torch.Tensor, grid: tuple[int, int], tile_size: int, resample: Resample) -> torch.Tensor:
    """``[1 + ncw·nch, C, tile, tile]`` uint8: the thumbnail, then the canvas tiles row-major.

    Args:
        image: uint8 ``[C, H, W]``.
        grid: ``(ncw, nch)`` tile columns and rows.
        tile_size: tile side in pixels (448 for GAR).
        resample: ``"bicubic"`` for the image, ``"nearest"`` for the visual-prompt map.
    """
    ncw, nch = grid
    batch = image.unsqueeze(0)
    thumbnail = resize_uint8(batch, (tile_size, tile_size), resample)
    canvas = resize_uint8(batch, (tile_size * nch, tile_size * ncw), resample)[0]
    channels = canvas.shape[0]
    tiles = (
        canvas.reshape(channels, nch, tile_size, ncw, tile_size)
        .permute(1, 3, 0, 2, 4)
        .reshape(nch * ncw, channels, tile_size, tile_size)
    )
    return torch.cat([thumbnail, tiles], dim=0)


def normalize_tiles(tiles: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 ``(tiles / 255 − mean) / std`` per channel (GAR: mean = std = 0.5), on the tiles' device.

    Every operand is a tensor on that device: CUDA divides by a host scalar as a multiplication by its reciprocal,
    which rounds differently; with tensors both devices divide, so the values are the same bits everywhere."""
    device = tiles.device
    scale = torch.full((1, 1, 1, 1), 255.0, dtype=torch.float32, device=device)
    mean_t = torch.tensor(list(mean), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32, device=device).view(1, -1, 1, 1)
    out = tiles.to(torch.float32, copy=True)  # one buffer, then the same three operations in place
    return out.div_(scale).sub_(mean_t).div_(std_t)


def image_to_uint8_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 ``[C, H, W]`` from an ``H×W×C`` (or ``H×W``, one channel) uint8 array."""
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 array, got {array.dtype}")
    if array.ndim == 2:
        array = array[:, :, None]
    chw = np.ascontiguousarray(array.transpose(2, 0, 1))
    if not chw.flags.writeable:  # one channel is already contiguous: still the caller's (read-only) array
        chw = chw.copy()
    return torch.from_numpy(chw)
