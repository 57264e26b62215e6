"""The ``tiny`` checkpoint: GAR-shaped, random weights, in exactly the upstream layout.

It exists so the whole path — loader, tokenizer, chat template, processing, forward, replay, generation, the
tools and servers — runs and is tested without downloads. **Its weights are random: its text is meaningless.**

What is real about it: the file layout (``config.json`` with ``model_type: "GAR"`` and a full PerceptionLM
``mllm_config``; ``model.safetensors`` with ``mllm.…`` and ``mask_patch_embedding.weight`` keys; a Llama-3-style
tokenizer of 128 262 tokens whose special-token ids are upstream's; a chat template that writes
``<|begin_of_text|>`` itself; a PerceptionLM processor config with ``max_num_tiles``). What is small: a 2-block
PE-style ViT of width 32 and a 2-layer Llama of width 64, with untied input/output embeddings (a tied random
model only repeats its last prompt token; the tied path is tested separately). It is built deterministically
(same seed, same tensors) in a few seconds on CPU and cached; it loads through the same loader as a real
checkpoint.

Size presets (:data:`PRESETS`, ``build_tiny_checkpoint(folder, preset=...)``): ``"tiny"`` (the default, above),
``"gar-1b"`` and ``"gar-8b"`` — random weights at the released checkpoints' real dimensions, in the same layout,
for benchmarks on GPU machines without hub access. Those are built on the meta device and drawn straight on the
target device in bf16; never in CI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gar_tools.model.checkpoint import build_model, save_checkpoint
from gar_tools.model.config import UPSTREAM_CROP_TOKEN_IDS, GarConfig
from gar_tools.model.modeling import GarModel

__all__ = [
    "TINY_NAME",
    "TINY_SPEC_VERSION",
    "tiny_config",
    "SizePreset",
    "PRESETS",
    "build_tiny_checkpoint",
    "tiny_checkpoint_path",
    "random_fill",
    "CHAT_TEMPLATE",
]

TINY_NAME = "tiny"
#: Bump when anything below changes, so caches are rebuilt.
TINY_SPEC_VERSION = 1
BASE_VOCAB = 128_000
VOCAB_SIZE = 128_262
IMAGE_TOKEN = "<|image|>"
VIDEO_TOKEN = "<|video|>"
PROMPT_TOKENS = [f"<Prompt{i}>" for i in range(5)] + ["<NO_Prompt>"]

#: A Llama-3 / PerceptionLM style chat template. Like upstream's it writes ``<|begin_of_text|>`` itself.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] | trim }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'image' %}{{- '<|image|>' }}"
    "{%- elif item['type'] == 'video' %}{{- '<|video|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] | trim }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _special_token_name(token_id: int) -> str:
    """Llama 3's special token at ``token_id`` (128000–128255), with PerceptionLM's image/video tokens."""
    named = {
        128000: "<|begin_of_text|>",
        128001: "<|end_of_text|>",
        128002: IMAGE_TOKEN,
        128003: VIDEO_TOKEN,
        128004: "<|reserved_special_token_2|>",
        128005: "<|reserved_special_token_3|>",
        128006: "<|start_header_id|>",
        128007: "<|end_header_id|>",
        128008: "<|reserved_special_token_4|>",
        128009: "<|eot_id|>",
    }
    return named.get(token_id, f"<|reserved_special_token_{token_id - 128005}|>")


@dataclass(frozen=True)
class SizePreset:
    """The dimensions of a random-weight GAR checkpoint: PE-style timm ViT + Llama 3.

    ``tiny`` is the test model; ``gar-1b`` and ``gar-8b`` have the released checkpoints' real shapes (for
    benchmarks on machines without hub access; their weights are random too, so their text is meaningless).
    """

    name: str
    vision_architecture: str
    vision_dim: int
    vision_depth: int
    vision_heads: int
    vision_cls_token: bool
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_parameters: dict[str, Any]
    tie_word_embeddings: bool
    max_position_embeddings: int
    max_num_tiles: int = 16


_LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}

#: Size presets by name. ``gar-1b``: PLM-1B (PE-L/14 448, 23 blocks, CLS; Llama 3.2-1B, tied embeddings,
#: trained with 16 tiles). ``gar-8b``: PLM-8B (PE-G/14 448, 50 blocks, no CLS; Llama 3.1-8B; ships 8 tiles).
PRESETS: dict[str, SizePreset] = {
    "tiny": SizePreset(
        name="tiny",
        vision_architecture="vit_pe_core_large_patch14_336",
        vision_dim=32,
        vision_depth=2,
        vision_heads=2,
        vision_cls_token=True,
        hidden_size=64,
        intermediate_size=128,
        layers=2,
        heads=4,
        kv_heads=2,
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        max_position_embeddings=16384,
    ),
    "gar-1b": SizePreset(
        name="gar-1b",
        vision_architecture="vit_pe_core_large_patch14_336",
        vision_dim=1024,
        vision_depth=23,
        vision_heads=16,
        vision_cls_token=True,
        hidden_size=2048,
        intermediate_size=8192,
        layers=16,
        heads=32,
        kv_heads=8,
        head_dim=64,
        rope_parameters={**_LLAMA3_ROPE, "factor": 32.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        max_num_tiles=16,
    ),
    "gar-8b": SizePreset(
        name="gar-8b",
        vision_architecture="vit_pe_core_gigantic_patch14_448",
        vision_dim=1536,
        vision_depth=50,
        vision_heads=16,
        vision_cls_token=False,
        hidden_size=4096,
        intermediate_size=14336,
        layers=32,
        heads=32,
        kv_heads=8,
        head_dim=128,
        rope_parameters={**_LLAMA3_ROPE, "factor": 8.0, "original_max_position_embeddings": 8192},
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        max_num_tiles=8,
    ),
}


def _preset(preset: str | SizePreset) -> SizePreset:
    if isinstance(preset, SizePreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown size preset {preset!r}; use one of {', '.join(PRESETS)} or a SizePreset")
    return PRESETS[preset]


def tiny_config(
    max_num_tiles: int = 16, tie_word_embeddings: bool | None = None, preset: str | SizePreset = "tiny"
) -> GarConfig:
    """The GAR config of a random checkpoint: PE-style timm ViT (448 px, patch 14, RoPE) + Llama 3 of ``preset``.

    ``tie_word_embeddings=None`` takes the preset's (untied for ``tiny``).
    """
    size = _preset(preset)
    tied = size.tie_word_embeddings if tie_word_embeddings is None else tie_word_embeddings
    vision = {
        "architecture": size.vision_architecture,
        "model_args": {
            "embed_dim": size.vision_dim,
            "depth": size.vision_depth,
            "num_heads": size.vision_heads,
            "img_size": [448, 448],
            "ref_feat_shape": [32, 32],
            "global_pool": "",
            "use_post_transformer_norm": False,
            "init_values": 0.1,
        },
        "model_type": "timm_wrapper",
    }
    if not size.vision_cls_token:
        vision["model_args"]["class_token"] = False
    text = {
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": size.hidden_size,
        "intermediate_size": size.intermediate_size,
        "num_hidden_layers": size.layers,
        "num_attention_heads": size.heads,
        "num_key_value_heads": size.kv_heads,
        "head_dim": size.head_dim,
        "max_position_embeddings": size.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_parameters": dict(size.rope_parameters),
        "tie_word_embeddings": tied,
        "bos_token_id": 128000,
        "eos_token_id": 128009,
        "pad_token_id": 128001,
    }
    mllm = {
        "model_type": "perception_lm",
        "vision_config": vision,
        "text_config": text,
        "vision_use_cls_token": size.vision_cls_token,
        "projector_pooling_ratio": 2,
        "image_token_id": 128002,
        "video_token_id": 128003,
        "tie_word_embeddings": tied,
    }
    extra: dict[str, Any] = {"architectures": ["GARModel"], "torch_dtype": "bfloat16", "tiny_random_weights": True}
    if size.name != "tiny":
        extra["size_preset"] = size.name
    return GarConfig(
        mllm_config=mllm,
        prompt_numbers=5,
        crop_tokens_ids=list(UPSTREAM_CROP_TOKEN_IDS),
        extra=extra,
    )


def _build_tokenizer_files(folder: Path, max_num_tiles: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {ch: i for i, ch in enumerate(alphabet)}
    # Fill the rest of Llama 3's 128 000 base ids with plain word pieces, so any id decodes to readable junk.
    for i in range(len(vocab), BASE_VOCAB):
        vocab[f"\u0120w{i}"] = i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    specials = [AddedToken(_special_token_name(i), special=True, normalized=False) for i in range(128000, 128256)]
    tokenizer.add_special_tokens(specials)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PROMPT_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", 128000)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(folder))
    # Name the class the way upstream checkpoints do (transformers 5 writes its own backend name).
    tokenizer_config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text(encoding="utf-8"))
    tokenizer_config.pop("backend", None)
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8")
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    preprocessor: dict[str, Any] = {
        "image_processor_type": "PerceptionLMImageProcessorFast",
        "processor_class": "PerceptionLMProcessor",
        "vision_input_type": "thumb+tile",
        "tile_size": 448,
        "max_num_tiles": max_num_tiles,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
        "do_convert_rgb": True,
        "size": {"height": 448, "width": 448},
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")
    processor = {"processor_class": "PerceptionLMProcessor", "patch_size": 14, "pooling_ratio": 2}
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n", encoding="utf-8")


def random_fill(
    model: torch.nn.Module,
    seed: int,
    scale: Callable[[torch.Tensor, torch.Size], torch.Tensor] = lambda sample, _shape: sample * 0.02,
) -> None:
    """Deterministic weights: parameters in name order from one generator; norms start at 1, biases at 0, the rest
    ``scale(N(0, 1) sample, shape)`` (default N(0, 0.02)). The tiny GAR and the tiny SAM both use it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            if name.endswith(".bias"):
                param.zero_()
            elif param.ndim == 1 and "norm" in name:
                param.fill_(1.0)
            else:
                param.copy_(scale(torch.randn(param.shape, generator=generator, dtype=torch.float32), param.shape))


def _random_fill_on(model: torch.nn.Module, seed: int, dtype: torch.dtype, device: torch.device) -> None:
    """Materialize parameters built on the meta device straight on ``device`` in ``dtype``: N(0, 0.02) from one
    generator per parameter (seeded from its name, so any order gives the same weights), norms 1, biases 0."""
    for name, param in model.named_parameters():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = torch.empty(param.shape, dtype=dtype, device=device)
        if name.endswith(".bias"):
            value.zero_()
        elif param.ndim == 1 and "norm" in name:
            value.fill_(1.0)
        else:
            generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            value.normal_(0.0, 0.02, generator=generator)
        module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)


def build_tiny_checkpoint(
    folder: Path,
    *,
    seed: int = 0,
    max_num_tiles: int | None = None,
    tie_word_embeddings: bool | None = None,
    max_shard_bytes: int | None = None,
    preset: str | SizePreset = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a random-weight checkpoint of ``preset``'s size to ``folder`` (created) and return it.

    ``tiny`` (the default) is built in float32 on CPU from one generator, exactly as always (its cache key does
    not change). Other presets (``gar-1b``, ``gar-8b``, or a custom :class:`SizePreset`) are built without any
    float32 copy or CPU init: modules on the meta device, then each parameter drawn directly in ``dtype`` on
    ``device`` (use ``device="cuda"`` on a GPU machine: GAR-8B is ~17 GB in bf16), saved in shards of
    ``max_shard_bytes`` (default 4 GiB). Load the folder with :func:`gar_tools.model.load`.
    """
    size = _preset(preset)
    tiles = size.max_num_tiles if max_num_tiles is None else max_num_tiles
    config = tiny_config(max_num_tiles=tiles, tie_word_embeddings=tie_word_embeddings, preset=size)
    if size.name == "tiny":
        model = build_model(config, torch.float32, on_meta=False)
        random_fill(model, seed)
    else:
        with torch.device("meta"):
            model = GarModel(config)
        model.eval().requires_grad_(False)
        _random_fill_on(model, seed, dtype, torch.device(device))
        max_shard_bytes = max_shard_bytes or 4 * 2**30
    model.tie_weights_if_configured()
    save_checkpoint(model, folder, max_shard_bytes=max_shard_bytes, dtype=torch.bfloat16)
    del model
    _build_tokenizer_files(folder, tiles)
    return folder


def _cache_root() -> Path:
    env = os.environ.get("GAR_TOOLS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gar-tools"


def cached_build(prefix: str, version: int, seed: int, build: Callable[[Path], object], done_file: str) -> Path:
    """The cache folder ``prefix-<key>`` (key: ``version``, ``seed``, transformers and torch versions), built by
    ``build(folder)`` on first use in a staging folder and renamed into place (so concurrent builders are safe).
    It counts as built once it holds ``config.json`` and ``done_file``."""
    import transformers

    key = hashlib.sha256(f"{version}-{seed}-{transformers.__version__}-{torch.__version__}".encode()).hexdigest()
    target = _cache_root() / f"{prefix}-{key[:12]}"
    if (target / "config.json").is_file() and (target / done_file).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{prefix}-build-", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / done_file).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def tiny_checkpoint_path(seed: int = 0) -> Path:
    """The cached tiny checkpoint folder, built on first use (atomically, so concurrent builders are safe)."""
    return cached_build(
        "tiny", TINY_SPEC_VERSION, seed, lambda folder: build_tiny_checkpoint(folder, seed=seed), "tokenizer.json"
    )
