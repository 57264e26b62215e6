"""Who runs requests: ``local`` (the model in this process), ``http`` (a client of a remote worker).

:func:`make_engine` builds one from a spec string, as the ``--engine`` option of ``gar-tools serve`` takes it.
"""

from __future__ import annotations

from typing import Any

from gar_tools.engine.base import REQUEST_MODELS, RESULT_MODELS, TOOL_NAMES, Engine, Progress, ToolName, ToolRequest
from gar_tools.engine.http import HttpEngine
from gar_tools.engine.local import LocalEngine
from gar_tools.errors import InputError
from gar_tools.images import ImagePolicy

__all__ = [
    "Engine",
    "HttpEngine",
    "LocalEngine",
    "Progress",
    "REQUEST_MODELS",
    "RESULT_MODELS",
    "TOOL_NAMES",
    "ToolName",
    "ToolRequest",
    "make_engine",
]


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
        return LocalEngine(model, policy=policy, **local_kwargs)
    if text.lower().startswith(("http://", "https://")):
        return HttpEngine(text, token=token, policy=policy, timeout_s=timeout_s)
    raise InputError(
        f"engine must be 'local' or a worker URL such as http://127.0.0.1:8001, got {spec!r}", field="engine"
    )
