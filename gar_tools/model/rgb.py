"""Pixels as the model reads them: any Pillow image converted to 8-bit RGB (numpy and Pillow only, no torch)."""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["to_rgb"]


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy of ``image``: alpha dropped (colours kept as stored, like upstream GAR's ``.convert("RGB")``),
    palette transparency resolved, 16/32-bit and float pixels scaled to 8 bits (not clipped at 255)."""
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        top = float(finite.max()) if finite.size else 0.0
        if mode == "F" and top <= 1.0:
            scale = 255.0
        elif top > 255.0:
            scale = 255.0 / (65535.0 if top <= 65535.0 else top)
        else:
            scale = 1.0
        arr = np.clip(np.nan_to_num(arr * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")
