"""The fused element-wise ops of a decode step — residual add + RMSNorm, rotary + KV-cache write, SiLU · up: each
reference against the transformers modules it replaces (bit for bit), the Triton kernels (interpreted on CPU)
against the references on odd shapes with a per-dtype tolerance, the input checks, a compile to CUDA machine code
without a GPU, and on a GPU the compiled kernels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_compile import assert_compiles_for_cuda
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from gar_tools.kernels.rms_norm import rms_norm, rms_norm_backend, rms_norm_reference
from gar_tools.kernels.rotary_kv import rotary_kv, rotary_kv_backend, rotary_kv_reference
from gar_tools.kernels.silu_mul import silu_mul, silu_mul_backend, silu_mul_reference

#: (atol, rtol) of the kernels against the references, per dtype. The kernels round where PyTorch rounds, so the
#: outputs differ only where float32 sums (the RMS) or exp differ in their last bit and that flips a rounding —
#: and, under Triton's interpreter, where it truncates float32 → bfloat16: a unit or two in the dtype's last place.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

kernels_on_cpu = pytest.mark.skipif(
    rms_norm_backend("cpu") != "triton" or rotary_kv_backend("cpu") != "triton" or silu_mul_backend("cpu") != "triton",
    reason="Triton interpreter not active (set TRITON_INTERPRET=1 before triton is imported)",
)


def _close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOL[dtype]
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


def _exact_unless_interpreted_bf16(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal — except bfloat16 under Triton's interpreter, which truncates float32 → bfloat16 (numpy has no
    bfloat16; compiled kernels round to nearest even, and the GPU test checks equality): one unit apart at most."""
    if got.dtype == torch.bfloat16 and got.device.type == "cpu":
        _close(got, want, torch.bfloat16)
    else:
        assert torch.equal(got, want)


def _randn(*shape: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


# --- the references are the unfused modules ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_reference_is_llama_add_then_norm(dtype: torch.dtype) -> None:
    norm = LlamaRMSNorm(96, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(_randn(96, dtype=dtype, seed=3))
    x, residual = _randn(5, 96, dtype=dtype), _randn(5, 96, dtype=dtype, seed=1)
    out, total = rms_norm_reference(x, norm.weight.detach(), 1e-5, residual=residual)
    assert torch.equal(total, residual + x) and torch.equal(out, norm(residual + x))
    out, total = rms_norm_reference(x, norm.weight.detach(), 1e-5)
    assert total is x and torch.equal(out, norm(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_kv_reference_is_apply_rotary_pos_emb_and_a_cache_write(dtype: torch.dtype) -> None:
    b, h, kv, d = 3, 6, 2, 16
    q, k, v = _randn(b, h, d, dtype=dtype), _randn(b, kv, d, dtype=dtype, seed=1), _randn(b, kv, d, dtype=dtype, seed=2)
    cos, sin = _randn(b, d, dtype=dtype, seed=3), _randn(b, d, dtype=dtype, seed=4)
    keys, values = torch.zeros(b + 1, kv, 20, d, dtype=dtype), torch.zeros(b + 1, kv, 20, d, dtype=dtype)
    positions = torch.tensor([4, 0, 19])
    got = rotary_kv_reference(q, k, v, cos, sin, keys, values, positions)
    want_q, want_k = apply_rotary_pos_emb(q[:, :, None], k[:, :, None], cos[:, None], sin[:, None])  # [B, heads, 1, D]
    assert torch.equal(got, want_q[:, :, 0])
    for row, column in enumerate(positions.tolist()):
        assert torch.equal(keys[row, :, column], want_k[row, :, 0]) and torch.equal(values[row, :, column], v[row])
    assert int((keys != 0).any(-1).sum()) == b * kv  # nothing else written


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_reference_is_llama_mlp_activation(dtype: torch.dtype) -> None:
    gate, up = _randn(4, 40, dtype=dtype), _randn(4, 40, dtype=dtype, seed=1)
    assert torch.equal(silu_mul_reference(gate, up), F.silu(gate) * up)


# --- kernels (interpreted) against the references ----------------------------------------------------------------


@kernels_on_cpu
@pytest.mark.parametrize("b,n", [(1, 2048), (3, 96), (2, 1), (5, 1000)])  # GAR-1B's width, odd widths, one column
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_kernel_matches_reference(b: int, n: int, dtype: torch.dtype) -> None:
    x, residual, weight = _randn(b, n, dtype=dtype), _randn(b, n, dtype=dtype, seed=1), _randn(n, dtype=dtype, seed=2)
    out, total = rms_norm(x, weight, 1e-5, residual=residual)
    want_out, want_total = rms_norm_reference(x, weight, 1e-5, residual=residual)
    _exact_unless_interpreted_bf16(total, want_total)  # one add, rounded once
    _close(out, want_out, dtype)
    out, total = rms_norm(x, weight, 1e-6)
    assert total is x
    _close(out, rms_norm_reference(x, weight, 1e-6)[0], dtype)


@kernels_on_cpu
def test_rms_norm_kernel_reads_strided_rows() -> None:
    wide = _randn(3, 130, dtype=torch.float32)
    x, residual, weight = wide[:, :64], wide[:, 64:128], _randn(64, dtype=torch.float32, seed=2)
    out, total = rms_norm(x, weight, 1e-5, residual=residual)
    want_out, want_total = rms_norm_reference(x.contiguous(), weight, 1e-5, residual=residual.contiguous())
    assert torch.equal(total, want_total)  # float32: exact
    _close(out, want_out, torch.float32)


@kernels_on_cpu
@pytest.mark.parametrize(
    "b,h,kv,d",
    [(1, 32, 8, 64), (3, 6, 2, 16), (2, 5, 5, 10), (4, 3, 1, 128)],  # GAR-1B at batch 1, GQA, odd half, one KV head
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_kv_kernel_matches_reference(b: int, h: int, kv: int, d: int, dtype: torch.dtype) -> None:
    q, k, v = _randn(b, h, d, dtype=dtype), _randn(b, kv, d, dtype=dtype, seed=1), _randn(b, kv, d, dtype=dtype, seed=2)
    cos, sin = _randn(b, d, dtype=dtype, seed=3), _randn(b, d, dtype=dtype, seed=4)
    positions = torch.randint(0, 33, (b,), generator=torch.Generator().manual_seed(5))
    caches = [torch.full((b + 2, kv, 33, d), float("nan"), dtype=dtype) for _ in range(4)]
    got = rotary_kv(q, k, v, cos, sin, caches[0], caches[1], positions)
    want = rotary_kv_reference(q, k, v, cos, sin, caches[2], caches[3], positions)
    _close(got, want, dtype)
    written = ~torch.isnan(caches[2])
    assert torch.equal(written, ~torch.isnan(caches[0])) and torch.equal(written, ~torch.isnan(caches[1]))
    _close(caches[0][written], caches[2][written], dtype)
    assert torch.equal(caches[1][written], caches[3][written])  # values are copied


@kernels_on_cpu
def test_rotary_kv_kernel_takes_projection_views_and_a_strided_cache() -> None:
    """As the decoder passes them: q/k/v views of [B, heads·D] projections, cos/sin rows of [B, 1, D], one
    layer's cache from a bigger buffer (slots and heads not packed)."""
    b, h, kv, d = 2, 4, 2, 8
    q = _randn(b, h * d, dtype=torch.float32).view(b, h, d)
    k, v = _randn(b, kv * d, dtype=torch.float32, seed=1).view(b, kv, d), _randn(b, kv * d, dtype=torch.float32, seed=2)
    v = v.view(b, kv, d)
    cos, sin = _randn(b, 1, d, dtype=torch.float32, seed=3)[:, 0], _randn(b, 1, d, dtype=torch.float32, seed=4)[:, 0]
    big = torch.zeros(2, 3, kv + 1, 12, d)
    keys, values = big[0, :, :kv], big[1, :, :kv]  # [3, KV, 12, D], strided slots and heads
    ref_keys, ref_values = torch.zeros(3, kv, 12, d), torch.zeros(3, kv, 12, d)
    positions = torch.tensor([11, 3], dtype=torch.int32)
    got = rotary_kv(q, k, v, cos, sin, keys, values, positions)
    want = rotary_kv_reference(q, k, v, cos, sin, ref_keys, ref_values, positions.long())
    _close(got, want, torch.float32)
    _close(keys, ref_keys, torch.float32)
    assert torch.equal(values, ref_values) and big[:, :, kv].abs().sum() == 0  # the spare head untouched


@kernels_on_cpu
@pytest.mark.parametrize("shape", [(1, 8192), (3, 1000), (7,), (2, 3, 5)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_kernel_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    gate, up = _randn(*shape, dtype=dtype) * 4, _randn(*shape, dtype=dtype, seed=1)
    _close(silu_mul(gate, up), silu_mul_reference(gate, up), dtype)


# --- input checks ----------------------------------------------------------------------------------------------------


def _f(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype)


@pytest.mark.parametrize(
    "args,error,match",
    [
        ((_f(2, 8, 4), _f(8), 1e-5), ValueError, r"x: must be \[B, N\]"),
        ((_f(2, 8), _f(7), 1e-5), ValueError, r"weight: must be \[8\]"),
        ((_f(2, 8), _f(8, dtype=torch.float16), 1e-5), TypeError, "weight: dtype"),
        ((_f(2, 8, dtype=torch.int32), _f(8), 1e-5), TypeError, "x: dtype must be"),
        ((_f(2, 16)[:, ::2], _f(8), 1e-5), ValueError, "x: must be .* contiguous last dimension"),
        (([[1.0]], _f(8), 1e-5), TypeError, "x: must be a torch.Tensor"),
    ],
)
def test_rms_norm_validation(args: tuple, error: type[Exception], match: str) -> None:
    for fn in (rms_norm, rms_norm_reference):
        with pytest.raises(error, match=match):
            fn(*args)
    with pytest.raises(ValueError, match="residual: must be"):
        rms_norm(_f(2, 8), _f(8), 1e-5, residual=_f(3, 8))


def _rotary_args(**override: object) -> dict[str, object]:
    args: dict[str, object] = {
        "q": _f(2, 4, 8), "k": _f(2, 2, 8), "v": _f(2, 2, 8), "cos": _f(2, 8), "sin": _f(2, 8),
        "keys": _f(3, 2, 10, 8), "values": _f(3, 2, 10, 8), "positions": torch.tensor([0, 9]),
    }  # fmt: skip
    return {**args, **override}


@pytest.mark.parametrize(
    "override,error,match",
    [
        ({"q": _f(2, 4, 7)}, ValueError, "q: must be .* even D"),
        ({"k": _f(3, 2, 8)}, ValueError, r"k: must be \[2, KV, 8\]"),
        ({"v": _f(2, 3, 8)}, ValueError, r"v: must be \[2, 2, 8\]"),
        ({"cos": _f(2, 1, 8)}, ValueError, r"cos: must be \[2, 8\]"),
        ({"q": _f(2, 8, 8)[:, ::2]}, ValueError, "q: its heads must be packed"),
        ({"keys": _f(1, 2, 10, 8)}, ValueError, r"keys: must be \[S >= 2"),
        ({"values": _f(3, 2, 8, 10).transpose(2, 3)}, ValueError, "values: the last dimension"),
        ({"sin": _f(2, 8, dtype=torch.float16)}, TypeError, "sin: dtype"),
        ({"positions": torch.tensor([0.0, 1.0])}, ValueError, "positions: must be int32/int64"),
        ({"positions": torch.tensor([0])}, ValueError, r"positions: must be \[2\]"),
    ],
)
def test_rotary_kv_validation(override: dict[str, object], error: type[Exception], match: str) -> None:
    for fn in (rotary_kv, rotary_kv_reference):
        with pytest.raises(error, match=match):
            fn(**_rotary_args(**override))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "gate,up,error,match",
    [
        (_f(2, 8), _f(2, 7), ValueError, "up: shape"),
        (_f(2, 8), _f(2, 8, dtype=torch.float16), TypeError, "up: dtype"),
        (_f(2, 16)[:, ::2], _f(2, 8), ValueError, "gate: must be contiguous"),
        (_f(2, 8, dtype=torch.int64), _f(2, 8, dtype=torch.int64), TypeError, "gate: dtype must be"),
    ],
)
def test_silu_mul_validation(gate: torch.Tensor, up: torch.Tensor, error: type[Exception], match: str) -> None:
    for fn in (silu_mul, silu_mul_reference):
        with pytest.raises(error, match=match):
            fn(gate, up)


# --- compiled ----------------------------------------------------------------------------------------------------


def test_kernels_compile_for_cuda_targets(tmp_path: Path) -> None:
    """Without a GPU, still compile the three kernels to cubin (sm_80, sm_90): catches compiled-mode-only errors."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gar_tools.kernels.rms_norm import _rms_norm_kernel
from gar_tools.kernels.rotary_kv import _rotary_kv_kernel
from gar_tools.kernels.silu_mul import _silu_mul_kernel
for dtype, arch in (("*bf16", 90), ("*fp16", 80), ("*fp32", 90)):
    compiled = []
    for residual in (True, False):
        sig = {"x_ptr": dtype, "residual_ptr": dtype, "weight_ptr": dtype, "out_ptr": dtype, "total_ptr": dtype,
               "N": "i32", "eps": "fp32", "stride_x": "i32", "stride_r": "i32",
               "HAS_RESIDUAL": "constexpr", "BLOCK": "constexpr"}
        compiled.append(triton.compile(
            ASTSource(fn=_rms_norm_kernel, signature=sig, constexprs={"HAS_RESIDUAL": residual, "BLOCK": 2048}),
            target=GPUTarget("cuda", arch, 32), options={"num_warps": 8}))
    sig = {**{name: dtype for name in ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "keys_ptr", "values_ptr")},
           "positions_ptr": "*i64", "q_out_ptr": dtype, "H": "i32", "HALF": "i32",
           **{name: "i32" for name in ("stride_qb", "stride_kb", "stride_vb", "stride_cb", "stride_sb",
                                       "stride_keys_s", "stride_keys_h", "stride_keys_n",
                                       "stride_values_s", "stride_values_h", "stride_values_n")},
           "BLOCK_HALF": "constexpr"}
    compiled.append(triton.compile(ASTSource(fn=_rotary_kv_kernel, signature=sig, constexprs={"BLOCK_HALF": 32}),
                                   target=GPUTarget("cuda", arch, 32), options={"num_warps": 1}))
    sig = {"gate_ptr": dtype, "up_ptr": dtype, "out_ptr": dtype, "n": "i32", "BLOCK": "constexpr"}
    compiled.append(triton.compile(ASTSource(fn=_silu_mul_kernel, signature=sig, constexprs={"BLOCK": 1024}),
                                   target=GPUTarget("cuda", arch, 32), options={"num_warps": 4}))
    assert all("cubin" in c.asm for c in compiled)
print("ok")
"""
    assert_compiles_for_cuda(code, tmp_path)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_kernels_match_references(dtype: torch.dtype) -> None:
    assert rms_norm_backend("cuda") == rotary_kv_backend("cuda") == silu_mul_backend("cuda") == "triton"
    x, residual, weight = (_randn(4, 2048, dtype=dtype, device="cuda", seed=s) for s in (0, 1, 2))
    weight = weight[0]
    got, want = rms_norm(x, weight, 1e-5, residual=residual), rms_norm_reference(x, weight, 1e-5, residual=residual)
    assert torch.equal(got[1], want[1])
    _close(got[0], want[0], dtype)
    q, k, v = (_randn(4, heads, 64, dtype=dtype, device="cuda", seed=s) for s, heads in ((0, 32), (1, 8), (2, 8)))
    cos, sin = (_randn(4, 64, dtype=dtype, device="cuda", seed=s) for s in (3, 4))
    caches = [torch.zeros(5, 8, 100, 64, dtype=dtype, device="cuda") for _ in range(4)]
    positions = torch.tensor([0, 99, 50, 7], device="cuda")
    _close(rotary_kv(q, k, v, cos, sin, caches[0], caches[1], positions),
           rotary_kv_reference(q, k, v, cos, sin, caches[2], caches[3], positions), dtype)  # fmt: skip
    _close(caches[0], caches[2], dtype)
    assert torch.equal(caches[1], caches[3])
    gate, up = (_randn(4, 8192, dtype=dtype, device="cuda", seed=s) for s in (5, 6))
    _close(silu_mul(gate, up), silu_mul_reference(gate, up), dtype)
