"""GPU kernels of gar_tools (shipped as ``gar_tools.kernels``): RoI feature replay, with a pure-torch reference."""

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
    "roi_replay",
    "roi_replay_backend",
    "roi_replay_features",
    "roi_replay_reference",
    "spatial_scale",
    "triton_available",
]
