"""Row sources for the streaming engine: a ``.npy`` file, raw float32 with a shape, an ordered
directory of ``.npy`` shards, or an array in memory (Parquet, HDF5 and big-ann files:
:mod:`gpuquant.engine.readers`, opened through :func:`open_source` too).

Every source is checked when it is opened, before anything is written: 2-D, a float dtype
(float16/32/64, either byte order: big-endian values are byte-swapped as they are read, so every
source yields this machine's byte order), not empty, not truncated (each file at least as long as its
header says; a raw file exactly ``rows * dim * 4`` bytes), shards agreeing on dims and dtype. Reading a batch
(:meth:`Source.read_into`) copies rows ``[start, stop)`` into a caller's buffer with ``preadv`` (C
order), so nothing is memory-mapped and resident memory stays bounded by the buffers; a short read
(the file shrank while converting) raises :class:`SourceReadError`.

Shards are the directory's ``*.npy`` files in natural order (``part-2`` before ``part-10``);
they are concatenated along the rows; a shard without rows is skipped (logged).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import files as gfiles
from gpuquant.errors import InputError, SourceReadError

log = logging.getLogger("gpuquant.engine")

CHECKSUM_METHOD = "quick-v1"
CHECKSUM_BLOCK = 1 << 20
FLOAT_DTYPES = gfiles.FLOAT_DTYPES


@dataclass
class _File:
    path: Path
    rows: int
    dim: int
    dtype: np.dtype
    offset: int
    fortran: bool


def _quick_hash(files: list[Path]) -> str:
    """BLAKE2b-128 of (size, mtime_ns, first MiB, last MiB) of each file, in order."""
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}:".encode())
        with open(p, "rb") as f:
            h.update(f.read(CHECKSUM_BLOCK))
            if st.st_size > CHECKSUM_BLOCK:
                f.seek(max(CHECKSUM_BLOCK, st.st_size - CHECKSUM_BLOCK))
                h.update(f.read(CHECKSUM_BLOCK))
    return h.hexdigest()


def file_checksum(paths: list[Path]) -> dict[str, Any]:
    """The manifest's ``checksum`` (the quick hash of ``paths``) and ``bytes`` (their total size)."""
    return {"checksum": {"method": f"{CHECKSUM_METHOD}: BLAKE2b-128 of (size, mtime_ns, first MiB, last MiB) "
                                   "of each file", "value": _quick_hash(paths)},
            "bytes": int(sum(p.stat().st_size for p in paths))}


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


class Source:
    """Rows of a 2-D float matrix, read in batches."""

    kind = "array"

    def __init__(self) -> None:
        self.shape: tuple[int, int] = (0, 0)
        self.dtype: np.dtype = np.dtype(np.float32)
        self.label = ""

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def dim(self) -> int:
        return self.shape[1]

    @property
    def row_bytes(self) -> int:
        return self.dim * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Copy rows ``[start, stop)`` into ``out[: stop - start]`` (C-contiguous, this source's dtype)."""
        raise NotImplementedError

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.read_into(start, stop, np.empty((stop - start, self.dim), self.dtype))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows at the sorted indices ``rows`` (a small gather), as an array of this dtype; each run of
        consecutive indices is read in one call."""
        rows = np.asarray(rows, np.int64)
        out = np.empty((rows.size, self.dim), self.dtype)
        if rows.size:
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            for run in np.split(np.arange(rows.size), breaks):
                a = int(rows[run[0]])
                self.read_into(a, a + run.size, out[run[0] : run[0] + run.size])
        return out

    def describe(self) -> dict[str, Any]:
        """What the store's manifest records as ``source``."""
        return {"kind": self.kind, "path": self.label, "shape": list(self.shape), "dtype": self.dtype.name}

    def close(self) -> None:
        pass


class ArraySource(Source):
    """An array in memory (or a numpy memmap)."""

    kind = "array"

    def __init__(self, X: Any) -> None:
        super().__init__()
        if not isinstance(X, np.ndarray):
            raise InputError(f"convert reads numpy arrays, .npy files, raw files or shard directories; "
                             f"got {type(X).__name__} (for device arrays use Quantizer.transform)")
        if X.ndim != 2:
            raise InputError(f"the input must be 2-D (rows, dims), got shape {X.shape}")
        if gfiles.native(X.dtype) not in FLOAT_DTYPES:
            raise InputError(f"the input has dtype {X.dtype}; expected float32 (float16 and float64 are accepted too)")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise InputError(f"the input is empty: shape {X.shape}")
        self.X = X
        self.shape = (int(X.shape[0]), int(X.shape[1]))
        self.dtype = gfiles.native(X.dtype)
        self.label = f"<array {X.dtype}{X.shape}>"

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        dst = out[: stop - start]
        np.copyto(dst, self.X[start:stop])
        return dst

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.X[np.asarray(rows, np.int64)])

    def describe(self) -> dict[str, Any]:
        head = np.ascontiguousarray(self.X[: max(1, CHECKSUM_BLOCK // max(1, self.row_bytes))]).tobytes()
        tail = np.ascontiguousarray(self.X[-max(1, CHECKSUM_BLOCK // max(1, self.row_bytes)):]).tobytes()
        digest = hashlib.blake2b(head + b"|" + tail, digest_size=16).hexdigest()
        return {**super().describe(), "path": None,
                "checksum": {"method": "array-v1: BLAKE2b-128 of the first and last MiB of rows", "value": digest}}


class FileSource(Source):
    """One or more files holding consecutive rows (``.npy``, raw float32, or ``.npy`` shards)."""

    def __init__(self, kind: str, files: list[_File], label: str) -> None:
        super().__init__()
        self.kind = kind
        self.files = files
        self.label = label
        self.shape = (sum(f.rows for f in files), files[0].dim)
        self.dtype = gfiles.native(files[0].dtype)
        self.starts = np.cumsum([0] + [f.rows for f in files])
        self._fds: dict[int, int] = {}
        self._maps: dict[int, np.ndarray] = {}

    def _fd(self, i: int) -> int:
        fd = self._fds.get(i)
        if fd is None:
            try:
                fd = self._fds[i] = os.open(self.files[i].path, os.O_RDONLY)
            except OSError as exc:
                raise SourceReadError(f"cannot open {self.files[i].path}: {exc}") from exc
        return fd

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        dst = out[: stop - start]
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            f, first = self.files[i], int(self.starts[i])
            a, b = pos - first, min(stop, first + f.rows) - first
            part = dst[pos - start : pos - start + (b - a)]
            if f.fortran:
                mm = self._maps.get(i)
                if mm is None:
                    mm = self._maps[i] = np.load(f.path, mmap_mode="r", allow_pickle=False)
                np.copyto(part, mm[a:b])
            else:
                self._pread(i, f.offset + a * f.dim * f.dtype.itemsize, part)
                if not f.dtype.isnative:
                    part.byteswap(inplace=True)
            pos += b - a
            i += 1
        return dst

    def _pread(self, i: int, offset: int, part: np.ndarray) -> None:
        view = memoryview(part.reshape(-1).view(np.uint8))
        fd = self._fd(i)
        while len(view):
            try:
                n = os.preadv(fd, [view], offset)
            except OSError as exc:
                raise SourceReadError(f"read error in {self.files[i].path} at byte {offset}: {exc}") from exc
            if n == 0:
                raise SourceReadError(f"read error in {self.files[i].path} at byte {offset}: the file ended early "
                                      "(was it truncated or replaced while converting?)")
            view, offset = view[n:], offset + n

    def describe(self) -> dict[str, Any]:
        doc = {**super().describe(), "path": self.label, **file_checksum([f.path for f in self.files])}
        if self.kind == "shards":
            doc["files"] = [{"file": f.path.name, "rows": f.rows} for f in self.files]
        return doc

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._maps.clear()


def _npy_file(p: Path, allow_no_rows: bool = False) -> _File:
    header = gfiles.read_npy_header(p)
    gfiles.check_matrix_header(p, header, allow_no_rows=allow_no_rows)
    gfiles.check_length(p, header)
    return _File(p, header.shape[0], header.shape[1], header.dtype, header.data_offset, header.fortran_order)


def _npy_shards(p: Path) -> list[Path]:
    return sorted((q for q in p.iterdir() if q.suffix == ".npy" and not q.name.startswith(".")), key=_natural_key)


def _shards(directory: Path, files: list[_File]) -> list[_File]:
    """The shards that hold rows (an empty one is skipped, logged); ``InputError`` when none does."""
    kept = [f for f in files if f.rows]
    for f in files:
        if not f.rows:
            log.warning("skipping %s: an empty shard (0 rows)", f.path)
    if not kept:
        raise InputError(f"{directory} is empty: its {len(files)} .npy shards hold no rows")
    return kept


def parse_shape(shape: Any) -> tuple[int, int]:
    """``"1000000,384"``, ``"auto,384"`` / ``"-1,384"`` or a pair of ints; auto (-1) rows: from the file size."""
    if isinstance(shape, str):
        parts = [t.strip() for t in shape.replace("x", ",").split(",")]
        parts = ["-1" if t.lower() == "auto" else t for t in parts]
    else:
        parts = list(shape)
    try:
        n, d = (int(t) for t in parts)
    except (TypeError, ValueError):
        raise InputError(f"--shape expects ROWS,DIM (e.g. 1000000,384 or auto,384), got {shape!r}") from None
    if d < 1 or (n < 1 and n != -1):
        raise InputError(f"--shape expects positive ROWS (or -1) and DIM, got {shape!r}")
    return n, d


def open_source(src: Any, *, shape: Any = None, column: str | None = None, dataset: str | None = None,
                label: str | None = None) -> Source:
    """A :class:`Source` for a path or an array: a ``.npy`` file, raw float32 with ``shape``, a directory
    of ``.npy`` shards, Parquet (a file or a directory; ``column``: the list column), HDF5 (``dataset``)
    or a big-ann ``.fbin`` / ``.u8bin`` / ``.i8bin`` file (:mod:`gpuquant.engine.readers`)."""
    if isinstance(src, np.ndarray):
        if shape is not None:
            raise InputError("shape= is for raw float32 files, not arrays")
        return ArraySource(src)
    if not isinstance(src, (str, os.PathLike)):
        return ArraySource(src)
    p = Path(src)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    from gpuquant.engine import readers

    kind = None if shape is not None or (p.is_dir() and _npy_shards(p)) else readers.kind_of(p)
    if kind is not None or column is not None or dataset is not None:
        return readers.open_reader(p, kind or "npy", column=column, dataset=dataset, label=label or str(p.resolve()))
    if p.is_dir():
        if shape is not None:
            raise InputError(f"{p} is a directory of shards; --shape is for one raw float32 file")
        shards = _npy_shards(p)
        if not shards:
            raise InputError(f"input is not a regular file: {p} is a directory without .npy shards "
                             "(a directory is read as the row-wise concatenation of its .npy files, "
                             "or of its .parquet files)")
        files = _shards(p, [_npy_file(q, allow_no_rows=True) for q in shards])
        first = files[0]
        for f in files[1:]:
            if f.dim != first.dim or gfiles.native(f.dtype) != gfiles.native(first.dtype):
                raise InputError(f"shards disagree: {f.path} is {f.dtype.name} with {f.dim} dims, "
                                 f"but {first.path} is {first.dtype.name} with {first.dim} dims")
        return FileSource("shards", files, label or str(p.resolve()))
    if not p.is_file():
        raise InputError(f"input is not a regular file: {p}")
    with open(p, "rb") as f:
        npy = f.read(6) == b"\x93NUMPY"
    if shape is None and not npy:
        try:
            gfiles.read_npy_header(p)
        except InputError as exc:
            raise InputError(f"{exc}; if it holds raw float32 values, give its shape: --shape ROWS,DIM (ROWS may "
                             "be auto: from the file size)") from None
    if shape is not None:
        if npy:
            raise InputError(f"{p} is a .npy file; its header gives the shape: drop --shape")
        n, d = parse_shape(shape)
        size, row = p.stat().st_size, d * 4
        if n == -1:
            if size == 0 or size % row:
                raise InputError(f"raw input {p} holds {size} bytes, not a whole number of float32 rows of {d} dims "
                                 f"({row} bytes each)")
            n = size // row
        if size != n * row:
            raise InputError(f"raw input {p} holds {size} bytes, but --shape {n},{d} float32 needs {n * row} bytes "
                             f"({'truncated?' if size < n * row else 'wrong shape?'})")
        return FileSource("raw", [_File(p, n, d, np.dtype(np.float32), 0, False)], label or str(p.resolve()))
    return FileSource("npy", [_npy_file(p)], label or str(p.resolve()))


class PreparedSource(Source):
    """Rows of ``inner`` after the quantizer's Matryoshka step (keep ``k`` dims, L2-renormalise;
    :func:`gpuquant.matryoshka.truncate_renormalize`) and, when given, its fitted pre-transform
    (``pre``: :class:`gpuquant.transforms.PreTransform`): float32, the dimensions the scheme sees."""

    def __init__(self, inner: Source, k: int | None, pre: Any = None) -> None:
        super().__init__()
        if k is not None and k > inner.dim:
            raise InputError(f"truncate_dim={k} is larger than the input's {inner.dim} dimensions")
        self.inner, self.k, self.pre = inner, k, pre
        self.kind, self.label = inner.kind, inner.label
        dim = inner.dim if k is None else k
        self.shape = (inner.rows, dim if pre is None else pre.out_dim(dim))
        self.dtype = np.dtype(np.float32)
        self._buf: np.ndarray | None = None

    def _prepare(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        from gpuquant.matryoshka import truncate_renormalize

        if self.k is not None:
            x = truncate_renormalize(x, self.k, out=out if self.pre is None else None)
            if self.pre is None:
                return x
        y = x if self.pre is None else self.pre.apply(np.asarray(x, np.float32))
        if out is None:
            return np.asarray(y, np.float32)
        out[...] = y  # never a view of the read buffer, which the next read reuses
        return out

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """The inner rows are read into a buffer kept for the next call with an ``out`` of the same
        length (one reader at a time, as the engine reads), then prepared straight into ``out``."""
        if self._buf is None or self._buf.shape[0] != out.shape[0]:
            self._buf = np.empty((out.shape[0], self.inner.dim), self.inner.dtype)
        x = self.inner.read_into(start, stop, self._buf)
        return self._prepare(x, out[: stop - start])

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self._prepare(self.inner.take(rows))

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()
