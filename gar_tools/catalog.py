"""The bundled example images and masks, and a ready-made call of each built-in tool on them.

One catalog for every surface: ``gar-tools demo`` runs its calls, the MCP server serves it as the
``gar://examples`` resource and builds its ``gar_tour`` prompt from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ASSETS_DIR", "example_calls", "example_catalog"]

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
"""The bundled example images and masks."""


def _tennis_regions() -> list[dict[str, str]]:
    return [
        {"id": name, "mask": str(ASSETS_DIR / f"demo_mask_3_{i}.png")}
        for i, name in enumerate(("person", "ball", "racket"))
    ]


def example_calls() -> dict[str, dict[str, Any]]:
    """One ready-made call per built-in tool on the bundled images: ``{tool: arguments}``."""
    image1, image3 = str(ASSETS_DIR / "demo_image_1.png"), str(ASSETS_DIR / "demo_image_3.png")
    tennis = _tennis_regions()
    return {
        "describe_region": {"image": image1, "region": {"id": "slipper", "mask": str(ASSETS_DIR / "demo_mask_1.png")}},
        "compare_regions": {"image": image3, "regions": tennis[:2], "focus": "what they are doing"},
        "answer_about_regions": {
            "image": image3,
            "regions": tennis,
            "question": "What is the relationship between <person>, <ball>, and <racket>?",
            "choices": [
                "<person> is throwing <ball> without using <racket>.",
                "<person> is holding <racket> and <ball> is on the ground.",
                "<person> is swinging <racket> and is about to hit <ball>.",
                "<person> is catching <ball> with <racket>.",
            ],
        },
        "describe_regions": {"image": image3, "regions": tennis},
    }


def example_catalog() -> list[dict[str, Any]]:
    """The bundled example images with their region masks and the ready-made calls that use each."""
    calls = example_calls()
    images = {
        "slipper": (ASSETS_DIR / "demo_image_1.png", [{"id": "slipper", "mask": str(ASSETS_DIR / "demo_mask_1.png")}]),
        "tennis": (ASSETS_DIR / "demo_image_3.png", _tennis_regions()),
    }
    return [
        {
            "name": name,
            "image": str(image),
            "regions": regions,
            "example_calls": [
                {"tool": tool, "arguments": arguments}
                for tool, arguments in calls.items()
                if arguments["image"] == str(image)
            ],
        }
        for name, (image, regions) in images.items()
    ]
