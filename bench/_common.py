"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``, so this folder is on
``sys.path`` and they import this module as ``_common``)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_commit(short: bool = True) -> str:
    """The checkout's HEAD commit (abbreviated unless ``short=False``), or ``"unknown"`` without git."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
