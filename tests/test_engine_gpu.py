"""The streamed GPU path (marker ``gpu``): pinned staging, two CUDA streams, the writer thread,
bit for bit equal to the numpy reference; out-of-memory halving; the planner's ``--measure``.
Skipped without a usable GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import fit_codes, matrix

import gpuquant
from gpuquant.backends import supports

cp = pytest.importorskip("cupy")
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("gpu")]


GPU_PRESETS = [p.name for p in gpuquant.presets()
               if supports("cupy", gpuquant.Quantizer(p.name, backend="numpy").scheme)[0]]


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_stream_equals_the_reference(tmp_path: Path, rng: np.random.Generator, preset: str) -> None:
    X = matrix(rng, 5003, 128)
    np.save(tmp_path / "x.npy", X)
    rep = gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", preset, device="gpu", batch_rows=700, progress=False)
    assert rep["device"] == "gpu" and rep["batch_rows"] == 700
    ref = fit_codes(preset, X)[1]
    st = gpuquant.open(tmp_path / "o")
    assert np.asarray(st.codes).tobytes() == np.asarray(ref.data).tobytes()
    for k, v in ref.side.items():
        assert np.asarray(st.side[k]).tobytes() == v.tobytes()


def test_gpu_batch_size_comes_from_the_planner(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 20_000, 256)
    rep = gpuquant.convert(X, tmp_path / "o", "int8-row", device="gpu", progress=False)
    assert rep["plan"]["n_max"] >= rep["batch_rows"] > 0 and rep["plan"]["pinned_host_bytes"] > 0


def test_gpu_out_of_memory_halves_the_batch(tmp_path: Path, rng: np.random.Generator,
                                            monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    X = matrix(rng, 4000, 64)
    real = cp.empty
    state = {"failed": False}

    def empty(shape, dtype=float, *args, **kwargs):  # the first device buffer of 1000+ rows fails once
        if not state["failed"] and isinstance(shape, tuple) and shape and shape[0] >= 1000:
            state["failed"] = True
            raise cp.cuda.memory.OutOfMemoryError(1 << 40, 1 << 30)
        return real(shape, dtype, *args, **kwargs)

    monkeypatch.setattr(cp, "empty", empty)
    rep = gpuquant.convert(X, tmp_path / "o", "st-int8", device="gpu", batch_rows=1000, progress=False)
    assert rep["oom_halvings"] == 1 and rep["batch_rows"] == 500
    assert "halving" in caplog.text
    assert np.asarray(gpuquant.open(tmp_path / "o").codes).tobytes() == np.asarray(fit_codes("st-int8", X)[1].data).tobytes()


def test_gpu_resumes_a_cpu_run_bit_for_bit(tmp_path: Path, rng: np.random.Generator,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    from gpuquant import store as gstore

    X = matrix(rng, 3000, 96)
    real, calls = os.pwrite, {"n": 0}

    def full(fd: int, data, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 8:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(gstore.write.os, "pwrite", full)
    with pytest.raises(gpuquant.GpuquantError, match="--resume"):
        gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", batch_rows=500, progress=False)
    monkeypatch.setattr(gstore.write.os, "pwrite", real)
    rep = gpuquant.convert(X, tmp_path / "o", "int8-row", device="gpu", resume=True, batch_rows=256, progress=False)
    assert rep["resumed_from"] > 0 and rep["state"]["status"] == "complete"
    ref = fit_codes("int8-row", X)[1]
    st = gpuquant.open(tmp_path / "o")
    assert np.asarray(st.codes).tobytes() == np.asarray(ref.data).tobytes()
    assert np.asarray(st.side["scales"]).tobytes() == ref.side["scales"].tobytes()


def test_plan_measure_reports_h_measured() -> None:
    p = gpuquant.plan("int8-row", dim=384, rows=200_000, op="transform", measure=True)
    m = p.measured
    assert m is not None and m["observed_peak"] > 0 and m["formula_without_scratch"] > 0
    assert -0.5 < m["h_measured"] < 5 and m["bandwidths"]["h2d"] > 1e9


def test_pipeline_uses_two_streams(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 6000, 64)
    rep = gpuquant.convert(X, tmp_path / "o", "fp16", device="gpu", batch_rows=1000, progress=False)
    assert rep["device"] == "gpu" and rep["streams"] == 2
