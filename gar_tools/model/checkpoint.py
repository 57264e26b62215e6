"""Read and write GAR checkpoints in the upstream layout (gar-model.md §2), with our own code.

No ``trust_remote_code``: we parse ``config.json`` ourselves, build transformers' PerceptionLM plus GAR's mask
patch embedding, and fill every parameter from the safetensors files (single or sharded with an index). A key
missing from the files, a key the model does not have, or a shape that does not fit is an error naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from gar_tools.errors import CheckpointError
from gar_tools.model.config import GarConfig
from gar_tools.model.modeling import GarModel

__all__ = [
    "resolve_checkpoint",
    "read_state_dict",
    "build_model",
    "load_model_weights",
    "save_checkpoint",
    "SAFE_WEIGHTS_NAME",
    "SAFE_WEIGHTS_INDEX_NAME",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
LM_HEAD_KEY = "mllm.lm_head.weight"
EMBED_KEY = "mllm.model.language_model.embed_tokens.weight"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """A local folder holding the checkpoint: the folder itself, or a Hugging Face hub id through the normal cache.

    ``HF_HUB_OFFLINE=1`` (or no network) uses only what is already cached; if nothing is, the error says how to
    get the weights.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists():
        raise CheckpointError(f"{name}: is a file; give the checkpoint folder (the one holding config.json)")
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{name}: no such folder, and not a hub id of the form owner/name (e.g. HaochenWang/GAR-1B)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=name, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise CheckpointError(
            f"{name}: not in the local Hugging Face cache and it cannot be downloaded here (offline or no network). "
            f"On a machine with internet run `hf download {name}` (or `huggingface-cli download {name}`) and copy "
            f"the cache, or download the folder and pass its path."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise CheckpointError(f"{name}: could not fetch from the Hugging Face hub: {exc}") from exc


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint's safetensors file(s), as stored (CPU, stored dtype)."""
    index_path = folder / SAFE_WEIGHTS_INDEX_NAME
    if index_path.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: not a safetensors index (needs a `weight_map` object)") from exc
        shards = sorted(set(weight_map.values()))
    elif (folder / SAFE_WEIGHTS_NAME).is_file():
        weight_map, shards = {}, [SAFE_WEIGHTS_NAME]
    else:
        raise CheckpointError(
            f"{folder}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}; GAR weights are stored as safetensors"
        )
    tensors: dict[str, torch.Tensor] = {}
    for shard in shards:
        shard_path = folder / shard
        if not shard_path.is_file():
            raise CheckpointError(f"{folder}: shard {shard} named by {SAFE_WEIGHTS_INDEX_NAME} is missing")
        with safe_open(str(shard_path), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                if key in tensors:
                    raise CheckpointError(f"{shard_path}: tensor {key} is stored twice")
                if weight_map and weight_map.get(key) != shard:
                    raise CheckpointError(f"{shard_path}: holds {key}, but the index puts it in {weight_map.get(key)}")
                tensors[key] = handle.get_tensor(key)
    for key, shard in weight_map.items():
        if key not in tensors:
            raise CheckpointError(f"{folder}: the index lists {key} in {shard}, but that shard does not hold it")
    return tensors


@contextmanager
def _parameters_on_meta(dtype: torch.dtype) -> Iterator[None]:
    """Build modules with parameters on the meta device (no memory, no random init) and float buffers in ``dtype``.

    Buffers (RoPE tables…) stay real: they are computed by the modules, not stored in checkpoints. The default
    dtype is set while building, as transformers' ``from_pretrained`` does, so buffers match upstream's loading.
    """
    original = nn.Module.register_parameter
    previous_dtype = torch.get_default_dtype()

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None:
            meta = nn.Parameter(module._parameters[name].to("meta"), requires_grad=False)  # type: ignore[union-attr]
            module._parameters[name] = meta

    nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]
        torch.set_default_dtype(previous_dtype)


def build_model(config: GarConfig, dtype: torch.dtype = torch.float32, *, on_meta: bool = True) -> GarModel:
    """An unfilled :class:`GarModel` (parameters on meta) or, with ``on_meta=False``, one with allocated weights."""
    if on_meta:
        with _parameters_on_meta(dtype):
            model = GarModel(config)
    else:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            model = GarModel(config)
        finally:
            torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def load_model_weights(
    model: GarModel, tensors: dict[str, torch.Tensor], dtype: torch.dtype, device: torch.device | str
) -> GarModel:
    """Fill every parameter of ``model`` from ``tensors``; any missing, unexpected or misshapen key is an error."""
    expected = dict(model.named_parameters(remove_duplicate=False))
    tied = model.tied_word_embeddings
    optional = {LM_HEAD_KEY} if tied else set()
    missing = sorted(k for k in expected if k not in tensors and k not in optional)
    unexpected = sorted(k for k in tensors if k not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(
                f"missing from the checkpoint: {', '.join(missing[:10])}" + (" …" if len(missing) > 10 else "")
            )
        if unexpected:
            parts.append(
                f"not parameters of GAR: {', '.join(unexpected[:10])}" + (" …" if len(unexpected) > 10 else "")
            )
        raise CheckpointError("checkpoint does not match the GAR architecture of its config.json; " + "; ".join(parts))
    if tied and LM_HEAD_KEY in tensors and not torch.equal(tensors[LM_HEAD_KEY], tensors[EMBED_KEY]):
        raise CheckpointError(
            f"config ties the word embeddings, but {LM_HEAD_KEY} in the checkpoint differs from {EMBED_KEY}"
        )
    for name, param in expected.items():
        if name == LM_HEAD_KEY and tied:
            continue
        stored = tensors[name]
        if tuple(stored.shape) != tuple(param.shape):
            raise CheckpointError(
                f"{name}: shape {tuple(stored.shape)} in the checkpoint, the config needs {tuple(param.shape)}"
            )
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        value = stored.to(device=device, dtype=dtype if stored.is_floating_point() else stored.dtype)
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
    model.tie_weights_if_configured()
    return model.to(device)


def save_checkpoint(
    model: GarModel, folder: Path, *, max_shard_bytes: int | None = None, dtype: torch.dtype | None = None
) -> None:
    """Write ``config.json`` and the weights in the upstream layout (sharded with an index past ``max_shard_bytes``).

    Tied ``lm_head.weight`` is not written, as upstream's checkpoints do. Tokenizer and processor files are the
    caller's (see :mod:`gar_tools.model.tiny`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(dtype or v.dtype).contiguous().cpu()
        for k, v in model.state_dict().items()
        if not (k == LM_HEAD_KEY and model.tied_word_embeddings)
    }
    (folder / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    if max_shard_bytes is None:
        save_file(state, str(folder / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
