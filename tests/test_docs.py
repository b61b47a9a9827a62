"""The project's documentation stands alone: docs/ exists and links public sources, and no file a
user receives cites notes that are not part of the project."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from gpuquant.cli.render import HINTS

ROOT = Path(__file__).resolve().parent.parent
#: Citations of material outside the repository (design notes and seed documents the project grew from).
OUTSIDE = re.compile(r"(?-i:DESIGN\.md)|\.\./shared|/work/|\bthe seeds?'?s?\b|\bseed_", re.IGNORECASE)


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name for name in out.decode().split("\0") if name]
    return [f for f in files if f.suffix in {".py", ".md", ".toml", ".cu", ".cuh", ".h", ".cpp", ".txt", ".yml", ".yaml"}
            or f.name in {"Dockerfile", ".gitignore"}]


def test_no_file_cites_material_outside_the_project() -> None:
    hits = []
    for f in _tracked_text_files():
        if f == Path(__file__).resolve() or not f.is_file():
            continue
        for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert hits == []


@pytest.mark.parametrize("page,must_link", [
    ("design.md", ["memory.md", "peers.md"]),
    ("peers.md", ["https://github.com/rapidsai/cuvs/", "https://github.com/facebookresearch/faiss/",
                  "https://github.com/UKPLab/sentence-transformers", "https://github.com/ggml-org/llama.cpp/",
                  "https://github.com/jax-ml/ml_dtypes"]),
    ("memory.md", ["https://docs.nvidia.com/cuvs/user-guide/api-guides/preprocessing-guide/scalar-quantizer"]),
])
def test_docs_pages_exist_and_link_their_sources(page: str, must_link: list[str]) -> None:
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    for link in must_link:
        assert link in text, (page, link)


def test_demo_output_is_ignored_and_doctor_installs_from_a_clone() -> None:
    assert "/demo-codes/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    for hint in HINTS.values():
        assert 'pip install ".[' in hint and "gpuquant[" not in hint
