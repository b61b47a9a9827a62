"""The portable calibration file (a saved quantizer: fit once on the corpus, encode queries later with the
same ranges), Matryoshka truncation, and the CLI of the export presets (export-info, the ``loading``
entry that convert writes, fit -o calib.json / convert --quantizer calib.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import gpuquant
from helpers import bits, cli_json, fitted, matrix
from gpuquant import InputError, Quantizer
from gpuquant.cli import main
from gpuquant.matryoshka import truncate_renormalize

FITTED = [p.name for p in gpuquant.presets() if Quantizer(p.name).scheme.needs_fit]


# -- the calibration file ---------------------------------------------------------------------------
def test_calibration_file_says_everything(tmp_path, rng):
    x = matrix(rng, 300, 24)
    q = Quantizer("st-int8", backend="numpy").fit(x)
    doc = json.loads(q.save(tmp_path / "calib.json").read_text())
    cal = doc["calibration"]
    assert doc["gpuquant_version"] == gpuquant.__version__ and doc["scheme"] == "st-int8"
    assert cal == {"scope": "dimension", "range_method": "minmax", "rounding": "floor",
                   "encoding": "signed int8 = level - 128", "truncate_dim": None, "fitted_dim": 24, "fitted": True}
    assert set(doc["state"]) == {"lo", "hi"}  # the ranges themselves, bit-exact (base64 of float32)
    b = json.loads(Quantizer("es-bit").save(tmp_path / "b.json").read_text())["calibration"]
    assert b["bit_order"] == "msb_first" and b["encoding"] == "twos_complement"
    c = json.loads(Quantizer("binary").save(tmp_path / "c.json").read_text())["calibration"]
    assert c["bit_order"] == "lsb_first"


@pytest.mark.parametrize("name", FITTED)
def test_one_query_with_the_corpus_ranges_equals_the_corpus_codes(tmp_path, rng, name):
    corpus = matrix(rng, 400, 64)
    q = Quantizer(name, backend="numpy").fit(corpus)
    corpus_codes = q.transform(corpus)
    path = q.save(tmp_path / "calib.json")
    later = Quantizer.load(path, backend="numpy")  # another process, days later
    for row in (0, 17, 399):
        one = later.transform(corpus[row : row + 1])  # a single query: no ranges from the query itself
        assert_array_equal(bits(one), bits(np.asarray(corpus_codes)[row : row + 1]))
        for key, side in corpus_codes.side.items():
            assert_array_equal(one.side[key], side[row : row + 1])


def test_single_query_bug_cannot_happen(rng):
    # fitting on the query alone (what per-call calibration does) gives other codes; the saved corpus
    # quantizer does not
    corpus = matrix(rng, 500, 16)
    query = corpus[3:4] * np.float32(0.5)
    from_corpus = Quantizer("st-int8", backend="numpy").fit(corpus).transform(query)
    naive = Quantizer("st-int8", backend="numpy").fit(np.vstack([query, query * 0.9])).transform(query)
    assert not np.array_equal(np.asarray(from_corpus), np.asarray(naive))


@pytest.mark.parametrize("name", ["st-int8", "qdrant-uint8", "es-byte", "safetensors-fp8"])
def test_cli_fit_then_convert_with_the_calibration_file(capsys, tmp_path, rng, name):
    corpus = matrix(rng, 300, 64)
    queries = matrix(rng, 7, 64)
    np.save(tmp_path / "corpus.npy", corpus)
    np.save(tmp_path / "queries.npy", queries)
    extra = ["--param", "granularity=\"tensor\""] if name == "safetensors-fp8" else []
    code, doc = cli_json(capsys, "fit", tmp_path / "corpus.npy", "--scheme", name, *extra, "--backend", "numpy",
                         "-o", tmp_path / "calib.json")
    assert code == 0, doc
    code, doc = cli_json(capsys, "convert", tmp_path / "queries.npy", tmp_path / "out", "--quantizer",
                         tmp_path / "calib.json", "--backend", "numpy")
    assert code == 0, doc
    q = Quantizer(name, backend="numpy", **({"granularity": "tensor"} if extra else {})).fit(corpus)
    got = np.load(tmp_path / "out" / "codes.npy")
    assert got.tobytes() == np.asarray(q.transform(queries)).tobytes()
    assert json.loads((tmp_path / "out" / "quantizer.json").read_text())["state"] == \
        json.loads((tmp_path / "calib.json").read_text())["state"]


# -- Matryoshka -----------------------------------------------------------------------------------------
def test_truncate_renormalize_formula(rng):
    x = matrix(rng, 50, 40)
    x[3] = 0.0
    y = truncate_renormalize(x, 16)
    t = x[:, :16].astype(np.float32)
    ss = np.array([sum(float(v) * float(v) for v in row) for row in t])  # sequential float64 sum
    norm = np.sqrt(ss).astype(np.float32)[:, None]
    ref = np.where(norm == 0, t, t / np.where(norm == 0, 1, norm)).astype(np.float32)
    # the sum order may differ from numpy's pairwise sum: equal except in rare rounding ties (<= 2 ulp)
    assert np.allclose(y, ref, rtol=2.0**-22, atol=0)
    assert (y[3] == 0).all() and y.dtype == np.float32 and y.shape == (50, 16)
    assert np.allclose(np.linalg.norm(np.delete(y, 3, axis=0).astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert_array_equal(truncate_renormalize(np.array([[3.0, 4.0, 12.0]]), 2), np.array([[0.6, 0.8]], np.float32))


@pytest.mark.parametrize("name", ["st-int8", "binary", "int8-row", "es-byte", "gguf-q8_0", "fp16"])
def test_truncate_dim_is_truncate_renormalise_then_quantize(tmp_path, rng, name):
    x = matrix(rng, 120, 96)
    k = 64
    q = fitted(name, x, truncate_dim=k)
    codes = q.transform(x)
    y = truncate_renormalize(x, k)
    manual = fitted(name, y)
    assert codes.dim == k
    assert_array_equal(bits(codes), bits(manual.transform(y)))
    assert q.inverse_transform(codes).shape == (120, k)
    loaded = Quantizer.load(q.save(tmp_path / "q.json"), backend="numpy")
    assert loaded.truncate_dim == k and "truncate_dim=64" in repr(loaded)
    assert_array_equal(bits(loaded.transform(x[:5])), bits(np.asarray(codes)[:5]))


def test_truncate_dim_errors(rng):
    with pytest.raises(InputError, match="positive integer"):
        Quantizer("st-int8", truncate_dim=0)
    with pytest.raises(InputError, match="only 8 dimensions"):
        Quantizer("fp16", backend="numpy", truncate_dim=16).transform(matrix(rng, 2, 8))


def test_truncate_on_cupy_matches_numpy(rng):
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no GPU")
    except Exception:  # noqa: BLE001 - no driver: no GPU
        pytest.skip("no GPU")
    x = matrix(rng, 1000, 384)
    got = truncate_renormalize(cupy.asarray(x), 256).get()
    ref = truncate_renormalize(x, 256)
    assert np.allclose(got, ref, rtol=2.0**-22, atol=0)  # the bound stated in gpuquant/matryoshka.py
    assert (got == ref).mean() > 0.999


# -- CLI of the export presets -------------------------------------------------------------------------
def test_export_info_human_and_json(capsys):
    assert main(["export-info", "pgvector-bit", "--dim", "384"]) == 0
    out = capsys.readouterr().out
    assert "bit(384)" in out and "binary_quantize" in out and "most significant bit first" in out
    code, doc = cli_json(capsys, "export-info", "milvus-binary")
    assert code == 0 and doc["export"]["consumer"] == "Milvus" and "LSB first" in doc["export"]["encoding"]
    code, doc = cli_json(capsys, "export-info")
    assert code == 0 and len(doc["exports"]) == 14
    code, doc = cli_json(capsys, "export-info", "st-int8")
    assert code == 2 and "not an export preset" in doc["error"]["message"]


def test_schemes_lists_consumers(capsys):
    code, doc = cli_json(capsys, "schemes")
    rows = {r["name"]: r for r in doc["presets"]}
    assert rows["gguf-q8_0"]["consumer"] == "GGUF (llama.cpp)" and rows["st-int8"]["consumer"] == ""
    assert main(["schemes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("qdrant-uint8", "lancedb-binary", "safetensors-fp8"))


@pytest.mark.parametrize("name,loading", [("vespa-pack-bits", True), ("gguf-q4_0", True), ("st-int8", False)])
def test_convert_writes_how_to_load(capsys, tmp_path: Path, rng, name, loading):
    np.save(tmp_path / "x.npy", matrix(rng, 50, 64))
    code, doc = cli_json(capsys, "convert", tmp_path / "x.npy", tmp_path / "out", "--scheme", name, "--backend", "numpy")
    assert code == 0, doc
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert ("loading" in manifest) == loading
    if loading:
        assert manifest["loading"]["preset"] == name and manifest["loading"]["load"]
        assert "D" not in manifest["loading"]["load"].replace("DataType", "")  # dimension filled in
