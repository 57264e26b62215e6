"""Smoke runs of the benchmark scripts on CPU: they run and print the JSON keys they promise (no speed targets:
benchmarks are scripts; their figures are in benchmarks/results/)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        env=CPU_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def test_serving_old_path_vs_engine_smallest_configuration(tmp_path) -> None:
    out = tmp_path / "serving.json"
    proc = _run(
        "serving.py",
        *("--only", "known_image_encode", "--only", "engine_throughput", "--only", "prefill_chunking"),
        *("--only", "engine_throughput_one_image", "--only", "batch1_agreement", "--agreement-requests", "2"),
        *("--only", "followup_questions", "--only", "time_to_first_token", "--ttft-image-size", "448"),
        *("--concurrency", "1", "2", "--old-requests", "1", "--new-tokens", "3", "--iters", "1"),
        *("--image-size", "448", "--out", str(out)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert {"argv", "torch", "cuda", "results"} <= report.keys() and report["complete"] is True
    known = report["results"]["known_image_encode"]
    assert {"device", "preset", "dtype", "first_question_encode", "second_question_encode", "speedup"} <= known.keys()
    assert known["device"].startswith("cpu (") and known["preset"] == "tiny"
    assert isinstance(known["targets_met"]["cpu_second_question_encodes_ge_3x_faster"], bool)
    throughput = report["results"]["engine_throughput"]
    assert throughput["old"]["requests"] == 1 and throughput["old"]["tokens_generated"] >= 1
    assert [row["concurrent"] for row in throughput["new"]["rows"]] == [1, 2]
    for row in throughput["new"]["rows"]:
        assert {"old_tokens_per_s", "new_tokens_per_s", "new_steady_decode_tokens_per_s", "speedup"} <= row.keys()
        spent = row["model_thread_s"]  # where the model thread spent the level: within its wall time
        assert set(spent) == {"idle", "admit", "prefill", "decode", "read", "flush"}
        assert spent["admit"] > 0 and spent["prefill"] > 0 and sum(spent.values()) <= row["wall_s"] + 0.1
    assert "new_batch1_decode_tokens_per_s" in throughput["new"]["rows"][0]
    assert "max_rss_mib" in throughput["new"]["peak_memory"]
    assert set(throughput["targets_met"]) == {"cpu_8_concurrent_ge_3x_sequential"}  # None: 8 was not run
    one_image = report["results"]["engine_throughput_one_image"]
    assert "one per level, shared" in one_image["image"]
    assert [row["concurrent"] for row in one_image["new"]["rows"]] == [1, 2]
    assert set(one_image["targets_met"]) == {"cpu_8_concurrent_ge_3x_sequential_one_image"}
    agreement = report["results"]["batch1_agreement"]  # fp32 on CPU: batched ids equal batch 1, both ways
    assert agreement["share_equal_to_batch1"] == agreement["share_equal_to_engine_alone"] == 1.0
    prefill = report["results"]["prefill_chunking"]
    assert prefill["prompt_tokens"] == 17 * 256 + 356
    assert all(prefill[k]["n"] == 1 for k in ("whole", "chunks_of_2048", "chunks_of_1024"))
    followup = report["results"]["followup_questions"]  # same answers; the second question reused its prefix
    assert followup["same_answers_on_and_off"] is True
    assert followup["prefix_cache_on"]["second_question_prompt_tokens_reused"] > 512  # thumbnail + 1 tile at least
    assert followup["prefix_cache_off"]["second_question_prompt_tokens_reused"] == 0
    assert followup["old_one_after_another"]["questions"] == 8
    ttft = report["results"]["time_to_first_token"]  # the first token with and without reading the image
    first, after = ttft["new_first_token_via_progress"], ttft["new_first_token_after_load"]
    assert 0 < ttft["new_load_ms_median"] and 0 < after["median_ms"] < first["median_ms"]
    assert set(ttft["targets_met"]) == {"gpu_ttft_le_100_ms_17_tiles", "gpu_ttft_after_load_le_100_ms_17_tiles"}


def test_serving_describe_regions_reports_the_exact_work_bound() -> None:
    """16 regions one by one vs in one call: same texts, and the one call's model-thread embeddings and prefills
    (work exact per-region results cannot share) bound the speedup from above."""
    proc = _run("serving.py", "--only", "describe_regions", "--max-new-tokens", "2", "--iters", "1", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout)["results"]["describe_regions"]
    assert row["regions"] == 16 and row["texts_equal"] is True and row["prompt_tokens_reused"] == 0
    spent = row["describe_regions_model_thread_s"]
    assert set(spent) == {"idle", "admit", "prefill", "decode", "read", "flush"}
    assert spent["admit"] > 0 and spent["prefill"] > 0
    sequential_s = row["describe_region_x16_sequential"]["median_ms"] / 1000
    bound = row["speedup_bound_by_admit_and_prefill"]
    assert bound == pytest.approx(sequential_s / (spent["admit"] + spent["prefill"]), rel=0.05)
    assert row["speedup"] <= bound + 0.05


def test_gpu_check_script_names_existing_scripts_and_flags() -> None:
    """benchmarks/gpu_check.sh is bash-valid, and each script and --flag it passes exists (checked via --help)."""
    script = ROOT / "benchmarks" / "gpu_check.sh"
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    assert "-m pytest -q -m gpu tests/" in text
    commands = re.findall(r"benchmarks/(\w+\.py)((?:\\\n|[^\n])*)", text)
    assert {name for name, _ in commands} >= {"roi_replay.py", "serving.py", "decode_batching.py"}
    for name, rest in commands:
        if not (ROOT / "benchmarks" / name).is_file():
            pytest.fail(f"gpu_check.sh runs a missing script: {name}")
        flags = set(re.findall(r"(--[a-z][a-z0-9-]*)", rest))
        if flags:
            proc = _run(name, "--help", timeout=120)
            assert proc.returncode == 0, proc.stderr[-2000:]
            missing = [flag for flag in flags if flag not in proc.stdout]
            assert not missing, f"{name} does not take {missing}"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from decode_batching import VARIANTS
    finally:
        sys.path.pop(0)
    named = set(re.findall(r"(?<![\w+-])(eager|cuda_graphs[\w+]*)", text))  # decode-step variant names it passes
    assert "cuda_graphs+triton+fused" in named and named <= set(VARIANTS), named - set(VARIANTS)


def test_profile_request_reports_every_phase() -> None:
    proc = _run("profile_request.py", "--side", "448", "--iters", "1", "--top", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    phases = report["first_question"]["median_ms"]
    assert list(phases) == [
        "read_png",
        "digest",
        "resize_to_uint8_tiles",
        "prepare",
        "vision_tower_via_tile_cache",
        "embeddings_and_roi_replay",
        "prefill_whole_prompt",
    ]
    assert all(ms > 0 for ms in phases.values())
    assert len(report["decode_step"]["eager_top"]) == len(report["decode_step"]["eager_fused_top"]) == 3
    assert report["first_question"]["vision_tower_profile"]["top_by_host_time"]
