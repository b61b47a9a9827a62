"""Reading stores: :func:`open_store` (``gpuquant.open``) checks a store against its scheme and maps
it read-only (:class:`Store`); :func:`read_converted` maps the files a manifest lists, trusting it
(``gpuquant inspect``). The layout and the manifest are :mod:`gpuquant.store.layout`'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from gpuquant import files as gfiles
from gpuquant._version import __version__
from gpuquant.errors import InputError, StoreIncompleteError
from gpuquant.store.layout import (
    COMPLETE,
    FORMAT_VERSION,
    IN_PROGRESS,
    MANIFEST,
    QUANTIZER,
    data_files,
    is_converted_dir,
    read_manifest,
)


def _require(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise InputError(f"{where}: {key!r} is missing or not {getattr(kind, '__name__', kind)} (got {value!r})")
    return value


def _is_int(v: Any) -> TypeGuard[int | np.integer]:
    """Whether ``v`` is an integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


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
    header = gfiles.read_npy_header(p)
    if entry.get("dtype") != dtype.name:
        raise InputError(f"{m}: {what} has dtype {entry.get('dtype')!r} but the scheme stores {dtype.name}")
    stored = gfiles.storage_view(np.empty((0,), dtype))[0].dtype
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
    return gfiles.logical_view(arr, dtype.name)


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
    def status(self) -> dict[str, Any]:
        """The run's record (the manifest's ``state``): ``status``, ``rows_done``, timestamps. (Not to be
        confused with ``store.quantizer.state``, the fitted arrays.)"""
        return dict(self.manifest.get("state", {}))

    @property
    def complete(self) -> bool:
        return self.status.get("status") == COMPLETE

    def __len__(self) -> int:
        return self.rows

    def __repr__(self) -> str:
        st = self.status
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
        files = data_files(self.path, self.manifest)
        out = {}
        for name, arr in arrays.items():
            path, offset, row_bytes = files[name]
            buf = np.empty((idx.size, row_bytes), np.uint8)
            fd = os.open(path, os.O_RDONLY)
            try:
                for j, i in enumerate(idx):
                    got = os.preadv(fd, [memoryview(buf[j])], offset + int(i) * row_bytes)
                    if got != row_bytes:
                        raise InputError(f"{path}: short read at row {int(i)}")
            finally:
                os.close(fd)
            out[name] = buf.view(arr.dtype).reshape((idx.size, *arr.shape[1:]))
        side = {k: v for k, v in out.items() if k != "codes"}
        return Codes(out["codes"], side, self.manifest.get("scheme", ""), self.dim)

    def decode(self, codes: Any, *, pre: bool = True) -> np.ndarray:
        """float32 rows of ``codes`` (a :class:`gpuquant.Codes` of this store's scheme), as the
        quantizer's ``inverse_transform`` gives them: through its pre-transforms back to the input's
        (truncated) dimensions, unless ``pre=False`` (the rows the scheme encoded)."""
        return self._decoded(codes.data, codes.side, pre)

    def _decoded(self, data: Any, side: dict[str, Any], pre: bool = True) -> np.ndarray:
        with np.errstate(all="ignore"):
            out = np.asarray(self.scheme.decode(data, side, self.quantizer.state, self.dim), np.float32)
        return self.quantizer.pre.inverse(out) if pre and self.quantizer.pre.active else out

    def get_rows(self, ids: Any) -> np.ndarray:
        """Rows ``ids`` decoded (:meth:`decode`) to float32, one row per id; any order, repeats allowed."""
        idx = self._ids(ids)
        return self._decoded(self.codes[idx], {k: v[idx] for k, v in self.side.items()})

    def iter_batches(self, batch_rows: int = 65536, *, start: int = 0,
                     stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, float32 rows)`` for consecutive batches of ``batch_rows`` rows, from row ``start``
        up to ``stop`` (at most the store's rows). The arguments are checked when called."""
        if not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1:
            raise InputError(f"batch_rows must be a positive integer, got {batch_rows!r}")
        if not _is_int(start) or start < 0:
            raise InputError(f"start must be a non-negative integer, got {start!r}")
        if stop is not None and (not _is_int(stop) or stop < 0):
            raise InputError(f"stop must be a non-negative integer or None, got {stop!r}")
        return self._batches(int(batch_rows), int(start), self.rows if stop is None else min(int(stop), self.rows))

    def _batches(self, batch_rows: int, start: int, stop: int) -> Iterator[tuple[int, np.ndarray]]:
        for a in range(start, stop, batch_rows):
            b = min(stop, a + batch_rows)
            yield a, self._decoded(self.codes[a:b], {k: v[a:b] for k, v in self.side.items()})

    def _ids(self, ids: Any) -> np.ndarray:
        idx = np.asarray(ids)
        if idx.dtype == bool or idx.dtype.kind not in "iu":
            if idx.size == 0:
                idx = idx.astype(np.int64)
            else:
                raise InputError(f"row ids must be integers, got dtype {idx.dtype}")
        if idx.ndim > 1:
            raise InputError(f"row ids must be a 1-D sequence (or one id), got shape {idx.shape}")
        idx = idx.reshape(-1).astype(np.int64, copy=False)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.rows):
            bad = int(idx[(idx < 0) | (idx >= self.rows)][0])
            raise InputError(f"row id {bad} is out of range: the store has {self.rows} rows (0..{self.rows - 1})")
        limit = self.rows if self.complete else int(self.status.get("rows_done", 0))
        if idx.size and int(idx.max()) >= limit:
            raise StoreIncompleteError(f"row {int(idx.max())} is not written yet: {self.path} is unfinished "
                                       f"({limit} of {self.rows} rows done)")
        return idx


def open_store(path: str | os.PathLike[str], *, allow_incomplete: bool = False, backend: str = "numpy") -> Store:
    """Open a store for reading, after checking it (``InputError`` saying exactly what is wrong).

    Checked: the manifest's format tag and version; a known scheme family whose parameters match
    ``quantizer.json``; rows and dim; every file present, of the dtype and shape the scheme gives
    for ``rows x dim`` and not truncated; ``state.rows_done`` in ``0..rows`` (``rows`` once complete);
    and ``state.status == "complete"`` (unless
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
    if q.family != family or gfiles.to_jsonable(q.scheme.params) != doc.get("params"):
        raise InputError(f"{root / qname} does not match {m}: family {q.family!r} with "
                         f"{gfiles.to_jsonable(q.scheme.params)} "
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
    _check_rows_done(state, rows, m)  # after the files: a wrong 'rows' is named by the file that disagrees
    q.name = doc.get("scheme", q.name)
    return Store(root, doc, q, codes, side)


def _check_rows_done(state: Mapping[str, Any], rows: int, m: Path) -> None:
    """``state.rows_done``: an integer in ``0..rows`` (it says which rows are final), and ``rows`` once
    complete; a complete store may leave it out."""
    done = state.get("rows_done")
    if state["status"] == COMPLETE:
        if done is not None and (not _is_int(done) or done != rows):
            raise InputError(f"{m}: 'state.rows_done' a complete store has every row done: {rows}, got {done!r}")
    elif not _is_int(done) or not 0 <= done <= rows:
        raise InputError(f"{m}: 'state.rows_done' must be an integer in 0..{rows}, got {done!r}")


@dataclass
class Converted:
    """A converted directory opened for reading: codes and side arrays memory-mapped."""

    path: Path
    manifest: dict[str, Any]
    codes: np.ndarray
    side: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def quantizer_path(self) -> Path:
        return self.path / self.manifest.get("quantizer", QUANTIZER)


def _open_entry(root: Path, entry: Mapping[str, Any], what: str) -> np.ndarray:
    try:
        p = root / entry["file"]
        logical = entry["dtype"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{root / MANIFEST}: the entry for {what} lacks {exc}") from exc
    header = gfiles.read_npy_header(p)
    gfiles.check_length(p, header)
    arr = np.load(p, mmap_mode="r", allow_pickle=False)
    if list(arr.shape) != list(entry.get("shape", arr.shape)):
        raise InputError(f"{p} has shape {arr.shape} but the manifest says {tuple(entry['shape'])}")
    return gfiles.logical_view(arr, logical)


def read_converted(path: str | os.PathLike[str]) -> Converted:
    """Open a directory written by :func:`write_converted` (codes and side arrays memory-mapped).

    Raises:
        InputError: not a gpuquant output directory, or a file in it is missing or inconsistent.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"not a directory: {root}")
    if not is_converted_dir(root):
        raise InputError(f"{root} is not a gpuquant output directory (no valid {MANIFEST})")
    manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(
            f"{root} was written in format version {manifest['format_version']}; "
            f"this gpuquant {__version__} reads up to {FORMAT_VERSION}"
        )
    codes = _open_entry(root, manifest.get("codes", {}), "codes")
    side = {name: _open_entry(root, e, name) for name, e in manifest.get("side", {}).items()}
    return Converted(root, manifest, codes, side)
