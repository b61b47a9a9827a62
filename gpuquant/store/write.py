"""Writing stores: a new one preallocated and filled in place by the engine (:func:`create`,
:class:`StoreWriter`, :func:`reopen` to resume), or a whole in-memory ``Codes`` at once
(:func:`write_converted`). The layout and the manifest are :mod:`gpuquant.store.layout`'s.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gpuquant import files as gfiles
from gpuquant.errors import GpuquantError, InputError
from gpuquant.store.layout import (
    CHECKSUM_METHOD,
    CODES,
    COMPLETE,
    IN_PROGRESS,
    MANIFEST,
    PARTS,
    QUANTIZER,
    check_output,
    check_side_names,
    data_files,
    is_converted_dir,
    manifest_head,
    now,
    range_sums,
    read_manifest,
    staging_path,
)
from gpuquant.store.lock import StoreLock
from gpuquant.store.read import Store, open_store

log = logging.getLogger("gpuquant.store")


# --------------------------------------------------------------------------------------------
# the temporary sibling and the rename into place


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Exchange the directories ``a`` and ``b`` in one atomic step (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``); False where the C library or the file system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        return
    # the old store goes to .DEST.old-*, then is deleted: a run killed meanwhile leaves it there, where
    # the next run removes it (remove_leftovers)
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    try:
        if _exchange(tmp, dest):  # tmp now names the old one
            os.rename(tmp, old / dest.name)
        else:
            os.rename(dest, old / dest.name)
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(old / dest.name, dest)
                raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(dest: Path) -> None:
    """Remove what a killed run left beside ``dest``: set-up directories (``.DEST.partial-*``, also
    those of its staged overwrite) and a swapped-out old store (``.DEST.old-*``). Only while holding
    ``dest``'s :class:`StoreLock`: every run that makes them holds it, so none of them is in use. (A
    staged overwrite, ``.DEST.overwrite``, is kept: ``--resume`` continues it.)"""
    names = [glob.escape(n) for n in (dest.name, staging_path(dest).name)]
    for p in [q for n in names for kind in ("partial", "old") for q in dest.parent.glob(f".{n}.{kind}-*")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            log.warning("removed %s, left behind by a gpuquant run that was killed", p)


@contextlib.contextmanager
def partial_dir(dest: Path) -> Iterator[Path]:
    """A new temporary sibling of ``dest`` (``.DEST.partial-*``) to fill, removed if the block raises;
    :func:`move_into_place` renames it to ``dest``."""
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.partial-"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; give it a normal directory's mode
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def move_into_place(tmp: Path, dest: Path, replace: bool) -> None:
    """fsync the filled directory ``tmp``, rename it to ``dest`` (swapping an existing ``dest`` out
    when ``replace``) and fsync the parent directory."""
    gfiles.fsync_path(tmp)
    if replace:
        _swap_into_place(tmp, dest)
    else:
        os.rename(tmp, dest)
    gfiles.fsync_path(dest.parent)


# --------------------------------------------------------------------------------------------
# streamed stores


@dataclass
class _File:
    fd: int
    offset: int  # where the data starts
    row_bytes: int


def _preallocate(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    """Create ``path`` as a .npy of ``shape`` (stored dtype), space reserved; return its manifest entry."""
    view, logical, stored = gfiles.storage_view(np.empty((0,), dtype))
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=view.dtype, shape=shape)
    del mm
    header = gfiles.read_npy_header(path)
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
        sums = manifest.setdefault("checksums", {"method": CHECKSUM_METHOD, "ranges": []})
        sums["ranges"] = [r for r in sums.get("ranges", []) if r["rows"][1] <= self.rows_done]
        #: the checksums of rows written since the last checkpoint (the writer thread adds, checkpoints take)
        self.pending: list[dict[str, Any]] = []
        self._pending_lock = threading.Lock()
        #: ``(rows_done, extra)`` of the last checkpoint written (``extra`` None: the manifest's, as opened)
        self.durable: tuple[int, dict[str, Any] | None] = (self.rows_done, None)
        self.files: dict[str, _File] = {}
        for name, (p, offset, row_bytes) in data_files(path, manifest).items():
            self.files[name] = _File(os.open(p, os.O_RDWR), offset, row_bytes)

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def rows_done(self) -> int:
        return int(self.manifest["state"]["rows_done"])

    def write_rows(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write rows ``start .. start + len`` of ``codes`` and each side array (any dtype of the same width);
        their checksums are recorded with the checkpoint that covers them."""
        rows = len(arrays["codes"])
        sums = range_sums(arrays, 0, rows, offset=start)
        with self._pending_lock:
            self.pending.append(sums)
        for name, arr in arrays.items():
            f = self.files[name]
            buf = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
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
        self._record_sums(lambda r: r["rows"][1] <= rows_done)
        self.manifest["state"].update({"status": IN_PROGRESS, "rows_done": int(rows_done), "updated": now(), **extra})
        gfiles.write_json_atomic(self.path / MANIFEST, self.manifest)
        self.durable = (int(rows_done), extra)

    def _record_sums(self, covered: Callable[[dict[str, Any]], bool]) -> None:
        """Move the pending checksums that ``covered`` accepts into the manifest, ranges in row order."""
        with self._pending_lock:
            done = [r for r in self.pending if covered(r)]
            self.pending = [r for r in self.pending if not covered(r)]
        if done:
            ranges = self.manifest["checksums"]["ranges"]
            ranges[:] = sorted({tuple(r["rows"]): r for r in ranges + done}.values(), key=lambda r: r["rows"][0])

    def _collect_parts(self) -> None:
        """Take the checksums that parallel tasks recorded with their finished ranges (``PARTS``)."""
        parts = self.path / PARTS
        if parts.is_dir():
            for f in sorted(parts.iterdir()):
                with contextlib.suppress(OSError, ValueError):
                    self.pending.extend(json.loads(f.read_text(encoding="utf-8")).get("checksums", []))
        self._record_sums(lambda r: True)

    def complete(self, extra: Mapping[str, Any] | None = None, verify: Callable[[Store], None] | None = None) -> Store:
        """fsync and record every row (unless a checkpoint did), check (:func:`open` on the files, then
        ``verify(store)``), mark the store complete; returns it, opened."""
        if self.durable[0] != self.rows:
            self.checkpoint(self.rows)
        store = open_store(self.path, allow_incomplete=True)
        if verify is not None:
            verify(store)
        self._collect_parts()
        self.manifest["state"].update({"status": COMPLETE, "rows_done": self.rows, "completed": now(),
                                       **(extra or {})})
        gfiles.write_json_atomic(self.path / MANIFEST, self.manifest)
        gfiles.fsync_path(self.path)
        shutil.rmtree(self.path / PARTS, ignore_errors=True)
        store.manifest["state"] = gfiles.to_jsonable(self.manifest["state"])  # as written
        return store

    def close(self) -> None:
        for f in self.files.values():
            with contextlib.suppress(OSError):
                os.close(f.fd)
        self.files = {}


def _unfinished(path: Path) -> bool:
    with contextlib.suppress(GpuquantError, OSError, ValueError):
        return bool(read_manifest(path).get("state", {}).get("status") == IN_PROGRESS)
    return False


def check_output_free(output: Path, overwrite: bool, resume: bool) -> str:
    """What to do with ``output``: ``"new"``, ``"replace"`` (build beside it, in :func:`staging_path`),
    ``"resume"`` or ``"resume-replace"`` (continue the staged replacement of a complete ``output``);
    ``InputError`` when not allowed."""
    if not output.parent.is_dir():
        raise InputError(f"output's parent directory does not exist: {output.parent}")
    exists = output.exists() or output.is_symlink()
    if resume:
        if not exists:
            raise InputError(f"--resume: {output} does not exist; there is nothing to continue "
                             "(run without --resume to start)")
        st = read_manifest(output)
        if st.get("state", {}).get("status") == COMPLETE:
            if _unfinished(staging_path(output)):
                return "resume-replace"
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
    check_output(output, overwrite=True)
    return "replace"


def stage(output: Path) -> Path:
    """The empty place for the staged replacement of ``output`` (a previous staged store, which this
    run starts again, removed; anything else there is refused)."""
    staged = staging_path(output)
    if staged.exists() or staged.is_symlink():
        if staged.is_symlink() or not is_converted_dir(staged):
            raise InputError(f"{staged} is in the way of --overwrite (it is not a gpuquant store): remove it")
        shutil.rmtree(staged)
    return staged


def replace_with(staged: Path, output: Path) -> Store:
    """Put the complete store ``staged`` in the place of ``output`` (atomically where the file system
    can exchange two directories) and open it there."""
    _swap_into_place(staged, output)
    gfiles.fsync_path(output.parent)
    return open_store(output)


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (the probe :func:`check_space` asks)."""
    return int(shutil.disk_usage(path).free)


def check_space(dest: Path, scheme: Any, rows: int, dim: int) -> None:
    """``OSError`` (ENOSPC) when the store of ``rows`` x ``dim`` codes of ``scheme`` (codes and side
    arrays: the layout alone, known before any fit) needs more than is free beside ``dest``."""
    need = int(np.prod(scheme.code_shape(rows, dim), dtype=np.int64)) * scheme.code_dtype.itemsize
    need += sum(int(np.prod(s, dtype=np.int64)) * np.dtype(t).itemsize
                for s, t in scheme.side_shapes(rows, dim).values())
    free = free_bytes(dest.parent)
    if need > free:
        raise OSError(errno.ENOSPC, f"not enough disk space for {dest}: the codes need {need} bytes "
                      f"({need / 1e9:.3f} GB), {free} bytes ({free / 1e9:.3f} GB) are free")


def create(
    output: str | os.PathLike[str],
    *,
    quantizer: Any,
    rows: int,
    dim: int,
    manifest: Mapping[str, Any],
) -> StoreWriter:
    """Set up a new store (in a temporary sibling, then renamed into place) and open it for writing.

    Every data file is created at full size with its space reserved (``posix_fallocate``), so a full
    disk is reported here, before any row is converted. Nothing is left behind if this fails.
    """
    dest = Path(output)
    scheme = quantizer.scheme
    side = scheme.side_shapes(rows, dim)
    check_space(dest, scheme, rows, dim)
    check_side_names(side)
    with partial_dir(dest) as tmp:
        doc = manifest_head(manifest)
        doc["rows"], doc["dim"] = int(rows), int(dim)
        doc["codes"] = _preallocate(tmp / CODES, scheme.code_shape(rows, dim), scheme.code_dtype)
        doc["side"] = {name: _preallocate(tmp / f"{name}.npy", shape, dtype) for name, (shape, dtype) in side.items()}
        quantizer.save(tmp / QUANTIZER)
        doc["quantizer"] = QUANTIZER
        doc["state"] = {"status": IN_PROGRESS, "rows_done": 0, "created": now(), "updated": now()}
        for f in tmp.iterdir():  # the data files and the quantizer
            gfiles.fsync_path(f)
        gfiles.write_json_atomic(tmp / MANIFEST, doc)
        move_into_place(tmp, dest, replace=False)
    return StoreWriter(dest, doc)


def reopen(output: str | os.PathLike[str]) -> StoreWriter:
    """Open an unfinished store to continue writing it (``--resume``)."""
    store = open_store(output, allow_incomplete=True)
    return StoreWriter(store.path, store.manifest)


def discard(path: Path) -> None:
    """Remove a store this run created and never wrote a row into."""
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# a whole Codes at once


class _Saveable(Protocol):
    def save(self, path: str | os.PathLike[str]) -> Any: ...


class _CodesLike(Protocol):
    data: Any
    side: Mapping[str, Any]
    scheme: str


def _save_npy(path: Path, arr: np.ndarray) -> dict[str, Any]:
    view, logical, stored = gfiles.storage_view(np.asarray(arr))
    with open(path, "wb") as f:
        np.save(f, view, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "shape": list(view.shape), "dtype": logical, "stored_dtype": stored}


def write_converted(
    output: str | os.PathLike[str],
    codes: _CodesLike,
    quantizer: _Saveable,
    manifest: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write codes, side arrays, the quantizer and a manifest as the directory ``output``, atomically.

    Args:
        output: the directory to create.
        codes: a :class:`gpuquant.Codes` (``data``, ``side``, ``scheme``).
        quantizer: the fitted quantizer; its ``save`` writes ``quantizer.json``.
        manifest: extra manifest fields (scheme, params, source, ...). ``format``,
            ``format_version``, ``gpuquant_version``, ``codes``, ``side`` and ``quantizer`` are
            filled in here.
        overwrite: replace an existing gpuquant output directory (see :func:`check_output`).

    Returns:
        The path of the written directory.

    Raises:
        InputError: ``output`` exists (and may not be replaced), a side array has a name that
            is not a plain identifier, or the parent directory is missing.
        StoreBusyError: another run holds ``output``'s lock.
    """
    dest = Path(output)
    check_output(dest, overwrite)
    check_side_names(codes.side)
    with StoreLock(dest):
        remove_leftovers(dest)
        with partial_dir(dest) as tmp:
            doc = _write_contents(tmp, codes, quantizer, manifest)
            check_output(dest, overwrite)  # again: something may have appeared meanwhile
            move_into_place(tmp, dest, replace=True)
    log.info("wrote %s (%d files)", dest, len(doc["side"]) + 3)
    return dest


def _write_contents(
    tmp: Path, codes: _CodesLike, quantizer: _Saveable, extra: Mapping[str, Any]
) -> dict[str, Any]:
    doc = manifest_head(extra)
    doc.setdefault("rows", int(np.asarray(codes.data).shape[0]))
    doc.setdefault("dim", int(getattr(codes, "dim", 0) or np.asarray(codes.data).shape[1]))
    doc["codes"] = _save_npy(tmp / CODES, np.asarray(codes.data))
    doc["side"] = {name: _save_npy(tmp / f"{name}.npy", np.asarray(arr)) for name, arr in codes.side.items()}
    quantizer.save(tmp / QUANTIZER)
    gfiles.fsync_path(tmp / QUANTIZER)
    doc["quantizer"] = QUANTIZER
    doc["state"] = {"status": COMPLETE, "rows_done": doc["rows"]}
    arrays = {"codes": np.asarray(codes.data), **{k: np.asarray(v) for k, v in codes.side.items()}}
    doc["checksums"] = {"method": CHECKSUM_METHOD,
                        "ranges": [range_sums(arrays, 0, doc["rows"])] if doc["rows"] else []}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return doc
