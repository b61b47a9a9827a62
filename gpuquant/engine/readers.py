"""Sources for where embeddings usually live: Parquet, HDF5 and the big-ann binary files.

Each is a :class:`gpuquant.engine.sources.Source` (rows of a 2-D float matrix read in batches into
the caller's buffer), so the engine, the streaming fit, ``eval``, ``plan`` and Dask read them as they
read ``.npy`` files, and the codes are the bytes the same rows as a ``.npy`` give.

* **Parquet** (a file, or a directory of ``*.parquet`` files concatenated in natural name order;
  pyarrow, extra ``parquet``): one column of ``list<float>``, ``large_list<float>`` or
  ``fixed_size_list<float>`` (float16/32/64 values); row ``i`` of the matrix is the list in row ``i``.
  Read row group by row group in record batches of at most ``BATCH_BYTES`` of values, with a forward
  cursor so that batches read in order decode each row group once (a gather of sampled rows,
  :meth:`Source.take`, decodes every row group that holds one of them: Parquet has no row-level
  random access). A null row, a null value or a
  list whose length differs from the first row's is refused (``InputError`` naming the global row)
  when the reader reaches it.
* **HDF5** (h5py, extra ``hdf5``): one 2-D float dataset (``train`` by default, as ann-benchmarks
  names its base vectors), read by row slices straight into the buffer (HDF5 converts the byte order).
* **big-ann** ``.fbin`` / ``.u8bin`` / ``.i8bin``: little-endian int32 rows, int32 dims, then
  ``rows * dims`` float32 / uint8 / int8 values in C order; the file size must equal
  ``8 + rows * dims * itemsize``. uint8 and int8 values are exact in float32, which is what the
  engine sees (dtype float32).

The quick checksum (size, mtime, first and last MiB of each file) and the column or dataset name are
recorded in the manifest, so ``--resume`` refuses a source that changed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant.engine.sources import FLOAT_DTYPES, FileSource, Source, _File, _natural_key, file_checksum
from gpuquant.errors import InputError

#: Bytes of values per record batch decoded from Parquet.
BATCH_BYTES = 4 << 20
PARQUET_MAGIC = b"PAR1"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
BIGANN: dict[str, np.dtype] = {".fbin": np.dtype("<f4"), ".u8bin": np.dtype("u1"), ".i8bin": np.dtype("i1")}
PARQUET_SUFFIXES = (".parquet", ".pq")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InputError(f"reading this input needs {module.split('.')[0]}: pip install 'gpuquant[{extra}]' "
                         f"({exc})") from None


def kind_of(p: Path) -> str | None:
    """``"parquet"``, ``"hdf5"``, ``"bigann"`` or None (by suffix, then by magic bytes) for a file or
    a directory of Parquet files."""
    if p.is_dir():
        return "parquet" if parquet_files(p) else None
    if p.suffix.lower() in BIGANN:
        return "bigann"
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix.lower() in PARQUET_SUFFIXES or head[:4] == PARQUET_MAGIC:
        return "parquet"
    if p.suffix.lower() in HDF5_SUFFIXES or head == HDF5_MAGIC:
        return "hdf5"
    return None


def parquet_files(p: Path) -> list[Path]:
    return sorted((q for q in p.iterdir() if q.suffix.lower() in PARQUET_SUFFIXES and not q.name.startswith(".")),
                  key=_natural_key)


def open_reader(p: Path, kind: str, *, column: str | None, dataset: str | None, label: str) -> Source:
    """The source of ``kind`` for path ``p``; ``column`` is for Parquet, ``dataset`` for HDF5."""
    if column is not None and kind != "parquet":
        raise InputError(f"--column is for Parquet input; {p} is not Parquet")
    if dataset is not None and kind != "hdf5":
        raise InputError(f"--dataset is for HDF5 input; {p} is not HDF5")
    if kind == "parquet":
        return ParquetSource(parquet_files(p) if p.is_dir() else [p], column, label)
    if kind == "hdf5":
        return Hdf5Source(p, dataset, label)
    return bigann_source(p, label)


# --------------------------------------------------------------------------------------------
# big-ann binary files


class CastFileSource(FileSource):
    """A :class:`FileSource` of integer values read as float32 (exact for 8-bit integers)."""

    def __init__(self, kind: str, files: list[_File], label: str) -> None:
        super().__init__(kind, files, label)
        self.stored = files[0].dtype
        self.dtype = np.dtype(np.float32)
        self._scratch = np.empty(0, self.stored)

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        n = (stop - start) * self.dim
        if self._scratch.size < n:
            self._scratch = np.empty(n, self.stored)
        raw = super().read_into(start, stop, self._scratch[:n].reshape(stop - start, self.dim))
        dst = out[: stop - start]
        np.copyto(dst, raw, casting="unsafe")
        return dst

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "stored_dtype": self.stored.name}


def bigann_source(p: Path, label: str) -> Source:
    """A ``.fbin`` / ``.u8bin`` / ``.i8bin`` file, its header checked against its size."""
    dtype = BIGANN[p.suffix.lower()]
    size = p.stat().st_size
    if size < 8:
        raise InputError(f"{p} holds {size} bytes: shorter than the 8-byte big-ann header (int32 rows, int32 dims)")
    rows, dim = (int(v) for v in np.fromfile(p, dtype="<i4", count=2))
    if rows < 1 or dim < 1:
        raise InputError(f"{p}: the big-ann header says {rows} rows x {dim} dims; both must be positive")
    need = 8 + rows * dim * dtype.itemsize
    if size != need:
        raise InputError(f"{p} holds {size} bytes, but its header ({rows} rows x {dim} dims of {dtype.name}) needs "
                         f"{need} bytes ({'truncated?' if size < need else 'trailing bytes after the values'})")
    files = [_File(p, rows, dim, dtype, 8, False)]
    kind = p.suffix.lower().lstrip(".")
    return FileSource(kind, files, label) if dtype.kind == "f" else CastFileSource(kind, files, label)


# --------------------------------------------------------------------------------------------
# Parquet


def _float_list(t: Any) -> bool:
    pa = _need("pyarrow", "parquet")
    is_list = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    return bool(is_list and pa.types.is_floating(t.value_type))


class ParquetSource(Source):
    """Rows of one list column of Parquet files (see the module docstring)."""

    kind = "parquet"

    def __init__(self, paths: list[Path], column: str | None, label: str) -> None:
        super().__init__()
        pq = _need("pyarrow.parquet", "parquet")
        self._pa, self._pc = _need("pyarrow", "parquet"), _need("pyarrow.compute", "parquet")
        self.paths, self.label = paths, label
        self.files = [pq.ParquetFile(p, pre_buffer=False, buffer_size=1 << 20) for p in paths]
        self.column = self._pick_column(column)
        pieces = [(i, g, f.metadata.row_group(g).num_rows) for i, f in enumerate(self.files)
                  for g in range(f.metadata.num_row_groups)]
        self.pieces = [pc for pc in pieces if pc[2] > 0]
        self.starts = np.cumsum([0] + [pc[2] for pc in self.pieces])
        n = int(self.starts[-1])
        if n == 0:
            raise InputError(f"the input is empty: {label} holds no rows")
        t = self.files[0].schema_arrow.field(self.column).type
        self.dtype = np.dtype(t.value_type.to_pandas_dtype())
        self._lock = threading.Lock()
        self._it: Iterator[np.ndarray] | None = None
        self._piece, self._next, self._cur = -1, 0, (0, np.empty((0, 0), self.dtype))
        self.shape = (n, int(t.list_size) if hasattr(t, "list_size") else self._first_len())

    def _pick_column(self, column: str | None) -> str:
        schemas = [f.schema_arrow for f in self.files]
        first = schemas[0]
        for p, s in zip(self.paths[1:], schemas[1:], strict=True):
            if not s.equals(first):
                raise InputError(f"Parquet files disagree: {p} has schema {s}, but {self.paths[0]} has {first}")
        found = [f.name for f in first if _float_list(f.type)]
        if column is None:
            if len(found) != 1:
                raise InputError(f"{self.label}: give --column: " + (
                    f"the float list columns are {', '.join(found)}" if found else
                    f"no column holds lists of floats (columns: {', '.join(f'{f.name} {f.type}' for f in first)})"))
            return str(found[0])
        if column not in first.names:
            raise InputError(f"{self.label} has no column {column!r} (columns: {', '.join(first.names)})")
        if column not in found:
            raise InputError(f"column {column!r} of {self.label} is {first.field(column).type}, not a list of "
                             f"float16/32/64 values" + (f" (float list columns: {', '.join(found)})" if found else ""))
        return column

    def _first_len(self) -> int:
        i, g, _ = self.pieces[0]
        batch = next(self.files[i].iter_batches(batch_size=1, row_groups=[g], columns=[self.column]))
        first = batch.column(0)
        if first.null_count:
            raise InputError(f"row 0 of column {self.column!r} in {self.label} is null")
        d = len(first[0])
        if d == 0:
            raise InputError(f"the input is empty: row 0 of column {self.column!r} in {self.label} holds no values")
        return d

    def _block(self, arr: Any, first_row: int) -> np.ndarray:
        """A record batch's column as an ``(n, dim)`` array, refusing nulls and unequal lengths."""
        pa, pc = self._pa, self._pc
        where = f"column {self.column!r} of {self.label}"
        if arr.null_count:
            bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"row {first_row + bad} of {where} is null")
        if not pa.types.is_fixed_size_list(arr.type):
            lengths = np.asarray(pc.list_value_length(arr).to_numpy(zero_copy_only=False))
            bad_rows = np.flatnonzero(lengths != self.dim)
            if bad_rows.size:
                r = int(bad_rows[0])
                raise InputError(f"row {first_row + r} of {where} holds {lengths[r]} values, but row 0 holds "
                                 f"{self.dim}: every row must have the same length")
        values = arr.flatten()
        if values.null_count:
            bad = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"row {first_row + bad // self.dim} of {where} holds a null value")
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(-1, self.dim)

    def _open(self, piece: int) -> None:
        i, g, _ = self.pieces[piece]
        rows = max(1, BATCH_BYTES // self.row_bytes)
        it = self.files[i].iter_batches(batch_size=rows, row_groups=[g], columns=[self.column], use_threads=False)
        self._it = (b.column(0) for b in it)
        self._piece, self._next = piece, int(self.starts[piece])

    def _block_at(self, pos: int) -> tuple[int, np.ndarray]:
        a, x = self._cur
        if a <= pos < a + len(x):
            return self._cur
        piece = int(np.searchsorted(self.starts, pos, side="right")) - 1
        if self._it is None or piece != self._piece or pos < self._next:
            self._open(piece)
        assert self._it is not None
        while True:
            a = self._next
            x = self._block(next(self._it), a)
            self._next = a + len(x)
            if pos < self._next:
                self._cur = (a, x)
                return self._cur

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        dst = out[: stop - start]
        with self._lock:
            pos = start
            while pos < stop:
                a, x = self._block_at(pos)
                k = min(stop, a + len(x)) - pos
                np.copyto(dst[pos - start : pos - start + k], x[pos - a : pos - a + k])
                pos += k
        return dst

    def describe(self) -> dict[str, Any]:
        return {**Source.describe(self), **file_checksum(self.paths), "column": self.column,
                "files": [{"file": p.name, "rows": int(f.metadata.num_rows)} for p, f in zip(self.paths, self.files,
                                                                                             strict=True)]}

    def close(self) -> None:
        self._it, self._cur = None, (0, np.empty((0, 0), self.dtype))
        for f in self.files:
            f.close()


# --------------------------------------------------------------------------------------------
# HDF5


def _float_2d(obj: Any) -> bool:
    return getattr(obj, "ndim", 0) == 2 and np.dtype(obj.dtype).newbyteorder("=") in FLOAT_DTYPES


class Hdf5Source(Source):
    """One 2-D float dataset of an HDF5 file (see the module docstring)."""

    kind = "hdf5"

    def __init__(self, path: Path, dataset: str | None, label: str) -> None:
        super().__init__()
        h5py = _need("h5py", "hdf5")
        self.path, self.label = path, label
        try:
            self.file = h5py.File(path, "r")
        except OSError as exc:
            raise InputError(f"{path} is not a readable HDF5 file ({exc})") from None
        try:
            self.name = self._pick(dataset, h5py)
        except BaseException:
            self.file.close()
            raise
        self.ds = self.file[self.name]
        self.dtype = np.dtype(self.ds.dtype).newbyteorder("=")
        self.shape = (int(self.ds.shape[0]), int(self.ds.shape[1]))
        if 0 in self.shape:
            self.file.close()
            raise InputError(f"the input is empty: dataset {self.name!r} of {path} has shape {self.shape}")

    def _pick(self, dataset: str | None, h5py: Any) -> str:
        found: list[str] = []
        self.file.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        floats = [n for n in found if _float_2d(self.file[n])]
        if dataset is None:
            if "train" in found:
                dataset = "train"
            elif len(floats) == 1:
                return floats[0]
            else:
                raise InputError(f"{self.path}: give --dataset: " + (
                    f"the 2-D float datasets are {', '.join(floats)}" if floats
                    else f"no 2-D float dataset (datasets: {', '.join(found) or 'none'})"))
        obj = self.file.get(dataset)
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"{self.path} has no dataset {dataset!r} (datasets: {', '.join(found) or 'none'})")
        if not _float_2d(obj):
            raise InputError(f"dataset {dataset!r} of {self.path} is {obj.dtype} of shape {obj.shape}; expected a 2-D "
                             "float16/32/64 matrix" + (f" (2-D float datasets: {', '.join(floats)})" if floats else ""))
        return dataset.lstrip("/")

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        dst = out[: stop - start]
        if stop > start:
            self.ds.read_direct(dst, np.s_[start:stop], np.s_[0 : stop - start])
        return dst

    def describe(self) -> dict[str, Any]:
        return {**Source.describe(self), **file_checksum([self.path]), "dataset": self.name}

    def close(self) -> None:
        self.file.close()
