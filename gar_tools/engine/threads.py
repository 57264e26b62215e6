"""Keep the model thread's CPU parallelism to itself.

PyTorch's CPU operators run on OpenMP. With GNU OpenMP (``libgomp``, what PyTorch's Linux wheels ship), every
thread that runs a parallel operator keeps its own team of worker threads for as long as it lives, and once the
process holds more OpenMP threads than CPUs, libgomp stops letting idle workers spin: each parallel region then
waits for its workers to be woken. Helper threads that read and resized images with torch ops beside the model
thread were enough to slow the model thread about 2× on a 2-core machine: one request decoded at 173–233 tokens/s
before this module, 373 after (tiny model, ``python benchmarks/serving.py --only engine_throughput``;
``benchmarks/results/2026-11-27-serving-one-image-cpu-tiny.json`` and its previous version in git).

So the local engine's auxiliary threads (reading images, ``prepare``, segmenting) run their torch operators on
one OpenMP thread each (:func:`serial_torch_thread`, their executors' initializer), and loading — which wants
every core — happens in a thread of its own that exits afterwards, taking its workers with it
(:func:`run_in_fresh_thread`). The model thread keeps the default number of threads.
"""

from __future__ import annotations

import ctypes
import functools
import re
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_in_fresh_thread", "serial_torch_thread"]

T = TypeVar("T")


@functools.cache
def _libgomp() -> Any | None:
    """The GNU OpenMP runtime the process has loaded (PyTorch's own copy first); None elsewhere (macOS, Windows, or
    an OpenMP other than libgomp)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted(set(re.findall(r"(/\S*libgomp[^/\s]*\.so[^/\s]*)", maps.read())))
    except OSError:
        return None
    if not paths:
        return None
    paths.sort(key=lambda path: "/torch/" not in path)  # the one PyTorch links to, when several are loaded
    try:
        return ctypes.CDLL(paths[0])  # already loaded: the same library instance PyTorch uses
    except OSError:
        return None


def serial_torch_thread() -> None:
    """Make the calling thread run PyTorch's CPU operators on one OpenMP thread (no team of its own); other
    threads keep theirs. A no-op where the OpenMP runtime is not libgomp."""
    import torch

    torch.get_num_threads()  # PyTorch sets each thread's OpenMP thread count on its first use: let it happen first
    lib = _libgomp()
    if lib is not None:
        lib.omp_set_num_threads(1)


def run_in_fresh_thread(fn: Callable[[], T], name: str = "gar-load") -> T:
    """``fn()`` in a new thread that ends when it returns (so OpenMP workers it started end with it); its result or
    exception, in the calling thread."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = error

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
