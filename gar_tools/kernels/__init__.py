"""GPU kernels of gar_tools (shipped as ``gar_tools.kernels``), each with a pure-torch reference: RoI feature replay,
the split-KV attention of a decode step, its fused element-wise work (residual add + RMSNorm, rotary + KV-cache
write, SiLU · up), and the vision tower's q/k rotation."""

from .decode_attention import decode_attention, decode_attention_backend, decode_attention_reference
from .rms_norm import rms_norm, rms_norm_backend, rms_norm_reference
from .roi_replay import (
    BINS,
    GEOMETRIES,
    TILE,
    Backend,
    Geometry,
    roi_replay,
    roi_replay_backend,
    roi_replay_features,
    roi_replay_reference,
    spatial_scale,
    triton_available,
)
from .rotary_kv import rotary_kv, rotary_kv_backend, rotary_kv_reference
from .silu_mul import silu_mul, silu_mul_backend, silu_mul_reference
from .vision_rope import vision_rope, vision_rope_backend, vision_rope_reference

__all__ = [
    "BINS",
    "GEOMETRIES",
    "TILE",
    "Backend",
    "Geometry",
    "decode_attention",
    "decode_attention_backend",
    "decode_attention_reference",
    "rms_norm",
    "rms_norm_backend",
    "rms_norm_reference",
    "roi_replay",
    "roi_replay_backend",
    "roi_replay_features",
    "roi_replay_reference",
    "rotary_kv",
    "rotary_kv_backend",
    "rotary_kv_reference",
    "silu_mul",
    "silu_mul_backend",
    "silu_mul_reference",
    "spatial_scale",
    "triton_available",
    "vision_rope",
    "vision_rope_backend",
    "vision_rope_reference",
]
