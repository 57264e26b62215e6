"""The ``gar-tools`` command line (tiny model: it must say its text is meaningless)."""

from __future__ import annotations

import asyncio
import importlib.util
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


def test_ids_pair_with_regions_in_command_line_order(capsys: pytest.CaptureFixture[str]) -> None:
    mask0, mask2 = str(ASSETS / "demo_mask_3_0.png"), str(ASSETS / "demo_mask_3_2.png")
    box = "100,240,140,275"
    # --id values given before, between and after the regions they name; regions mix --mask and --box
    args = ["ask", IMAGE3, "Is <a> near <b> and <c>?", "--id", "a", "--box", box, "--mask", mask0, "--id", "b"]
    assert main([*args, "--mask", mask2, "--id", "c", "--max-new-tokens", "1", "--json"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    assert [r["id"] for r in regions] == ["a", "b", "c"]
    assert regions[0]["box"] == [100, 240, 140, 275]  # a is the box, given first
    assert regions[1]["area"] != regions[2]["area"]
    args = ["compare", IMAGE3, "--mask", mask2, "--box", box, "--id", "racket", "--id", "ball"]
    assert main([*args, "--max-new-tokens", "1", "--json"]) == 0
    regions = json.loads(capsys.readouterr().out)["regions"]
    assert [r["id"] for r in regions] == ["racket", "ball"] and regions[1]["box"] == [100, 240, 140, 275]


def test_unwritable_overlay_is_refused_before_the_model_runs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gar_tools.cli as cli

    def no_model(args):  # the check must come first: building the toolkit means the path was not checked
        raise AssertionError("the model was loaded before the overlay path was checked")

    monkeypatch.setattr(cli, "_toolkit", no_model)
    for target, fragment in (
        (tmp_path / "missing" / "x.png", "does not exist"),
        (tmp_path, "is a folder"),
    ):
        assert main(["describe", IMAGE1, "--box", "1,2,30,40", "--overlay", str(target)]) == 2
        err = capsys.readouterr().err
        assert "--overlay" in err and fragment in err and "Traceback" not in err


def test_server_options_are_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for command in ("serve", "worker"):
        assert main([command, "--allow-dir", str(tmp_path / "nope")]) == 2
        assert "--allow-dir" in (err := capsys.readouterr().err) and "does not exist" in err
        assert main([command, "--allow-private-urls"]) == 2
        assert "needs --allow-urls" in capsys.readouterr().err
    assert main(["describe", IMAGE1, "--box", "1,2,30,40", "--allow-private-urls"]) == 2
    assert "needs --allow-urls" in capsys.readouterr().err
    assert main(["worker", "--max-body-mb", "0"]) == 2
    assert "--max-body-mb" in capsys.readouterr().err
    assert main(["worker", "--image-cache-mb", "-1"]) == 2
    assert "--image-cache-mb" in capsys.readouterr().err
    assert main(["serve", "--prefix-cache-mb", "-2"]) == 2
    assert "--prefix-cache-mb" in capsys.readouterr().err


def test_cache_sizes_reach_the_engine() -> None:
    from gar_tools.cli import _engine_kwargs, build_parser

    args = build_parser().parse_args(
        ["worker", "--tile-cache-mb", "64", "--image-cache-mb", "0.5", "--prefix-cache-mb", "0"]
    )
    kwargs = _engine_kwargs(args)
    assert kwargs["tile_cache_bytes"] == 64 * 2**20 and kwargs["image_cache_bytes"] == 2**19
    assert kwargs["prefix_cache_bytes"] == 0


def test_serving_flags_reach_the_engine(tiny_pipeline) -> None:
    from gar_tools.cli import _engine_kwargs, build_parser
    from gar_tools.engine.local import LocalEngine

    flags = ["--max-batch-size", "3", "--kv-budget-tokens", "30000", "--max-queue", "5"]
    flags += ["--prefill-chunk-tokens", "1024", "--decode-attention", "matmul", "--fused-ops", "--vision-graphs"]
    flags += ["--prefix-cache-mb", "0", "--tile-cache-mb", "1"]
    args = build_parser().parse_args(["worker", "--device", "cpu", *flags])
    kwargs = _engine_kwargs(args)
    assert kwargs["prefill_chunk_tokens"] == 1024 and kwargs["decode_attention"] == "matmul"
    assert kwargs["decode_fused_ops"] is True and kwargs["vision_cuda_graphs"] is True
    engine = LocalEngine(pipeline=tiny_pipeline, **{k: v for k, v in kwargs.items() if k not in ("dtype", "device")})
    try:  # every keyword is one LocalEngine takes, and the running engine uses what was asked

        async def started():  # noqa: ANN202
            await engine.start()
            return await engine.info()

        info = asyncio.run(started())
    finally:
        engine.close()
    assert (info.max_batch_size, info.kv_budget_tokens, info.max_queue) == (3, 30000, 5)
    assert info.prefix_cache_max_bytes == 0 and info.tile_cache_max_bytes == 2**20
    assert (info.prefill_chunk_tokens, info.decode_attention, info.decode_fused_ops) == (1024, "matmul", True)
    assert info.vision_cuda_graphs is False and info.decode_cuda_graphs is False  # asked for, but this is a CPU
    assert info.vision_fused_rope is None  # no vision graph captured
    defaults = _engine_kwargs(build_parser().parse_args(["worker"]))
    assert not {"decode_fused_ops", "vision_cuda_graphs", "decode_attention", "prefill_chunk_tokens"} & set(defaults)
    turned_off = _engine_kwargs(build_parser().parse_args(["worker", "--no-fused-ops", "--no-vision-graphs"]))
    assert turned_off["decode_fused_ops"] is False and turned_off["vision_cuda_graphs"] is False  # CUDA's defaults off


@pytest.mark.parametrize(
    "asked,cuda,cpu",
    [
        (("auto", None, None), ("triton", True, True), ("sdpa", False, False)),  # the defaults
        (("matmul", False, True), ("matmul", False, True), ("matmul", False, True)),  # what was asked, anywhere
    ],
)
def test_speed_options_default_to_the_fastest_measured_on_cuda(asked, cuda, cpu) -> None:
    from gar_tools.engine.local import _speed_options

    settings = dict(zip(("decode_attention", "decode_fused_ops", "vision_cuda_graphs"), asked, strict=True))
    if asked[0] == "auto" and importlib.util.find_spec("triton") is None:
        cuda = ("sdpa", *cuda[1:])  # without Triton the split-KV kernel cannot run
    assert _speed_options("cuda:0", settings) == cuda
    assert _speed_options("cpu", settings) == cpu


def test_serve_names_the_local_engine_flags_a_remote_engine_ignores() -> None:
    from gar_tools.cli import _local_engine_flags_given, build_parser

    parser = build_parser()
    assert _local_engine_flags_given(parser.parse_args(["serve", "--engine", "http://h:1"])) == []
    given = parser.parse_args(["serve", "--engine", "http://h:1", "--fused-ops", "--max-queue", "9", "--dtype", "bf16"])
    assert _local_engine_flags_given(given) == ["--dtype", "--max-queue", "--fused-ops"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--prefill-chunk-tokens", "lots"],
        ["--prefill-chunk-tokens", "0"],
        ["--max-batch-size", "0"],
        ["--kv-budget-tokens", "-5"],
        ["--max-queue", "-1"],
        ["--tile-cache-mb", "nan"],
    ],
)
def test_bad_serving_flags_are_named(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", *flags]) == 2
    assert flags[0] in capsys.readouterr().err


def test_python_dash_m_gar_tools_runs_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gar_tools", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "gar-tools" in out.stdout and "serve" in out.stdout
