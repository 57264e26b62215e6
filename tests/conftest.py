"""Shared fixtures: the tiny GAR checkpoint (random weights: its text is meaningless), bundled images and masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Without CUDA, Triton kernels run under the interpreter; the flag is read when triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"
DATA = Path(__file__).resolve().parent / "data"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_pipeline():
    """The tiny random-weight GAR checkpoint, loaded once on CPU in float32."""
    from gar_tools.model import load

    return load("tiny", device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def demo1() -> tuple[Image.Image, np.ndarray]:
    image = Image.open(ASSETS / "demo_image_1.png").convert("RGB")
    mask = np.asarray(Image.open(ASSETS / "demo_mask_1.png").convert("L")) > 0
    return image, mask


@pytest.fixture(scope="session")
def demo3() -> tuple[Image.Image, list[np.ndarray]]:
    image = Image.open(ASSETS / "demo_image_3.png").convert("RGB")
    masks = [np.asarray(Image.open(ASSETS / f"demo_mask_3_{i}.png").convert("L")) > 0 for i in range(3)]
    return image, masks


@pytest.fixture(scope="session")
def mixed_requests(tiny_pipeline):
    """16 mixed requests with their batch-1 greedy ids (see tests/batching_requests.py)."""
    from batching_requests import build_mixed_requests

    return build_mixed_requests(tiny_pipeline)
