"""Compile Triton kernels to CUDA machine code without a GPU (a fresh process, the interpreter off): catches errors
that only compiled mode raises. Used by the kernels' tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def assert_compiles_for_cuda(code: str, cache_dir: Path) -> None:
    """Run ``code`` (Python that calls ``triton.compile`` and prints ``ok`` last) without ``TRITON_INTERPRET``;
    skip when no ``ptxas`` can finish the compile, fail with its stderr otherwise."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("no ptxas available to finish a CUDA compile")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
