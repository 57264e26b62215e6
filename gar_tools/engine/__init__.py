"""Who runs requests: ``local`` (the model in this process) or ``http`` (a client of a remote worker).

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

__all__ = ["Engine", "HttpEngine", "ItemCallback", "LocalEngine", "Progress", "make_engine"]

_LAZY = {"HttpEngine": "gar_tools.engine.http", "LocalEngine": "gar_tools.engine.local"}


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
    """An engine from a spec: ``"local"`` or the URL of a ``gar-tools worker`` (``http(s)://host:port``).

    Args:
        spec: ``"local"`` for :class:`LocalEngine`, ``"http://…"``/``"https://…"`` for :class:`HttpEngine`.
        model: the model a local engine loads (``"tiny"``, a checkpoint folder or a hub id); a worker serves
            its own model, so this is ignored for URLs.
        policy: what images and masks may be read (for an http engine: read here and sent inline).
        token: bearer token for the worker (http only).
        timeout_s: longest time one worker request may take (http only).
        **local_kwargs: ``dtype``, ``device``, ``geometry`` for a local engine (ignored for URLs).

    Raises:
        InputError: for a spec that is neither ``local`` nor an http(s) URL.
    """
    text = spec.strip()
    if text.lower() == "local":
        from gar_tools.engine.local import LocalEngine

        return LocalEngine(model, policy=policy, **local_kwargs)
    if text.lower().startswith(("http://", "https://")):
        from gar_tools.engine.http import HttpEngine

        return HttpEngine(text, token=token, policy=policy, timeout_s=timeout_s)
    raise InputError(f"must be 'local' or a worker URL such as http://127.0.0.1:8001, got {spec!r}", field="engine")
