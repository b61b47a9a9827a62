"""The code store: a directory of plain files, written in place by the streaming engine.

Layout (``gpuquant convert`` writes it; :func:`open` reads it)::

    OUTPUT/codes.npy        the codes as the peer stores them (fp8 / bf16 as a uint8 / uint16 view),
                            readable by plain ``np.load(path, mmap_mode="r")``
    OUTPUT/<name>.npy       one .npy per side array (``scales.npy`` for int8-row / int4-block)
    OUTPUT/quantizer.json   the fitted quantizer (:meth:`gpuquant.Quantizer.load` reads it)
    OUTPUT/manifest.json    format tag and version, gpuquant version, scheme, family, parameters,
                            dim, rows, each file's shape and dtype, the source and the state

``manifest.json`` holds the run's ``state``: ``{"status": "in_progress" | "complete",
"rows_done": R, ...}``. Rows ``[0, R)`` of every file are final; rows after ``R`` may hold anything.
The engine writes batches in row order and rewrites the manifest (a temporary file, fsync, rename)
only after the data files were fsynced, so a run killed at any moment leaves a manifest whose
``rows_done`` never runs ahead of the data. ``complete`` is written last, after a final fsync and a
check (every file's header and size, and sampled rows re-encoded with the numpy reference and
compared byte for byte).

``source`` records where the rows came from: ``kind`` (npy, raw, shards, array, demo), ``path``,
``shape``, ``dtype`` and a quick ``checksum``: BLAKE2b-128 over, for each file in order, its size,
its mtime in nanoseconds and its first and last MiB (method ``"quick-v1"``). It is cheap on files of
any size and changes when a file is rewritten, resized or touched; it does not read the middle of
the file, so an in-place edit that keeps size and mtime would go unnoticed. ``--resume`` refuses
when the source's kind, shape, dtype or checksum, or the scheme and parameters, differ.

A lock file next to the output (``.OUTPUT.lock``, ``fcntl.flock``) keeps a second run from writing
the same output at the same time; it is removed when the run ends (a killed run leaves the file,
but not the lock: the kernel drops ``flock`` locks with the process).

Nothing is unpickled: the .npy files are read with ``allow_pickle=False`` and their headers are
checked before they are mapped.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import files as gio
from gpuquant._version import __version__
from gpuquant.errors import GpuquantError, InputError

FORMAT_NAME = gio.FORMAT_NAME
FORMAT_VERSION = gio.FORMAT_VERSION
MANIFEST, QUANTIZER, CODES = gio.MANIFEST, gio.QUANTIZER, gio.CODES
IN_PROGRESS, COMPLETE = "in_progress", "complete"
#: Per-range completion records of a store written by parallel tasks (``gpuquant.cluster``): one file
#: per finished row range, removed when the store is complete (whoever completes it).
PARTS = ".parts"


class StoreBusyError(GpuquantError, RuntimeError):
    """Another run holds the output's lock."""


class StoreIncompleteError(InputError):
    """The store is unfinished (``state.status == "in_progress"``)."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------
# the lock


class StoreLock:
    """An exclusive ``flock`` on ``.NAME.lock`` next to the output directory ``NAME``.

    The file is unlinked on release; acquiring re-checks that the locked file is still the one at
    the path (another run may have unlinked it meanwhile), so two runs never both hold it.
    """

    def __init__(self, output: str | os.PathLike[str]) -> None:
        out = Path(output)
        self.output = out
        self.path = out.parent / f".{out.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> StoreLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise StoreBusyError(
                    f"{self.output} is being written by another gpuquant run{holder} (lock {self.path}); "
                    "wait for it to finish, or stop it and continue with --resume") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self.fd = fd
                return self
            os.close(fd)  # the file we locked was unlinked by a run that just finished: retry

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            pid = os.pread(fd, 32, 0).decode().strip()
        except OSError:
            return ""
        return f" (process {pid})" if pid.isdigit() else ""

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------------------------
# writing


@dataclass
class _File:
    fd: int
    offset: int  # where the data starts
    row_bytes: int


def _preallocate(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    """Create ``path`` as a .npy of ``shape`` (stored dtype), space reserved; return its manifest entry."""
    view, logical, stored = gio.storage_view(np.empty((0,), dtype))
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=view.dtype, shape=shape)
    del mm
    header = gio.read_npy_header(path)
    fd = os.open(path, os.O_RDWR)
    try:
        if header.data_bytes:
            try:
                os.posix_fallocate(fd, header.data_offset, header.data_bytes)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise
                # EOPNOTSUPP / EINVAL: the file system cannot reserve space; writes will say ENOSPC
    finally:
        os.close(fd)
    return {"file": path.name, "shape": list(shape), "dtype": logical, "stored_dtype": stored}


class StoreWriter:
    """An output store opened for writing rows (created by :func:`create`, or reopened to resume)."""

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        #: ``(rows_done, extra)`` of the last checkpoint written (``extra`` None: the manifest's, as opened)
        self.durable: tuple[int, dict[str, Any] | None] = (self.rows_done, None)
        self.files: dict[str, _File] = {}
        rows = self.rows
        for name, e in {"codes": manifest["codes"], **manifest.get("side", {})}.items():
            p = path / e["file"]
            header = gio.read_npy_header(p)
            fd = os.open(p, os.O_RDWR)
            self.files[name] = _File(fd, header.data_offset, header.data_bytes // rows if rows else 0)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def rows_done(self) -> int:
        return int(self.manifest["state"]["rows_done"])

    def write_rows(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write rows ``start .. start + len`` of ``codes`` and each side array (any dtype of the same width)."""
        for name, arr in arrays.items():
            f = self.files[name]
            buf = memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))
            pos = f.offset + start * f.row_bytes
            while len(buf):
                n = os.pwrite(f.fd, buf, pos)
                buf, pos = buf[n:], pos + n

    def sync(self) -> None:
        for f in self.files.values():
            os.fsync(f.fd)

    def checkpoint(self, rows_done: int, **extra: Any) -> None:
        """fsync the data, then record ``rows_done`` in the manifest (atomically); nothing to do when
        the last checkpoint written was this one."""
        if self.durable == (rows_done, extra):
            return
        self.sync()
        self.manifest["state"].update({"status": IN_PROGRESS, "rows_done": int(rows_done), "updated": now(), **extra})
        gio.write_json_atomic(self.path / MANIFEST, self.manifest)
        self.durable = (int(rows_done), extra)

    def complete(self, extra: Mapping[str, Any] | None = None, verify: Callable[[Store], None] | None = None) -> Store:
        """fsync and record every row (unless a checkpoint did), check (:func:`open` on the files, then
        ``verify(store)``), mark the store complete; returns it, opened."""
        if self.durable[0] != self.rows:
            self.checkpoint(self.rows)
        store = open(self.path, allow_incomplete=True)
        if verify is not None:
            verify(store)
        self.manifest["state"].update({"status": COMPLETE, "rows_done": self.rows, "completed": now(),
                                       **(extra or {})})
        gio.write_json_atomic(self.path / MANIFEST, self.manifest)
        gio.fsync_path(self.path)
        shutil.rmtree(self.path / PARTS, ignore_errors=True)
        store.manifest["state"] = gio.to_jsonable(self.manifest["state"])  # as written
        return store

    def close(self) -> None:
        for f in self.files.values():
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self.files = {}


def check_output_free(output: Path, overwrite: bool, resume: bool) -> str:
    """What to do with ``output``: ``"new"``, ``"replace"`` or ``"resume"``; ``InputError`` when not allowed."""
    if not output.parent.is_dir():
        raise InputError(f"output's parent directory does not exist: {output.parent}")
    exists = output.exists() or output.is_symlink()
    if resume:
        if not exists:
            raise InputError(f"--resume: {output} does not exist; there is nothing to continue "
                             "(run without --resume to start)")
        st = read_manifest(output)
        if st.get("state", {}).get("status") == COMPLETE:
            raise InputError(f"--resume: {output} is already complete; there is nothing to continue "
                             "(pass --overwrite to convert again)")
        return "resume"
    if not exists:
        return "new"
    if not overwrite:
        status = ""
        with contextlib.suppress(GpuquantError, OSError, ValueError):
            state = read_manifest(output).get("state", {})
            if state.get("status") == IN_PROGRESS:
                status = (f"; it is an unfinished store ({state.get('rows_done', 0)} rows done): pass --resume "
                          "to continue it")
        raise InputError(f"output already exists: {output} (pass --overwrite / overwrite=True to replace it{status})")
    gio.check_output(output, overwrite=True)
    return "replace"


def create(
    output: str | os.PathLike[str],
    *,
    quantizer: Any,
    rows: int,
    dim: int,
    manifest: Mapping[str, Any],
    replace: bool = False,
) -> StoreWriter:
    """Set up a new store (in a temporary sibling, then renamed into place) and open it for writing.

    Every data file is created at full size with its space reserved (``posix_fallocate``), so a full
    disk is reported here, before any row is converted. ``replace`` swaps out an existing output
    (checked by the caller) once the new one is set up. Nothing is left behind if this fails.
    """
    dest = Path(output)
    scheme = quantizer.scheme
    side = scheme.side_shapes(rows, dim)
    need = int(np.prod(scheme.code_shape(rows, dim), dtype=np.int64)) * scheme.code_dtype.itemsize
    need += sum(int(np.prod(s, dtype=np.int64)) * np.dtype(t).itemsize for s, t in side.values())
    free = shutil.disk_usage(dest.parent).free
    if need > free:
        raise OSError(errno.ENOSPC, f"not enough disk space for {dest}: the codes need {need} bytes "
                      f"({need / 1e9:.3f} GB), {free} bytes ({free / 1e9:.3f} GB) are free")
    gio.check_side_names(side)
    with gio.partial_dir(dest) as tmp:
        doc = gio.manifest_head(manifest)
        doc["rows"], doc["dim"] = int(rows), int(dim)
        doc["codes"] = _preallocate(tmp / CODES, scheme.code_shape(rows, dim), scheme.code_dtype)
        doc["side"] = {name: _preallocate(tmp / f"{name}.npy", shape, dtype) for name, (shape, dtype) in side.items()}
        quantizer.save(tmp / QUANTIZER)
        doc["quantizer"] = QUANTIZER
        doc["state"] = {"status": IN_PROGRESS, "rows_done": 0, "created": now(), "updated": now()}
        for f in tmp.iterdir():  # the data files and the quantizer
            gio.fsync_path(f)
        gio.write_json_atomic(tmp / MANIFEST, doc)
        gio.move_into_place(tmp, dest, replace)
    return StoreWriter(dest, doc)


def reopen(output: str | os.PathLike[str]) -> StoreWriter:
    """Open an unfinished store to continue writing it (``--resume``)."""
    store = open(output, allow_incomplete=True)
    return StoreWriter(store.path, store.manifest)


def discard(path: Path) -> None:
    """Remove a store this run created and never wrote a row into."""
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# reading


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The store's manifest, checked for its format tag and version (``InputError`` naming the problem)."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"store not found: {root}")
    if not root.is_dir():
        raise InputError(f"not a gpuquant store (not a directory): {root}")
    m = root / MANIFEST
    if not m.is_file():
        raise InputError(f"{root} is not a gpuquant store: it has no {MANIFEST}")
    try:
        doc = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{m} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        tag = doc.get("format") if isinstance(doc, dict) else None
        raise InputError(f"{m} is not a gpuquant store manifest (format {tag!r}, expected {FORMAT_NAME!r})")
    version = doc.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise InputError(f"{m} has format version {version!r}; this gpuquant {__version__} reads versions "
                         f"1 to {FORMAT_VERSION}")
    return doc


def _require(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InputError(f"{where}: {key!r} is missing or not {getattr(kind, '__name__', kind)} (got {value!r})")
    return value


def _open_array(root: Path, entry: Any, what: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    m = root / MANIFEST
    if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
        raise InputError(f"{m}: the entry for {what} lacks its file name")
    name = entry["file"]
    if Path(name).name != name or not name.endswith(".npy"):
        raise InputError(f"{m}: the file of {what} must be a .npy file inside the store, got {name!r}")
    p = root / name
    if not p.is_file():
        raise InputError(f"{p} is missing (the {what} of this store)")
    header = gio.read_npy_header(p)
    if entry.get("dtype") != dtype.name:
        raise InputError(f"{m}: {what} has dtype {entry.get('dtype')!r} but the scheme stores {dtype.name}")
    stored = gio.storage_view(np.empty((0,), dtype))[0].dtype
    if header.dtype != stored or tuple(header.shape) != tuple(shape) or header.fortran_order:
        raise InputError(f"{p} holds {header.dtype.name}{tuple(header.shape)}"
                         f"{' (Fortran order)' if header.fortran_order else ''} but the store needs "
                         f"{stored.name}{tuple(shape)} for its {what}")
    if list(entry.get("shape", [])) != list(shape):
        raise InputError(f"{m}: {what} shape {entry.get('shape')} does not match rows x dim {tuple(shape)}")
    have = p.stat().st_size - header.data_offset
    if have < header.data_bytes:
        raise InputError(f"{p} is truncated: {header.data_bytes} bytes of data expected, {have} present")
    arr = np.load(p, mmap_mode="r", allow_pickle=False) if header.data_bytes else np.empty(shape, stored)
    return gio.logical_view(arr, dtype.name)


@dataclass
class Store:
    """A store opened for reading (see :func:`open`). Codes and side arrays are read-only memmaps."""

    path: Path
    manifest: dict[str, Any]
    quantizer: Any
    codes: np.ndarray
    side: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def scheme(self) -> Any:
        return self.quantizer.scheme

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.manifest.get("state", {}))

    @property
    def complete(self) -> bool:
        return self.state.get("status") == COMPLETE

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        st = self.state
        done = "" if self.complete else f" {st.get('rows_done')}/{self.rows}"
        return (f"Store({str(self.path)!r}, scheme={self.manifest.get('scheme')!r}, rows={self.rows}, dim={self.dim}, "
                f"codes={self.codes.dtype}{self.codes.shape}, {st.get('status')}{done})")

    def codes_of(self, ids: Any) -> Any:
        """The :class:`gpuquant.Codes` of rows ``ids`` (copied out of the memmaps)."""
        from gpuquant.codes import Codes

        idx = self._ids(ids)
        return Codes(np.asarray(self.codes[idx]), {k: np.asarray(v[idx]) for k, v in self.side.items()},
                     self.manifest.get("scheme", ""), self.dim)

    def read_rows(self, ids: Any) -> Any:
        """Like :meth:`codes_of`, read with ``pread`` instead of through the memmaps: for one-off reads
        of scattered rows that should not map file pages into the process (the engine's checks)."""
        from gpuquant.codes import Codes

        idx = self._ids(ids)
        arrays = {"codes": self.codes, **self.side}
        out = {}
        for name, arr in arrays.items():
            entry = self.manifest["codes"] if name == "codes" else self.manifest["side"][name]
            path = self.path / entry["file"]
            header = gio.read_npy_header(path)
            row_bytes = header.data_bytes // max(1, self.rows)
            buf = np.empty((idx.size, row_bytes), np.uint8)
            fd = os.open(path, os.O_RDONLY)
            try:
                for j, i in enumerate(idx):
                    got = os.preadv(fd, [memoryview(buf[j])], header.data_offset + int(i) * row_bytes)
                    if got != row_bytes:
                        raise InputError(f"{path}: short read at row {int(i)}")
            finally:
                os.close(fd)
            out[name] = buf.view(arr.dtype).reshape((idx.size, *arr.shape[1:]))
        side = {k: v for k, v in out.items() if k != "codes"}
        return Codes(out["codes"], side, self.manifest.get("scheme", ""), self.dim)

    def decode(self, codes: Any) -> np.ndarray:
        """float32 rows of ``codes`` (a :class:`gpuquant.Codes` of this store's scheme)."""
        with np.errstate(all="ignore"):
            return np.asarray(self.scheme.decode(codes.data, codes.side, self.quantizer.state, self.dim), np.float32)

    def get_rows(self, ids: Any) -> np.ndarray:
        """Rows ``ids`` decoded to float32, shape ``(len(ids), dim)``; any order, repeats allowed."""
        idx = self._ids(ids)
        side = {k: v[idx] for k, v in self.side.items()}
        with np.errstate(all="ignore"):
            out = self.scheme.decode(self.codes[idx], side, self.quantizer.state, self.dim)
        return np.asarray(out, dtype=np.float32)

    def iter_batches(self, batch_rows: int = 65536, *, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, float32 rows)`` for consecutive batches of ``batch_rows`` rows."""
        if not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
            raise InputError(f"batch_rows must be a positive integer, got {batch_rows!r}")
        stop = self.rows if stop is None else min(int(stop), self.rows)
        for a in range(int(start), stop, int(batch_rows)):
            b = min(stop, a + int(batch_rows))
            side = {k: v[a:b] for k, v in self.side.items()}
            with np.errstate(all="ignore"):
                yield a, np.asarray(self.scheme.decode(self.codes[a:b], side, self.quantizer.state, self.dim),
                                    dtype=np.float32)

    def _ids(self, ids: Any) -> np.ndarray:
        idx = np.asarray(ids)
        if idx.dtype == bool or idx.dtype.kind not in "iu":
            if idx.size == 0:
                idx = idx.astype(np.int64)
            else:
                raise InputError(f"row ids must be integers, got dtype {idx.dtype}")
        idx = idx.reshape(-1).astype(np.int64, copy=False)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.rows):
            bad = int(idx[(idx < 0) | (idx >= self.rows)][0])
            raise InputError(f"row id {bad} is out of range: the store has {self.rows} rows (0..{self.rows - 1})")
        limit = self.rows if self.complete else int(self.state.get("rows_done", 0))
        if idx.size and int(idx.max()) >= limit:
            raise StoreIncompleteError(f"row {int(idx.max())} is not written yet: {self.path} is unfinished "
                                       f"({limit} of {self.rows} rows done)")
        return idx


def open(path: str | os.PathLike[str], *, allow_incomplete: bool = False, backend: str = "numpy") -> Store:
    """Open a store for reading, after checking it (``InputError`` saying exactly what is wrong).

    Checked: the manifest's format tag and version; a known scheme family whose parameters match
    ``quantizer.json``; rows and dim; every file present, of the dtype and shape the scheme gives
    for ``rows x dim`` and not truncated; and ``state.status == "complete"`` (unless
    ``allow_incomplete``: then only ``get_rows`` of rows already written works).
    """
    from gpuquant.api import Quantizer
    from gpuquant.schemes import FAMILIES

    root = Path(path)
    doc = read_manifest(root)
    m = root / MANIFEST
    rows = _require(doc, "rows", int, m)
    dim = _require(doc, "dim", int, m)
    if rows < 0 or dim < 1:
        raise InputError(f"{m}: rows={rows} and dim={dim} are not a valid shape")
    family = doc.get("family")
    if family not in FAMILIES:
        raise InputError(f"{m}: unknown scheme family {family!r}; known: {sorted(FAMILIES)}")
    state = doc.get("state")
    if not isinstance(state, Mapping) or state.get("status") not in (IN_PROGRESS, COMPLETE):
        raise InputError(f"{m}: 'state' must say status 'in_progress' or 'complete', got {state!r}")
    if state["status"] != COMPLETE and not allow_incomplete:
        raise StoreIncompleteError(
            f"{root} is unfinished ({state.get('rows_done', 0)} of {rows} rows written): continue it with "
            "`gpuquant convert SRC DST --resume` (or gpuquant.convert(..., resume=True))")
    qname = doc.get("quantizer", QUANTIZER)
    if not isinstance(qname, str) or Path(qname).name != qname:
        raise InputError(f"{m}: 'quantizer' must be a file name inside the store, got {qname!r}")
    if not (root / qname).is_file():
        raise InputError(f"{root / qname} is missing (the fitted quantizer of this store)")
    q = Quantizer.load(root / qname, backend=backend)
    if q.family != family or gio.to_jsonable(q.scheme.params) != doc.get("params"):
        raise InputError(f"{root / qname} does not match {m}: family {q.family!r} with {gio.to_jsonable(q.scheme.params)} "
                         f"vs {family!r} with {doc.get('params')}")
    if q.dim is not None and q.dim != dim:
        raise InputError(f"{root / qname} was fitted on {q.dim} dimensions but {m} says dim={dim}")
    if not q.is_fitted:
        raise InputError(f"{root / qname} holds a quantizer that was never fitted")
    scheme = q.scheme
    codes = _open_array(root, doc.get("codes"), "codes", scheme.code_shape(rows, dim), scheme.code_dtype)
    side_doc = doc.get("side") or {}
    want = scheme.side_shapes(rows, dim)
    if not isinstance(side_doc, Mapping) or set(side_doc) != set(want):
        raise InputError(f"{m}: side arrays {sorted(side_doc) if isinstance(side_doc, Mapping) else side_doc} "
                         f"do not match the scheme's {sorted(want)}")
    side = {name: _open_array(root, side_doc[name], f"side array {name!r}", shape, np.dtype(dt))
            for name, (shape, dt) in want.items()}
    q.name = doc.get("scheme", q.name)
    return Store(root, doc, q, codes, side)


