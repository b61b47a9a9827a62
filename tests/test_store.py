"""The code store (``gpuquant.open``): plain files, random row reads, validation with exact messages."""

from __future__ import annotations

import json
import re
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from helpers import fitted, matrix

import gpuquant
from gpuquant import store as gstore
from gpuquant.errors import InputError


def _store(tmp_path: Path, rng: np.random.Generator, preset: str = "int8-row", n: int = 503, d: int = 128) -> tuple[Path, np.ndarray]:
    X = matrix(rng, n, d)
    gpuquant.convert(X, tmp_path / "s", preset, device="cpu", batch_rows=97, progress=False)
    return tmp_path / "s", X


@pytest.mark.parametrize("preset", ["int8-row", "st-int8", "fp8-e4m3", "faiss-sq4", "int4-block", "binary", "bf16"])
def test_get_rows_any_order_with_repeats(tmp_path: Path, rng: np.random.Generator, preset: str) -> None:
    path, X = _store(tmp_path, rng, preset)
    st = gpuquant.open(path)
    q = fitted(preset, X)
    ref = q.inverse_transform(q.transform(X))
    ids = rng.integers(0, len(X), 300)
    ids[:3] = [502, 0, 502]
    got = st.get_rows(ids)
    assert got.dtype == np.float32 and got.shape == (300, 128)
    np.testing.assert_array_equal(got, ref[ids])
    np.testing.assert_array_equal(st.get_rows([]), np.empty((0, 128), np.float32))
    np.testing.assert_array_equal(np.concatenate([b for _, b in st.iter_batches(batch_rows=100)]), ref)
    assert [a for a, _ in st.iter_batches(batch_rows=100)] == [0, 100, 200, 300, 400, 500]


def test_files_are_plain_numpy(tmp_path: Path, rng: np.random.Generator) -> None:
    path, X = _store(tmp_path, rng, "int8-row")
    codes = np.load(path / "codes.npy", mmap_mode="r")
    scales = np.load(path / "scales.npy", mmap_mode="r")
    np.testing.assert_array_equal(codes * scales[:, None], gpuquant.open(path).get_rows(np.arange(len(X))))
    st = gpuquant.open(path)
    assert isinstance(st.codes, np.memmap) and not st.codes.flags.writeable
    assert st.complete and st.rows == 503 and st.dim == 128 and st.quantizer.is_fitted
    m = json.loads((path / "manifest.json").read_text())
    assert m["state"]["status"] == "complete" and m["state"]["rows_done"] == 503
    assert m["gpuquant_version"] == gpuquant.__version__ and m["source"]["kind"] == "array"
    assert "Store(" in repr(st) and "complete" in repr(st)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_file_of_a_store_follows_the_umask(tmp_path: Path, rng: np.random.Generator, umask: int) -> None:
    old = os.umask(umask)
    try:
        path, _ = _store(tmp_path, rng, "int8-row", n=20)
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in path.iterdir()}
    assert set(modes) == {"manifest.json", "quantizer.json", "codes.npy", "scales.npy"}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask


def test_fp8_codes_come_back_in_their_dtype(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _ = _store(tmp_path, rng, "fp8-e5m2")
    st = gpuquant.open(path)
    assert st.codes.dtype.name == "float8_e5m2"
    assert np.load(path / "codes.npy", mmap_mode="r").dtype == np.uint8


def test_get_rows_checks_ids(tmp_path: Path, rng: np.random.Generator) -> None:
    st = gpuquant.open(_store(tmp_path, rng)[0])
    with pytest.raises(InputError, match=r"row id 503 is out of range: the store has 503 rows \(0..502\)"):
        st.get_rows([1, 503])
    with pytest.raises(InputError, match="row id -1 is out of range"):
        st.get_rows([-1])
    with pytest.raises(InputError, match="row ids must be integers, got dtype float64"):
        st.get_rows([1.5])


@pytest.mark.parametrize("method", ["get_rows", "codes_of", "read_rows"])
def test_row_ids_must_be_one_dimensional(tmp_path: Path, rng: np.random.Generator, method: str) -> None:
    st = gpuquant.open(_store(tmp_path, rng, n=50, d=16)[0])
    with pytest.raises(InputError, match=re.escape("row ids must be a 1-D sequence (or one id), got shape (2, 3)")):
        getattr(st, method)(np.arange(6).reshape(2, 3))
    assert len(getattr(st, method)(7)) == 1 and len(getattr(st, method)([])) == 0  # one id, and none, still work


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"start": -5}, "start must be a non-negative integer, got -5"),
    ({"stop": -1}, "stop must be a non-negative integer or None, got -1"),
    ({"start": 1.5}, "start must be a non-negative integer, got 1.5"),
    ({"stop": "9"}, "stop must be a non-negative integer or None, got '9'"),
])
def test_iter_batches_refuses_negative_or_non_integer_bounds(tmp_path: Path, rng: np.random.Generator,
                                                             kwargs: dict[str, object], message: str) -> None:
    st = gpuquant.open(_store(tmp_path, rng, n=50, d=16)[0])
    with pytest.raises(InputError, match=re.escape(message)):
        st.iter_batches(batch_rows=10, **kwargs)  # type: ignore[arg-type]  # refused when called, not when iterated
    batches = list(st.iter_batches(batch_rows=10, start=np.int64(5), stop=23))
    assert [a for a, _ in batches] == [5, 15] and [len(b) for _, b in batches] == [10, 8]
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), st.get_rows(np.arange(5, 23)))


def _corrupt(path: Path, what: str) -> None:
    m = json.loads((path / "manifest.json").read_text())
    if what == "format":
        m["format"] = "something-else"
    elif what == "version":
        m["format_version"] = 99
    elif what == "family":
        m["family"] = "pq"
    elif what == "rows":
        m["rows"] = 10
    elif what == "params":
        m["params"]["eps"] = 0.5
    elif what == "side":
        m["side"] = {}
    elif what == "file":
        m["codes"]["file"] = "../elsewhere.npy"
    elif what == "missing":
        (path / "scales.npy").unlink()
    elif what == "truncated":
        raw = (path / "codes.npy").read_bytes()
        (path / "codes.npy").write_bytes(raw[:-10])
    elif what == "wrong_dtype":
        np.save(path / "codes.npy", np.zeros((503, 128), np.uint8))
    elif what == "pickle":
        np.save(path / "codes.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif what == "state":
        m["state"] = {"status": "whatever"}
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("what", "message"),
    [
        ("format", r"manifest.json is not a gpuquant store manifest \(format 'something-else', expected 'gpuquant-codes'\)"),
        ("version", r"manifest.json has format version 99; this gpuquant .* reads versions 1 to 2"),
        ("family", r"manifest.json: unknown scheme family 'pq'"),
        ("rows", r"codes.npy holds int8\(503, 128\) but the store needs int8\(10, 128\) for its codes"),
        ("params", r"quantizer.json does not match .*manifest.json"),
        ("side", r"manifest.json: side arrays \[\] do not match the scheme's \['scales'\]"),
        ("file", r"the file of codes must be a .npy file inside the store, got '../elsewhere.npy'"),
        ("missing", r"scales.npy is missing \(the side array 'scales' of this store\)"),
        ("truncated", r"codes.npy is truncated"),
        ("wrong_dtype", r"codes.npy holds uint8\(503, 128\) but the store needs int8\(503, 128\)"),
        ("pickle", r"codes.npy holds Python objects"),
        ("state", r"'state' must say status 'in_progress' or 'complete'"),
    ],
)
def test_open_says_exactly_what_is_wrong(tmp_path: Path, rng: np.random.Generator, what: str, message: str) -> None:
    path, _ = _store(tmp_path, rng)
    _corrupt(path, what)
    with pytest.raises(InputError, match=message):
        gpuquant.open(path)


def test_open_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="store not found"):
        gpuquant.open(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match=r"not a gpuquant store \(not a directory\)"):
        gpuquant.open(tmp_path / "f")
    with pytest.raises(InputError, match="is not a gpuquant store: it has no manifest.json"):
        gpuquant.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(InputError, match="manifest.json is not valid JSON"):
        gpuquant.open(tmp_path)


def test_an_unfinished_store_opens_only_when_asked(tmp_path: Path, rng: np.random.Generator) -> None:
    path, _ = _store(tmp_path, rng)
    m = json.loads((path / "manifest.json").read_text())
    m["state"] = {"status": "in_progress", "rows_done": 200}
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(gstore.StoreIncompleteError, match=r"is unfinished \(200 of 503 rows written\).*--resume"):
        gpuquant.open(path)
    st = gpuquant.open(path, allow_incomplete=True)
    assert not st.complete and st.get_rows([199]).shape == (1, 128)
    with pytest.raises(gstore.StoreIncompleteError, match="row 200 is not written yet"):
        st.get_rows([200])


@pytest.mark.parametrize(("state", "message"), [
    ({"status": "in_progress", "rows_done": -1}, "must be an integer in 0..503, got -1"),
    ({"status": "in_progress", "rows_done": 504}, "must be an integer in 0..503, got 504"),
    ({"status": "in_progress", "rows_done": "200"}, "must be an integer in 0..503, got '200'"),
    ({"status": "in_progress", "rows_done": 2.5}, "must be an integer in 0..503, got 2.5"),
    ({"status": "in_progress", "rows_done": True}, "must be an integer in 0..503, got True"),
    ({"status": "in_progress"}, "must be an integer in 0..503, got None"),
    ({"status": "complete", "rows_done": 200}, "a complete store has every row done: 503, got 200"),
])
def test_rows_done_in_the_manifest_is_range_checked(tmp_path: Path, rng: np.random.Generator,
                                                    state: dict[str, object], message: str) -> None:
    path, _ = _store(tmp_path, rng)
    m = json.loads((path / "manifest.json").read_text())
    m["state"] = state
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match=r"manifest.json: 'state.rows_done' " + re.escape(message)):
        gpuquant.open(path, allow_incomplete=True)
    with pytest.raises(InputError, match=r"'state.rows_done' " + re.escape(message)):  # --resume reads it too
        gstore.reopen(path)


def test_the_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    out = tmp_path / "o"
    with gstore.StoreLock(out) as lock:
        assert lock.path.name == ".o.lock"
        with pytest.raises(gstore.StoreBusyError, match=r"being written by another gpuquant run \(process \d+"):
            gstore.StoreLock(out).acquire()
    assert not (tmp_path / ".o.lock").exists()
    with gstore.StoreLock(out):  # free again
        pass


@pytest.mark.parametrize("link", ["output", "parent"])
def test_the_lock_holds_through_symbolic_links(tmp_path: Path, link: str) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "o").mkdir()
    if link == "output":
        (tmp_path / "real" / "alias").symlink_to(tmp_path / "real" / "o")
        other = tmp_path / "real" / "alias"
    else:
        (tmp_path / "alias").symlink_to(tmp_path / "real")
        other = tmp_path / "alias" / "o"
    with gstore.StoreLock(tmp_path / "real" / "o"):
        with pytest.raises(gstore.StoreBusyError, match=str(other)):
            gstore.StoreLock(other).acquire()
