"""Turn an image, region masks and a question into GAR's inputs (gar-model.md §3–4).

* image → thumbnail + ``ncw × nch`` tiles: PerceptionLM's tile grid (``max_num_tiles`` from the checkpoint), resized
  exactly as the authors' code did (:mod:`gar_tools.model.tiling`: torchvision v1 tensor resize semantics, bicubic
  with antialias, not transformers 5's v2 uint8 kernel), then ``/255`` and mean = std = 0.5;
* visual-prompt map (value ``k`` where region ``k`` is, ``prompt_numbers`` elsewhere, first region wins on overlap)
  → the same resize and tiling with NEAREST, same rescale/normalize;
* each region's own box ``(x_min/W, y_min/H, x_max/W, y_max/H)`` with inclusive max;
* the prompt text through the checkpoint's chat template, exactly one ``<|begin_of_text|>``, the image token
  expanded to ``(1 + tiles) · 256`` tokens, 256 slot tokens per region.

Caller-written text never becomes a special token: the prompt is assembled from parts, and only the parts the tool
layer writes (the chat template, upstream's prompt framing with its ``<PromptK>`` and slot tokens) are parsed for
special and added tokens. A caller's question (:class:`UserText`) is tokenized as plain text, except for the
``<PromptK>`` references of this call's regions, which the tool layer maps ``<id>`` references to.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PerceptionLMImageProcessor, PreTrainedTokenizerFast

from gar_tools.errors import CheckpointError, InputError, RegionError
from gar_tools.model.config import GarConfig
from gar_tools.model.modeling import TOKENS_PER_TILE
from gar_tools.model.prompts import SINGLE_REGION_PROMPT_INDEX, multi_region_text, prompt_token, single_region_text
from gar_tools.model.rgb import to_rgb
from gar_tools.model.tiling import image_to_uint8_tensor, normalize_tiles, tile_uint8

__all__ = [
    "GarProcessor",
    "PreparedInputs",
    "PromptPart",
    "UserText",
    "select_tile_grid",
    "visual_prompt_map",
    "normalize_prompt_tiles",
    "region_box",
    "load_chat_template",
    "load_image_processor_config",
]

_IMAGE_PROCESSOR_KEYS = (
    "vision_input_type",
    "tile_size",
    "max_num_tiles",
    "do_resize",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "resample",
    "do_convert_rgb",
)
# Stand-ins for text while the framing and the chat template are rendered; never part of what is tokenized.
_QUESTION_MARK = "\x00gar-question\x00"
_CONTENT_MARK = "\x00gar-content\x00"


# --- pure functions --------------------------------------------------------------------------------------------
def _canvas_size(width: int, height: int, canvas_w: int, canvas_h: int) -> tuple[float, float]:
    """Size of the image scaled (aspect kept) into a canvas, as PerceptionLM computes it for ranking canvases."""
    scale = width / height
    factor = min(canvas_w / width, canvas_h / height)
    if scale > 1.0:
        new_w = factor * width
        return new_w, float(np.floor(new_w / scale))
    new_h = factor * height
    return float(np.floor(new_h * scale)), new_h


def _arrangements(max_num_tiles: int) -> list[tuple[int, int]]:
    """Every (columns, rows) grid of at most ``max_num_tiles`` tiles, in PerceptionLM's order (ties: later wins)."""
    by_ratio: dict[float, list[tuple[int, int]]] = {}
    for count in range(max_num_tiles, 0, -1):
        factors = sorted({f for i in range(1, int(count**0.5) + 1) if count % i == 0 for f in (i, count // i)})
        for cols in factors:
            by_ratio.setdefault(cols / (count // cols), []).append((cols, count // cols))
    return [grid for grids in by_ratio.values() for grid in grids]


def select_tile_grid(width: int, height: int, tile_size: int = 448, max_num_tiles: int = 16) -> tuple[int, int]:
    """The ``(ncw, nch)`` tile grid PerceptionLM's processor picks for an image of ``width × height``.

    Among the grids of at most ``max_num_tiles`` tiles whose canvas holds the image without downscaling, the one
    where the image's shorter side gets largest (ties: the later grid in PerceptionLM's order). If none holds it,
    the grid whose aspect ratio is closest to the image's (widest for landscape, tallest for portrait).
    """
    if width < 1 or height < 1:
        raise ValueError("image must have positive width and height")
    if max_num_tiles <= 1:
        return (1, 1)
    scale = width / height
    best: tuple[int, int] | None = None
    best_size: tuple[float, float] = (0.0, 0.0)
    arrangements = _arrangements(max_num_tiles)
    for cols, rows in arrangements:
        if cols * tile_size >= width and rows * tile_size >= height:
            size = _canvas_size(width, height, cols * tile_size, rows * tile_size)
            if best is None or (scale < 1.0 and size[0] >= best_size[0]) or (scale >= 1.0 and size[1] >= best_size[1]):
                best, best_size = (cols, rows), size
    if best is not None:
        return best
    ratios: dict[float, list[tuple[int, int]]] = {}
    for cols, rows in arrangements:
        ratios.setdefault(cols / rows, []).append((cols, rows))
    if scale >= 1:
        closest = min((k for k in ratios if k <= scale), key=lambda k: abs(k - scale))
        return max(ratios[closest], key=lambda grid: grid[0])
    closest = min((k for k in ratios if k > scale), key=lambda k: abs(1 / k - 1 / scale))
    return max(ratios[closest], key=lambda grid: grid[1])


def visual_prompt_map(masks: Sequence[np.ndarray], prompt_indices: Sequence[int], prompt_numbers: int) -> np.ndarray:
    """H×W uint8 map: ``prompt_indices[i]`` where mask ``i`` covers a pixel, ``prompt_numbers`` elsewhere.

    Masks are written in list order and a pixel already claimed keeps its value: the first region wins.
    """
    height, width = masks[0].shape
    out = np.full((height, width), prompt_numbers, dtype=np.uint8)
    for mask, index in zip(masks, prompt_indices, strict=True):
        free = mask & (out == prompt_numbers)
        out[free] = index
    return out


def region_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x_min/W, y_min/H, x_max/W, y_max/H)`` of a boolean mask, with ``x_max``/``y_max`` inclusive indices."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no box")
    height, width = mask.shape
    return (cols[0] / width, rows[0] / height, cols[-1] / width, rows[-1] / height)


def load_chat_template(folder: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> str:
    """The checkpoint's chat template: ``chat_template.jinja``, ``chat_template.json``, then tokenizer/processor
    configs, wherever the checkpoint keeps it."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    for name in ("chat_template.json", "tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, str) and template:
                return template
    if tokenizer is not None and isinstance(getattr(tokenizer, "chat_template", None), str):
        return tokenizer.chat_template  # type: ignore[return-value]
    raise CheckpointError(
        f"{folder}: no chat template (looked in chat_template.jinja, chat_template.json, tokenizer_config.json, "
        f"processor_config.json)"
    )


def load_image_processor_config(folder: Path) -> dict[str, Any]:
    """The PerceptionLM image-processor settings: ``preprocessor_config.json``, or the ``image_processor`` entry of
    ``processor_config.json`` (as transformers 5 saves processors)."""
    preprocessor_path = folder / "preprocessor_config.json"
    if preprocessor_path.is_file():
        return json.loads(preprocessor_path.read_text(encoding="utf-8"))
    processor_path = folder / "processor_config.json"
    if processor_path.is_file():
        nested = json.loads(processor_path.read_text(encoding="utf-8")).get("image_processor")
        if isinstance(nested, dict):
            return nested
    raise CheckpointError(
        f"{folder}: no image processor settings (preprocessor_config.json, or `image_processor` in "
        f"processor_config.json)"
    )


def _per_channel(value: Any, name: str) -> list[float]:
    """A mean/std setting as three floats (a checkpoint may give one number for all channels)."""
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise CheckpointError(f"preprocessor_config.json: `{name}` must have 3 values, got {len(values)}")
    return values


@dataclass(frozen=True)
class UserText:
    """Text a caller wrote, as one part of a prompt: tokenized with special-token parsing off.

    Attributes:
        text: the caller's text (already with ``<id>`` references mapped to ``<PromptK>``).
        references: the added tokens that stay live in it, e.g. ``("<Prompt0>", "<Prompt1>")`` for a call with two
            regions; everything else (``<|eot_id|>``, ``<|image|>``, slot tokens, ``<NO_Prompt>``, ``<Prompt7>``)
            is tokenized as the characters it is made of.
    """

    text: str
    references: tuple[str, ...] = ()


PromptPart = str | UserText
"""One part of a prompt: ``str`` is text the tool layer wrote (special tokens in it are parsed), :class:`UserText`
is a caller's."""


def _tokens_pattern(tokens: Sequence[str]) -> re.Pattern[str] | None:
    """Leftmost-longest matcher of ``tokens``, as the tokenizer's added-vocabulary matcher; None for no tokens."""
    if not tokens:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(set(tokens), key=len, reverse=True)))


def _trimmed(parts: Sequence[PromptPart]) -> list[PromptPart]:
    """``parts`` with the whitespace around their joined text removed, as the chat template's ``| trim`` does."""

    def with_text(part: PromptPart, text: str) -> PromptPart:
        return text if isinstance(part, str) else UserText(text, part.references)

    out = list(parts)
    for i, part in enumerate(out):
        stripped = (part if isinstance(part, str) else part.text).lstrip()
        out[i] = with_text(part, stripped)
        if stripped:
            break
    for i in range(len(out) - 1, -1, -1):
        part = out[i]
        stripped = (part if isinstance(part, str) else part.text).rstrip()
        out[i] = with_text(part, stripped)
        if stripped:
            break
    return out


# --- prepared inputs -------------------------------------------------------------------------------------------
def normalize_prompt_tiles(tiles: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float32 ``[N, 3, 448, 448]`` from uint8 ``[N, 1, 448, 448]`` visual-prompt tiles, normalized like the image."""
    if len(set(mean)) == 1 and len(set(std)) == 1:
        # every channel is normalized alike (GAR: 0.5 / 0.5): normalize one, view it as three (no copies)
        return normalize_tiles(tiles, list(mean)[:1], list(std)[:1]).expand(-1, 3, -1, -1)
    return normalize_tiles(tiles.expand(-1, 3, -1, -1), mean, std)


@dataclass
class PreparedInputs:
    """Everything GAR's forward pass needs, inspectable step by step.

    The tiles are kept as uint8 and normalized when read (:attr:`pixel_values`, :attr:`prompt_pixel_values`, once
    each) or for some tiles only (:meth:`tile_pixel_values`, :meth:`tile_prompt_pixel_values`: the same float32
    values, bit for bit, as the rows of the full tensors): a request whose other tiles' features are cached
    normalizes only the tiles it encodes.

    Attributes:
        input_ids: [1, L] token ids (exactly one leading ``<|begin_of_text|>``).
        image_tiles: uint8 [1 + T, 3, 448, 448] thumbnail + tiles (row-major), bicubic.
        prompt_tiles: uint8 [1 + T, 1, 448, 448] the visual-prompt map, tiled the same way with NEAREST.
        grid: ``(ncw, nch)``: tile columns and rows, ``T = ncw · nch``.
        boxes: [R, 4] float32 normalized region boxes, in prompt-index order.
        prompt_indices: the prompt index ``k`` (``<Prompt{k}>``) of each region, in the caller's region order.
        slot_starts: [R] position in ``input_ids`` of each region's first slot token, in prompt-index order.
        text: the prompt text before the chat template (slots written as tokens).
        image_size: ``(width, height)`` of the image.
        image_mean, image_std: the checkpoint's per-channel normalization.
    """

    input_ids: torch.Tensor
    image_tiles: torch.Tensor
    prompt_tiles: torch.Tensor
    grid: tuple[int, int]
    boxes: torch.Tensor
    prompt_indices: list[int]
    slot_starts: torch.Tensor
    text: str
    image_size: tuple[int, int]
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]

    @property
    def num_tiles(self) -> int:
        return self.grid[0] * self.grid[1]

    @cached_property
    def pixel_values(self) -> torch.Tensor:
        """[1 + T, 3, 448, 448] float32 normalized thumbnail + tiles."""
        return normalize_tiles(self.image_tiles, self.image_mean, self.image_std)

    @cached_property
    def prompt_pixel_values(self) -> torch.Tensor:
        """[1 + T, 3, 448, 448] float32 the visual-prompt map, normalized like the image (the same on all three
        channels)."""
        return normalize_prompt_tiles(self.prompt_tiles, self.image_mean, self.image_std)

    def tile_pixel_values(self, index: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """``pixel_values[index]``, normalizing only those tiles — on ``device`` when given (the uint8 tiles
        travel, a quarter of the bytes; the same values)."""
        return normalize_tiles(_select_tiles(self.image_tiles, index).to(device), self.image_mean, self.image_std)

    def tile_prompt_pixel_values(self, index: Sequence[int], device: torch.device | str | None = None) -> torch.Tensor:
        """``prompt_pixel_values[index]``, normalizing only those tiles (on ``device`` when given)."""
        tiles = _select_tiles(self.prompt_tiles, index).to(device)
        return normalize_prompt_tiles(tiles, self.image_mean, self.image_std)


def _select_tiles(tiles: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """``tiles[index]`` along the first dimension as whole-tile copies (``index_select``: a 17-tile uint8 image in
    0.6 ms on a 2-core CPU, where ``tiles[list]``'s element-wise gather takes 4 ms)."""
    return tiles.index_select(0, torch.tensor(list(index), dtype=torch.long, device=tiles.device))


class GarProcessor:
    """Tokenizer + image processing + chat template of one GAR checkpoint."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        image_processor_config: dict[str, Any],
        chat_template: str,
        config: GarConfig,
    ) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.config = config
        kwargs = {k: image_processor_config[k] for k in _IMAGE_PROCESSOR_KEYS if k in image_processor_config}
        if "max_num_tiles" not in kwargs:
            raise CheckpointError(
                "preprocessor_config.json: `max_num_tiles` is missing; it must come from the checkpoint"
            )
        self.image_processor = PerceptionLMImageProcessor(**kwargs)
        self.tile_size = int(self.image_processor.tile_size)
        self.image_mean = _per_channel(self.image_processor.image_mean, "image_mean")
        self.image_std = _per_channel(self.image_processor.image_std, "image_std")
        self.max_num_tiles = int(self.image_processor.max_num_tiles)
        bicubic = int(self.image_processor.resample) == 3
        if not bicubic or abs(float(self.image_processor.rescale_factor) - 1 / 255) > 1e-12:
            raise CheckpointError(
                "preprocessor_config.json: GAR checkpoints resize bicubic (resample 3) and rescale by 1/255"
            )
        if self.image_processor.vision_input_type != "thumb+tile":
            raise CheckpointError('preprocessor_config.json: GAR needs vision_input_type "thumb+tile"')
        self.image_token_id = config.image_token_id
        self.bos_token_id = self._token_id(tokenizer.bos_token, "bos_token")
        self.slot_tokens = [tokenizer.convert_ids_to_tokens(i) for i in config.crop_tokens_ids]
        self._added_vocab: dict[str, int] = tokenizer.get_added_vocab()
        self._live_tokens = _tokens_pattern(list(self._added_vocab))

    def _token_id(self, token: str | None, what: str) -> int:
        if token is None:
            raise CheckpointError(f"tokenizer: no {what}")
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int):
            raise CheckpointError(f"tokenizer: {what} {token!r} has no id")
        return token_id

    @classmethod
    def from_folder(cls, folder: Path, config: GarConfig) -> GarProcessor:
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(f"{folder}: no tokenizer.json")
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        return cls(tokenizer, load_image_processor_config(folder), load_chat_template(folder, tokenizer), config)

    # --- steps ---------------------------------------------------------------------------------------------------
    def tile_grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return select_tile_grid(image_size[0], image_size[1], self.tile_size, self.max_num_tiles)

    def image_tiles(self, image: Image.Image) -> torch.Tensor:
        """uint8 [1 + T, 3, 448, 448] thumbnail + tiles of an RGB image (bicubic, see :mod:`gar_tools.model.tiling`):
        they depend only on the image (and this checkpoint's settings), so callers may keep them for the next
        question on the same image."""
        grid = self.tile_grid(image.size)
        return tile_uint8(image_to_uint8_tensor(np.asarray(image)), grid, self.tile_size, "bicubic")

    def prompt_tiles(self, prompt_map: np.ndarray) -> torch.Tensor:
        """uint8 [1 + T, 1, 448, 448] the visual-prompt map through the image's tiling, with NEAREST resampling."""
        height, width = prompt_map.shape
        grid = self.tile_grid((width, height))
        return tile_uint8(image_to_uint8_tensor(prompt_map), grid, self.tile_size, "nearest")

    def _plain_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` with no added or special token recognised (normalizer, pre-tokenizer, model only).

        This is what the tokenizer does between the added tokens it finds, so for text between special tokens the
        ids are the same as ``tokenizer(text)``'s; ``split_special_tokens`` alone would still find non-special
        added tokens."""
        if not text:
            return []
        backend = self.tokenizer.backend_tokenizer
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
        return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]

    def _part_ids(self, parts: Sequence[tuple[str, re.Pattern[str] | None]]) -> list[int]:
        """Ids of consecutive ``(text, live tokens)`` parts: live tokens become their ids, everything between them
        (across part boundaries, as one string) is tokenized as plain text."""
        added = self._added_vocab
        ids: list[int] = []
        pending: list[str] = []
        for text, pattern in parts:
            pos = 0
            for match in pattern.finditer(text) if pattern is not None else ():
                pending.append(text[pos : match.start()])
                ids.extend(self._plain_ids("".join(pending)))
                pending = []
                ids.append(added[match.group(0)])
                pos = match.end()
            pending.append(text[pos:])
        ids.extend(self._plain_ids("".join(pending)))
        return ids

    def _render(self, content: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": content}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def encode_text(self, text: str | Sequence[PromptPart], num_tiles: int) -> torch.Tensor:
        """Chat-template the one user turn ``[image, text]``, tokenize, expand the image token to (1+T)·256.

        ``text`` is the user turn's text: a ``str`` the tool layer wrote (all special tokens in it parsed), or
        parts (see :data:`PromptPart`) where :class:`UserText` parts are a caller's and produce no special or added
        token except their ``references``. Only the chat template's own text is parsed as well.
        """
        parts: list[PromptPart] = [text] if isinstance(text, str) else list(text)
        rendered = self._render(_CONTENT_MARK)
        if rendered.count(_CONTENT_MARK) != 1:
            raise CheckpointError("chat template must write the text of a user turn exactly once")
        head, tail = rendered.split(_CONTENT_MARK)
        trimmed = _trimmed(parts)
        expected = self._render("".join(p if isinstance(p, str) else p.text for p in parts))
        if head + "".join(p if isinstance(p, str) else p.text for p in trimmed) + tail != expected:
            raise CheckpointError("chat template changes a user turn's text beyond trimming it; not supported")
        live = self._live_tokens
        ids = self._part_ids(
            [
                (head, live),
                *((p, live) if isinstance(p, str) else (p.text, _tokens_pattern(p.references)) for p in trimmed),
                (tail, live),
            ]
        )
        if not ids or ids[0] != self.bos_token_id:
            ids = [self.bos_token_id, *ids]
        if len(ids) > 1 and ids[1] == self.bos_token_id:
            raise CheckpointError("chat template produced two <|begin_of_text|> tokens")
        if ids.count(self.image_token_id) != 1:
            raise CheckpointError(
                f"chat template must write the image token (id {self.image_token_id}) exactly once for one image"
            )
        at = ids.index(self.image_token_id)
        expanded = ids[:at] + [self.image_token_id] * ((1 + num_tiles) * TOKENS_PER_TILE) + ids[at + 1 :]
        return torch.tensor([expanded], dtype=torch.long)

    def prompt_parts(self, prompt_indices: Sequence[int], question: str | None) -> list[PromptPart]:
        """The user turn's text as parts: upstream's framing (tool-written) and the caller's ``question``
        (:class:`UserText`, with ``<PromptK>`` of ``prompt_indices`` as its only live tokens)."""
        slots = [self.slot_tokens[k] * TOKENS_PER_TILE for k in prompt_indices]
        if question is None:
            return [single_region_text(slots[0], prompt_indices[0])]
        order = sorted(range(len(prompt_indices)), key=lambda i: prompt_indices[i])
        framing = multi_region_text([prompt_indices[i] for i in order], [slots[i] for i in order], _QUESTION_MARK)
        before, after = framing.split(_QUESTION_MARK)
        references = tuple(prompt_token(k) for k in sorted(prompt_indices))
        references = tuple(r for r in references if r in self._added_vocab)
        return [before, UserText(question, references), after]

    def prompt_text(self, prompt_indices: Sequence[int], question: str | None) -> str:
        """The user turn's text (slots written as tokens), as :meth:`prompt_parts` joined."""
        return "".join(p if isinstance(p, str) else p.text for p in self.prompt_parts(prompt_indices, question))

    def prepare(
        self,
        image: Image.Image,
        masks: Sequence[np.ndarray],
        question: str | None = None,
        *,
        image_tiles: torch.Tensor | None = None,
    ) -> PreparedInputs:
        """GAR's inputs for ``image`` and boolean H×W ``masks``.

        List index ``k`` is region ``<Prompt{k}>``. ``question=None`` with one mask is upstream's single-region
        describe prompt, which puts that region in slot ``<Prompt1>``. Otherwise ``question`` names regions as
        ``<PromptK>`` and is used as is.

        ``image_tiles``: this image's uint8 tiles from :meth:`image_tiles`, kept from an earlier question on the same
        image, to skip resizing it again.
        """
        if image.mode != "RGB":
            image = to_rgb(image)
        width, height = image.size
        count = len(masks)
        if count == 0:
            raise RegionError("at least one region mask is needed", field="masks")
        if count > self.config.prompt_numbers:
            raise RegionError(
                f"{count} regions given; GAR has {self.config.prompt_numbers} prompt slots, so at most "
                f"{self.config.prompt_numbers} regions per call",
                field="masks",
            )
        if question is None and count != 1:
            raise InputError("a question is needed when there is more than one region", field="question")
        bool_masks: list[np.ndarray] = []
        for i, mask in enumerate(masks):
            mask = np.asarray(mask).astype(bool)
            if mask.shape != (height, width):
                raise RegionError(
                    f"shape {mask.shape} does not match the image (H={height}, W={width})", field=f"masks[{i}]"
                )
            if not mask.any():
                raise RegionError("mask is empty (no pixel inside)", field=f"masks[{i}]")
            bool_masks.append(mask)
        prompt_indices = [SINGLE_REGION_PROMPT_INDEX] if question is None else list(range(count))

        grid = self.tile_grid((width, height))
        tiles = self.image_tiles(image) if image_tiles is None else image_tiles
        prompt_map = visual_prompt_map(bool_masks, prompt_indices, self.config.prompt_numbers)
        prompt_tiles = self.prompt_tiles(prompt_map)
        if tiles.shape[0] != 1 + grid[0] * grid[1]:
            raise RuntimeError(f"image processor made {tiles.shape[0]} tiles, expected 1 + {grid[0]}·{grid[1]}")

        parts = self.prompt_parts(prompt_indices, question)
        text = "".join(p if isinstance(p, str) else p.text for p in parts)
        input_ids = self.encode_text(parts, grid[0] * grid[1])

        order = sorted(range(count), key=lambda i: prompt_indices[i])
        boxes = torch.tensor([region_box(bool_masks[i]) for i in order], dtype=torch.float32)
        slot_starts = []
        for i in order:
            token_id = self.config.crop_tokens_ids[prompt_indices[i]]
            positions = (input_ids[0] == token_id).nonzero().flatten()
            if positions.numel() != TOKENS_PER_TILE or int(positions[-1] - positions[0]) != TOKENS_PER_TILE - 1:
                raise RuntimeError(f"prompt has {positions.numel()} slot tokens for region {i}, expected 256 in a row")
            slot_starts.append(int(positions[0]))
        return PreparedInputs(
            input_ids=input_ids,
            image_tiles=tiles,
            prompt_tiles=prompt_tiles,
            grid=grid,
            boxes=boxes,
            prompt_indices=prompt_indices,
            slot_starts=torch.tensor(slot_starts, dtype=torch.long),
            text=text,
            image_size=(width, height),
            image_mean=tuple(self.image_mean),
            image_std=tuple(self.image_std),
        )
