"""Ray Serve without a cluster: nothing else imports ray, engine specs, settings, the Serve config file, the CLI.

The cluster itself is exercised in ``test_ray_serve.py`` (slow).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from server_helpers import REPO

from gar_tools.cli import main
from gar_tools.engine import make_engine
from gar_tools.errors import InputError

CHECK = "import sys; print('ray' in sys.modules)"


@pytest.mark.parametrize(
    "code",
    [
        "import gar_tools.servers.worker_app",
        "import gar_tools.engine; gar_tools.engine.make_engine('http://127.0.0.1:9')",
        "import gar_tools.cli",
        "from gar_tools.cli import main\ntry:\n    main(['ray-serve', '--help'])\nexcept SystemExit:\n    pass",
        "import gar_tools, gar_tools.servers.mcp_server, gar_tools.toolkit",
    ],
    ids=["worker_app", "engine", "cli", "ray-serve-help", "package"],
)
def test_only_the_ray_modules_import_ray(code: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\n{CHECK}"], capture_output=True, text=True, cwd=REPO, env=os.environ
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_ray_engine_specs() -> None:
    from gar_tools.engine.ray import parse_ray_spec

    assert parse_ray_spec("ray") == "gar" and parse_ray_spec("ray://mine") == "mine" and parse_ray_spec("local") is None
    for spec in ("ray://", "ray://host:10001", "ray://a/b"):
        with pytest.raises(InputError) as caught:
            make_engine(spec)
        assert caught.value.field == "engine"


def test_serve_accepts_a_ray_engine_and_rejects_others(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--engine", "ftp://x"]) == 2
    assert "ray[://APP]" in capsys.readouterr().err


def test_engine_options_from_a_config_file_are_read_and_checked() -> None:
    from gar_tools.servers.settings import local_engine_kwargs

    # a YAML file gives ints and bools; `serve run … key=value` and environment-filled values give text
    given = {"max_batch_size": "12", "fused_ops": "true", "vision_graphs": False, "prefix_cache_mb": "0.5"}
    given |= {"prefill_chunk_tokens": "auto", "decode_attention": "triton", "dtype": "bf16", "segmenter": None}
    assert local_engine_kwargs(given) == {
        "max_batch_size": 12,
        "decode_fused_ops": True,
        "vision_cuda_graphs": False,
        "prefix_cache_bytes": 2**19,
        "prefill_chunk_tokens": "auto",
        "decode_attention": "triton",
        "dtype": "bf16",
    }
    bad = [
        ("max_batch_size", 0),
        ("max_batch_size", 2.5),
        ("max_batch_size", True),
        ("kv_budget_tokens", "many"),
        ("max_queue", -1),
        ("tile_cache_mb", -1),
        ("image_cache_mb", "inf"),
        ("prefix_cache_mb", [1]),
        ("fused_ops", "maybe"),
        ("decode_attention", "flash"),
        ("dtype", "fp8"),
        ("geometry", "upstream"),
        ("prefill_chunk_tokens", 0),
        ("max_batch", 8),
    ]
    for name, value in bad:
        with pytest.raises(InputError) as caught:
            local_engine_kwargs({name: value})
        assert caught.value.field == name, (name, value)
    with pytest.raises(InputError) as caught:
        local_engine_kwargs({"max_queue": -1}, field=lambda name: f"args.{name}")
    assert caught.value.field == "args.max_queue"


# --- with ray installed ----------------------------------------------------------------------------------------------


def test_settings_give_replicas_or_autoscaling() -> None:
    pytest.importorskip("ray.serve")
    from gar_tools.servers.ray_app import RayServeSettings, parse_autoscale

    fixed = RayServeSettings(replicas=3, num_gpus=0.5).deployment_options()
    assert fixed["num_replicas"] == 3 and fixed["ray_actor_options"]["num_gpus"] == 0.5
    assert fixed["max_ongoing_requests"] >= 32  # Ray's default of 5 would starve the engine's batching
    scaled = RayServeSettings(autoscale=parse_autoscale("1:4"), target_ongoing_requests=8).deployment_options()
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    for text in ("4", "4:1", "a:b", "-1:2", "0:0"):
        with pytest.raises(InputError) as caught:
            parse_autoscale(text)
        assert caught.value.field == "autoscale"
    with pytest.raises(InputError):
        RayServeSettings(replicas=0).deployment_options()


def test_the_example_serve_config_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.serve")
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from gar_tools.servers import ray_app

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "examples" / "ray_serve.yaml").read_text()))
    (app,) = config.applications
    module, _, name = app.import_path.partition(":")
    assert module == "gar_tools.servers.ray_app" and getattr(ray_app, name) is ray_app.app_builder
    assert [d.name for d in app.deployments] == [ray_app.GarWorker.name]
    monkeypatch.setenv("GAR_WORKER_TOKEN", "t0k")
    built = ray_app.app_builder(app.args)
    deployment = built._bound_deployment
    assert deployment.ray_actor_options["num_gpus"] == 1
    assert deployment.init_args[0].token == "t0k" and deployment.init_args[0].model == "HaochenWang/GAR-8B"
    engine = deployment.init_args[0].engine_kwargs  # the file's engine options reach every replica's engine
    assert engine["max_batch_size"] == 16 and engine["prefix_cache_bytes"] == 2048 * 2**20
    with pytest.raises(InputError, match="no_such"):
        ray_app.app_builder({"no_such": 1})
    options = {"max_batch_size": 4, "prefix_cache_mb": 0, "decode_attention": "matmul", "segmenter": "tiny-sam"}
    worker = ray_app.app_builder({"device": "cpu", **options})._bound_deployment.init_args[0]
    assert worker.engine_kwargs == {
        "device": "cpu",
        "max_batch_size": 4,
        "prefix_cache_bytes": 0,
        "decode_attention": "matmul",
        "segmenter": "tiny-sam",
    }
    with pytest.raises(InputError) as caught:
        ray_app.app_builder({"max_batch_size": 0})
    assert caught.value.field == "max_batch_size"


def test_ray_serve_rejects_bad_scaling_before_starting_ray(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("ray.serve")
    assert main(["ray-serve", "--autoscale", "3:1"]) == 2
    assert "autoscale" in capsys.readouterr().err
    assert main(["ray-serve", "--replicas", "0"]) == 2
