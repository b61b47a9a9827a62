"""Benchmark smoke tests (marker ``bench``): CI-sized runs of the CPU benchmark and the quality table
as their users run them (``python bench/<script>.py``), writing into ``tmp_path``; the other
scripts at least start. They check that the scripts run, not how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(BENCH / name), *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr}"
    return proc


def test_cpu_bench_quick(tmp_path: Path) -> None:
    run_script("cpu_bench.py", "--quick", "--out", tmp_path)
    report = json.loads((tmp_path / "cpu_quick.json").read_text())
    assert report["benchmark"] == "cpu" and report["results"]
    assert (tmp_path / "cpu_quick.md").exists()


def test_quality_on_the_demo_data(tmp_path: Path) -> None:
    run_script("quality.py", "--n-queries", "100", "--out", tmp_path)
    assert len(list(tmp_path.glob("quality_*.json"))) == 1 and len(list(tmp_path.glob("quality_*.md"))) == 1


@pytest.mark.parametrize("name", ["convert_bench.py", "gpu_check.py"])
def test_script_starts(name: str) -> None:
    assert "usage:" in run_script(name, "--help").stdout
