"""Loading checkpoints in the upstream GAR layout with our own code (tiny random weights)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gar_tools.errors import CheckpointError
from gar_tools.model import build_tiny_checkpoint, load, read_state_dict, tiny_checkpoint_path
from gar_tools.model.checkpoint import LM_HEAD_KEY, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, resolve_checkpoint
from gar_tools.model.config import GarConfig


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("sharded"), max_shard_bytes=4 << 20)


def _params(pipeline) -> dict[str, torch.Tensor]:
    return dict(pipeline.model.named_parameters(remove_duplicate=False))


def test_tiny_layout_is_upstream_layout() -> None:
    folder = tiny_checkpoint_path()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "GAR"
    assert config["prompt_numbers"] == 5
    assert config["crop_tokens_ids"] == [128004, 128005, 128008, 128010, 128011]
    assert config["mllm_config"]["vision_config"]["model_args"]["img_size"] == [448, 448]
    assert config["mllm_config"]["text_config"]["vocab_size"] == 128262
    keys = set(load_file(str(folder / SAFE_WEIGHTS_NAME)))
    assert "mask_patch_embedding.weight" in keys
    assert all(k == "mask_patch_embedding.weight" or k.startswith("mllm.") for k in keys)
    assert any(k.startswith("mllm.model.vision_tower.timm_model.") for k in keys)
    assert any(k.startswith("mllm.model.multi_modal_projector.linear_1.") for k in keys)
    assert any(k.startswith("mllm.model.language_model.") for k in keys)
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["max_num_tiles"] == 16 and preprocessor["tile_size"] == 448
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tiny_tokenizer_has_upstream_special_ids(tiny_pipeline) -> None:
    tok = tiny_pipeline.processor.tokenizer
    assert len(tok) == 128262
    expected = {
        "<|begin_of_text|>": 128000,
        "<|image|>": 128002,
        "<|reserved_special_token_2|>": 128004,
        "<|reserved_special_token_3|>": 128005,
        "<|reserved_special_token_4|>": 128008,
        "<|eot_id|>": 128009,
        "<|reserved_special_token_5|>": 128010,
        "<|reserved_special_token_6|>": 128011,
        "<Prompt0>": 128256,
        "<Prompt4>": 128260,
        "<NO_Prompt>": 128261,
    }
    assert {t: tok.convert_tokens_to_ids(t) for t in expected} == expected
    assert tok.eos_token_id == 128009
    # Like Llama 3's, it prepends <|begin_of_text|> itself when asked to add special tokens.
    assert tok("hi")["input_ids"][0] == 128000
    assert tok("hi", add_special_tokens=False)["input_ids"][0] != 128000


def test_tiny_build_is_deterministic(tmp_path: Path) -> None:
    a = load_file(str(build_tiny_checkpoint(tmp_path / "a", seed=3) / SAFE_WEIGHTS_NAME))
    b = load_file(str(build_tiny_checkpoint(tmp_path / "b", seed=3) / SAFE_WEIGHTS_NAME))
    c = load_file(str(build_tiny_checkpoint(tmp_path / "c", seed=4) / SAFE_WEIGHTS_NAME))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["mask_patch_embedding.weight"], c["mask_patch_embedding.weight"])


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_round_trip_fills_every_parameter(layout: str, sharded: Path, tiny_pipeline) -> None:
    folder = sharded if layout == "sharded" else tiny_checkpoint_path()
    if layout == "sharded":
        index = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert not (folder / SAFE_WEIGHTS_NAME).exists()
    stored = read_state_dict(folder)
    pipeline = load(str(folder), device="cpu", dtype="fp32")
    params = _params(pipeline)
    assert set(stored) == set(params)  # untied tiny: lm_head is stored
    for key, tensor in stored.items():
        assert torch.equal(params[key].detach(), tensor.float()), key
    assert not any(p.is_meta for p in params.values())
    # The sharded copy (same seed) holds exactly the cached single-file checkpoint's tensors.
    reference = _params(tiny_pipeline)
    assert all(torch.equal(reference[k], params[k]) for k in params)


def test_dtype_is_the_callers_choice() -> None:
    pipeline = load("tiny", device="cpu", dtype="bf16")
    assert {p.dtype for p in pipeline.model.parameters()} == {torch.bfloat16}
    with pytest.raises(Exception, match="dtype"):
        load("tiny", device="cpu", dtype="int8")


def test_tied_embeddings_follow_the_config(tmp_path: Path) -> None:
    folder = build_tiny_checkpoint(tmp_path / "tied", tie_word_embeddings=True)
    assert LM_HEAD_KEY not in read_state_dict(folder)
    pipeline = load(str(folder), device="cpu")
    mllm = pipeline.model.mllm
    assert mllm.lm_head.weight is mllm.model.language_model.embed_tokens.weight


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_renamed_key_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / "renamed")
    tensors = load_file(str(folder / SAFE_WEIGHTS_NAME))
    tensors["mask_patch_embedding.weights"] = tensors.pop("mask_patch_embedding.weight")
    save_file(tensors, str(folder / SAFE_WEIGHTS_NAME))
    with pytest.raises(CheckpointError) as err:
        load(str(folder), device="cpu")
    assert "mask_patch_embedding.weight" in str(err.value)  # missing
    assert "mask_patch_embedding.weights" in str(err.value)  # unexpected


def test_missing_key_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / "missing")
    tensors = load_file(str(folder / SAFE_WEIGHTS_NAME))
    del tensors["mllm.model.multi_modal_projector.linear_2.bias"]
    save_file(tensors, str(folder / SAFE_WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"missing.*mllm\.model\.multi_modal_projector\.linear_2\.bias"):
        load(str(folder), device="cpu")


def test_wrong_shape_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / "shape")
    tensors = load_file(str(folder / SAFE_WEIGHTS_NAME))
    tensors["mask_patch_embedding.weight"] = tensors["mask_patch_embedding.weight"][:, :, :7, :7].contiguous()
    save_file(tensors, str(folder / SAFE_WEIGHTS_NAME))
    with pytest.raises(CheckpointError, match=r"mask_patch_embedding\.weight: shape"):
        load(str(folder), device="cpu")


def test_missing_shard_is_an_error(tmp_path: Path, sharded: Path) -> None:
    folder = _copy(sharded, tmp_path / "shards")
    index = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (folder / first).unlink()
    with pytest.raises(CheckpointError, match=first):
        load(str(folder), device="cpu")


@pytest.mark.parametrize("where", ["chat_template.json", "tokenizer_config.json"])
def test_chat_template_is_found_where_the_checkpoint_keeps_it(tmp_path: Path, where: str, tiny_pipeline) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / where)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    path = folder / where
    data = json.loads(path.read_text()) if path.exists() else {}
    data["chat_template"] = template
    path.write_text(json.dumps(data))
    pipeline = load(str(folder), device="cpu")
    assert pipeline.processor.chat_template == tiny_pipeline.processor.chat_template


def test_upstream_remote_processor_class_is_ignored(tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / "remote")
    path = folder / "preprocessor_config.json"
    data = json.loads(path.read_text())
    data["processor_class"] = "GARProcessor"
    data["auto_map"] = {"AutoProcessor": "processing_gar.GARProcessor"}
    data["max_num_tiles"] = 8
    path.write_text(json.dumps(data))
    pipeline = load(str(folder), device="cpu")
    assert pipeline.processor.max_num_tiles == 8  # read from the checkpoint, never hard-coded


def test_image_processor_settings_nested_in_processor_config(tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / "nested")
    settings = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()
    settings["max_num_tiles"] = 6
    processor = json.loads((folder / "processor_config.json").read_text())
    (folder / "processor_config.json").write_text(json.dumps({**processor, "image_processor": settings}))
    assert load(str(folder), device="cpu").processor.max_num_tiles == 6
    (folder / "processor_config.json").write_text(json.dumps(processor))
    with pytest.raises(CheckpointError, match="image processor settings"):
        load(str(folder), device="cpu")


def test_not_a_gar_config(tmp_path: Path) -> None:
    folder = _copy(tiny_checkpoint_path(), tmp_path / "notgar")
    data = json.loads((folder / "config.json").read_text())
    data["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="model_type"):
        GarConfig.from_file(folder / "config.json")


def test_hub_id_offline_without_cache_says_how_to_get_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(CheckpointError, match=r"hf download HaochenWang/GAR-1B"):
        resolve_checkpoint("HaochenWang/GAR-1B")


def test_not_a_folder_nor_hub_id() -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        resolve_checkpoint("/definitely/not/here")
