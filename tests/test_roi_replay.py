"""RoI feature replay: Triton kernel vs pure-torch reference vs torchvision.ops.roi_align (gar-model.md §5).

On CPU the kernel runs under Triton's interpreter. Triton reads ``TRITON_INTERPRET`` when it is imported, so
this module sets it before importing anything that imports triton (when there is no CUDA device). If triton
was already imported without it (another test module first), the in-process kernel tests skip and
``test_kernel_in_fresh_interpreter_process`` still runs the kernel in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from kernel_compile import assert_compiles_for_cuda

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torchvision  # noqa: E402

from gar_tools.kernels.roi_replay import (  # noqa: E402
    BINS,
    GEOMETRIES,
    roi_replay,
    roi_replay_backend,
    roi_replay_features,
    roi_replay_reference,
    spatial_scale,
)

REPO = Path(__file__).resolve().parents[1]

# (atol, rtol) of a result in this dtype against the float32 oracle: the kernel computes in float32, so the
# only difference is the final cast (half an ulp of the dtype) plus float32 reordering noise.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 1e-3),
    torch.bfloat16: (1.6e-2, 8e-3),
}

GRIDS = [(1, 1), (3, 1), (2, 5), (6, 4), (4, 4)]


def _kernel_on_cpu() -> bool:
    return roi_replay_backend("cpu") == "triton"


needs_cpu_kernel = pytest.mark.skipif(
    not _kernel_on_cpu(), reason="Triton interpreter not active (set TRITON_INTERPRET=1 before triton is imported)"
)


def _merge(tile_features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Merged map [C, 16*nch, 16*ncw] the upstream way (tiles row-major, each a row-major 16x16 map)."""
    ncw, nch = grid
    c = tile_features.shape[2]
    return tile_features.reshape(nch, ncw, 16, 16, c).permute(4, 0, 2, 1, 3).reshape(c, 16 * nch, 16 * ncw)


def _oracle(tile_features: torch.Tensor, grid: tuple[int, int], boxes: torch.Tensor, geometry: str) -> torch.Tensor:
    """torchvision.ops.roi_align as upstream calls it; [R, 256, C] float32."""
    ncw, nch = grid
    feat = torch.tensor([16 * ncw, 16 * nch, 16 * ncw, 16 * nch], dtype=torch.float32, device=boxes.device)
    b = boxes.float() * feat
    out = torchvision.ops.roi_align(
        _merge(tile_features, grid)[None].float(),
        [b],
        output_size=(16, 16),
        spatial_scale=GEOMETRIES[geometry],
        sampling_ratio=2,
        aligned=True,
    )
    return out.permute(0, 2, 3, 1).reshape(boxes.shape[0], BINS, tile_features.shape[2])


def _boxes(grid: tuple[int, int], geometry: str) -> torch.Tensor:
    """Normalized boxes covering the awkward cases, for where ``geometry`` actually samples.

    The cases are written in "sampled" coordinates (fractions of the map); with the checkpoint geometry the
    map is sampled at b/28, so the boxes are scaled up by 28 to land on the same situations.
    """
    ncw, nch = grid
    cw, chh = 1.0 / (16 * ncw), 1.0 / (16 * nch)  # one feature cell
    sampled = [
        [0.1, 0.2, 0.7, 0.9],  # inside
        [0.0, 0.0, 1.0, 1.0],  # the whole map
        [0.9, 0.85, 1.0, 1.0],  # bottom-right border
        [0.0, 0.0, 0.05, 0.07],  # top-left border
        [-0.3, -0.2, 0.4, 0.5],  # partly outside (top-left)
        [0.7, 0.6, 1.3, 1.5],  # partly outside (bottom-right)
        [1.2, 1.1, 1.6, 1.5],  # fully outside (beyond the one-cell margin)
        [-0.6, -0.5, -0.2, -0.1],  # fully outside, negative
        [3 * cw, 2 * chh, 4 * cw, 3 * chh],  # one feature cell
        [0.5, 0.2, 0.5, 0.8],  # degenerate: x1 == x2
        [0.3, 0.3, 0.3, 0.3],  # degenerate point
        [0.8, 0.7, 0.2, 0.1],  # inverted (x1 > x2, y1 > y2)
        [1.0 + 0.5 * cw, 0.2, 1.0 + 0.9 * cw, 0.4],  # within the half-cell margin right of the map
    ]
    b = torch.tensor(sampled, dtype=torch.float32)
    if geometry == "checkpoint":
        b = b / GEOMETRIES["checkpoint"]
        # plus realistic boxes as the released model sees them (sampling near the top-left corner)
        b = torch.cat([b, torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0]])])
    return b


def _chunks(n: int) -> list[slice]:
    """Split n boxes into launches of 1, 4, 5, 2, 3, ... regions (1 to 5 per launch)."""
    sizes, out, i = [1, 4, 5, 2, 3], [], 0
    k = 0
    while i < n:
        s = min(sizes[k % len(sizes)], n - i)
        out.append(slice(i, i + s))
        i, k = i + s, k + 1
    return out


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def _replay_into_embeds(
    tf: torch.Tensor, boxes: torch.Tensor, grid: tuple[int, int], geometry: str, dtype: torch.dtype, **kw: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run roi_replay into a random embeddings buffer with gaps between slots; return (before, after, starts)."""
    r = boxes.shape[0]
    starts = torch.arange(r, dtype=torch.int64) * (BINS + 7) + 5
    length = int(starts[-1]) + BINS + 11
    gen = torch.Generator().manual_seed(1)
    before = torch.randn(length, tf.shape[2], generator=gen).to(dtype).to(tf.device)
    after = before.clone()
    out = roi_replay(tf, boxes, starts.to(tf.device), after, grid=grid, geometry=geometry, **kw)  # type: ignore[arg-type]
    assert out is after
    return before, after, starts


def _slot_rows(embeds: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    return torch.stack([embeds[int(s) : int(s) + BINS] for s in starts])


def _untouched(before: torch.Tensor, after: torch.Tensor, starts: torch.Tensor) -> bool:
    keep = torch.ones(before.shape[0], dtype=torch.bool)
    for s in starts.tolist():
        keep[s : s + BINS] = False
    return torch.equal(before[keep.to(before.device)], after[keep.to(after.device)])


def _features(shape: tuple[int, ...], dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(dtype).to(device)


# --- the reference against torchvision (no Triton involved) ---------------------------------------------------


@pytest.mark.parametrize("geometry", ["checkpoint", "paper"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("c", [8, 100])
def test_reference_matches_torchvision(grid: tuple[int, int], c: int, geometry: str) -> None:
    tf = _features((grid[0] * grid[1], BINS, c), torch.float32)
    boxes = _boxes(grid, geometry)
    _assert_close(
        roi_replay_reference(tf, grid, boxes, geometry), _oracle(tf, grid, boxes, geometry), torch.float32, "ref"
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reference_upcasts_low_precision(dtype: torch.dtype) -> None:
    tf = _features((6, BINS, 24), dtype)
    boxes = _boxes((3, 2), "paper")
    got = roi_replay_reference(tf, (3, 2), boxes, "paper")
    assert got.dtype == torch.float32
    _assert_close(got, _oracle(tf, (3, 2), boxes, "paper"), torch.float32, "ref")


def test_checkpoint_geometry_samples_top_left() -> None:
    """The quirk: with scale 1/28 a full-image box on a 4x4 grid only samples about the top-left 2x2 cells."""
    tf = torch.zeros(16, BINS, 1)
    tf[0, 0] = 1.0  # map cell (0, 0)
    tf[15, 255] = 1.0  # map cell (63, 63), bottom-right corner
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    ckpt = roi_replay_reference(tf, (4, 4), full, "checkpoint")
    paper = roi_replay_reference(tf, (4, 4), full, "paper")
    assert ckpt[0, 0, 0] > 0.5 and ckpt[0, 255, 0] == 0  # never reaches the bottom-right corner
    assert paper[0, 255, 0] > 0  # the paper geometry does
    assert spatial_scale("checkpoint") == pytest.approx(1 / 28) and spatial_scale("paper") == 1.0


# --- the kernel (interpreted on CPU) --------------------------------------------------------------------------


@needs_cpu_kernel
@pytest.mark.parametrize("geometry", ["checkpoint", "paper"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("c", [8, 100])
def test_kernel_matches_reference_and_torchvision(grid: tuple[int, int], c: int, geometry: str) -> None:
    tf = _features((grid[0] * grid[1], BINS, c), torch.float32, seed=c)
    boxes = _boxes(grid, geometry)
    for part in _chunks(boxes.shape[0]):
        b = boxes[part]
        want = _oracle(tf, grid, b, geometry)
        before, after, starts = _replay_into_embeds(tf, b, grid, geometry, torch.float32)
        got = _slot_rows(after, starts)
        _assert_close(got, want, torch.float32, f"kernel vs torchvision, boxes {b.tolist()}")
        _assert_close(got, roi_replay_reference(tf, grid, b, geometry), torch.float32, "kernel vs reference")
        assert _untouched(before, after, starts), "rows outside the slots changed"


@needs_cpu_kernel
@pytest.mark.parametrize(
    ("tile_dtype", "embed_dtype", "grid"),
    [
        (torch.float16, torch.float16, (2, 5)),
        (torch.bfloat16, torch.bfloat16, (3, 1)),
        (torch.bfloat16, torch.bfloat16, (1, 1)),
        (torch.float32, torch.bfloat16, (4, 4)),
        (torch.bfloat16, torch.float32, (6, 4)),
        (torch.float16, torch.bfloat16, (2, 2)),
    ],
)
@pytest.mark.parametrize("geometry", ["checkpoint", "paper"])
def test_kernel_dtypes(tile_dtype: torch.dtype, embed_dtype: torch.dtype, grid: tuple[int, int], geometry: str) -> None:
    tf = _features((grid[0] * grid[1], BINS, 100), tile_dtype, seed=3)
    boxes = _boxes(grid, geometry)[:5]
    want = _oracle(tf, grid, boxes, geometry)
    before, after, starts = _replay_into_embeds(tf, boxes, grid, geometry, embed_dtype)
    got = _slot_rows(after, starts)
    assert got.dtype == embed_dtype
    _assert_close(got, want, embed_dtype, "kernel vs torchvision")
    # same float32 math, same round-to-nearest-even cast: equal to the reference cast to the embeddings dtype
    torch.testing.assert_close(got, roi_replay_reference(tf, grid, boxes, geometry).to(embed_dtype), atol=0, rtol=0)
    assert _untouched(before, after, starts)


@needs_cpu_kernel
@pytest.mark.parametrize(
    ("grid", "r", "dtype", "geometry"),
    [((4, 4), 5, torch.bfloat16, "checkpoint"), ((2, 5), 1, torch.float32, "paper")],
)
def test_kernel_gar_1b_width(grid: tuple[int, int], r: int, dtype: torch.dtype, geometry: str) -> None:
    """C = 2048 (GAR-1B hidden size): several channel blocks."""
    tf = _features((grid[0] * grid[1], BINS, 2048), dtype, seed=7)
    boxes = _boxes(grid, geometry)[[0, 1, 5, 8, 9][:r]]
    before, after, starts = _replay_into_embeds(tf, boxes, grid, geometry, dtype)
    _assert_close(_slot_rows(after, starts), _oracle(tf, grid, boxes, geometry), dtype, "kernel vs torchvision")
    assert _untouched(before, after, starts)


@needs_cpu_kernel
def test_kernel_features_and_batched_embeds() -> None:
    grid = (3, 2)
    tf = _features((6, BINS, 40), torch.float32, seed=5)
    boxes = _boxes(grid, "checkpoint")[:4]
    feats = roi_replay_features(tf, boxes, grid)
    assert feats.shape == (4, BINS, 40) and feats.dtype == torch.float32
    _assert_close(feats, _oracle(tf, grid, boxes, "checkpoint"), torch.float32, "features")
    emb = torch.zeros(1, 4 * BINS + 3, 40)
    out = roi_replay(tf, boxes, torch.tensor([3, 3 + BINS, 3 + 2 * BINS, 3 + 3 * BINS]), emb, grid=grid)
    assert out is emb
    torch.testing.assert_close(emb[0, 3:].reshape(4, BINS, 40), feats, atol=0, rtol=0)
    assert torch.count_nonzero(emb[0, :3]) == 0


@needs_cpu_kernel
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the interpreter) on NaN / inf
def test_kernel_never_reads_or_writes_out_of_bounds() -> None:
    """Slots and finiteness are not validated for CUDA tensors (a sync); the kernel itself stays in bounds."""
    from gar_tools.kernels.roi_replay import _launch

    tf = _features((1, BINS, 8), torch.float32)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.8, 0.8]])
    backing = torch.zeros(900, 8)
    out = backing[300:600]  # guard rows on both sides
    _launch(tf, (1, 1), boxes, torch.tensor([-100, 200]), out, GEOMETRIES["paper"])
    want = roi_replay_reference(tf, (1, 1), boxes, "paper")
    torch.testing.assert_close(out[:156], want[0, 100:], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out[200:], want[1, :100], atol=1e-6, rtol=1e-6)
    assert torch.count_nonzero(out[156:200]) == 0
    assert torch.count_nonzero(backing[:300]) == 0 and torch.count_nonzero(backing[600:]) == 0

    bad = torch.tensor([[float("nan"), 0.0, float("inf"), 1.0], [-1e30, 1e30, 1e30, -float("inf")]])
    out = torch.full((512, 8), 7.0)
    _launch(tf, (1, 1), bad, torch.tensor([0, 256]), out, GEOMETRIES["checkpoint"])
    assert torch.count_nonzero(out) == 0  # nothing sampled: zeros, no garbage reads


@needs_cpu_kernel
def test_kernel_and_torch_backends_agree() -> None:
    grid = (2, 3)
    tf = _features((6, BINS, 33), torch.float16, seed=9)
    boxes = _boxes(grid, "paper")[2:7]
    _, via_kernel, _ = _replay_into_embeds(tf, boxes, grid, "paper", torch.float16, backend="triton")
    _, via_torch, _ = _replay_into_embeds(tf, boxes, grid, "paper", torch.float16, backend="torch")
    torch.testing.assert_close(via_kernel, via_torch, atol=0, rtol=0)


def test_torch_backend_writes_only_slots() -> None:
    grid = (2, 2)
    tf = _features((4, BINS, 16), torch.bfloat16, seed=2)
    boxes = _boxes(grid, "checkpoint")[:3]
    before, after, starts = _replay_into_embeds(tf, boxes, grid, "checkpoint", torch.bfloat16, backend="torch")
    _assert_close(_slot_rows(after, starts), _oracle(tf, grid, boxes, "checkpoint"), torch.bfloat16, "torch backend")
    assert _untouched(before, after, starts)


def test_kernel_in_fresh_interpreter_process() -> None:
    """Whatever imported triton first in this session, run the kernel once under a fresh interpreter."""
    code = """
import torch, torchvision
from gar_tools.kernels.roi_replay import roi_replay, roi_replay_backend
assert roi_replay_backend("cpu") == "triton", roi_replay_backend("cpu")
tf = torch.randn(6, 256, 24)
boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [-0.3, 0.5, 0.4, 1.3], [0.5, 0.5, 0.5, 0.9]])
emb = torch.randn(1000, 24).to(torch.bfloat16)
before = emb.clone()
starts = torch.tensor([0, 300, 700])
for scale, geo in ((1 / 28, "checkpoint"), (1.0, "paper")):
    b = boxes * (28 if geo == "checkpoint" else 1)
    roi_replay(tf, b, starts, emb, grid=(2, 3), geometry=geo)
    m = tf.reshape(3, 2, 16, 16, 24).permute(4, 0, 2, 1, 3).reshape(24, 48, 32)
    want = torchvision.ops.roi_align(m[None], [b * torch.tensor([32., 48., 32., 48.])], (16, 16), scale, 2, True)
    want = want.permute(0, 2, 3, 1).reshape(3, 256, 24).to(torch.bfloat16)
    got = torch.stack([emb[s:s + 256] for s in starts.tolist()])
    assert (got.float() - want.float()).abs().max() <= 1.6e-2
assert torch.equal(emb[256:300], before[256:300]) and torch.equal(emb[956:], before[956:])
print("ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_kernel_compiles_for_cuda_targets(tmp_path: Path) -> None:
    """Without a GPU, still compile the kernel to cubin (sm_80, sm_90): catches compiled-mode-only errors."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gar_tools.kernels.roi_replay import _roi_replay_kernel as kernel
cases = (("*bf16", "*bf16", "i32", 90), ("*fp16", "*fp32", "i32", 80), ("*fp32", "*fp16", "constexpr", 90))
for tiles, out, c, arch in cases:
    sig = {"tiles_ptr": tiles, "boxes_ptr": "*fp32", "slots_ptr": "*i64", "out_ptr": out, "C": c, "L": "i32",
           "H": "i32", "W": "i32", "scale": "fp32", "BLOCK_B": "constexpr", "BLOCK_C": "constexpr",
           "ROUND_BF16": "constexpr"}
    consts = {"BLOCK_B": 16, "BLOCK_C": 128, "ROUND_BF16": False, **({"C": 1} if c == "constexpr" else {})}
    compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    assert "cubin" in compiled.asm, sorted(compiled.asm)
print("ok")
"""
    assert_compiles_for_cuda(code, tmp_path)


def test_import_without_triton_falls_back() -> None:
    code = """
import sys
sys.modules["triton"] = None  # make `import triton` fail
import torch
from gar_tools.kernels.roi_replay import roi_replay, roi_replay_backend, roi_replay_reference, triton_available
assert not triton_available() and roi_replay_backend("cpu") == "torch"
tf = torch.randn(2, 256, 8)
boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
emb = torch.zeros(300, 8)
roi_replay(tf, boxes, torch.tensor([20]), emb, grid=(2, 1))
assert torch.equal(emb[20:276], roi_replay_reference(tf, (2, 1), boxes)[0])
assert torch.count_nonzero(emb[:20]) == 0 and torch.count_nonzero(emb[276:]) == 0
try:
    roi_replay(tf, boxes, torch.tensor([20]), emb, grid=(2, 1), backend="triton")
except RuntimeError as e:
    assert "backend" in str(e)
else:
    raise SystemExit("backend='triton' without triton did not raise")
print("ok")
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# --- validation -----------------------------------------------------------------------------------------------


def _valid() -> dict[str, object]:
    return {
        "tile_features": torch.zeros(6, BINS, 8),
        "boxes": torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9]]),
        "slot_starts": torch.tensor([0, 300]),
        "inputs_embeds": torch.zeros(600, 8),
        "grid": (3, 2),
    }


def _call(**override: object) -> None:
    kw = {**_valid(), "backend": "torch", **override}
    roi_replay(
        kw.pop("tile_features"),  # type: ignore[arg-type]
        kw.pop("boxes"),  # type: ignore[arg-type]
        kw.pop("slot_starts"),  # type: ignore[arg-type]
        kw.pop("inputs_embeds"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("override", "error", "match"),
    [
        ({"tile_features": torch.zeros(6, BINS)}, ValueError, r"tile_features: must have shape \[T, 256, C\]"),
        ({"tile_features": torch.zeros(6, 255, 8)}, ValueError, "tile_features: must have shape"),
        ({"tile_features": torch.zeros(5, BINS, 8)}, ValueError, r"tile_features: holds 5 tiles .* ncw\*nch = 6"),
        ({"tile_features": torch.zeros(6, BINS, 8, dtype=torch.int32)}, TypeError, "tile_features: dtype"),
        ({"tile_features": torch.zeros(6, BINS, 8, dtype=torch.float64)}, TypeError, "tile_features: dtype"),
        ({"tile_features": [[0.0]]}, TypeError, "tile_features: must be a torch.Tensor"),
        ({"inputs_embeds": torch.zeros(600, 9)}, ValueError, "inputs_embeds: last dim is 9 .* C = 8"),
        ({"inputs_embeds": torch.zeros(600, 8, dtype=torch.int64)}, TypeError, "inputs_embeds: dtype"),
        ({"inputs_embeds": torch.zeros(2, 600, 8)}, ValueError, r"inputs_embeds: must have shape \[L, C\]"),
        ({"inputs_embeds": torch.zeros(8, 600).t()}, ValueError, "inputs_embeds: must be contiguous"),
        ({"inputs_embeds": torch.zeros(100, 8)}, ValueError, "inputs_embeds: needs at least 256 rows"),
        ({"boxes": torch.zeros(2, 3)}, ValueError, r"boxes: must have shape \[R, 4\]"),
        ({"boxes": torch.zeros(0, 4)}, ValueError, "boxes: must have shape .* R >= 1"),
        ({"boxes": torch.zeros(2, 4, dtype=torch.int64)}, TypeError, "boxes: dtype must be floating point"),
        ({"boxes": torch.tensor([[0.1, float("nan"), 0.5, 0.5]] * 2)}, ValueError, "boxes: must be finite"),
        ({"boxes": torch.zeros(2, 4, device="meta")}, ValueError, "boxes: must be on the same device"),
        ({"slot_starts": torch.tensor([0.0, 300.0])}, TypeError, "slot_starts: dtype must be an integer"),
        ({"slot_starts": torch.tensor([0])}, ValueError, r"slot_starts: must have shape \[R\] = \[2\]"),
        ({"slot_starts": torch.tensor([0, 345])}, ValueError, r"slot_starts: .* start \+ 256 <= L = 600"),
        ({"slot_starts": torch.tensor([-1, 300])}, ValueError, "slot_starts: every slot needs 0 <= start"),
        ({"grid": (3, 0)}, ValueError, "grid: must be a pair of positive ints"),
        ({"grid": (3.0, 2)}, ValueError, "grid: must be a pair of positive ints"),
        ({"grid": (True, 6)}, ValueError, "grid: must be a pair of positive ints"),
        ({"geometry": "exact"}, ValueError, r"geometry: must be one of \['checkpoint', 'paper'\]"),
        ({"backend": "cuda"}, ValueError, "backend: must be"),
    ],
)
def test_validation(override: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _call(**override)


def test_validation_reference_and_features() -> None:
    with pytest.raises(ValueError, match="tile_features: holds 4 tiles"):
        roi_replay_reference(torch.zeros(4, BINS, 8), (3, 2), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="geometry"):
        roi_replay_features(torch.zeros(6, BINS, 8), torch.zeros(1, 4), (3, 2), "paper ")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="boxes"):
        roi_replay_features(torch.zeros(6, BINS, 8), torch.zeros(4), (3, 2))


def test_valid_call_passes_and_accepts_batched_embeds() -> None:
    _call()
    _call(inputs_embeds=torch.zeros(1, 600, 8), slot_starts=torch.tensor([344, 0], dtype=torch.int32))
    _call(boxes=torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9]], dtype=torch.float64))


# --- benchmark smoke run --------------------------------------------------------------------------------------


def test_benchmark_script_runs() -> None:
    script = REPO / "benchmarks" / "roi_replay.py"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(script), "--channels", "64", "--iters", "1", "--warmup", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["device"]["type"] == "cpu"
    assert [r["regions"] for r in report["results"]] == [1, 5]
    for r in report["results"]:
        assert r["max_abs_err_vs_reference"]["kernel"] <= TOL[torch.bfloat16][0] * 2
        assert r["ms"]["kernel"] > 0


# --- CUDA -----------------------------------------------------------------------------------------------------


def _cuda_kernel_compiled() -> bool:
    from gar_tools.kernels.roi_replay import triton_available

    return triton_available() and os.environ.get("TRITON_INTERPRET") != "1"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("geometry", ["checkpoint", "paper"])
@pytest.mark.parametrize(("grid", "c"), [((1, 1), 8), ((3, 1), 100), ((2, 5), 2048), ((6, 4), 100), ((4, 4), 2048)])
def test_gpu_matches_torchvision(grid: tuple[int, int], c: int, geometry: str, dtype: torch.dtype) -> None:
    assert roi_replay_backend("cuda") == "triton"
    tf = _features((grid[0] * grid[1], BINS, c), dtype, device="cuda", seed=11)
    boxes = _boxes(grid, geometry).cuda()
    for part in _chunks(boxes.shape[0]):
        b = boxes[part]
        want = _oracle(tf, grid, b, geometry)
        before, after, starts = _replay_into_embeds(tf, b, grid, geometry, dtype)
        got = _slot_rows(after, starts)
        _assert_close(got, want, dtype, "cuda kernel vs torchvision")
        _assert_close(got, roi_replay_reference(tf, grid, b, geometry), dtype, "cuda kernel vs reference")
        _assert_close(roi_replay_features(tf, b, grid, geometry), want, torch.float32, "cuda features")
        assert _untouched(before, after, starts)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_no_host_sync() -> None:
    tf = _features((16, BINS, 256), torch.bfloat16, device="cuda")
    boxes = torch.rand(5, 4, device="cuda")
    starts = torch.arange(5, device="cuda") * BINS
    emb = torch.zeros(5 * BINS, 256, dtype=torch.bfloat16, device="cuda")
    roi_replay(tf, boxes, starts, emb, grid=(4, 4))  # compile outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        roi_replay(tf, boxes, starts, emb, grid=(4, 4))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_cuda_graph_capture_and_replay() -> None:
    if not _cuda_kernel_compiled():
        pytest.skip("the Triton kernel is interpreted in this process (TRITON_INTERPRET=1)")
    grid, c = (4, 4), 2048
    tf = _features((16, BINS, c), torch.bfloat16, device="cuda", seed=4)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.0, 1.0, 1.0]], device="cuda")
    starts = torch.tensor([17, 17 + BINS + 3], device="cuda")
    emb = torch.zeros(3 * BINS, c, dtype=torch.bfloat16, device="cuda")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm up (compiles) outside the capture
        for _ in range(2):
            roi_replay(tf, boxes, starts, emb, grid=grid)
    torch.cuda.current_stream().wait_stream(stream)

    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        roi_replay(tf, boxes, starts, emb, grid=grid)

    new_boxes = torch.tensor([[0.3, 0.1, 0.6, 0.5], [0.5, 0.5, 0.9, 1.0]], device="cuda")
    boxes.copy_(new_boxes)
    tf.mul_(-1.0)
    emb.zero_()
    graph.replay()
    torch.cuda.synchronize()
    want = roi_replay_reference(tf, grid, new_boxes).to(torch.bfloat16)
    got = torch.stack([emb[17 : 17 + BINS], emb[17 + BINS + 3 : 17 + 2 * BINS + 3]])
    _assert_close(got, want, torch.bfloat16, "graph replay")
    assert torch.count_nonzero(emb[:17]) == 0
