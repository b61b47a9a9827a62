"""Outputs survive failures: ``--overwrite`` replaces the previous store only once the new one is
complete (a NaN row, an interruption or a full disk leave the old store readable, and ``--resume``
finishes the replacement)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import disk_full_after, fit_codes, matrix
from test_engine import _slow_convert, _wait_for_rows

import gpuquant
from gpuquant import store as gstore
from gpuquant.engine import ConvertError, pipeline
from gpuquant.errors import InputError


def _same_store(path: Path, codes: gpuquant.Codes) -> None:
    st = gpuquant.open(path)
    assert np.asarray(st.codes).tobytes() == np.asarray(codes.data).tobytes()
    for k, v in codes.side.items():
        assert np.asarray(st.side[k]).tobytes() == np.asarray(v).tobytes(), k


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_a_failed_overwrite_keeps_the_old_store(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 500, 16)
    gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", progress=False)
    old = fit_codes("int8-row", X)[1]
    Y = X * 2
    Y[321, 4] = np.nan
    with pytest.raises(InputError, match="row 321 of the input"):
        gpuquant.convert(Y, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, overwrite=True, progress=False)
    _same_store(tmp_path / "o", old)  # still complete and readable, unchanged
    Y[2, 0] = np.inf  # in the first batch: nothing of the new store is kept
    with pytest.raises(InputError, match="row 2 of the input"):
        gpuquant.convert(Y, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, overwrite=True, progress=False)
    _same_store(tmp_path / "o", old)
    assert _names(tmp_path) == ["o"]


def test_an_interrupted_overwrite_keeps_the_old_store_and_resumes(tmp_path: Path, rng: np.random.Generator,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    X = matrix(rng, 500, 16)
    gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", progress=False)
    real = pipeline.Writer.run

    def interrupted(self: Any) -> None:  # the writer thread stops after two batches
        orig = self.store.write_rows

        def write_rows(start: int, arrays: Any) -> None:
            if start >= 200:
                raise KeyboardInterrupt
            orig(start, arrays)
        self.store.write_rows = write_rows
        real(self)

    monkeypatch.setattr(pipeline.Writer, "run", interrupted)
    kept = r"\.o\.overwrite keeps 200 of 500 rows.*--resume in place of --overwrite"
    with pytest.raises(KeyboardInterrupt, match=kept):
        gpuquant.convert(X * 3, tmp_path / "o", "fp16", device="cpu", batch_rows=100, overwrite=True, progress=False)
    _same_store(tmp_path / "o", fit_codes("fp16", X)[1])
    monkeypatch.setattr(pipeline.Writer, "run", real)
    rep = gpuquant.convert(X * 3, tmp_path / "o", "fp16", device="cpu", batch_rows=100, resume=True, progress=False)
    assert rep["resumed_from"] == 200 and rep["output"] == str(tmp_path / "o")
    _same_store(tmp_path / "o", fit_codes("fp16", X * 3)[1])
    assert _names(tmp_path) == ["o"]
    with pytest.raises(InputError, match="already complete"):
        gpuquant.convert(X * 3, tmp_path / "o", "fp16", device="cpu", resume=True, progress=False)


def test_a_full_disk_during_an_overwrite_keeps_the_old_store(tmp_path: Path, rng: np.random.Generator,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    X = matrix(rng, 1000, 32)
    gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", progress=False)
    with disk_full_after(monkeypatch, 3), pytest.raises(ConvertError, match="No space left"):
        gpuquant.convert(X + 1, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, overwrite=True,
                         progress=False)
    _same_store(tmp_path / "o", fit_codes("int8-row", X)[1])
    gpuquant.convert(X + 1, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, overwrite=True, progress=False)
    _same_store(tmp_path / "o", fit_codes("int8-row", X + 1)[1])
    assert _names(tmp_path) == ["o"]


@pytest.mark.parametrize(("sig", "code", "word"),
                         [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_sigterm_and_ctrl_c_checkpoint_and_say_how_to_resume(tmp_path: Path, rng: np.random.Generator,
                                                             sig: int, code: int, word: str) -> None:
    X = matrix(rng, 6000, 32)
    np.save(tmp_path / "x.npy", X)
    proc = _slow_convert(tmp_path / "x.npy", tmp_path / "o")
    try:
        _wait_for_rows(tmp_path / "o", proc, 500)  # a checkpoint on disk: the run is streaming
        os.kill(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err
    doc = json.loads(out)  # exactly one JSON document
    kept = gpuquant.open(tmp_path / "o", allow_incomplete=True).status["rows_done"]
    assert 500 <= kept < 6000
    message = doc["error"]["message"]
    assert doc["ok"] is False and doc["error"]["exit_code"] == code and doc["error"]["type"] == "Interrupted"
    assert message.startswith(word) and f"keeps {kept} of 6000 rows" in message and "--resume" in message
    assert f"keeps {kept} of 6000 rows" in err
    resumed = subprocess.run([sys.executable, "-m", "gpuquant", "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"),
                              "--resume", "--device", "cpu", "--format", "json"], capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed_from"] == kept
    _same_store(tmp_path / "o", fit_codes("cuvs-sq8", X)[1])


def test_leftovers_of_a_killed_set_up_are_removed_by_the_next_run(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 100, 16)
    for leftover in (".o.partial-k1ll3d", ".o.old-k1ll3d/o", "..o.overwrite.partial-k1ll3d",
                     ".p.partial-x"):  # as a SIGKILL leaves them
        (tmp_path / leftover).mkdir(parents=True)
        (tmp_path / leftover / "codes.npy").write_bytes(b"\0" * 4096)
    (tmp_path / ".o.lock").write_text("12345\n")  # a killed run's lock file: no process holds its flock
    gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", progress=False)
    assert _names(tmp_path) == [".p.partial-x", "o"]  # another output's leftovers are not this run's to judge
    q, codes = fit_codes("fp16", X)
    gstore.write_converted(tmp_path / "p", codes, q, {"scheme": "fp16", "family": q.family})
    assert _names(tmp_path) == ["o", "p"]


def test_a_full_disk_leaves_no_lock_or_temporary_file(tmp_path: Path, rng: np.random.Generator,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    X = matrix(rng, 100, 16)
    with disk_full_after(monkeypatch, 0), pytest.raises(OSError, match="No space left"):
        gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", progress=False)
    assert _names(tmp_path) == []
    q = gpuquant.Quantizer("cuvs-sq8").fit(X)
    real = os.replace

    def full(a: Any, b: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        q.save(tmp_path / "q.json")
    monkeypatch.setattr(os, "replace", real)
    assert _names(tmp_path) == []


def test_an_old_store_not_yet_deleted_after_an_overwrite_is_removed_next_time(
        tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuquant.store import write as gwrite

    X = matrix(rng, 100, 16)
    gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", progress=False)
    real = gwrite.shutil.rmtree
    monkeypatch.setattr(gwrite.shutil, "rmtree", lambda *a, **k: None)  # killed before the old one is deleted
    gpuquant.convert(X * 2, tmp_path / "o", "fp16", device="cpu", overwrite=True, progress=False)
    monkeypatch.setattr(gwrite.shutil, "rmtree", real)
    _same_store(tmp_path / "o", fit_codes("fp16", X * 2)[1])
    old = [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.old-")]
    assert len(old) == 1 and gpuquant.open(tmp_path / old[0] / "o").complete  # the old store, aside
    gpuquant.convert(X * 3, tmp_path / "o", "fp16", device="cpu", overwrite=True, progress=False)
    assert _names(tmp_path) == ["o"]


def test_sigterm_during_an_overwrite_keeps_the_old_store(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 6000, 32)
    np.save(tmp_path / "x.npy", X)
    gpuquant.convert(X[:100], tmp_path / "o", "fp16", device="cpu", progress=False)
    proc = _slow_convert(tmp_path / "x.npy", tmp_path / "o", "--overwrite")
    try:
        _wait_for_rows(tmp_path / ".o.overwrite", proc, 500)
        os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 143 and "--resume in place of --overwrite" in json.loads(out)["error"]["message"]
    _same_store(tmp_path / "o", fit_codes("fp16", X[:100])[1])
    resumed = subprocess.run([sys.executable, "-m", "gpuquant", "convert", str(tmp_path / "x.npy"), str(tmp_path / "o"),
                              "--resume", "--device", "cpu", "--format", "json"], capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    _same_store(tmp_path / "o", fit_codes("cuvs-sq8", X)[1])
    assert _names(tmp_path) == ["o", "x.npy"]
