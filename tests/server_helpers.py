"""Helpers for tests that run ``gar-tools serve`` / ``gar-tools worker`` as real subprocesses.

Servers are started with this interpreter (``python -m gar_tools.cli``), their output goes to a log file (shown
when they fail), readiness is polled with a deadline (no sleeps for synchronization), and they are always stopped.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "gar_tools" / "assets"
CLI = [sys.executable, "-m", "gar_tools.cli"]
START_DEADLINE_S = 180.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(log: Path, limit: int = 4000) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text[-limit:]


@contextmanager
def cli_server(
    args: Sequence[str], *, ready_url: str, log: Path, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``gar-tools ARGS`` until the block ends; wait until ``ready_url`` answers 200 first."""
    import httpx

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, *args], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO
        )
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gar-tools {' '.join(args)} exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                if httpx.get(ready_url, timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"gar-tools {' '.join(args)} not ready after {START_DEADLINE_S} s:\n{_log_tail(log)}"
                )
            time.sleep(0.2)  # polling interval, not synchronization: readiness is what ends the loop
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@contextmanager
def thread_server(app, *, header_timeout_s: float | None = None) -> Iterator[str]:
    """Run ASGI ``app`` with uvicorn in a thread on a free loopback port (with the servers' request-head timeout,
    when given) until the block ends; yields its base URL."""
    import threading

    import uvicorn

    from gar_tools.servers.common import header_timeout_protocol

    port = free_port()
    protocol = header_timeout_protocol(header_timeout_s) if header_timeout_s else "h11"
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=protocol, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + START_DEADLINE_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)  # polling interval: server.started is what ends the loop
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
