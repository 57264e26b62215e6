"""Peak memory of decoding one request's image and regions, run in a fresh process by test_regions.py.

Usage: ``python memory_probe.py WIDTH HEIGHT``. Builds the worst inputs we know of for memory at that size (a 32-bit
float TIFF image, four 32-bit integer TIFF masks and one compressed RLE of the longest kind, a checkerboard), then
prints one JSON line: the peak resident memory added while :func:`load_image` and :func:`decode_regions` ran
(Linux ``VmHWM`` after resetting it through ``/proc/self/clear_refs``), the largest encoded input, and the pixels.
Run it with ``MALLOC_MMAP_THRESHOLD_`` set low so freed buffers leave the process and the peak is the real one.
"""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from gar_tools.images import ImagePolicy, load_image
from gar_tools.inputs import RLE, Region
from gar_tools.regions import decode_regions, max_rle_chars


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


def main() -> None:
    width, height = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    image = _tiff(rng.random((height, width), dtype=np.float32))
    mask = _tiff(rng.integers(0, 2, (height, width), dtype=np.int32))
    checker = (np.indices((height, width)).sum(axis=0) % 2).astype(np.uint8)
    counts = mask_utils.encode(np.asfortranarray(checker))["counts"].decode("ascii")
    assert len(counts) <= max_rle_chars(height, width)
    mask_b64 = base64.b64encode(mask).decode("ascii")
    regions = [Region(rle=RLE(size=[height, width], counts=counts))] + [Region(mask=mask_b64) for _ in range(4)]
    policy = ImagePolicy(max_pixels=width * height, max_bytes=max(len(image), len(mask)) + 1)
    del checker
    # Warm up (imports, lazy tables) on a tiny request.
    small = load_image(Image.new("RGB", (8, 8)), policy)
    decode_regions([Region(box=[0, 0, 4, 4])], small.size, policy=policy)

    base = _status("VmRSS")
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # reset VmHWM to the current resident size
    decoded = load_image(image, policy)
    masks = decode_regions(regions, decoded.size, policy=policy)
    peak = _status("VmHWM") - base
    assert len(masks) == 5 and masks[0].mask.shape == (height, width)
    print(json.dumps({"peak": peak, "pixels": width * height, "encoded": max(len(image), len(mask))}))


if __name__ == "__main__":
    main()
