"""``gpuquant verify STORE``: the per-batch checksums recorded in the manifest at write time catch a
flipped byte anywhere in the data files; stores without checksums say so (exit 3)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, cli_run, disk_full_after, fit_codes, matrix

import gpuquant
from gpuquant import store as gstore


def _flip(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("preset", ["int8-row", "fp8-e4m3", "binary"])
def test_a_streamed_store_verifies_and_a_flipped_byte_is_caught(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                rng: np.random.Generator, preset: str) -> None:
    X = matrix(rng, 1000, 64)
    rep = gpuquant.convert(X, tmp_path / "o", preset, device="cpu", batch_rows=300, progress=False)
    assert rep["checksums"] == {"method": "blake2b-128", "ranges": 4}  # the report counts them
    manifest = gstore.read_manifest(tmp_path / "o")
    ranges = manifest["checksums"]["ranges"]
    assert [r["rows"] for r in ranges] == [[0, 300], [300, 600], [600, 900], [900, 1000]]
    code, doc = cli_json(capsys, "verify", tmp_path / "o")
    assert code == 0 and doc["verify"]["status"] == "intact" and doc["verify"]["rows_checked"] == 1000
    row_bytes = np.asarray(gpuquant.open(tmp_path / "o").codes[:1]).nbytes
    _flip(tmp_path / "o" / "codes.npy", 150 * row_bytes)  # a byte of row 850
    gpuquant.open(tmp_path / "o")  # the quick checks do not read the data: still opens
    code, _, err = cli_run(capsys, "verify", tmp_path / "o")
    assert code == 1 and "rows 600..899" in err and "codes.npy" in err


def test_side_arrays_and_whole_codes_stores_are_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                        rng: np.random.Generator) -> None:
    X = matrix(rng, 200, 32)
    q, codes = fit_codes("int8-row", X)
    gstore.write_converted(tmp_path / "w", codes, q, {"scheme": "int8-row", "family": q.family,
                                                      "params": q.scheme.params})
    assert cli_json(capsys, "verify", tmp_path / "w")[0] == 0
    _flip(tmp_path / "w" / "scales.npy", 3)
    code, doc = cli_json(capsys, "verify", tmp_path / "w")
    assert code == 1 and "rows 0..199 of scales.npy" in doc["error"]["message"]


def test_resume_keeps_the_checksums_of_the_rows_already_written(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                rng: np.random.Generator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    X = matrix(rng, 1000, 16)
    with disk_full_after(monkeypatch, 5), pytest.raises(gpuquant.engine.ConvertError):
        gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", batch_rows=100, progress=False)
    kept = gpuquant.open(tmp_path / "o", allow_incomplete=True).status["rows_done"]
    assert 0 < kept < 1000
    gpuquant.convert(X, tmp_path / "o", "int8-row", device="cpu", batch_rows=300, resume=True, progress=False)
    ranges = [r["rows"] for r in gstore.read_manifest(tmp_path / "o")["checksums"]["ranges"]]
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000 and all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert cli_json(capsys, "verify", tmp_path / "o")[0] == 0


def test_a_store_without_checksums_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           rng: np.random.Generator) -> None:
    gpuquant.convert(matrix(rng, 100, 16), tmp_path / "o", "fp16", device="cpu", progress=False)
    m = tmp_path / "o" / "manifest.json"
    doc = json.loads(m.read_text())
    del doc["checksums"]  # as an older gpuquant wrote it
    m.write_text(json.dumps(doc))
    gpuquant.open(tmp_path / "o")  # still opens
    code, doc = cli_json(capsys, "verify", tmp_path / "o")
    assert code == 3 and "no checksums" in doc["error"]["message"]
    code, doc = cli_json(capsys, "verify", tmp_path / "nothing")
    assert code == 2


def test_rows_without_a_checksum_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          rng: np.random.Generator) -> None:
    gpuquant.convert(matrix(rng, 100, 16), tmp_path / "o", "fp16", device="cpu", batch_rows=30, progress=False)
    m = tmp_path / "o" / "manifest.json"
    doc = json.loads(m.read_text())
    del doc["checksums"]["ranges"][1]  # rows 30..59: as a store an older gpuquant started and this one resumed
    m.write_text(json.dumps(doc))
    code, doc = cli_json(capsys, "verify", tmp_path / "o")
    assert code == 3 and "rows 30..59 have no checksums" in doc["error"]["message"]
