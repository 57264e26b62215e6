"""Size presets of the random-weight checkpoint builder: real GAR-1B / GAR-8B shapes (checked on the meta device,
never built here), the tiny checkpoint unchanged, and a small custom preset built, loaded and decoded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from gar_tools.model import load
from gar_tools.model.decoder import BatchDecoder
from gar_tools.model.modeling import GarModel
from gar_tools.model.tiny import PRESETS, SizePreset, build_tiny_checkpoint, tiny_checkpoint_path, tiny_config


def _meta_model(preset: str) -> GarModel:
    with torch.device("meta"):
        return GarModel(tiny_config(preset=preset))


def _shapes(model: GarModel) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def test_gar_1b_preset_has_the_released_dimensions() -> None:
    config = tiny_config(preset="gar-1b")
    text = config.perception_lm_config().text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        2048,
        16,
        32,
        8,
    )
    assert (text.intermediate_size, text.vocab_size, text.head_dim) == (8192, 128262, 64)
    assert text.rope_parameters["rope_type"] == "llama3" and text.rope_parameters["factor"] == 32.0
    assert config.mllm_config["tie_word_embeddings"] and text.tie_word_embeddings
    model = _meta_model("gar-1b")
    shapes = _shapes(model)
    timm_model = model.mllm.model.vision_tower.timm_model
    assert len(timm_model.blocks) == 23 and timm_model.cls_token is not None
    assert shapes["mask_patch_embedding.weight"] == (1024, 3, 14, 14)
    assert shapes["mllm.model.multi_modal_projector.linear_1.weight"] == (2048, 1024)
    assert shapes["mllm.model.language_model.embed_tokens.weight"] == (128262, 2048)
    assert shapes["mllm.model.language_model.layers.15.self_attn.k_proj.weight"] == (512, 2048)
    model.tie_weights_if_configured()
    assert model.mllm.lm_head.weight is model.mllm.model.language_model.embed_tokens.weight
    total = sum(p.numel() for p in model.parameters())  # tied: counted once
    assert 1.4e9 < total < 1.6e9
    assert config.vision_dim == 1024 and PRESETS["gar-1b"].max_num_tiles == 16


def test_gar_8b_preset_has_the_released_dimensions() -> None:
    config = tiny_config(preset="gar-8b")
    text = config.perception_lm_config().text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        4096,
        32,
        32,
        8,
    )
    assert (text.intermediate_size, text.vocab_size, text.head_dim) == (14336, 128262, 128)
    assert not text.tie_word_embeddings and text.rope_parameters["factor"] == 8.0
    model = _meta_model("gar-8b")
    timm_model = model.mllm.model.vision_tower.timm_model
    assert len(timm_model.blocks) == 50 and timm_model.cls_token is None
    assert not config.mllm_config["vision_use_cls_token"]
    shapes = _shapes(model)
    assert shapes["mask_patch_embedding.weight"] == (1536, 3, 14, 14)
    assert shapes["mllm.lm_head.weight"] == (128262, 4096)
    assert shapes["mllm.model.language_model.layers.31.mlp.gate_proj.weight"] == (14336, 4096)
    total = sum(p.numel() for p in model.parameters())
    assert 9.0e9 < total < 10.5e9  # Llama 3.1-8B (8.0 B) + PE-G (1.9 B)
    assert PRESETS["gar-8b"].max_num_tiles == 8


def test_tiny_preset_output_is_unchanged(tmp_path) -> None:
    """The default preset writes byte-identical weights to the cached tiny checkpoint (same cache key)."""
    folder = build_tiny_checkpoint(tmp_path / "tiny")
    cached = tiny_checkpoint_path()
    for name in ("model.safetensors", "config.json", "preprocessor_config.json"):
        new, old = (folder / name).read_bytes(), (cached / name).read_bytes()
        assert hashlib.sha256(new).digest() == hashlib.sha256(old).digest(), name


def test_unknown_preset_is_an_error() -> None:
    with pytest.raises(ValueError, match="gar-1b"):
        tiny_config(preset="gar-70b")


def test_custom_preset_builds_loads_and_decodes(tmp_path) -> None:
    """No CLS token, tied embeddings, Llama 3 rope scaling, GQA 4:1 — streamed on meta, sharded, loaded, and the
    batched decoder equals generate on it."""
    small = SizePreset(
        name="small-test",
        vision_architecture="vit_pe_core_gigantic_patch14_448",
        vision_dim=32,
        vision_depth=1,
        vision_heads=2,
        vision_cls_token=False,
        hidden_size=64,
        intermediate_size=96,
        layers=2,
        heads=4,
        kv_heads=1,
        head_dim=16,
        rope_parameters={**PRESETS["gar-1b"].rope_parameters, "factor": 8.0, "original_max_position_embeddings": 256},
        tie_word_embeddings=True,
        max_position_embeddings=8192,
        max_num_tiles=2,
    )
    folder = build_tiny_checkpoint(tmp_path / "small", preset=small, dtype=torch.float32, max_shard_bytes=8 * 2**20)
    assert (folder / "model.safetensors.index.json").is_file()
    pipeline = load(folder, device="cpu", dtype="fp32")
    assert pipeline.model.mllm.model.vision_tower.timm_model.cls_token is None
    assert pipeline.processor.max_num_tiles == 2 and pipeline.config.extra["size_preset"] == "small-test"
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8))
    mask = np.zeros((300, 500), dtype=bool)
    mask[50:150, 100:300] = True
    prepared = pipeline.prepare(image, [mask])
    expected = pipeline.generate(prepared, max_new_tokens=6).token_ids
    embeds = pipeline.embed(prepared)[0]
    decoder = BatchDecoder(pipeline.model, slots=2, max_len=embeds.shape[0] + 8)
    got = [int(decoder.prefill(1, embeds).argmax())]
    decoder.activate(1, got[0], embeds.shape[0])
    for _ in range(5):
        got.append(decoder.step(2).tolist()[1])
    assert got == expected
