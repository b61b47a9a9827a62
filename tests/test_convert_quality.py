"""The convert report's ``quality`` (values stored as NaN/±Inf, inputs clipped to the range ends,
counted over every row on the CPU and GPU paths) and its reconstruction sample (``null`` when
nothing finite was compared; none for binary codes, which get a recall sample instead)."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import cli_json, cli_run, fitted, matrix
from test_engine import _create_writer, _use_fake_cupy

import gpuquant
from gpuquant import store as gstore
from gpuquant.engine.progress import Progress
from gpuquant.engine.run import edge_totals

F32 = np.float32


def _fp8_nonfinite(X: np.ndarray) -> int:
    return int(np.count_nonzero(~np.isfinite(X.astype(ml_dtypes.float8_e4m3fn).astype(F32))))


def test_fp8_overflow_of_every_value_is_counted_and_the_error_is_null(tmp_path: Path, rng: np.random.Generator,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    X = matrix(rng, 300, 48) + F32(1000)  # every value beyond e4m3's 464: every stored value is NaN
    np.save(tmp_path / "x.npy", X)
    code, doc = cli_json(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--scheme", "fp8-e4m3",
                         "--device", "cpu", "--format", "json")
    assert code == 0
    assert doc["quality"] == {"nonfinite_outputs": 300 * 48, "clipped_inputs": 0}
    assert doc["reconstruction"]["rel_error"] is None and doc["reconstruction"]["compared_values"] == 0
    code, out, err = cli_run(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--scheme",
                             "fp8-e4m3", "--device", "cpu", "--overwrite")
    assert code == 0
    assert f"warning: {tmp_path / 'o'}: 14400 of 14400 stored values decode to NaN or ±Inf" in err
    assert "relative reconstruction error n/a" in out and "no finite value to compare" in out


def test_partial_overflow_is_counted_over_every_row(tmp_path: Path, rng: np.random.Generator,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    X = matrix(rng, 2000, 32) * F32(5000)
    np.save(tmp_path / "x.npy", X)
    code, doc = cli_json(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--scheme", "fp8-e4m3",
                         "--device", "cpu", "--batch-rows", "77", "--format", "json")
    assert code == 0 and doc["quality"]["nonfinite_outputs"] == _fp8_nonfinite(X) > 0


def test_clipped_inputs_of_a_given_quantizer(tmp_path: Path, rng: np.random.Generator,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    q = fitted("st-int8", matrix(rng, 100, 16, scale=0.1))
    q.save(tmp_path / "q.json")
    X = matrix(rng, 500, 16)
    np.save(tmp_path / "x.npy", X)
    lo, hi = q.state["lo"], q.state["hi"]
    code, doc = cli_json(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--quantizer",
                         str(tmp_path / "q.json"), "--device", "cpu", "--format", "json")
    assert code == 0 and doc["quality"] == {"nonfinite_outputs": 0,
                                            "clipped_inputs": int(((X < lo) | (X > hi)).sum())}
    code, out, err = cli_run(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--quantizer",
                             str(tmp_path / "q.json"), "--device", "cpu", "--overwrite")
    assert "input values were clipped" in err


def test_a_clean_run_warns_nothing(tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", matrix(rng, 200, 16))
    code, out, err = cli_run(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--scheme", "int8-row",
                             "--device", "cpu")
    assert code == 0 and "warning" not in err and "0 values decode to NaN/±Inf, 0 inputs clipped" in out


def test_binary_gets_no_reconstruction_error_but_a_recall_sample(tmp_path: Path, rng: np.random.Generator) -> None:
    doc = gpuquant.convert(matrix(rng, 1000, 64), tmp_path / "o", "binary", device="cpu", progress=False)
    rec = doc["reconstruction"]
    assert rec["rel_error"] is None and "sign pattern" in rec["why"] and 0 < rec["recall_at_10"] <= 1
    assert doc["quality"] == {"nonfinite_outputs": 0, "clipped_inputs": 0}


def test_rows_written_before_a_resume_are_counted_from_the_store(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 500, 32) * F32(3000)
    doc = gpuquant.convert(X, tmp_path / "o", "fp8-e4m3", device="cpu", progress=False)
    st = gpuquant.open(tmp_path / "o")
    src = gpuquant.engine.sources.open_source(X)
    expected = _fp8_nonfinite(X)
    assert doc["quality"]["nonfinite_outputs"] == expected
    tail = _fp8_nonfinite(X[123:])
    assert edge_totals(st, src, {"nonfinite_outputs": tail, "uncounted": [(0, 123)]}, 50)["nonfinite_outputs"] == expected
    middle = _fp8_nonfinite(X[:100]) + _fp8_nonfinite(X[300:])
    assert edge_totals(st, src, {"nonfinite_outputs": middle, "uncounted": [(100, 300)]}, 64)["nonfinite_outputs"] \
        == expected
    assert edge_totals(st, src, {}, 64)["nonfinite_outputs"] == expected


@pytest.mark.parametrize("preset", ["fp8-e4m3", "st-int8", "int4-block", "binary"])
def test_the_gpu_stream_counts_what_the_cpu_stream_counts(tmp_path: Path, rng: np.random.Generator,
                                                          monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    from gpuquant.engine import pipeline
    from gpuquant.engine.sources import open_source

    X = matrix(rng, 1234, 128)
    q = fitted(preset, X[:100] * F32(0.01))
    X[::7] *= F32(3000)
    np.save(tmp_path / "x.npy", X)
    from gpuquant.backends import numpy_backend

    monkeypatch.setattr(numpy_backend, "CHUNK_VALUES", 29 * 128)  # the CPU counts several chunks per batch
    results = []
    for run, out in ((pipeline.run_cpu, "cpu"), (pipeline.run_gpu, "gpu")):
        if out == "gpu":
            _use_fake_cupy(monkeypatch, 150, [])  # with one halving of the batch
            monkeypatch.setattr(pipeline, "EDGE_CHUNK_VALUES", 37 * 128)  # several chunks per batch, and a tail
        src = open_source(tmp_path / "x.npy")
        with gstore.StoreLock(tmp_path / out):
            w = _create_writer(tmp_path / out, preset, q, src)
            stats = run(src, q.scheme, q.state, w, start=0, batch_rows=200,
                        progress=Progress(1234, src.row_bytes, enabled=False))
            w.close()
        src.close()
        results.append((stats["nonfinite_outputs"], stats["clipped_inputs"]))
    codes, side = q.scheme.encode(X, q.state)
    assert results[0] == results[1] == q.scheme.edge_counts(X, codes, side, q.state)


@pytest.mark.parametrize("preset", ["st-int8", "int8-row"])
def test_a_full_disk_is_refused_before_the_fit_pass_reads_the_input(tmp_path: Path, rng: np.random.Generator,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     preset: str) -> None:
    from gpuquant.engine.sources import FileSource
    from gpuquant.store import write

    np.save(tmp_path / "x.npy", matrix(rng, 1000, 32))
    reads: list[int] = []
    real_read = FileSource.read_into
    monkeypatch.setattr(FileSource, "read_into", lambda self, a, b, out: (reads.append(a), real_read(self, a, b, out)))
    monkeypatch.setattr(write, "free_bytes", lambda path: 1000)
    code, out, err = cli_run(capsys, "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"), "--scheme", preset,
                             "--device", "cpu")
    assert code == 1 and "not enough disk space" in err and "1000 bytes (0.000 GB) are free" in err
    assert reads == [] and not (tmp_path / "o").exists()
