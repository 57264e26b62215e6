"""README.md's Python examples run as written (tiny model: random weights, meaningless text), and keep
``max_new_tokens`` small so they do not generate 1 024 tokens of noise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index: int) -> None:
    code = BLOCKS[index]
    if "GarToolkit(" in code:  # every block that generates says how much, and keeps it small
        budgets = [int(n) for n in re.findall(r"max_new_tokens=(\d+)", code)]
        assert budgets and max(budgets) <= 32, f"README block {index} must pass a small max_new_tokens"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO, check=False
    )
    assert proc.returncode == 0, f"README block {index} failed:\n{code}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
