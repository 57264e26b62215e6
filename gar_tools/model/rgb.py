"""Pixels as the model reads them: any Pillow image converted to 8-bit RGB (numpy and Pillow only, no torch)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from PIL import Image

__all__ = ["image_digest", "to_rgb"]

_BLOCK_PIXELS = 1 << 18  # pixels per block when scaling 16/32-bit images: bounds the temporaries (~6 MiB)


def _scaled_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float pixels scaled to 8 bits (not clipped at 255 as ``convert`` would), in blocks of
    rows so neither a numpy copy of the image nor float64 temporaries of its size are ever made."""
    width, height = image.size
    rows = max(1, _BLOCK_PIXELS // max(width, 1))
    is_float = image.mode == "F"

    def blocks() -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, height, rows):
            yield start, np.asarray(image.crop((0, start, width, min(start + rows, height))))

    top = 0.0
    for _, block in blocks():
        values = block[np.isfinite(block)] if is_float else block
        if values.size:
            top = max(top, float(values.max()))
    if is_float and top <= 1.0:
        scale = 255.0
    elif top > 255.0:
        scale = 255.0 / (65535.0 if top <= 65535.0 else top)
    else:
        scale = 1.0
    out = np.empty((height, width), dtype=np.uint8)
    for start, block in blocks():
        out[start : start + block.shape[0]] = np.clip(np.nan_to_num(block.astype(np.float64) * scale), 0, 255)
    return Image.fromarray(out).convert("RGB")


def to_rgb(image: Image.Image, *, copy: bool = True) -> Image.Image:
    """``image`` as 8-bit RGB: alpha dropped (colours kept as stored, like upstream GAR's ``.convert("RGB")``),
    palette transparency resolved, 16/32-bit and float pixels scaled to 8 bits (not clipped at 255).

    With ``copy=False`` an image that already is RGB is returned as is (it must be the caller's to give away).
    """
    mode = image.mode
    if mode == "RGB":
        return image.copy() if copy else image
    if mode.startswith("I") or mode == "F":
        return _scaled_to_rgb(image)
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def image_digest(image: Image.Image) -> str:
    """SHA-256 (hex) of the image's decoded RGB pixels and its size: the key of every per-image cache (file format,
    metadata and the way the image was sent do not matter)."""
    rgb = image if image.mode == "RGB" else to_rgb(image)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()
