"""The split-KV decode attention: its pure-torch reference against SDPA, the Triton kernels (interpreted on CPU)
against the reference on odd shapes with a per-dtype tolerance, what the kernels must never read, the input
checks, a compile to CUDA machine code without a GPU, and on a GPU the compiled kernels."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_compile import assert_compiles_for_cuda

from gar_tools.kernels.decode_attention import (
    SPLIT,
    decode_attention,
    decode_attention_backend,
    decode_attention_reference,
    default_split,
    split_size,
)

#: (atol, rtol) of the kernels against the reference, per dtype: float32 math both ways, so float32 agrees to
#: rounding of the summation order, and the low-precision outputs to one unit in their last place.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (2e-6, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (8e-3, 8e-3),
}

kernel_on_cpu = pytest.mark.skipif(
    decode_attention_backend("cpu") != "triton",
    reason="Triton interpreter not active (set TRITON_INTERPRET=1 before triton is imported)",
)


def _inputs(
    b: int, kv: int, g: int, d: int, slots: int, max_len: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(b, kv, g, d, generator=generator).to(device=device, dtype=dtype)
    keys = torch.randn(slots, kv, max_len, d, generator=generator).to(device=device, dtype=dtype)
    values = torch.randn(slots, kv, max_len, d, generator=generator).to(device=device, dtype=dtype)
    return q, keys, values


def _lengths(b: int, span: int, device: str = "cpu", seed: int = 1) -> torch.Tensor:
    lengths = torch.randint(1, span + 1, (b,), generator=torch.Generator().manual_seed(seed))
    lengths[0] = span  # one row sees the whole span
    if b > 1:
        lengths[1] = 1  # one sees only its first column
    return lengths.to(device)


def _assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    assert got.dtype == want.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("b,kv,g,d,span", [(1, 8, 4, 64, 300), (3, 2, 3, 24, 77), (2, 1, 1, 16, 1), (4, 3, 8, 32, 513)])
def test_reference_matches_sdpa(b: int, kv: int, g: int, d: int, span: int) -> None:
    """The reference is exactly causal-by-length attention: SDPA over the repeated K/V heads with a length mask."""
    q, keys, values = _inputs(b, kv, g, d, b + 1, span + 5, torch.float32)
    lengths = _lengths(b, span)
    got = decode_attention_reference(q, keys, values, lengths, scale=d**-0.5, span=span)
    k = keys[:b, :, :span].repeat_interleave(g, dim=1)  # [B, KV·G, span, D]
    v = values[:b, :, :span].repeat_interleave(g, dim=1)
    mask = (torch.arange(span)[None, :] < lengths[:, None])[:, None, None, :]
    want = F.scaled_dot_product_attention(q.reshape(b, kv * g, 1, d), k, v, attn_mask=mask, scale=d**-0.5)
    torch.testing.assert_close(got, want.reshape(b, kv, g, d), atol=1e-5, rtol=1e-5)


@kernel_on_cpu
@pytest.mark.parametrize(
    "b,kv,g,d,span",
    [
        (1, 8, 4, 64, 4700),  # GAR-1B's heads at batch 1 over a 17-tile prompt (19 splits)
        (3, 2, 3, 24, 77),  # odd G and D, one split
        (2, 1, 1, 16, 1),  # one column
        (5, 3, 5, 40, SPLIT + 1),  # a second split holding one column
        (2, 2, 16, 128, 2 * SPLIT),  # splits exactly full
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_kernel_matches_reference(b: int, kv: int, g: int, d: int, span: int, dtype: torch.dtype) -> None:
    q, keys, values = _inputs(b, kv, g, d, b + 2, span + 3, dtype)
    lengths = _lengths(b, span)
    got = decode_attention(q, keys, values, lengths, scale=d**-0.5, span=span)
    _assert_close(got, decode_attention_reference(q, keys, values, lengths, scale=d**-0.5, span=span), dtype)


@kernel_on_cpu
@pytest.mark.parametrize("split", [16, 64, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference_at_any_split(split: int, dtype: torch.dtype) -> None:
    """The chunk size changes only the summation order: rows ending inside, at and before a chunk's end; at
    ``split=16``, 44 chunks per row (one load of the combine kernel)."""
    b, kv, g, d, span = 4, 2, 4, 64, 700
    q, keys, values = _inputs(b, kv, g, d, b, span, dtype, seed=3)
    lengths = torch.tensor([span, 1, split, split + 1])
    got = decode_attention(q, keys, values, lengths, scale=d**-0.5, span=span, split=split)
    _assert_close(got, decode_attention_reference(q, keys, values, lengths, scale=d**-0.5, span=span), dtype)


@kernel_on_cpu
def test_kernel_combines_more_chunks_than_one_load() -> None:
    """A row of 70 chunks: the combine kernel adds them 64 at a time."""
    b, kv, g, d, span = 2, 1, 3, 32, 70 * 16
    q, keys, values = _inputs(b, kv, g, d, b, span, torch.float32, seed=4)
    lengths = torch.tensor([span, 64 * 16 + 5])
    got = decode_attention(q, keys, values, lengths, scale=d**-0.5, span=span, split=16)
    _assert_close(got, decode_attention_reference(q, keys, values, lengths, scale=d**-0.5, span=span), torch.float32)


def test_split_size_gives_a_few_programs_per_sm() -> None:
    # GAR-1B (8 KV heads) over a 17-tile prompt on an H100 (132 SMs): batch 1 and batch 16
    assert split_size(8, 4700, 132) == 128
    assert split_size(16 * 8, 4700, 132) == 1024
    assert split_size(1, 10, 132) == 64  # never below 64 columns
    assert split_size(64 * 8, 32768, 132) == 1024  # nor above 1024
    for rows, span, sms in ((8, 4700, 132), (24, 3000, 108), (128, 8192, 78)):
        split = split_size(rows, span, sms)
        assert split & (split - 1) == 0 and 64 <= split <= 1024
        assert split in (64, 1024) or split / 2 < rows * span / (4 * sms) <= split
    assert default_split(8, 4700, "cpu") == SPLIT
    with pytest.raises(ValueError, match="must be positive"):
        split_size(0, 10, 132)


@pytest.mark.parametrize("split", [8, 96, 0, True, 64.0])
def test_split_must_be_a_power_of_two(split: object) -> None:
    with pytest.raises(ValueError, match="split: must be a power of two >= 16"):
        decode_attention(**_valid(), split=split)  # type: ignore[arg-type]


@kernel_on_cpu
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy (the interpreter) on NaN
def test_kernel_reads_only_visible_columns_and_rows() -> None:
    """NaN everywhere a row must not look (beyond its length, beyond the span, other slots): same output."""
    b, kv, g, d, span = 3, 2, 4, 32, SPLIT + 40
    q, keys, values = _inputs(b, kv, g, d, b + 2, span + 50, torch.float32)
    lengths = torch.tensor([span, 7, SPLIT + 3])
    clean = decode_attention(q, keys, values, lengths, scale=0.2, span=span)
    poisoned_k, poisoned_v = keys.clone(), values.clone()
    for row, length in enumerate(lengths.tolist()):
        poisoned_k[row, :, length:] = float("nan")
        poisoned_v[row, :, length:] = float("nan")
    poisoned_k[b:], poisoned_v[b:] = float("nan"), float("nan")
    got = decode_attention(q, poisoned_k, poisoned_v, lengths, scale=0.2, span=span)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, clean, atol=0, rtol=0)


@kernel_on_cpu
def test_kernel_reads_strided_queries_and_caches() -> None:
    """Views as the decoder passes them: the queries a reshaped projection, the caches whole (rows 0 … B-1)."""
    b, kv, g, d, span = 2, 2, 4, 16, 90
    q_wide = torch.randn(b, kv, g, 2 * d)[..., :d]  # last dim contiguous, other strides not packed
    _, keys, values = _inputs(b, kv, g, d, 4, 128, torch.float32)
    lengths = torch.tensor([90, 45])
    got = decode_attention(q_wide, keys, values, lengths, scale=0.25, span=span)
    want = decode_attention_reference(q_wide.contiguous(), keys, values, lengths, scale=0.25, span=span)
    _assert_close(got, want, torch.float32)


def _valid() -> dict[str, object]:
    q, keys, values = _inputs(2, 2, 4, 16, 3, 64, torch.float32)
    return {"q": q, "keys": keys, "values": values, "lengths": torch.tensor([3, 64]), "scale": 0.25, "span": 64}


@pytest.mark.parametrize(
    "override,error,match",
    [
        ({"q": [[1.0]]}, TypeError, "q: must be a torch.Tensor"),
        ({"q": torch.zeros(2, 2, 16)}, ValueError, r"q: must be \[B, KV, G, D\]"),
        ({"keys": torch.zeros(3, 4, 64, 16)}, ValueError, "keys: must be"),
        ({"keys": torch.zeros(1, 2, 64, 16)}, ValueError, r"keys: must be \[S >= 2"),
        ({"values": torch.zeros(3, 2, 64, 16, dtype=torch.float16)}, TypeError, "values: dtype"),
        ({"values": torch.zeros(3, 2, 65, 16)}, ValueError, "values: shape"),
        ({"keys": torch.zeros(3, 2, 16, 64).transpose(2, 3)}, ValueError, "keys: the last dimension"),
        ({"lengths": torch.tensor([1.0, 2.0])}, ValueError, "lengths: must be int32/int64"),
        ({"lengths": torch.tensor([1])}, ValueError, r"lengths: must be int32/int64 \[2\]"),
        ({"span": 0}, ValueError, "span: must be in 1"),
        ({"span": 65}, ValueError, "span: must be in 1"),
    ],
)
def test_validation(override: dict[str, object], error: type[Exception], match: str) -> None:
    args = {**_valid(), **override}
    with pytest.raises(error, match=match):
        decode_attention(**args)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        decode_attention_reference(**args)  # type: ignore[arg-type]


def test_without_interpreter_cpu_runs_the_reference() -> None:
    code = (
        "import torch\n"
        "from gar_tools.kernels.decode_attention import decode_attention_backend\n"
        "print(decode_attention_backend('cpu'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "torch"


def test_kernels_compile_for_cuda_targets(tmp_path: Path) -> None:
    """Without a GPU, still compile both kernels to cubin (sm_80, sm_90): catches compiled-mode-only errors."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gar_tools.kernels.decode_attention import _combine_kernel, _split_kernel
shapes = (("*bf16", 90, 16, 64, 64), ("*fp16", 80, 16, 80, 128), ("*fp32", 90, 32, 32, 32))
for dtype, arch, block_g, d, block_d in shapes:
    sig = {"q_ptr": dtype, "k_ptr": dtype, "v_ptr": dtype, "lengths_ptr": "*i64", "part_out_ptr": "*fp32",
           "part_stats_ptr": "*fp32", "G": "i32", "scale": "fp32",
           **{name: "i32" for name in ("stride_qb", "stride_qh", "stride_qg", "stride_kb", "stride_kh", "stride_kn",
                                       "stride_vb", "stride_vh", "stride_vn")},
           "HEAD_D": "constexpr", "SPLIT_N": "constexpr", "BLOCK_N": "constexpr", "BLOCK_G": "constexpr",
           "BLOCK_D": "constexpr", "IEEE": "constexpr", "ROUND_P": "constexpr"}
    consts = {"HEAD_D": d, "SPLIT_N": 256, "BLOCK_N": 64, "BLOCK_G": block_g, "BLOCK_D": block_d,
              "IEEE": dtype == "*fp32", "ROUND_P": dtype != "*fp32"}
    split = triton.compile(ASTSource(fn=_split_kernel, signature=sig, constexprs=consts),
                           target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    sig = {"part_out_ptr": "*fp32", "part_stats_ptr": "*fp32", "lengths_ptr": "*i64", "out_ptr": dtype,
           "splits": "i32", "HEAD_D": "constexpr", "SPLIT_N": "constexpr", "BLOCK_G": "constexpr",
           "BLOCK_D": "constexpr", "BLOCK_S": "constexpr"}
    combine = triton.compile(ASTSource(fn=_combine_kernel, signature=sig,
                                       constexprs={"HEAD_D": d, "SPLIT_N": 256, "BLOCK_G": block_g,
                                                   "BLOCK_D": block_d, "BLOCK_S": 64}),
                             target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
    assert "cubin" in split.asm and "cubin" in combine.asm
print("ok")
"""
    assert_compiles_for_cuda(code, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("b,kv,g,d,span", [(1, 8, 4, 64, 4700), (16, 8, 4, 64, 6144), (3, 2, 3, 24, 77)])
def test_gpu_kernel_matches_reference(b: int, kv: int, g: int, d: int, span: int, dtype: torch.dtype) -> None:
    q, keys, values = _inputs(b, kv, g, d, b + 1, span + 8, dtype, device="cuda")
    lengths = _lengths(b, span, device="cuda")
    assert decode_attention_backend("cuda") == "triton"
    got = decode_attention(q, keys, values, lengths, scale=d**-0.5, span=span)
    _assert_close(got, decode_attention_reference(q, keys, values, lengths, scale=d**-0.5, span=span), dtype)
