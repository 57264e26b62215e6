"""The vision tower's q/k rotation in one kernel: the reference against timm's own rotation (bit for bit), the Triton
kernel (interpreted on CPU) against the reference on odd shapes and strided views — exact in every dtype (the
kernel rounds where PyTorch rounds, bfloat16 to nearest even on the bits) — the input checks, a compile to CUDA
machine code without fused multiply-adds, the attention modules swapped in and out of a tiny model with the same
features, and on a GPU the compiled kernel and the vision CUDA graph that keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kernel_compile import assert_compiles_for_cuda
from timm.layers.pos_embed_sincos import apply_rot_embed_cat

from gar_tools.kernels.vision_rope import vision_rope, vision_rope_backend, vision_rope_reference
from gar_tools.model.vision_rope import attention_forward, fusable, fused_vision_rope

#: (q/k dtype, emb dtype) pairs: GAR in bf16 has a bf16 embedding, a float32 tower a float32 one; mixed as timm allows.
DTYPES = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float16),
]
#: (B, H, N, D, prefix): a PE-L head at one tile (64 channels, 1 + 32² tokens), odd sizes, no prefix, all prefix.
SHAPES = [(1, 2, 1025, 64, 1), (2, 3, 37, 6, 1), (3, 2, 70, 16, 0), (2, 1, 5, 4, 5), (1, 2, 33, 2, 2)]

kernel_on_cpu = pytest.mark.skipif(
    vision_rope_backend("cpu") != "triton",
    reason="Triton interpreter not active (set TRITON_INTERPRET=1 before triton is imported)",
)


def _randn(*shape: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def _projection_views(b: int, h: int, n: int, d: int, dtype: torch.dtype, device: str = "cpu"):
    """q, k, v as timm makes them: strided [B, H, N, D] views of one [B, N, 3·H·D] projection."""
    qkv = _randn(b, n, 3 * h * d, dtype=dtype, device=device).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)
    return qkv.unbind(0)


def _timm(x: torch.Tensor, v: torch.Tensor, emb: torch.Tensor, prefix: int) -> torch.Tensor:
    """What timm's AttentionRope does to q or k."""
    return torch.cat([x[:, :, :prefix, :], apply_rot_embed_cat(x[:, :, prefix:, :], emb)], dim=2).type_as(v)


@pytest.mark.parametrize("b,h,n,d,prefix", SHAPES)
@pytest.mark.parametrize("dtype,emb_dtype", DTYPES)
def test_reference_is_timms_rotation(b, h, n, d, prefix, dtype, emb_dtype) -> None:
    q, k, v = _projection_views(b, h, n, d, dtype)
    emb = _randn(n - prefix, 2 * d, dtype=emb_dtype, seed=1)
    got_q, got_k = vision_rope_reference(q, k, emb, prefix)
    assert torch.equal(got_q, _timm(q, v, emb, prefix)) and torch.equal(got_k, _timm(k, v, emb, prefix))
    assert got_q.is_contiguous() and got_k.is_contiguous() and got_q.dtype == dtype


@kernel_on_cpu
@pytest.mark.parametrize("b,h,n,d,prefix", SHAPES)
@pytest.mark.parametrize("dtype,emb_dtype", DTYPES)
def test_kernel_matches_reference_exactly(b, h, n, d, prefix, dtype, emb_dtype) -> None:
    q, k, _ = _projection_views(b, h, n, d, dtype)
    emb = _randn(n - prefix, 2 * d, dtype=emb_dtype, seed=1)
    got_q, got_k = vision_rope(q, k, emb, prefix)
    want_q, want_k = vision_rope_reference(q, k, emb, prefix)
    assert torch.equal(got_q, want_q) and torch.equal(got_k, want_k)
    assert got_q.is_contiguous() and got_k.is_contiguous()


@kernel_on_cpu
def test_kernel_rounds_bfloat16_ties_to_even() -> None:
    """A float32 result exactly halfway between two bfloat16 values is rounded to the even one, as PyTorch (and a
    compiled conversion) does — Triton's interpreter alone would truncate it."""
    q = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.bfloat16).view(1, 1, 2, 2)
    halfway = 1.0 + 2.0**-7 + 2.0**-8  # 1.0117…: between the bfloat16 values 1.0078 and 1.0156 (the even one)
    emb = torch.tensor([[0.0, 0.0, halfway, 1.0]] * 2, dtype=torch.float32)  # [sin | cos]: x·cos only
    got, _ = vision_rope(q, q, emb, 0)
    want, _ = vision_rope_reference(q, q, emb, 0)
    assert torch.equal(got, want) and got[0, 0, 0, 0].item() == 1.015625


@pytest.mark.parametrize(
    "q,k,emb,prefix,error,match",
    [
        (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(4, 8), 0, ValueError, r"q: must be \[B, H, N, D\]"),
        (torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 4, 5), torch.zeros(4, 10), 0, ValueError, "even D"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(4, 8), 0, ValueError, "k: must have q's shape"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4).half(), torch.zeros(4, 8), 0, TypeError, "k: dtype"),
        (torch.zeros(1, 1, 4, 4, dtype=torch.int32),) * 2 + (torch.zeros(4, 8), 0, TypeError, "q: dtype"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(4, 8).long(), 0, TypeError, "emb: dtype"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(4, 8), 1, ValueError, r"emb: must be \[3, 8\]"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(0, 8), 5, ValueError, "prefix: must be"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(4, 8), True, ValueError, "prefix: must be"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 8)[..., ::2], torch.zeros(4, 8), 0, ValueError, "k: the last"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(8, 4).t(), 0, ValueError, "emb: the last"),
        ([1.0], torch.zeros(1, 1, 4, 4), torch.zeros(4, 8), 0, TypeError, "q: must be a torch.Tensor"),
    ],
)
def test_validation_names_the_argument(q, k, emb, prefix, error, match) -> None:
    for fn in (vision_rope, vision_rope_reference):
        with pytest.raises(error, match=match):
            fn(q, k, emb, prefix)


def test_kernel_compiles_for_cuda_targets_without_fused_multiply_adds(tmp_path: Path) -> None:
    """Without a GPU, compile the kernel to cubin (sm_90 bf16 with a bf16 or float32 embedding, sm_80 fp16, sm_90
    fp32) as the wrapper launches it; no fma may appear, or float32 products would round as PyTorch does not."""
    code = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from gar_tools.kernels.vision_rope import _vision_rope_kernel
ints = ("H", "N", "PREFIX", "HALF", "stride_qb", "stride_qh", "stride_qn", "stride_kb", "stride_kh", "stride_kn",
        "stride_e")
for dtype, emb, rounding, out, arch in (("*bf16", "*bf16", 1, 1, 90), ("*bf16", "*fp32", 0, 1, 90),
                                        ("*fp16", "*fp16", 2, 2, 80), ("*fp32", "*fp32", 0, 0, 90)):
    sig = {"q_ptr": dtype, "k_ptr": dtype, "emb_ptr": emb, "q_out_ptr": dtype, "k_out_ptr": dtype,
           **{name: "i32" for name in ints},
           "ROUND": "constexpr", "OUT_ROUND": "constexpr", "BLOCK_N": "constexpr", "BLOCK_HALF": "constexpr"}
    compiled = triton.compile(
        ASTSource(fn=_vision_rope_kernel, signature=sig,
                  constexprs={"ROUND": rounding, "OUT_ROUND": out, "BLOCK_N": 32, "BLOCK_HALF": 32}),
        target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "enable_fp_fusion": False})
    assert "cubin" in compiled.asm and "fma." not in compiled.asm["ptx"], (dtype, emb)
print("ok")
"""
    assert_compiles_for_cuda(code, tmp_path)


# --- the attention modules of a tiny model -----------------------------------------------------------------------


def _tiles(model, count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.rand(count, 3, 448, 448, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prompts = torch.full((count, 3, 448, 448), model.config.prompt_numbers / 127.5 - 1.0)
    prompts[0, :, :100, :100] = -1.0  # region 0 in a corner of the thumbnail
    return pixels, prompts


@pytest.fixture(scope="module")
def tiny_bf16():
    from gar_tools.model import load

    return load("tiny", device="cpu", dtype="bf16")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_swapped_attention_gives_the_same_features(precision, tiny_pipeline, tiny_bf16) -> None:
    model = (tiny_pipeline if precision == "fp32" else tiny_bf16).model
    pixels, prompts = _tiles(model, 2)
    want = model.encode_images(pixels, prompts)
    blocks = [m for m in model.modules() if fusable(m)]
    assert len(blocks) == len(model.mllm.model.vision_tower.timm_model.blocks)  # every block of the tiny PE tower
    with fused_vision_rope(model) as swapped:
        assert swapped == len(blocks) and all("forward" in m.__dict__ for m in blocks)
        got = model.encode_images(pixels, prompts)
    assert not any("forward" in m.__dict__ for m in blocks)  # the modules' own forward again
    assert torch.equal(got, want)
    assert torch.equal(model.encode_images(pixels, prompts), want)


def test_unsupported_configurations_keep_their_forward(tiny_pipeline) -> None:
    """A gated, GQA or rotate-half attention is not swapped; without a rotary embedding the swapped forward runs the
    module's own."""
    from timm.layers.attention import AttentionRope

    for options in ({"gated": True}, {"rotate_half": True}, {"qkv_fused": False}, {"qk_norm": True}):
        extra = {"norm_layer": torch.nn.LayerNorm} if "qk_norm" in options else {}
        assert not fusable(AttentionRope(32, num_heads=2, **options, **extra).eval())
    assert not fusable(torch.nn.Linear(2, 2))
    attention = AttentionRope(32, num_heads=2).eval()
    assert fusable(attention)
    x = _randn(2, 9, 32, dtype=torch.float32)
    assert torch.equal(attention_forward(attention, x), attention(x))
    emb = _randn(8, 32, dtype=torch.float32, seed=1)
    assert torch.equal(attention_forward(attention, x, rope=emb), attention(x, rope=emb))
    per_sample = _randn(2, 8, 32, dtype=torch.float32, seed=2)  # timm's batched form: the module's own forward
    assert torch.equal(attention_forward(attention, x, rope=per_sample), attention(x, rope=per_sample))


# --- GPU ---------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype,emb_dtype", DTYPES)
def test_gpu_kernel_matches_reference_exactly(dtype, emb_dtype) -> None:
    assert vision_rope_backend("cuda") == "triton"
    for b, h, n, d, prefix in SHAPES:
        q, k, _ = _projection_views(b, h, n, d, dtype, device="cuda")
        emb = _randn(n - prefix, 2 * d, dtype=emb_dtype, device="cuda", seed=1)
        got, want = vision_rope(q, k, emb, prefix), vision_rope_reference(q, k, emb, prefix)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.gpu
def test_gpu_vision_graph_keeps_the_fused_rotation() -> None:
    """In bf16 on CUDA the graph captured with the kernel replays the eager tower bit for bit (else it would have
    been captured again without it, with a warning)."""
    import warnings

    from gar_tools.model import load
    from gar_tools.model.vision_graph import VisionGraph

    model = load("tiny", device="cuda", dtype="bf16").model
    pixels, prompts = _tiles(model, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = VisionGraph(model, 4)
    assert [str(w.message) for w in caught if "fused q/k rotation" in str(w.message)] == []
    assert graph.fused_rope
    assert torch.equal(graph(pixels, prompts), model.encode_images(pixels, prompts))
    assert not VisionGraph(model, 4, fused_rope=False).fused_rope
