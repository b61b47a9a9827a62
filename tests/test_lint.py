"""The package passes ruff and mypy as configured in pyproject.toml ([tool.ruff], [tool.mypy]), so
the README's test command checks them too (both come with the ``test`` extra)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_ruff_finds_nothing_in_the_package() -> None:
    proc = _run("ruff", "check", "--no-cache", "gpuquant")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_finds_nothing_in_the_package() -> None:
    proc = _run("mypy")  # the files and options are pyproject.toml's [tool.mypy]
    assert proc.returncode == 0, proc.stdout + proc.stderr
