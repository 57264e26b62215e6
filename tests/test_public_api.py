"""The public API is pinned: changing it must be a deliberate edit of this test."""

from __future__ import annotations

import subprocess
import sys

import gar_tools


def test_top_level_all_is_pinned() -> None:
    assert sorted(gar_tools.__all__) == [
        "AnswerAboutRegionsRequest",
        "AnswerAboutRegionsResult",
        "CheckpointError",
        "CompareRegionsRequest",
        "CompareRegionsResult",
        "DescribeRegionRequest",
        "DescribeRegionResult",
        "Engine",
        "EngineBusyError",
        "EngineError",
        "GarToolkit",
        "GarToolsError",
        "ImageError",
        "ImagePolicy",
        "InputError",
        "LocalEngine",
        "ModelInfo",
        "Region",
        "RegionError",
    ]
    for name in gar_tools.__all__:
        assert getattr(gar_tools, name) is not None


def test_import_is_cheap() -> None:
    code = "import sys, gar_tools; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_model_all_is_pinned() -> None:
    import gar_tools.model as model

    assert {"load", "GarPipeline", "PreparedInputs", "GarConfig", "GarModel", "build_tiny_checkpoint"} <= set(
        model.__all__
    )
    for name in model.__all__:
        assert getattr(model, name) is not None
