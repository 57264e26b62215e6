"""The engine keeps CPU parallelism for its model thread: auxiliary threads run torch on one OpenMP thread each,
loading happens in a thread that ends (gar_tools/engine/threads.py)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gar_tools.engine.local import LocalEngine
from gar_tools.engine.threads import _libgomp, run_in_fresh_thread, serial_torch_thread

needs_libgomp = pytest.mark.skipif(_libgomp() is None, reason="PyTorch's OpenMP here is not GNU libgomp")


@needs_libgomp
def test_serial_torch_thread_changes_only_its_thread() -> None:
    before = torch.get_num_threads()
    with ThreadPoolExecutor(1, initializer=serial_torch_thread) as pool:
        inside = pool.submit(torch.get_num_threads).result()
        # and torch still computes there, the same values
        a = torch.randn(300, 300, generator=torch.Generator().manual_seed(0))
        assert torch.equal(pool.submit(torch.matmul, a, a).result(), a @ a)
    with ThreadPoolExecutor(1) as pool:
        plain = pool.submit(torch.get_num_threads).result()
    assert inside == 1
    assert torch.get_num_threads() == before and plain == before


def test_run_in_fresh_thread_returns_raises_and_ends() -> None:
    seen: list[threading.Thread] = []

    def work() -> int:
        seen.append(threading.current_thread())
        return 7

    assert run_in_fresh_thread(work, name="probe") == 7
    assert seen[0] is not threading.current_thread() and seen[0].name == "probe" and not seen[0].is_alive()

    def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        run_in_fresh_thread(fail)


@needs_libgomp
def test_engine_helpers_are_serial_and_model_thread_is_not() -> None:
    """The engine's auxiliary threads use one OpenMP thread; the model thread keeps the default."""
    engine = LocalEngine("tiny", max_batch_size=2)
    try:
        runtime = engine._ready()  # noqa: SLF001 - the threads are the subject
        aux = asyncio.run(engine._off_loop(torch.get_num_threads))  # noqa: SLF001
        loader = engine._loader.submit(torch.get_num_threads).result()  # noqa: SLF001
        model_thread: list[int] = []
        hidden = runtime.pipeline.model.mllm.config.text_config.hidden_size

        def embeds() -> torch.Tensor:
            model_thread.append(torch.get_num_threads())
            return torch.zeros(4, hidden)

        runtime.batcher.submit(embeds, max_new_tokens=1).result(timeout=60)
        assert aux == 1 and loader == 1
        assert model_thread == [torch.get_num_threads()] and model_thread[0] >= 1
    finally:
        engine.close()
