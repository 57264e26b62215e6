"""Mixed GAR requests for the batching tests, with what ``GarPipeline.generate`` gives for each alone.

Different images (bundled demo images and the GAR-Bench sample), 1–5 regions, describe and free-form questions,
``max_new_tokens`` from 1 to 12, two prompts at the checkpoint's full 16-tile grid (~4.5 k tokens) and the rest
through the same tiny model with fewer tiles (same weights, a processor with a smaller ``max_num_tiles``), so the
tests stay fast on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gar_tools.model.pipeline import GarPipeline, checkpoint_folder
from gar_tools.model.processing import GarProcessor, PreparedInputs, load_image_processor_config

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [
    ROOT / "gar_tools" / "assets" / "demo_image_1.png",
    ROOT / "gar_tools" / "assets" / "demo_image_3.png",
    *sorted((ROOT / "tests" / "data" / "gar-bench-sample" / "images").glob("*.png")),
]


@dataclass
class MixedRequest:
    pipeline: GarPipeline
    prepared: PreparedInputs
    max_new_tokens: int
    expected: list[int]  # GarPipeline.generate alone (cut after the EOS id when eos_token_ids is set)
    eos_token_ids: tuple[int, ...] = ()

    def build_embeds(self):
        return self.pipeline.embed(self.prepared)


def with_max_tiles(pipeline: GarPipeline, max_num_tiles: int) -> GarPipeline:
    """The same model behind a processor limited to ``max_num_tiles`` tiles."""
    config = load_image_processor_config(checkpoint_folder("tiny"))
    config["max_num_tiles"] = max_num_tiles
    processor = GarProcessor(pipeline.processor.tokenizer, config, pipeline.processor.chat_template, pipeline.config)
    return GarPipeline(pipeline.model, processor, pipeline.name, is_tiny=pipeline.is_tiny)


def _masks(size: tuple[int, int], count: int, rng: np.random.Generator) -> list[np.ndarray]:
    width, height = size
    masks = []
    for _ in range(count):
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        w, h = int(rng.integers(8, width // 3)), int(rng.integers(8, height // 3))
        mask = np.zeros((height, width), dtype=bool)
        mask[y0 : y0 + h, x0 : x0 + w] = True
        masks.append(mask)
    return masks


def build_mixed_requests(pipeline: GarPipeline) -> list[MixedRequest]:
    rng = np.random.default_rng(10)
    few = {n: with_max_tiles(pipeline, n) for n in (1, 2, 3, 4)}
    requests = []
    for i in range(16):
        path = IMAGES[i % len(IMAGES)]
        image = Image.open(path).convert("RGB")
        regions = 1 + i % 5
        target = pipeline if i in (0, 7) else few[1 + i % 4]
        if regions == 1 and i % 2 == 0:
            question = None  # the single-region describe prompt
        else:
            names = " and ".join(f"<Prompt{k}>" for k in range(regions))
            question = f"What is the relationship between {names}? ({path.stem})"
        prepared = target.prepare(image, _masks(image.size, regions, rng), question)
        max_new = 1 if i == 5 else 3 + (i * 7) % 10
        expected = target.generate(prepared, max_new_tokens=max_new).token_ids
        requests.append(MixedRequest(target, prepared, max_new, expected))
    # Request 9 stops early at an EOS id: the id its greedy path produces third (so the cut is known).
    stop = requests[9]
    stop.eos_token_ids = (stop.expected[2],)
    stop.expected = stop.expected[: stop.expected.index(stop.expected[2]) + 1]
    assert len(stop.expected) < stop.max_new_tokens
    return requests
