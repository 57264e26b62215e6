"""Plain-Python use of the three GAR tools on the bundled example images.

    python examples/toolkit_quickstart.py [--model tiny|PATH|HUB_ID] [--max-new-tokens N]

With the default ``tiny`` model the weights are random, so the text is meaningless: it shows that the whole
pipeline runs. Pass ``--model HaochenWang/GAR-1B`` (or a local folder) for real answers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gar_tools.toolkit import GarToolkit

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    with GarToolkit(args.model) as toolkit:
        # 1. One region, given as a mask PNG.
        described = toolkit.describe_region(
            image=str(ASSETS / "demo_image_1.png"),
            region={"id": "slipper", "mask": str(ASSETS / "demo_mask_1.png")},
            max_new_tokens=args.max_new_tokens,
        )
        if described.tiny_model:
            print("(model 'tiny' has random weights: the texts below are meaningless)")
        print("describe_region:", described.text)
        print("  region as understood:", described.regions[0].model_dump())

        # 2. Two regions: the person and the racket, compared with a focus.
        people = [
            {"id": "person", "mask": str(ASSETS / "demo_mask_3_0.png")},
            {"id": "racket", "mask": str(ASSETS / "demo_mask_3_2.png")},
        ]
        compared = toolkit.compare_regions(
            image=str(ASSETS / "demo_image_3.png"),
            regions=people,
            focus="what they are doing",
            max_new_tokens=args.max_new_tokens,
        )
        print("compare_regions:", compared.text)

        # 3. A multiple-choice question naming regions by id; a box region is a (coarse) approximation of a mask.
        answered = toolkit.answer_about_regions(
            image=str(ASSETS / "demo_image_3.png"),
            regions=[*people, {"id": "ball", "box": [104, 244, 132, 270]}],
            question="What is the relationship between <person>, <ball>, and <racket>?",
            choices=[
                "<person> is throwing <ball>.",
                "<person> is holding <racket> and <ball> is on the ground.",
                "<person> is swinging <racket> and is about to hit <ball>.",
                "<person> is catching <ball> with <racket>.",
            ],
            max_new_tokens=args.max_new_tokens,
        )
        print("answer_about_regions:", answered.text, "| choice:", answered.choice)
        print("  timings:", answered.timings.model_dump())


if __name__ == "__main__":
    main()
