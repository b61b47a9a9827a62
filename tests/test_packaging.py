"""The wheel is what users install: build it, install it non-editable, use it with no CUDA.

One slow test (it stays in the default run): ``python -m build`` makes the sdist and, from the
sdist, the wheel (so both must carry ``kernels/`` and the demo data); the wheel's listing must hold
every subpackage of the source tree, the kernel sources under ``gpuquant/kernels/`` and the demo
dataset; then it is installed with ``--no-deps`` into a fresh venv that sees only numpy and
ml_dtypes (linked from this environment: no CuPy, no cuVS, no pynvml), and a script run there reads
a ``.cu`` file through ``importlib.resources``, imports gpuquant, quantizes the demo rows and runs
the installed ``gpuquant`` command.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".git", "build", "dist", "__pycache__", ".pytest_cache", ".hypothesis", "_hostlib"}

CHECK = r"""
import importlib.resources as resources, json, sys

class NoGpuLibs:
    # Behave like a machine without CUDA libraries: importing them fails.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cupy", "cupy_backends", "cuvs", "pynvml"):
            raise ImportError(f"{name} is not installed here (test)")
        return None

sys.meta_path.insert(0, NoGpuLibs())
root = resources.files("gpuquant.kernels")
cu = sorted(p.name for p in root.iterdir() if p.name.endswith(".cu"))
text = root.joinpath(cu[0]).read_text(encoding="utf-8") if cu else ""
import gpuquant
from gpuquant.data import load_demo
X = load_demo()
codes = gpuquant.quantize(X[:100], "int8-row")
print(json.dumps({
    "cu": cu, "cu_chars": len(text), "file": gpuquant.__file__, "version": gpuquant.__version__,
    "demo_shape": list(X.shape), "codes_dtype": str(codes.data.dtype),
    "gpu_modules": sorted(m for m in sys.modules if m.split(".")[0] in ("cupy", "cuvs", "pynvml")),
}))
"""


def _subpackages() -> set[str]:
    pkgs = {"gpuquant." + ".".join(p.parent.relative_to(ROOT / "gpuquant").parts)
            for p in (ROOT / "gpuquant").rglob("__init__.py")}
    pkgs = {p.rstrip(".") for p in pkgs}
    return pkgs | {"gpuquant.kernels"}


def _copy_tree(dest: Path) -> Path:
    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP or n.startswith(".venv") or n.endswith(".egg-info")}

    return Path(shutil.copytree(ROOT, dest, ignore=ignore))


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build(tmp: Path) -> tuple[Path, Path]:
    src = _copy_tree(tmp / "src")
    dist = tmp / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], cwd=tmp)
    (wheel,) = dist.glob("gpuquant-*.whl")
    (sdist,) = dist.glob("gpuquant-*.tar.gz")
    return wheel, sdist


def _venv_with_numpy_only(tmp: Path) -> Path:
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp).strip())
    import ml_dtypes
    import numpy

    for mod in (numpy, ml_dtypes):
        pkg = Path(mod.__file__).parent
        for name in (pkg.name, f"{pkg.name}.libs"):
            if (pkg.parent / name).exists():
                (site / name).symlink_to(pkg.parent / name)
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


@pytest.mark.slow
def test_wheel_installs_non_editable_and_ships_kernels(tmp_path: Path) -> None:
    wheel, _ = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {"gpuquant" if n == "gpuquant/__init__.py" else n[: -len("/__init__.py")].replace("/", ".")
                for n in names if n.endswith("__init__.py")}
    assert _subpackages() <= packaged, f"subpackages missing from the wheel: {_subpackages() - packaged}"
    sources = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
    assert {f"gpuquant/kernels/{s}" for s in sources} <= set(names)
    assert "gpuquant/data/minilm_demo_2k.npy" in names
    assert not any(n.startswith(("kernels/", "tests/")) for n in names)

    venv = _venv_with_numpy_only(tmp_path)
    _run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    result = json.loads(_run([str(venv / "bin" / "python"), "-c", CHECK], cwd=work, env=_clean_env()))
    assert result["cu"] and result["cu_chars"] > 0
    assert Path(result["file"]).is_relative_to(venv), result["file"]
    assert result["demo_shape"] == [2000, 384]
    assert result["codes_dtype"] == "int8"
    assert result["gpu_modules"] == []

    out = _run([str(venv / "bin" / "gpuquant"), "convert", "demo", "codes", "--scheme", "int8-row",
                "--backend", "numpy", "--format", "json"], cwd=work, env=_clean_env())
    doc = json.loads(out)
    assert doc["ok"] and doc["codes"]["shape"] == [2000, 384]
    assert (work / "codes" / "codes.npy").is_file()


def test_installed_package_finds_the_kernel_sources() -> None:
    """The install the tests run against (``pip install -e .`` in CI) maps ``kernels/`` in."""
    from importlib import resources

    try:
        root = resources.files("gpuquant.kernels")
    except ModuleNotFoundError:
        pytest.fail("gpuquant.kernels is missing: install the project (pip install -e .) before testing")
    found = sorted(p.name for p in root.iterdir() if p.name.endswith((".cu", ".cuh")))
    expected = sorted(p.name for p in (ROOT / "kernels").iterdir() if p.suffix in (".cu", ".cuh"))
    assert found == expected
    assert all(root.joinpath(name).read_text(encoding="utf-8") for name in found)
