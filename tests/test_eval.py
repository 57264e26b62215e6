"""``gar-tools eval``: GAR-Bench runs with the tiny model (random weights: text and accuracy are meaningless) on the
12 sample items, and scoring of the authors' published GAR-1B outputs."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from gar_tools.cli import main
from gar_tools.engine.local import LocalEngine, build_job
from gar_tools.errors import InputError
from gar_tools.evaluation import (
    BENCHMARKS,
    DETAILED_QUESTION,
    build_request,
    load_items,
    load_outputs,
    run_benchmark,
    score_vqa,
    upstream_question,
)
from gar_tools.evaluation.progress import ProgressBar, format_duration
from gar_tools.images import ImagePolicy
from gar_tools.inputs import AnswerAboutRegionsRequest
from gar_tools.model.prompts import multiple_choice_question
from gar_tools.toolkit import GarToolkit

DATA = Path(__file__).resolve().parent / "data"
SAMPLE = DATA / "gar-bench-sample" / "items.json"
UPSTREAM_1B = DATA / "gar-bench-outputs" / "gar_1b_vqa.json"
VQA = BENCHMARKS["gar-bench-vqa"]

# The authors' published GAR-1B table (evaluation/EVALUATION.md), in the order the types first appear in their file.
UPSTREAM_1B_TABLE = [
    "mirror: [36/61]=59.0",
    "color: [34/69]=49.3",
    "material: [14/36]=38.9",
    "texture/pattern: [17/29]=58.6",
    "shape: [32/64]=50.0",
    "ordering: [13/64]=20.3",
    "relation: [57/101]=56.4",
    "=> overall: [203/424]=47.9",
]


@pytest.fixture(scope="module")
def toolkit(tiny_pipeline):
    kit = GarToolkit(LocalEngine(pipeline=tiny_pipeline))
    yield kit
    kit.close()


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    """The sample annotations in the authors' layout, in a writable folder."""
    folder = tmp_path / "annotations"
    shutil.copytree(SAMPLE.parent, folder)
    return folder / "items.json"


def _run(toolkit, annotations: Path, output: Path, benchmark=VQA, **kwargs):
    items = load_items(annotations, benchmark.fields)
    return asyncio.run(
        run_benchmark(
            toolkit,
            benchmark,
            items,
            image_folder=annotations.parent,
            output=output,
            max_new_tokens=2,
            stream=kwargs.pop("stream", None),
            **kwargs,
        )
    )


# --- scoring ---------------------------------------------------------------------------------------------------
def test_score_reproduces_the_published_gar_1b_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "score", str(UPSTREAM_1B)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index(UPSTREAM_1B_TABLE[0])
    assert lines[start : start + len(UPSTREAM_1B_TABLE)] == UPSTREAM_1B_TABLE
    assert "424 items, 424 run, 0 skipped" in lines[0]


def test_score_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "score", str(UPSTREAM_1B), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["exact_match"]["overall"] == {"correct": 203, "total": 424, "accuracy": 47.9}
    assert summary["exact_match"]["by_type"]["ordering"] == {"correct": 13, "total": 64, "accuracy": 20.3}
    assert summary["parsed_choice"]["overall"]["total"] == 424
    assert summary["skipped"] == 0


def test_score_counts_skipped_as_wrong_and_reports_both() -> None:
    outputs = [
        {"type": "color", "answer": "a", "choices": ["A. x", "B. y"], "model_output": "A"},
        {"type": "color", "answer": "B", "choices": ["A. x", "B. y"], "model_output": "The answer is B."},
        {"type": "mirror", "answer": "A", "choices": ["A. x", "B. y"], "model_output": "", "skipped": "6 regions"},
    ]
    score = score_vqa(outputs)
    assert (score.exact.overall.correct, score.exact.overall.total) == (1, 3)
    assert (score.exact.overall_run.correct, score.exact.overall_run.total) == (1, 2)
    assert (score.parsed.overall.correct, score.parsed.overall_run.total) == (2, 2)
    assert score.exact.by_type["mirror"].line("mirror") == "mirror: [0/1]=0.0"
    assert score.skipped[0]["reason"] == "6 regions"


def test_score_rejects_caption_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"image": "a.png", "question": "Describe <Prompt0>.", "model_output": "A cat."}]))
    assert main(["eval", "score", str(path)]) == 2
    assert "judge" in capsys.readouterr().err


# --- upstream's prompt, byte for byte ----------------------------------------------------------------------------
def test_vqa_question_is_upstreams_byte_for_byte() -> None:
    items = load_items(SAMPLE, VQA.fields) + json.loads(UPSTREAM_1B.read_text())
    for item in items:
        expected = upstream_question("vqa", item)
        assert expected.startswith(f"Question: {item['question']}\nOptions:\n{item['choices'][0]}\n")
        assert expected.endswith("\nAnswer with the correct option's letter directly.")
        assert multiple_choice_question(item["question"], item["choices"]) == expected


def test_engine_builds_upstreams_question_for_every_sample_item(sample: Path) -> None:
    for mode in ("vqa", "detailed"):
        benchmark = next(b for b in BENCHMARKS.values() if b.mode == mode)
        for item in load_items(sample, benchmark.fields):
            if len(item["mask_rles"]) > 5 or (mode == "detailed" and len(item["mask_rles"]) != 2):
                continue
            request = AnswerAboutRegionsRequest.model_validate(build_request(benchmark, item, sample.parent, 8))
            job = build_job("answer_about_regions", request, ImagePolicy())
            assert job.question == upstream_question(mode, item)
            assert job.prompt_indices == list(range(len(item["mask_rles"])))
    assert upstream_question("detailed", {}) == DETAILED_QUESTION


# --- runs with the tiny model ---------------------------------------------------------------------------------
def test_vqa_run_skips_the_six_region_item_and_scores_back(toolkit, sample: Path, tmp_path: Path) -> None:
    output = tmp_path / "out" / "tiny_vqa.json"
    run = _run(toolkit, sample, output, concurrency=3)
    assert (run.resumed, run.asked, run.skipped) == (0, 11, 1)
    written = load_outputs(output)
    items = json.loads(sample.read_text())
    assert len(written) == 12
    for item, out in zip(items, written, strict=True):
        assert {k: out[k] for k in item} == item  # upstream's format: the item plus model_output
        assert isinstance(out["model_output"], str)
    skipped = [o for o in written if o.get("skipped")]
    assert len(skipped) == 1 and skipped[0]["image"] == "images/vqa_383.png" and skipped[0]["model_output"] == ""
    assert score_vqa(written).as_dict() == score_vqa(run.outputs).as_dict()
    score = score_vqa(written)
    assert (score.items, score.run, len(score.skipped)) == (12, 11, 1)
    assert score.exact.overall.total == 12 and score.exact.overall_run.total == 11


class _CutShort:
    """A toolkit that fails after ``limit`` answers, like a run killed half-way."""

    def __init__(self, toolkit: GarToolkit, limit: int) -> None:
        self.toolkit, self.limit, self.calls = toolkit, limit, 0

    async def arun(self, tool, request):
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError("cut short")
        return await self.toolkit.arun(tool, request)


def test_vqa_run_resumes_after_being_cut_short(toolkit, sample: Path, tmp_path: Path) -> None:
    output = tmp_path / "tiny_vqa.json"
    with pytest.raises(RuntimeError, match="cut short"):
        _run(_CutShort(toolkit, 4), sample, output, concurrency=1)
    partial = load_outputs(output)
    answered = [o for o in partial if not o.get("skipped")]
    assert len(answered) == 4
    import io

    stream = io.StringIO()
    run = _run(toolkit, sample, output, concurrency=2, stream=stream)
    assert (run.resumed, run.asked, run.skipped) == (4, 7, 1)
    assert "4 of 12 items already answered" in stream.getvalue()
    final = load_outputs(output)
    assert [o["image"] for o in final] == [i["image"] for i in json.loads(sample.read_text())]
    by_image = {o["image"]: o["model_output"] for o in final}
    assert all(by_image[o["image"]] == o["model_output"] for o in answered)  # kept, not asked again


def test_cli_vqa_run_then_score_agree(sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "cli_vqa.json"
    args = ["eval", "gar-bench-vqa", "--annotations", str(sample), "--output", str(output), "--device", "cpu"]
    assert main([*args, "--max-new-tokens", "1", "--limit", "3", "--concurrency", "2"]) == 0
    out, err = capsys.readouterr()
    assert "meaningless" in err and "chance level" in err
    assert "3 items (0 resumed, 3 asked, 0 skipped)" in out
    assert main([*args, "--max-new-tokens", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["items"], summary["resumed"], summary["asked"], summary["skipped"]) == (12, 3, 8, 1)
    assert summary["tiny_model"] is True and "chance level" in summary["note"]
    assert summary["skipped_items"][0]["regions"] == 6
    assert main(["eval", "score", str(output), "--json"]) == 0
    rescored = json.loads(capsys.readouterr().out)
    assert rescored["exact_match"] == summary["exact_match"]
    assert rescored["parsed_choice"] == summary["parsed_choice"]


@pytest.mark.parametrize("name", ["gar-bench-caption-simple", "gar-bench-caption-detailed"])
def test_caption_runs_write_outputs_and_print_no_score(
    name: str, sample: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = json.loads(sample.read_text())
    two_regions = [i for i in items if len(i["mask_rles"]) == 2]  # Caption-Detailed items name <Prompt0>, <Prompt1>
    annotations = sample.parent / "captions.json"
    annotations.write_text(json.dumps(two_regions))
    output = tmp_path / f"{name}.json"
    argv = ["eval", name, "--annotations", str(annotations), "--output", str(output), "--max-new-tokens", "2"]
    assert main([*argv, "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "external judge" in out and BENCHMARKS[name].judge_script in out and "overall" not in out
    written = load_outputs(output)
    assert len(written) == len(two_regions) and all(not o.get("skipped") for o in written)


def test_bad_annotations_are_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"image": "a.png", "mask_rles": [], "question": "?"}]))
    with pytest.raises(InputError) as info:
        load_items(path, VQA.fields)
    assert info.value.field == "annotations[0].choices"
    assert main(["eval", "gar-bench-vqa", "--annotations", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    shutil.copy(SAMPLE, tmp_path / "items.json")  # without its images/ folder
    assert main(["eval", "gar-bench-vqa", "--annotations", str(tmp_path / "items.json")]) == 2
    assert "12 of 12 item images" in capsys.readouterr().err
    assert main(["eval", "gar-bench-vqa", "--annotations", str(SAMPLE), "--max-new-tokens", "0"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err


def test_progress_bar_reports_eta_and_running_figure() -> None:
    import io

    stream = io.StringIO()
    bar = ProgressBar(4, label="vqa", initial=1, stream=stream, log_interval=0)
    bar.update(extra="acc 50.0% (1/2)")
    bar.update()
    bar.update()
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("vqa [") and "4/4" in lines[-1] and "100%" in lines[-1]
    assert "ETA" in lines[0] and "acc 50.0%" in lines[0]
    assert format_duration(3725) == "1h02m" and format_duration(187) == "3m07s" and format_duration(4) == "4s"
