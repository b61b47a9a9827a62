"""The code store: a directory of plain files, written in place by the streaming engine.

Layout (``gpuquant convert`` writes it; ``gpuquant.open`` reads it)::

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

``checksums`` records the content at write time (a format addition: stores without it still open):
``{"method": "blake2b-128", "ranges": [{"rows": [a, b], "sums": {"codes": HEX, "scales": HEX}}]}``,
one entry per written batch, a BLAKE2b-128 digest of the exact bytes of rows ``[a, b)`` of each file
(``codes`` and each side array by name). A batch's entry is recorded with the checkpoint that covers
it, so the ranges of a complete store cover every row once. ``gpuquant verify`` re-reads the files
against them (:mod:`gpuquant.store.verify`); ``gpuquant.open`` does not read the data.

``source`` records where the rows came from: ``kind`` (npy, raw, shards, array, demo), ``path``,
``shape``, ``dtype`` and a quick ``checksum``: BLAKE2b-128 over, for each file in order, its size,
its mtime in nanoseconds and its first and last MiB (method ``"quick-v1"``). It is cheap on files of
any size and changes when a file is rewritten, resized or touched; it does not read the middle of
the file, so an in-place edit that keeps size and mtime would go unnoticed. ``--resume`` refuses
when the source's kind, shape, dtype or checksum, or the scheme and parameters, differ.

A lock file next to the output (``.OUTPUT.lock``, ``fcntl.flock``) keeps a second run from writing
the same output at the same time; it is removed when the run ends (a killed run leaves the file,
but not the lock: the kernel drops ``flock`` locks with the process, and the next run takes the file
and removes it). Every writer of OUTPUT holds the lock, so what a killed run leaves beside it (a
set-up directory ``.OUTPUT.partial-*``, an old store ``.OUTPUT.old-*`` swapped out) is removed by
the next run that locks OUTPUT.

Nothing is unpickled: the .npy files are read with ``allow_pickle=False`` and their headers are
checked before they are mapped.

Writing a whole in-memory ``Codes`` at once (:func:`gpuquant.store.write_converted`) gives the same
layout, already complete: the directory is filled in a temporary sibling (``.OUTPUT.partial-*``),
each file flushed and fsync'ed, and then renamed into place, so a reader never sees a half-written
OUTPUT. Replacing an existing OUTPUT (``overwrite``) is allowed only for a previous gpuquant output or
an empty directory; the two directories are exchanged atomically (Linux ``renameat2`` with
``RENAME_EXCHANGE``) and the old one deleted. Where the file system cannot exchange, the old one is
renamed aside, the new one in (renamed back if that fails), then the old one deleted: OUTPUT is then
briefly absent, never partial.

A streamed run with ``overwrite`` never touches the previous OUTPUT until the new store is complete:
it writes the new store beside it, in ``.OUTPUT.overwrite`` (same format, ``in_progress``), and
exchanges the two only after the new one is checked and marked complete. A run that fails (a NaN row,
an interruption, a full disk) leaves the old OUTPUT as it was; ``--resume`` on OUTPUT continues the
staged store and then exchanges, ``--overwrite`` starts the staged store again. The disk must hold
both stores until the exchange.

This module holds the names and the manifest's checks; :mod:`gpuquant.store.lock`,
:mod:`gpuquant.store.write` and :mod:`gpuquant.store.read` the rest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import files as gfiles
from gpuquant._version import __version__
from gpuquant.errors import InputError

FORMAT_NAME = "gpuquant-codes"
#: 2: the streamed store: ``rows``, ``dim`` and ``state`` in the manifest.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
QUANTIZER = "quantizer.json"
CODES = "codes.npy"
IN_PROGRESS, COMPLETE = "in_progress", "complete"
#: Per-range completion records of a store written by parallel tasks (``gpuquant.cluster``): one file
#: per finished row range, removed when the store is complete (whoever completes it).
PARTS = ".parts"

#: How the manifest's ``checksums`` digest each range: BLAKE2b with 16-byte digests.
CHECKSUM_METHOD = "blake2b-128"
_DIGEST_CHUNK_BYTES = 16 * 2**20

#: The staged replacement of an output, written beside it by a streamed ``overwrite`` run.
STAGING_SUFFIX = ".overwrite"

_SIDE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def digest(arr: np.ndarray, start: int, stop: int) -> str:
    """The checksum of rows ``[start, stop)`` of ``arr``: BLAKE2b-128 of their bytes, in C order, read
    a few MiB at a time (``arr`` may be a memory map)."""
    h = hashlib.blake2b(digest_size=16)
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    step = max(1, _DIGEST_CHUNK_BYTES // row_bytes)
    for a in range(start, stop, step):
        h.update(np.ascontiguousarray(arr[a:min(stop, a + step)]).reshape(-1).view(np.uint8).data)
    return h.hexdigest()


def range_sums(arrays: Mapping[str, np.ndarray], start: int, stop: int, offset: int = 0) -> dict[str, Any]:
    """A ``checksums`` entry for rows ``[offset + start, offset + stop)``: each array's :func:`digest`
    of its rows ``[start, stop)``."""
    return {"rows": [offset + start, offset + stop], "sums": {k: digest(v, start, stop) for k, v in arrays.items()}}


def staging_path(output: str | os.PathLike[str]) -> Path:
    """Where a streamed ``overwrite`` of ``output`` builds the new store: ``.NAME.overwrite`` beside it."""
    p = Path(output)
    return p.parent / f".{p.name}{STAGING_SUFFIX}"


def is_converted_dir(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a directory whose ``manifest.json`` says it is a gpuquant output."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT_NAME


def check_output(path: str | os.PathLike[str], overwrite: bool) -> None:
    """Raise :class:`InputError` if writing a converted directory to ``path`` is not allowed.

    Refused: an existing ``path`` without ``overwrite``; with ``overwrite``, anything but a
    previous gpuquant output directory or an empty directory (never a file or a foreign folder);
    a parent directory that does not exist.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"output's parent directory does not exist: {p.parent}")
    if not (p.exists() or p.is_symlink()):
        return
    if not overwrite:
        raise InputError(f"output already exists: {p} (pass --overwrite / overwrite=True to replace it)")
    if p.is_symlink() or not p.is_dir():
        raise InputError(f"refusing to overwrite {p}: it is not a directory")
    if not (is_converted_dir(p) or not any(p.iterdir())):
        raise InputError(
            f"refusing to overwrite {p}: it is not a gpuquant output directory (no gpuquant {MANIFEST})"
        )


def check_side_names(names: Iterable[str]) -> None:
    """Raise :class:`InputError` for a side array name that cannot be a file name in the output."""
    for name in names:
        if not _SIDE_NAME.match(name) or name in ("codes", "manifest", "quantizer"):
            raise InputError(f"side array name {name!r} cannot be a file name in the output")


def manifest_head(extra: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's first fields: format tag and version, gpuquant version; then ``extra`` (JSON-able)."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "gpuquant_version": __version__,
            **gfiles.to_jsonable(dict(extra))}


def data_files(root: Path, manifest: Mapping[str, Any]) -> dict[str, tuple[Path, int, int]]:
    """``(path, data offset, bytes per row)`` of the codes file and each side file ``manifest`` lists,
    by array name, from their ``.npy`` headers."""
    rows = int(manifest["rows"])
    out = {}
    for name, entry in {"codes": manifest["codes"], **manifest.get("side", {})}.items():
        p = root / entry["file"]
        header = gfiles.read_npy_header(p)
        out[name] = (p, header.data_offset, header.data_bytes // rows if rows else 0)
    return out


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
