"""Parquet, HDF5 and big-ann inputs: the same codes, fits and evaluations as the same rows in a ``.npy``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, finite_edge_values, matrix

import gpuquant
from gpuquant.engine import readers
from gpuquant.engine.sources import open_source
from gpuquant.errors import InputError

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ModuleNotFoundError:  # the parquet extra is not installed: its tests skip
    pa = pq = None
try:
    import h5py
except ModuleNotFoundError:  # the hdf5 extra
    h5py = None

needs_parquet = pytest.mark.skipif(pa is None, reason="needs pyarrow (pip install '.[parquet]')")
needs_hdf5 = pytest.mark.skipif(h5py is None, reason="needs h5py (pip install '.[hdf5]')")

N, D = 613, 24


def _fixed(X: np.ndarray) -> object:
    return pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])


def _lists(X: np.ndarray) -> object:
    return pa.array(list(X), type=pa.list_(pa.from_numpy_dtype(X.dtype)))


def parquet_fixed(p: Path, X: np.ndarray) -> Path:
    pq.write_table(pa.table({"id": np.arange(len(X)), "emb": _fixed(X)}), p / "x.parquet", row_group_size=97)
    return p / "x.parquet"


def parquet_list(p: Path, X: np.ndarray) -> Path:
    table = pa.table({"vec": _lists(X), "text": [str(i) for i in range(len(X))]})
    pq.write_table(table, p / "x.pq", row_group_size=200)
    return p / "x.pq"


def parquet_dir(p: Path, X: np.ndarray) -> Path:
    (p / "d").mkdir()
    parts = {"part-10.parquet": (400, len(X)), "part-2.parquet": (150, 400), "part-1.parquet": (0, 150)}
    for name, (a, b) in parts.items():
        pq.write_table(pa.table({"emb": _lists(X[a:b])}), p / "d" / name, row_group_size=64)
    pq.write_table(pa.table({"emb": _lists(X[:0])}), p / "d" / "part-0.parquet")  # an empty file is skipped
    return p / "d"


def hdf5(p: Path, X: np.ndarray) -> Path:
    with h5py.File(p / "x.hdf5", "w") as f:
        f.create_dataset("train", data=X.astype(X.dtype.newbyteorder(">")), chunks=(50, X.shape[1]))
        f["test"] = X[:3]
        f["neighbors"] = np.zeros((3, 10), np.int32)
    return p / "x.hdf5"


def bigann(suffix: str) -> Callable[[Path, np.ndarray], Path]:
    def write(p: Path, X: np.ndarray) -> Path:
        with open(p / f"x{suffix}", "wb") as f:
            f.write(np.array(X.shape, "<i4").tobytes() + X.astype(readers.BIGANN[suffix]).tobytes())
        return p / f"x{suffix}"
    return write


def data(rng: np.random.Generator, dtype: str = "float32") -> np.ndarray:
    X = matrix(rng, N, D, edges=None if dtype == "float16" else finite_edge_values())
    return X.astype(dtype)


def ints(rng: np.random.Generator, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, (N, D), endpoint=True).astype(np.float32)


INPUTS = {
    "parquet-fixed-size-list": (parquet_fixed, lambda r: data(r), needs_parquet),
    "parquet-list-float16": (parquet_list, lambda r: data(r, "float16"), needs_parquet),
    "parquet-list-float64": (parquet_list, lambda r: data(r, "float64"), needs_parquet),
    "parquet-directory": (parquet_dir, lambda r: data(r), needs_parquet),
    "hdf5-big-endian-chunked": (hdf5, lambda r: data(r), needs_hdf5),
    "fbin": (bigann(".fbin"), lambda r: data(r), ()),
    "u8bin": (bigann(".u8bin"), lambda r: ints(r, "uint8"), ()),
    "i8bin": (bigann(".i8bin"), lambda r: ints(r, "int8"), ()),
}
NAMES = [pytest.param(name, marks=marks) for name, (_, _, marks) in INPUTS.items()]


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store except the manifest (which names the source)."""
    return {f.name: f.read_bytes() for f in sorted(path.iterdir()) if f.name != "manifest.json"}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scheme", ["int8-row", "cuvs-sq8", "binary"])
def test_convert_equals_the_npy(capsys: pytest.CaptureFixture[str], tmp_path: Path, rng: np.random.Generator,
                                name: str, scheme: str) -> None:
    write, make, _ = INPUTS[name]
    X = make(rng)
    src = write(tmp_path, X)
    np.save(tmp_path / "x.npy", X)
    runs = {}
    for label, path in (("npy", tmp_path / "x.npy"), ("src", src)):
        code, doc = cli_json(capsys, "convert", path, tmp_path / label, "--scheme", scheme, "--batch-rows", "41",
                             "--device", "cpu")
        assert code == 0, doc
        runs[label] = doc
    assert store_bytes(tmp_path / "src") == store_bytes(tmp_path / "npy")
    source = runs["src"]["source"]
    assert source["shape"] == [N, D] and source["checksum"]["value"]
    assert runs["src"]["reconstruction"] == runs["npy"]["reconstruction"]


@pytest.mark.parametrize("name", NAMES)
def test_fit_and_eval_equal_the_npy(capsys: pytest.CaptureFixture[str], tmp_path: Path, rng: np.random.Generator,
                                    name: str) -> None:
    write, make, _ = INPUTS[name]
    X = np.clip(make(rng), -1e3, 1e3)  # eval's float32 distances of the largest edge values overflow
    src = write(tmp_path, X)
    np.save(tmp_path / "x.npy", X)
    fits, evals = {}, {}
    for label, path in (("npy", tmp_path / "x.npy"), ("src", src)):
        code, doc = cli_json(capsys, "fit", path, "--scheme", "cuvs-sq8", "-o", tmp_path / f"{label}.json")
        assert code == 0, doc
        fits[label] = json.loads((tmp_path / f"{label}.json").read_text())
        code, doc = cli_json(capsys, "eval", path, "--scheme", "int8-row", "--n-queries", "50", "--backend", "numpy")
        assert code == 0, doc
        doc.pop("seconds")
        evals[label] = doc
    assert fits["src"] == fits["npy"]
    assert evals["src"] == evals["npy"]


@needs_parquet
def test_python_api_dask_reader_and_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         rng: np.random.Generator) -> None:
    X = data(rng)
    pq.write_table(pa.table({"a": _fixed(X), "b": _lists(X[:, :5])}), tmp_path / "two.parquet", row_group_size=100)
    with pytest.raises(InputError, match="give --column: the float list columns are a, b"):
        open_source(tmp_path / "two.parquet")
    rep = gpuquant.convert(tmp_path / "two.parquet", tmp_path / "o", "int8-row", column="a", device="cpu",
                           batch_rows=77, progress=False)
    assert rep["source"]["column"] == "a"
    np.testing.assert_array_equal(np.asarray(gpuquant.open(tmp_path / "o").codes),
                                  gpuquant.Quantizer("int8-row").transform(X).data)
    da = pytest.importorskip("dask.array")
    from gpuquant import cluster as gcluster

    arr, desc = gcluster.from_source(tmp_path / "two.parquet", column="b", chunk_rows=130)
    assert isinstance(arr, da.Array) and desc["column"] == "b"
    np.testing.assert_array_equal(arr.compute(scheduler="synchronous"), X[:, :5])
    code, doc = cli_json(capsys, "plan", tmp_path / "two.parquet", "--column", "b", "--gpu-memory", "1GiB")
    assert code == 0 and doc["rows"] == N and doc["dim"] == 5


@needs_parquet
@needs_hdf5
def test_reads_in_any_order_and_take(tmp_path: Path, rng: np.random.Generator) -> None:
    X = data(rng)
    for write in (parquet_fixed, parquet_dir, hdf5):
        src = open_source(write(tmp_path, X))
        for a, b in [(500, 613), (0, 1), (96, 98), (97, 300), (612, 613), (0, 613), (5, 5)]:
            np.testing.assert_array_equal(src.read(a, b), X[a:b])
        rows = np.array([0, 1, 2, 96, 97, 150, 151, 400, 612])
        np.testing.assert_array_equal(src.take(rows), X[rows])
        src.close()
        for f in tmp_path.iterdir():
            if f.is_file():
                f.unlink()


@needs_parquet
def test_large_list_column(tmp_path: Path, rng: np.random.Generator) -> None:
    X = data(rng, "float64")
    pq.write_table(pa.table({"v": pa.array(list(X), type=pa.large_list(pa.float64()))}), tmp_path / "x.parquet",
                   row_group_size=100)
    src = open_source(tmp_path / "x.parquet")
    assert src.dtype == np.float64 and src.shape == (N, D)
    np.testing.assert_array_equal(src.read(90, 333), X[90:333])


@needs_parquet
def test_resume_refuses_another_column(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       rng: np.random.Generator) -> None:
    X = data(rng)
    bad = X.copy()
    bad[321, 4] = np.nan  # int8-row stops at this row and keeps 300 rows
    pq.write_table(pa.table({"a": _fixed(bad), "b": _fixed(X)}), tmp_path / "x.parquet")
    code, doc = cli_json(capsys, "convert", tmp_path / "x.parquet", tmp_path / "o", "--scheme", "int8-row",
                         "--column", "a", "--batch-rows", "100", "--device", "cpu")
    assert code == 2 and "keeps 300 of 613 rows" in doc["error"]["message"]
    code, doc = cli_json(capsys, "convert", tmp_path / "x.parquet", tmp_path / "o", "--resume", "--column", "b")
    assert code == 2 and "column was 'a', now 'b'" in doc["error"]["message"]


@needs_parquet
@pytest.mark.parametrize(("rows", "message"), [
    ([[1.0, 2.0], [3.0, 4.0], [5.0]], r"row 2 of column 'v' .* holds 1 values, but row 0 holds 2"),
    ([[1.0, 2.0], None], r"row 1 of column 'v' .* is null"),
    ([[1.0, 2.0], [3.0, None]], r"row 1 of column 'v' .* holds a null value"),
    ([[], []], "the input is empty"),
])
def test_bad_parquet_rows_are_refused_naming_the_row(tmp_path: Path, rows: list, message: str) -> None:
    pq.write_table(pa.table({"v": pa.array(rows, type=pa.list_(pa.float32()))}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match=message):
        gpuquant.convert(tmp_path / "x.parquet", tmp_path / "o", "fp16", device="cpu", progress=False)
    assert not (tmp_path / "o").exists()


@needs_parquet
def test_parquet_column_errors(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "s": ["a", "b"]}), tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"no column holds lists of floats \(columns: id int64, s string\)"):
        open_source(tmp_path / "x.parquet")
    with pytest.raises(InputError, match=r"has no column 'v' \(columns: id, s\)"):
        open_source(tmp_path / "x.parquet", column="v")
    with pytest.raises(InputError, match=r"column 'id' .* is int64, not a list of float16/32/64 values"):
        open_source(tmp_path / "x.parquet", column="id")
    with pytest.raises(InputError, match="--dataset is for HDF5 input"):
        open_source(tmp_path / "x.parquet", dataset="train")
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"v": _lists(np.ones((2, 3), np.float32))}), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.table({"v": _lists(np.ones((2, 3)))}), tmp_path / "d" / "b.parquet")
    with pytest.raises(InputError, match="Parquet files disagree"):
        open_source(tmp_path / "d")


@needs_hdf5
def test_hdf5_dataset_choice(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["g/emb"] = np.ones((4, 3), np.float32)
        f["ids"] = np.zeros((4, 1), np.int64)
    assert open_source(tmp_path / "x.h5").describe()["dataset"] == "g/emb"
    with h5py.File(tmp_path / "x.h5", "a") as f:
        f["other"] = np.ones((2, 2), np.float64)
    with pytest.raises(InputError, match="give --dataset: the 2-D float datasets are g/emb, other"):
        open_source(tmp_path / "x.h5")
    assert open_source(tmp_path / "x.h5", dataset="other").shape == (2, 2)
    with pytest.raises(InputError, match=r"dataset 'ids' .* is int64 .*expected a 2-D float"):
        open_source(tmp_path / "x.h5", dataset="ids")
    with pytest.raises(InputError, match="has no dataset 'nope'"):
        open_source(tmp_path / "x.h5", dataset="nope")
    with pytest.raises(InputError, match="--column is for Parquet input"):
        open_source(tmp_path / "x.h5", column="emb")


@pytest.mark.parametrize(("payload", "message"), [
    (np.array([3, 2], "<i4").tobytes() + bytes(23), r"holds 31 bytes, but its header .*needs 32 bytes \(truncated\?\)"),
    (np.array([3, 2], "<i4").tobytes() + bytes(25), "trailing bytes"),
    (np.array([0, 2], "<i4").tobytes(), "both must be positive"),
    (bytes(5), "shorter than the 8-byte big-ann header"),
])
def test_bigann_size_is_checked_before_writing(tmp_path: Path, payload: bytes, message: str) -> None:
    (tmp_path / "x.fbin").write_bytes(payload)
    with pytest.raises(InputError, match=message):
        gpuquant.convert(tmp_path / "x.fbin", tmp_path / "o", "fp16", device="cpu", progress=False)
    assert not (tmp_path / "o").exists()


@needs_parquet
@needs_hdf5
def test_inspect_describes_each_input(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      rng: np.random.Generator) -> None:
    X = ints(rng, "int8")
    for write, key in ((parquet_fixed, "column"), (hdf5, "dataset"), (bigann(".i8bin"), "stored_dtype")):
        code, doc = cli_json(capsys, "inspect", write(tmp_path, X))
        assert code == 0 and doc["shape"] == [N, D] and key in doc


@needs_parquet
def test_an_interrupted_parquet_convert_resumes_to_the_npy_bytes(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                                 rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuquant.engine.sources import SourceReadError

    X = data(rng)
    src = parquet_fixed(tmp_path, X)
    np.save(tmp_path / "x.npy", X)
    real, calls = readers.ParquetSource.read_into, []

    def fails_on_the_fourth_batch(self, start, stop, out):  # type: ignore[no-untyped-def]
        calls.append(start)
        if len(calls) == 4:
            raise SourceReadError("read error in the test")
        return real(self, start, stop, out)

    monkeypatch.setattr(readers.ParquetSource, "read_into", fails_on_the_fourth_batch)
    args = ("--scheme", "int8-row", "--batch-rows", "50", "--device", "cpu")
    code, doc = cli_json(capsys, "convert", src, tmp_path / "src", *args)
    assert code == 1 and "keeps 150 of 613 rows" in doc["error"]["message"]
    monkeypatch.undo()
    code, doc = cli_json(capsys, "convert", src, tmp_path / "src", "--resume", "--device", "cpu")
    assert code == 0 and doc["resumed_from"] == 150
    code, _ = cli_json(capsys, "convert", tmp_path / "x.npy", tmp_path / "npy", *args)
    assert code == 0 and store_bytes(tmp_path / "src") == store_bytes(tmp_path / "npy")
