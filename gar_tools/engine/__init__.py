"""Who runs requests: ``local`` (the model in this process), ``http`` (a client of a remote worker) or ``ray`` (a
client of the worker's Ray Serve deployment, through its handle).

:func:`make_engine` builds one from a spec string, as the ``--engine`` option of ``gar-tools serve`` takes it, and
imports an engine's module only when it builds one: a front-end with an http engine never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gar_tools._lazy import lazy_getattr
from gar_tools.engine.base import Engine, ItemCallback, Progress
from gar_tools.errors import InputError
from gar_tools.images import ImagePolicy

if TYPE_CHECKING:
    from gar_tools.engine.http import HttpEngine
    from gar_tools.engine.local import LocalEngine
    from gar_tools.engine.ray import RayEngine

__all__ = ["Engine", "HttpEngine", "ItemCallback", "LocalEngine", "Progress", "RayEngine", "make_engine"]

_LAZY = {
    "HttpEngine": "gar_tools.engine.http",
    "LocalEngine": "gar_tools.engine.local",
    "RayEngine": "gar_tools.engine.ray",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


def make_engine(
    spec: str = "local",
    *,
    model: str = "tiny",
    policy: ImagePolicy | None = None,
    token: str | None = None,
    timeout_s: float | None = 600.0,
    **local_kwargs: Any,
) -> Engine:
    """An engine from a spec: ``"local"``, the URL of a ``gar-tools worker`` (``http(s)://host:port``), or
    ``"ray"`` / ``"ray://<app>"`` for the worker's Ray Serve application (from inside the Ray cluster).

    Args:
        spec: ``"local"`` for :class:`LocalEngine`, ``"http://…"``/``"https://…"`` for :class:`HttpEngine`,
            ``"ray"``/``"ray://<app>"`` for :class:`RayEngine` (application ``gar`` by default).
        model: the model a local engine loads (``"tiny"``, a checkpoint folder or a hub id); a worker serves
            its own model, so this is ignored for URLs.
        policy: what images and masks may be read (for an http engine: read here and sent inline).
        token: bearer token for the worker (http only).
        timeout_s: longest time one worker request may take (http and ray only).
        **local_kwargs: ``dtype``, ``device``, ``geometry`` for a local engine (ignored for URLs).

    Raises:
        InputError: for a spec that is not ``local``, an http(s) URL or ``ray[://app]``.
    """
    text = spec.strip()
    if text.lower() == "local":
        from gar_tools.engine.local import LocalEngine

        return LocalEngine(model, policy=policy, **local_kwargs)
    if text.lower().startswith(("http://", "https://")):
        from gar_tools.engine.http import HttpEngine

        return HttpEngine(text, token=token, policy=policy, timeout_s=timeout_s)
    if text.lower() == "ray" or text.lower().startswith("ray://"):
        from gar_tools.engine.ray import RayEngine, parse_ray_spec

        return RayEngine(parse_ray_spec(text) or "gar", policy=policy, timeout_s=timeout_s)
    raise InputError(
        f"must be 'local', a worker URL such as http://127.0.0.1:8001, or ray[://APP], got {spec!r}", field="engine"
    )
