"""The streaming engine on the CPU (``gpuquant.convert``, ``gpuquant convert``): streamed output bit
for bit equal to the in-memory ``Quantizer`` for every preset, every source kind, refusals before
anything is written, resume after a real SIGKILL, the lock, overwrite, a full disk, progress, and
bounded resident memory on a few hundred MB."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import fake_cupy
import numpy as np
import pytest
from helpers import cli_json, cli_run, fit_codes, matrix

import gpuquant
from gpuquant import store as gstore
from gpuquant.engine import ConvertError
from gpuquant.engine import fit as efit
from gpuquant.engine.progress import Progress
from gpuquant.errors import InputError
from gpuquant.schemes import make_scheme

PRESETS = [p.name for p in gpuquant.presets()]
ROOT = Path(__file__).resolve().parent.parent


def assert_store_equals(path: Path, codes: gpuquant.Codes) -> None:
    st = gpuquant.open(path)
    assert st.codes.dtype == codes.data.dtype and st.codes.shape == codes.data.shape
    assert np.asarray(st.codes).tobytes() == np.asarray(codes.data).tobytes()
    assert set(st.side) == set(codes.side)
    for k, v in codes.side.items():
        assert np.asarray(st.side[k]).tobytes() == np.asarray(v).tobytes(), k


@pytest.mark.parametrize("preset", PRESETS)
def test_streamed_equals_in_memory_for_every_preset(tmp_path: Path, rng: np.random.Generator,
                                                    monkeypatch: pytest.MonkeyPatch, preset: str) -> None:
    X = matrix(rng, 1037, 128)
    np.save(tmp_path / "x.npy", X)
    monkeypatch.setattr(efit, "GATHER_BYTES", 0)  # the streaming fit, not the in-memory one
    monkeypatch.setattr(efit, "FIT_BATCH_VALUES", 128 * 150)
    rep = gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", preset, device="cpu", batch_rows=100, progress=False)
    q, ref = fit_codes(preset, X)
    assert_store_equals(tmp_path / "o", ref)
    st = gpuquant.open(tmp_path / "o")
    if q.scheme.needs_fit:
        for k, v in q.state.items():
            np.testing.assert_array_equal(st.quantizer.state[k], v)
    assert rep["batch_rows"] == 100 and rep["rows"] == 1037 and rep["state"]["status"] == "complete"
    assert rep["compression_ratio"] == pytest.approx(X.nbytes / ref.nbytes, rel=1e-3)


@pytest.mark.parametrize(("preset", "params"), [("cuvs-sq8", {"quantile_method": "exact"}),
                                                ("st-int8", {"granularity": "tensor", "range": "quantile"}),
                                                ("binary", {"threshold": "median"}), ("binary", {"threshold": "mean"})])
def test_streamed_fits_equal_in_memory(tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
                                       preset: str, params: dict[str, Any]) -> None:
    X = matrix(rng, 2000, 48)
    X[::7, 3] = 0.0
    X[::5, 4] = 1.25  # ties
    monkeypatch.setattr(efit, "GATHER_BYTES", 0)
    monkeypatch.setattr(efit, "FIT_BATCH_VALUES", 48 * 333)
    gpuquant.convert(X, tmp_path / "o", preset, params=params, device="cpu", batch_rows=333, progress=False)
    q, ref = fit_codes(preset, X, **params)
    assert_store_equals(tmp_path / "o", ref)
    for k, v in q.state.items():
        np.testing.assert_array_equal(gpuquant.open(tmp_path / "o").quantizer.state[k], v)


def test_radix_select_matches_partition(rng: np.random.Generator) -> None:
    X = matrix(rng, 777, 9)
    X[:100, 2] = -0.5
    from gpuquant.engine.sources import ArraySource

    src = ArraySource(X)
    ranks = [0, 5, 388, 776]
    got = efit.select(src, ranks, per_dim=True)
    part = np.sort(X, axis=0)
    for r, g in zip(ranks, got, strict=True):
        np.testing.assert_array_equal(g, part[r])
    flat = np.sort(X.reshape(-1))
    for r, g in zip([0, 3000, 6992], efit.select(src, [0, 3000, 6992], per_dim=False), strict=True):
        assert g[0] == flat[r]


def test_float64_fortran_and_float16_inputs(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 301, 64)
    for i, arr in enumerate([np.asfortranarray(X.astype(np.float64)), X.astype(np.float16)]):
        np.save(tmp_path / f"x{i}.npy", arr)
        gpuquant.convert(tmp_path / f"x{i}.npy", tmp_path / f"o{i}", "st-int8", device="cpu", batch_rows=64, progress=False)
        assert_store_equals(tmp_path / f"o{i}", fit_codes("st-int8", arr)[1])


def test_shards_are_concatenated_in_natural_order(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 1000, 32)
    shards = tmp_path / "shards"
    shards.mkdir()
    for name, (a, b) in zip(["part-1.npy", "part-2.npy", "part-10.npy"], [(0, 333), (333, 334), (334, 1000)], strict=True):
        np.save(shards / name, X[a:b])
    rep = gpuquant.convert(shards, tmp_path / "o", "cuvs-sq8", device="cpu", batch_rows=150, progress=False)
    assert_store_equals(tmp_path / "o", fit_codes("cuvs-sq8", X)[1])
    assert rep["source"]["kind"] == "shards" and [f["rows"] for f in rep["source"]["files"]] == [333, 1, 666]


@pytest.mark.parametrize(("bad", "message"), [
    (np.zeros((5, 31), np.float32), "shards disagree: .* 31 dims, but .* 32 dims"),
    (np.zeros((5, 32), np.float64), "shards disagree: .*float64.* but .*float32"),
    (np.zeros((5, 32), np.int32), "dtype int32"),
])
def test_shards_that_disagree_are_refused_before_writing(tmp_path: Path, bad: np.ndarray, message: str) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", np.zeros((4, 32), np.float32))
    np.save(shards / "b.npy", bad)
    with pytest.raises(InputError, match=message):
        gpuquant.convert(shards, tmp_path / "o", "fp16", device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_raw_float32_with_shape(capsys: pytest.CaptureFixture[str], tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 250, 40)
    X.tofile(tmp_path / "x.f32")
    code, doc = cli_json(capsys, "convert", tmp_path / "x.f32", tmp_path / "o", "--scheme", "int8-row",
                         "--shape", "250,40", "--batch-rows", "33", "--device", "cpu")
    assert code == 0 and doc["source"]["kind"] == "raw" and doc["source"]["shape"] == [250, 40]
    assert_store_equals(tmp_path / "o", fit_codes("int8-row", X)[1])
    code, doc = cli_json(capsys, "convert", tmp_path / "x.f32", tmp_path / "o2", "--scheme", "int8-row", "--shape=-1,40")
    assert code == 0 and doc["rows"] == 250
    code, doc = cli_json(capsys, "convert", tmp_path / "x.f32", tmp_path / "o4", "--scheme", "int8-row", "--shape", "auto,40")
    assert code == 0 and doc["rows"] == 250
    code, doc = cli_json(capsys, "convert", tmp_path / "x.f32", tmp_path / "o3", "--scheme", "int8-row", "--shape", "251,40")
    assert code == 2 and "needs 40160 bytes" in doc["error"]["message"] and not (tmp_path / "o3").exists()
    code, doc = cli_json(capsys, "convert", tmp_path / "x.f32", tmp_path / "o3", "--scheme", "int8-row", "--shape", "40")
    assert code == 2 and "--shape expects ROWS,DIM" in doc["error"]["message"]


@pytest.mark.parametrize("gather", [0, 1 << 30])
@pytest.mark.parametrize("preset,params", [("st-int8", {}), ("uint8-affine", {}), ("es-byte", {}), ("cuvs-sq8", {}),
                                           ("cuvs-sq8", {"quantile_method": "exact"}), ("binary", {"threshold": "mean"}),
                                           ("binary", {"threshold": "median"})])
def test_nan_in_fit_data_is_refused_before_writing(tmp_path: Path, rng: np.random.Generator,
                                                   monkeypatch: pytest.MonkeyPatch, gather: int, preset: str,
                                                   params: dict[str, Any]) -> None:
    X = matrix(rng, 500, 16)
    X[321, 4] = np.nan
    X[400, 0] = np.nan
    monkeypatch.setattr(efit, "GATHER_BYTES", gather)
    monkeypatch.setattr(efit, "FIT_BATCH_VALUES", 100 * 16)
    with pytest.raises(InputError, match=r"^fit data contains NaN (or ±Inf )?\(row 321 of the input\)"):
        gpuquant.convert(X, tmp_path / "o", preset, device="cpu", progress=False, params=params)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("preset", ["gguf-q8_0", "safetensors-fp8", "pgvector-halfvec"])
def test_nan_in_a_row_is_named_by_its_row_of_the_input(tmp_path: Path, rng: np.random.Generator, preset: str) -> None:
    X = matrix(rng, 500, 64)
    X[321, 4] = np.nan
    with pytest.raises(InputError, match=r"^row 321 of the input holds NaN.*keeps 300 of 500 rows"):
        gpuquant.convert(X, tmp_path / "o", preset, device="cpu", batch_rows=100, progress=False)


def test_nan_in_an_absmax_row_stops_with_the_row_and_a_resumable_state(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 500, 16)
    X[321, 4] = np.nan
    with pytest.raises(InputError, match=r"row 321 of the input holds NaN or ±Inf.*keeps 300 of 500 rows.*--overwrite"):
        gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, progress=False)
    st = gpuquant.open(tmp_path / "o", allow_incomplete=True)
    assert st.status["rows_done"] == 300
    np.testing.assert_array_equal(st.codes[:300], np.asarray(fit_codes("int8-row", X[:300])[1]))
    X[2, 0] = np.inf  # in the first batch: nothing is kept
    with pytest.raises(InputError, match="row 2 of the input"):
        gpuquant.convert(X, tmp_path / "p", "int8-row", device="cpu", batch_rows=100, progress=False)
    assert not (tmp_path / "p").exists() and not (tmp_path / ".p.lock").exists()


def test_existing_outputs_are_never_overwritten_without_asking(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 100, 16)
    gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", progress=False)
    before = (tmp_path / "o" / "codes.npy").read_bytes()
    with pytest.raises(InputError, match="output already exists"):
        gpuquant.convert(X * 2, tmp_path / "o", "fp16", device="cpu", progress=False)
    assert (tmp_path / "o" / "codes.npy").read_bytes() == before
    gpuquant.convert(X * 2, tmp_path / "o", "fp16", device="cpu", overwrite=True, progress=False)
    assert_store_equals(tmp_path / "o", fit_codes("fp16", X * 2)[1])
    with pytest.raises(InputError, match="already complete"):
        gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", resume=True)
    with pytest.raises(InputError, match="nothing to continue"):
        gpuquant.convert(X, tmp_path / "new", "fp16", device="cpu", resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_a_running_convert_holds_the_lock(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((10, 8), np.float32))
    with gstore.StoreLock(tmp_path / "o"):
        code, doc = cli_json(capsys, "convert", tmp_path / "x.npy", tmp_path / "o", "--scheme", "fp16")
    assert code == 1 and "being written by another gpuquant run" in doc["error"]["message"]
    assert not (tmp_path / "o").exists()


def test_disk_full_stops_with_a_resumable_state(tmp_path: Path, rng: np.random.Generator,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    X = matrix(rng, 1000, 32)
    real = os.pwrite
    calls = {"n": 0}

    def full(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(gstore.write.os, "pwrite", full)  # call 1 is the lock file's pid, 2 and 3 two batches
    with pytest.raises(ConvertError, match=r"No space left on device.*keeps 200 of 1000 rows.*--resume"):
        gpuquant.convert(X, tmp_path / "o", "fp8-e4m3", device="cpu", batch_rows=100, progress=False)
    monkeypatch.setattr(gstore.write.os, "pwrite", real)
    rep = gpuquant.convert(X, tmp_path / "o", "fp8-e4m3", device="cpu", resume=True, batch_rows=64, progress=False)
    assert rep["resumed_from"] == 200
    assert_store_equals(tmp_path / "o", fit_codes("fp8-e4m3", X)[1])


def test_a_read_error_stops_with_a_resumable_state(tmp_path: Path, rng: np.random.Generator,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuquant.engine import sources

    X = matrix(rng, 1000, 32)
    np.save(tmp_path / "x.npy", X)
    real, calls = os.preadv, {"n": 0}

    def failing(fd: int, buffers: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(sources.os, "preadv", failing)
    with pytest.raises(ConvertError, match=r"read error in .*x.npy at byte \d+: .*Input/output error.*keeps \d+ of 1000 "
                                           r"rows.*--resume"):
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "int8-row", device="cpu", batch_rows=100, progress=False)
    monkeypatch.setattr(sources.os, "preadv", real)
    assert gpuquant.open(tmp_path / "o", allow_incomplete=True).status["status"] == "in_progress"
    gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "int8-row", device="cpu", resume=True, progress=False)
    assert_store_equals(tmp_path / "o", fit_codes("int8-row", X)[1])


def test_inspect_shows_an_unfinished_store(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           rng: np.random.Generator) -> None:
    X = matrix(rng, 300, 16)
    X[250, 0] = np.nan
    with pytest.raises(InputError):
        gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, progress=False)
    code, out, _ = cli_run(capsys, "inspect", tmp_path / "o")
    assert code == 0 and "in_progress, 200 of 300 rows written" in out and "--resume" in out


def test_resume_refuses_a_changed_source_or_scheme(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 400, 16)
    bad = X.copy()
    bad[350, 0] = np.nan
    np.save(tmp_path / "x.npy", bad)
    with pytest.raises(InputError, match="row 350"):
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "int8-row", device="cpu", batch_rows=100, progress=False)
    raw, st = (tmp_path / "x.npy").read_bytes(), (tmp_path / "x.npy").stat()
    np.save(tmp_path / "x.npy", X)  # the same path, new contents
    with pytest.raises(InputError, match="--resume refused: the source changed"):
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "int8-row", device="cpu", resume=True)
    (tmp_path / "x.npy").write_bytes(raw)
    os.utime(tmp_path / "x.npy", ns=(st.st_atime_ns, st.st_mtime_ns))  # the original file again
    with pytest.raises(InputError, match="--resume refused: .* was started with 'int8-row'"):
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "fp16", device="cpu", resume=True)
    with pytest.raises(InputError, match="unfinished store .* pass --resume"):
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "int8-row", device="cpu")
    with pytest.raises(InputError, match="row 350"):  # the same source resumes, and stops at the same row
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "o", "int8-row", device="cpu", resume=True)
    assert gpuquant.open(tmp_path / "o", allow_incomplete=True).status["rows_done"] == 300


def _slow_convert(src: Path, out: Path, *extra: str, sleep: str = "0.02") -> subprocess.Popen[str]:
    env = {**os.environ, "GPUQUANT_DEBUG_BATCH_SLEEP": sleep, "GPUQUANT_CHECKPOINT_SECONDS": "0.05"}
    return subprocess.Popen([sys.executable, "-m", "gpuquant", "convert", str(src), str(out), "--scheme", "cuvs-sq8",
                             "--device", "cpu", "--batch-rows", "50", "--format", "json", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rows_done(out: Path) -> int:
    try:
        return int(json.loads((out / "manifest.json").read_text())["state"]["rows_done"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait_for_rows(out: Path, proc: subprocess.Popen[str], rows: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = _rows_done(out)
        if done >= rows:
            return done
        time.sleep(0.01)
    raise AssertionError(f"the run did not reach {rows} rows (rc={proc.poll()}, stderr={proc.stderr and proc.stderr.read()})")


def test_sigkill_then_resume_is_bit_identical(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 10_000, 64)
    np.save(tmp_path / "x.npy", X)
    proc = _slow_convert(tmp_path / "x.npy", tmp_path / "o")
    try:
        done = _wait_for_rows(tmp_path / "o", proc, 2000)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    st = gpuquant.open(tmp_path / "o", allow_incomplete=True)
    assert st.status["status"] == "in_progress" and done <= st.status["rows_done"] < 10_000
    out = subprocess.run([sys.executable, "-m", "gpuquant", "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"),
                          "--scheme", "cuvs-sq8", "--resume", "--device", "cpu", "--format", "json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["resumed_from"] >= done and doc["state"]["status"] == "complete"
    gpuquant.convert(X, tmp_path / "straight", "cuvs-sq8", device="cpu", batch_rows=777, progress=False)
    for name in ("codes.npy", "quantizer.json"):
        a, b = (tmp_path / "o" / name).read_bytes(), (tmp_path / "straight" / name).read_bytes()
        if name == "quantizer.json":
            a, b = json.loads(a)["state"], json.loads(b)["state"]
        assert a == b, name
    assert_store_equals(tmp_path / "o", fit_codes("cuvs-sq8", X)[1])
    assert not (tmp_path / ".o.lock").exists()


def test_a_second_run_on_the_same_output_refuses_while_one_runs(tmp_path: Path, rng: np.random.Generator) -> None:
    np.save(tmp_path / "x.npy", matrix(rng, 4000, 16))
    # 80 batches of 0.5 s: the first run holds the lock for about 40 s after the wait below, so the
    # second one (a fresh interpreter, slow to start on a loaded machine) always meets it running.
    proc = _slow_convert(tmp_path / "x.npy", tmp_path / "o", sleep="0.5")
    try:
        _wait_for_rows(tmp_path / "o", proc, 100)
        second = subprocess.run([sys.executable, "-m", "gpuquant", "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"),
                                 "--scheme", "cuvs-sq8", "--resume", "--format", "json"],
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "being written by another gpuquant run" in second.stdout
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_cli_report_and_resume_without_scheme(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              rng: np.random.Generator) -> None:
    X = matrix(rng, 300, 24)
    np.save(tmp_path / "x.npy", X)
    code, doc = cli_json(capsys, "convert", tmp_path / "x.npy", tmp_path / "o", "--scheme", "int8-row", "--device", "cpu")
    assert code == 0
    for key in ("rows", "dims", "seconds", "throughput", "bytes_in", "bytes_out", "compression_ratio", "reconstruction"):
        assert key in doc, key
    assert doc["bytes_in"] == X.nbytes and doc["bytes_out"] == 300 * 24 + 300 * 4
    assert 0 < doc["reconstruction"]["rel_error"] < 0.02 and doc["throughput"]["rows_per_s"] > 0
    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    m["state"]["status"], m["state"]["rows_done"] = "in_progress", 100
    (tmp_path / "o" / "manifest.json").write_text(json.dumps(m))
    code, doc = cli_json(capsys, "convert", tmp_path / "x.npy", tmp_path / "o", "--resume")
    assert code == 0 and doc["resumed_from"] == 100
    assert_store_equals(tmp_path / "o", fit_codes("int8-row", X)[1])
    code, doc = cli_json(capsys, "convert", tmp_path / "x.npy", tmp_path / "o2", "--backend", "numpy", "--device", "gpu",
                         "--scheme", "fp16")
    assert code == 2 and "disagree" in doc["error"]["message"]


def test_progress_bar_only_on_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(1000, 400, stream=stream)
        for done in (100, 500, 1000):
            bar.update(done)
            time.sleep(0.001)
        bar.close()
    assert pipe.getvalue() == ""
    text = tty.getvalue()
    assert "1,000/1,000 rows" in text and "rows/s" in text and "GB/s" in text and "ETA" in text and text.endswith("\n")
    silent = Progress(10, 4, stream=tty, enabled=False)
    assert not silent.tty


def test_threads_do_not_leak(tmp_path: Path, rng: np.random.Generator) -> None:
    before = threading.active_count()
    gpuquant.convert(matrix(rng, 1000, 8), tmp_path / "o", "fp16", device="cpu", batch_rows=10, progress=False)
    assert threading.active_count() <= before + 2  # the numpy backend's pool may start once


RSS_SCRIPT = r"""
import json, sys
from gpuquant import cli
code = cli.main(sys.argv[1:])
status = open("/proc/self/status").read()
hwm = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) * 1024
print(json.dumps({"code": code, "vm_hwm": hwm}), file=sys.stderr)
"""


@pytest.mark.slow
def test_resident_memory_stays_well_below_the_input(tmp_path: Path) -> None:
    n, d = 262_144, 384  # 384 MiB of float32
    mm = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for a in range(0, n, 32768):
        mm[a : a + 32768] = rng.standard_normal((32768, d), dtype=np.float32)
    mm.flush()
    del mm
    size = (tmp_path / "big.npy").stat().st_size
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, "convert", str(tmp_path / "big.npy"), str(tmp_path / "o"),
                           "--scheme", "st-int8", "--device", "cpu", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    assert stats["code"] == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["rows"] == n and doc["state"]["status"] == "complete"
    assert stats["vm_hwm"] < size / 3, f"peak RSS {stats['vm_hwm'] / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB input"
    st = gpuquant.open(tmp_path / "o")
    rows = np.array([0, 1, 77_777, n - 1])
    X = np.load(tmp_path / "big.npy", mmap_mode="r")
    q = st.quantizer
    np.testing.assert_array_equal(np.asarray(st.codes[rows]), np.asarray(q.transform(np.asarray(X[rows]))))


# ------------------------------------------------------------------------------------------------
# the GPU pipeline's logic on the CPU: a numpy-backed stand-in for CuPy (streams, events, pinned
# buffers, OOM) drives ``pipeline.run_gpu`` itself, so rings, ordering, the writer and the OOM
# halving are tested here; tests/test_engine_gpu.py runs the same path on a real GPU.


class _FakeDeviceArray(np.ndarray):
    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        np.copyto(self, arr)

    def get(self, stream: Any = None, out: np.ndarray | None = None, blocking: bool = True) -> np.ndarray:
        if out is None:
            return np.array(self)
        np.copyto(out, self)
        return out


def _fake_cupy(fail_rows: int | None, log: list[str]) -> tuple[Any, Any]:
    import types

    cupy = types.ModuleType("cupy")
    cupyx = types.ModuleType("cupyx")

    class OutOfMemoryError(MemoryError):
        pass

    class Stream:
        def __init__(self, non_blocking: bool = False) -> None:
            assert non_blocking
            log.append("stream")

        def __enter__(self) -> Stream:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

    class Event:
        def __init__(self, disable_timing: bool = False) -> None:
            self.recorded = False

        def record(self, stream: Any = None) -> None:
            self.recorded = True

        def synchronize(self) -> None:
            assert self.recorded

    state = {"failed": False}

    def empty(shape: Any, dtype: Any = np.float32) -> np.ndarray:
        if fail_rows is not None and not state["failed"] and shape[0] >= fail_rows:
            state["failed"] = True
            raise OutOfMemoryError("fake out of memory")
        return np.empty(shape, dtype).view(_FakeDeviceArray)

    class Pool:
        def free_all_blocks(self) -> None:
            log.append("free_all_blocks")

    cuda = types.SimpleNamespace(Stream=Stream, Event=Event, memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError))
    cupy.cuda, cupy.empty = cuda, empty  # type: ignore[attr-defined]
    cupy.zeros = lambda shape, dtype=np.float32: np.zeros(shape, dtype).view(_FakeDeviceArray)  # type: ignore[attr-defined]
    cupy.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined] # array functions: numpy's
    cupy.get_default_memory_pool = Pool  # type: ignore[attr-defined]
    cupyx.empty_pinned = lambda shape, dtype=np.float32: np.empty(shape, dtype)  # type: ignore[attr-defined]
    return cupy, cupyx


class _FakeCupyBackend:
    name = "cupy"

    def transform(self, scheme: Any, state: Any, x: np.ndarray, out: gpuquant.Codes) -> gpuquant.Codes:
        from gpuquant.backends.numpy_backend import NumpyBackend

        assert isinstance(x, _FakeDeviceArray) and isinstance(out.data, _FakeDeviceArray)
        codes = np.asarray(out.data).view(scheme.code_dtype)
        return NumpyBackend().transform(scheme, state, np.asarray(x),
                                        out=gpuquant.Codes(codes, {k: np.asarray(v) for k, v in out.side.items()}))

    def take_refusals(self) -> Any:
        from gpuquant.backends.cupy_refusals import Refusals

        return Refusals([])  # the reference raised already, inside transform


def _use_fake_cupy(monkeypatch: pytest.MonkeyPatch, fail_rows: int | None, log: list[str]) -> None:
    """Installs ``_fake_cupy`` as ``cupy`` / ``cupyx`` and ``_FakeCupyBackend`` as the cupy backend."""
    from gpuquant.backends import cupy_backend

    cupy, cupyx = _fake_cupy(fail_rows, log)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    monkeypatch.setattr(cupy_backend, "CupyBackend", _FakeCupyBackend)


def _create_writer(out: Path, preset: str, q: gpuquant.Quantizer, src: Any) -> gstore.StoreWriter:
    """The store writer ``gpuquant.convert`` would open for ``src`` (the caller holds the lock)."""
    return gstore.create(out, quantizer=q, rows=src.rows, dim=src.dim,
                         manifest={"scheme": preset, "family": q.family, "params": q.scheme.params,
                                   "source": src.describe()})


@pytest.mark.parametrize(("preset", "fail_rows"), [("int8-row", None), ("fp8-e4m3", None), ("st-int8", 300),
                                                   ("int4-block", 300)])
def test_the_gpu_pipeline_logic_with_a_stand_in_for_cupy(tmp_path: Path, rng: np.random.Generator,
                                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                         preset: str, fail_rows: int | None) -> None:
    from gpuquant.engine import pipeline
    from gpuquant.engine.sources import open_source

    calls: list[str] = []
    _use_fake_cupy(monkeypatch, fail_rows, calls)
    X = matrix(rng, 1234, 128)
    np.save(tmp_path / "x.npy", X)
    q, ref = fit_codes(preset, X)
    src = open_source(tmp_path / "x.npy")
    with gstore.StoreLock(tmp_path / "o"):
        w = _create_writer(tmp_path / "o", preset, q, src)
        stats = pipeline.run_gpu(src, q.scheme, q.state, w, start=0, batch_rows=300,
                                 progress=Progress(1234, src.row_bytes, enabled=False), streams=2)
        assert stats["rows_done"] == 1234
        w.complete()
        w.close()
    src.close()
    assert stats["streams"] == 2 and calls.count("stream") >= 2
    if fail_rows is not None:
        assert stats["oom_halvings"] == 1 and stats["batch_rows"] == 150 and "halving to 150" in caplog.text
    assert_store_equals(tmp_path / "o", ref)


@pytest.mark.parametrize("kernels", ["reference", "emulated"])
def test_the_gpu_pipeline_keeps_launched_batches_when_a_row_is_refused(tmp_path: Path, rng: np.random.Generator,
                                                                       monkeypatch: pytest.MonkeyPatch,
                                                                       kernels: str) -> None:
    # "emulated": the real cupy backend on tests/fake_cupy.py, whose absmax kernel records the refused
    # row on the device: the error surfaces when the batch completes, not inside transform
    from gpuquant.engine import pipeline
    from gpuquant.engine.sources import open_source

    if kernels == "reference":
        _use_fake_cupy(monkeypatch, None, [])
    else:
        fake_cupy.emulate_absmax(fake_cupy.install(monkeypatch), make_scheme("int8-row"))
    X = matrix(rng, 1000, 64)
    X[650, 3] = np.nan
    np.save(tmp_path / "x.npy", X)
    q = gpuquant.Quantizer("int8-row", backend="numpy")
    src = open_source(tmp_path / "x.npy")
    with gstore.StoreLock(tmp_path / "o"):
        w = _create_writer(tmp_path / "o", "int8-row", q, src)
        with pytest.raises(InputError, match="row 650 of the input"):
            pipeline.run_gpu(src, q.scheme, q.state, w, start=0, batch_rows=100,
                             progress=Progress(1000, src.row_bytes, enabled=False), streams=2)
        w.close()
    src.close()
    st = gpuquant.open(tmp_path / "o", allow_incomplete=True)
    assert st.status["rows_done"] == 600
    np.testing.assert_array_equal(st.codes[:600], np.asarray(fit_codes("int8-row", X[:600])[1]))
