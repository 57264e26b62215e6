"""GPU kernels of gar_tools (shipped as ``gar_tools.kernels``), each with a pure-torch reference: RoI feature replay,
and the split-KV attention of a decode step."""

from .decode_attention import decode_attention, decode_attention_backend, decode_attention_reference
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

__all__ = [
    "BINS",
    "GEOMETRIES",
    "TILE",
    "Backend",
    "Geometry",
    "decode_attention",
    "decode_attention_backend",
    "decode_attention_reference",
    "roi_replay",
    "roi_replay_backend",
    "roi_replay_features",
    "roi_replay_reference",
    "spatial_scale",
    "triton_available",
]
