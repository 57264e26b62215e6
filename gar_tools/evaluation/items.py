"""Reading GAR-Bench annotation files and outputs files (upstream's layouts), and writing outputs files.

Annotations: a JSON list of items, each with ``image`` (a path relative to the JSON's folder), ``mask_rles``
(COCO RLE dicts), ``question``, and for VQA ``choices`` naming regions ``<PromptK>``, ``answer`` (a letter) and
``type``. Outputs (upstream's ``model_outputs/*.json``): the same items, each with ``model_output`` added. Items we
could not ask (more regions than GAR has prompt slots, or a region the tool rejects) get ``model_output: ""`` and
``skipped``: the reason, so upstream's own scoring counts them wrong and ours can list them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gar_tools.errors import InputError

__all__ = ["load_items", "load_outputs", "write_outputs", "item_key"]


def _read_json_list(path: Path, field: str) -> list[Any]:
    if not path.is_file():
        raise InputError(f"{path}: no such file", field=field)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})", field=field) from exc
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of items, got {type(data).__name__}", field=field)
    return data


def _check_item(item: Any, index: int, fields: Sequence[str], field: str) -> dict[str, Any]:
    where = f"{field}[{index}]"
    if not isinstance(item, dict):
        raise InputError(f"item {index} is a {type(item).__name__}, expected an object", field=where)
    for name in fields:
        if name not in item:
            raise InputError(f"item {index} has no `{name}`", field=f"{where}.{name}")
    rles = item.get("mask_rles")
    if "mask_rles" in fields and (not isinstance(rles, list) or not rles or not all(isinstance(r, dict) for r in rles)):
        raise InputError(f"item {index}: `mask_rles` must be a non-empty list of COCO RLE dicts", field=where)
    choices = item.get("choices")
    if "choices" in fields and (not isinstance(choices, list) or not all(isinstance(c, str) for c in choices)):
        raise InputError(f"item {index}: `choices` must be a list of strings", field=f"{where}.choices")
    for name in ("image", "question", "answer", "type"):
        if name in fields and not isinstance(item[name], str):
            raise InputError(f"item {index}: `{name}` must be a string", field=f"{where}.{name}")
    return item


def load_items(path: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The items of an annotation file, each checked to have ``fields`` (an :class:`InputError` names the first
    bad one)."""
    data = _read_json_list(path, "annotations")
    if not data:
        raise InputError(f"{path}: the annotation file has no items", field="annotations")
    return [_check_item(item, i, fields, "annotations") for i, item in enumerate(data)]


def load_outputs(path: Path) -> list[dict[str, Any]]:
    """The items of an outputs file (ours or upstream's): objects with ``model_output``."""
    data = _read_json_list(path, "outputs")
    return [_check_item(item, i, ("model_output",), "outputs") for i, item in enumerate(data)]


def item_key(item: dict[str, Any]) -> str:
    """A stable identity of an annotation item (image, question, choices, masks), to match outputs on resume."""
    fields = {name: item.get(name) for name in ("image", "question", "choices", "mask_rles")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode("utf-8")).hexdigest()


def write_outputs(path: Path, outputs: Sequence[dict[str, Any]]) -> None:
    """Write an outputs file atomically (a cut-short run leaves the previous complete file, never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(list(outputs), handle, indent=4, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
