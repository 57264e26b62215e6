"""The ``gar-tools`` command line (tiny model: it must say its text is meaningless)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from gar_tools.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "gar_tools" / "assets"
IMAGE1, MASK1 = str(ASSETS / "demo_image_1.png"), str(ASSETS / "demo_mask_1.png")
IMAGE3 = str(ASSETS / "demo_image_3.png")


def test_describe_with_mask_prints_notice_and_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", IMAGE1, "--mask", MASK1, "--max-new-tokens", "3", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "random weights" in err and "meaningless" in err
    assert out.strip()


def test_describe_with_box_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", IMAGE1, "--box", "700,650,820,720", "--max-new-tokens", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["regions"][0]["box"] == [700, 650, 820, 720]
    assert result["tiny_model"] is True and result["timings"]["tokens_generated"] <= 2


def test_describe_needs_exactly_one_region(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", IMAGE1]) == 2
    assert "exactly one region" in capsys.readouterr().err


def test_compare_and_ask(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    masks = ["--mask", str(ASSETS / "demo_mask_3_0.png"), "--mask", str(ASSETS / "demo_mask_3_2.png")]
    overlay = tmp_path / "o.png"
    assert main(["compare", IMAGE3, *masks, "--focus", "size", "--max-new-tokens", "2", "--overlay", str(overlay)]) == 0
    assert Image.open(overlay).size == Image.open(IMAGE3).size
    capsys.readouterr()
    args = ["ask", IMAGE3, "Is <person> holding <bat>?", *masks, "--id", "person", "--id", "bat"]
    assert main([*args, "--choice", "yes", "--choice", "no", "--max-new-tokens", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in result["regions"]] == ["person", "bat"]
    assert result["choice"] in (None, "A", "B")  # tiny model: any answer, but only a valid letter or null


def test_ask_error_names_the_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", IMAGE3, "Where is <cat>?", "--mask", str(ASSETS / "demo_mask_3_1.png")]) == 2
    err = capsys.readouterr().err
    assert "question" in err and "<cat>" in err


def test_demo_writes_overlays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    assert "random weights" in err
    for tool in ("describe_region", "compare_regions", "answer_about_regions"):
        assert f"{tool}:" in out
        assert Image.open(tmp_path / f"{tool}.png").format == "PNG"
