"""File input and output of gpuquant: reading ``.npy`` matrices, and the converted-codes directory.

Reading (:func:`load_matrix`): a ``.npy`` file is checked before any data is touched (magic,
header, dtype, ndim and that the file is as long as its header says) and then memory-mapped
read-only, so a large input is never read whole by this function. Every problem is raised as
:class:`gpuquant.InputError` naming the file and what is wrong with it.

The converted directory (:func:`write_converted`, :func:`read_converted`) holds::

    OUTPUT/
      codes.npy        the codes, exactly as the peer stores them; dtypes that ``.npy`` cannot
                       describe (ml_dtypes float8 / bfloat16 / int4) are stored as a view of the
                       unsigned integer of the same width (uint8 / uint16)
      <name>.npy       one file per side array of the codes (e.g. ``scales.npy``), same rule
      quantizer.json   the fitted quantizer (``Quantizer.load`` reads it)
      manifest.json    format, gpuquant version, scheme, params, and for codes and every side
                       array: file, shape, logical ``dtype`` and ``stored_dtype``; plus the source

Every file is plain: ``np.load(OUTPUT / "codes.npy", mmap_mode="r")`` works without gpuquant.
This is the format of :mod:`gpuquant.store` (which ``gpuquant convert`` streams into, in place,
resumably); :func:`write_converted` writes a whole in-memory ``Codes`` at once, already complete.
The directory is written into a temporary sibling (``.OUTPUT.partial-*``), each file flushed and
fsync'ed, and then renamed into place, so a reader never sees a half-written OUTPUT. Replacing an
existing OUTPUT (``overwrite=True``) is allowed only for a previous gpuquant output or an empty
directory; it renames the old one aside, renames the new one in, then deletes the old one (POSIX
has no atomic exchange of two directories, so OUTPUT is briefly absent, never partial).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ml_dtypes  # noqa: F401  (registers float8/bfloat16/int4 names with numpy.dtype)
import numpy as np

from ._version import __version__
from .errors import InputError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "QUANTIZER",
    "CODES",
    "Converted",
    "load_matrix",
    "read_npy_header",
    "storage_view",
    "logical_view",
    "to_jsonable",
    "write_converted",
    "read_converted",
    "is_converted_dir",
    "write_json_atomic",
    "atomic_file",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "gpuquant-codes"
#: 2: the streamed store (``gpuquant.store``): ``rows``, ``dim`` and ``state`` in the manifest.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
QUANTIZER = "quantizer.json"
CODES = "codes.npy"

#: Source dtypes a quantizer accepts.
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

_SIDE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --------------------------------------------------------------------------------------------
# reading .npy inputs


@dataclass(frozen=True)
class NpyHeader:
    """What a ``.npy`` header says: shape, dtype, order, and where the data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int

    @property
    def data_bytes(self) -> int:
        return int(math.prod(self.shape)) * self.dtype.itemsize


def read_npy_header(path: str | os.PathLike[str]) -> NpyHeader:
    """Read and check the header of a ``.npy`` file without reading its data.

    Raises:
        InputError: the file is missing, not a regular file, not a ``.npy`` file, has an
            unreadable header or an object dtype.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if not p.is_file():
        raise InputError(f"input is not a regular file: {p}")
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{p} is not a readable .npy file ({exc})") from exc
    if dtype.hasobject:
        raise InputError(f"{p} holds Python objects (dtype {dtype}); gpuquant reads numeric arrays only")
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), offset)


def _check_length(p: Path, header: NpyHeader) -> None:
    have = p.stat().st_size - header.data_offset
    if have < header.data_bytes:
        raise InputError(
            f"{p} is truncated: its header says {header.shape} {header.dtype} "
            f"({header.data_bytes} bytes of data) but only {have} bytes follow the header"
        )


def check_matrix_header(p: Path, header: NpyHeader) -> None:
    """Raise :class:`InputError` unless the header describes a non-empty 2-D float matrix."""
    if len(header.shape) != 2:
        raise InputError(
            f"{p} holds a {len(header.shape)}-D array of shape {header.shape}; "
            "expected a 2-D matrix (rows x dims)"
        )
    if header.dtype not in FLOAT_DTYPES:
        raise InputError(
            f"{p} has dtype {header.dtype}; expected float32 (float16 and float64 are accepted too)"
        )
    if header.shape[0] == 0 or header.shape[1] == 0:
        raise InputError(f"{p} is empty: shape {header.shape}")


def load_matrix(path: str | os.PathLike[str], *, mmap: bool = True) -> np.ndarray:
    """Open a ``.npy`` file holding a 2-D float matrix, memory-mapped read-only by default.

    Args:
        path: the ``.npy`` file.
        mmap: map the file (``True``, the data is read on demand) or read it into memory.

    Returns:
        The ``(rows, dims)`` array (float16, float32 or float64, C- or F-ordered as stored).

    Raises:
        InputError: missing or truncated file, not ``.npy``, not 2-D, not float, or empty.
    """
    p = Path(path)
    header = read_npy_header(p)
    check_matrix_header(p, header)
    _check_length(p, header)
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot read {p}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# dtypes .npy can and cannot describe


def _npy_native(dtype: np.dtype) -> bool:
    return dtype.type.__module__ == "numpy" and dtype.kind in "biufc"


def storage_view(arr: np.ndarray) -> tuple[np.ndarray, str, str]:
    """Return ``(view, logical_dtype, stored_dtype)`` for writing ``arr`` to ``.npy``.

    Arrays whose dtype ``.npy`` describes are returned as they are. ml_dtypes types (float8,
    bfloat16, int4, ...) are viewed as the unsigned integer of the same width, so the file holds
    the exact bytes and the manifest says what they are.
    """
    dtype = arr.dtype
    if _npy_native(dtype):
        return arr, dtype.name, dtype.name
    stored = np.dtype(f"u{dtype.itemsize}")
    return arr.view(stored), dtype.name, stored.name


def logical_view(arr: np.ndarray, logical_dtype: str) -> np.ndarray:
    """Undo :func:`storage_view`: view the stored bytes as ``logical_dtype`` again."""
    dtype = np.dtype(logical_dtype)
    if arr.dtype == dtype:
        return arr
    if arr.dtype.itemsize != dtype.itemsize:
        raise InputError(f"cannot view stored {arr.dtype} as {dtype}: item sizes differ")
    return arr.view(dtype)


# --------------------------------------------------------------------------------------------
# JSON helpers


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays, tuples and paths inside ``obj`` to plain JSON types.

    Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the output is
    strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, (np.dtype, type)):
        return np.dtype(obj).name
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def fsync_path(path: Path) -> None:
    """fsync the file or directory ``path``. A directory's failure is ignored (some file systems refuse
    fsync on directories; the renames in it are atomic regardless); a file's is raised."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not path.is_dir():
            raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """A file object (``open`` ``mode``, ``"w"`` text in UTF-8 or ``"wb"``) on a temporary sibling of
    ``path``; when the block ends it is flushed, fsynced and renamed onto ``path``. If the block
    raises, the temporary file is removed and ``path`` is untouched."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike[str], doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` through a temporary sibling and an atomic rename."""
    with atomic_file(path) as f:
        json.dump(to_jsonable(doc), f, indent=2, allow_nan=False)
        f.write("\n")


# --------------------------------------------------------------------------------------------
# the converted directory


class _Saveable(Protocol):
    def save(self, path: str | os.PathLike[str]) -> Any: ...


class _CodesLike(Protocol):
    data: Any
    side: Mapping[str, Any]
    scheme: str


def _save_npy(path: Path, arr: np.ndarray) -> dict[str, Any]:
    view, logical, stored = storage_view(np.asarray(arr))
    with open(path, "wb") as f:
        np.save(f, view, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"file": path.name, "shape": list(view.shape), "dtype": logical, "stored_dtype": stored}


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_into_place(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.rename(dest, old / dest.name)
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.rename(old / dest.name, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_side_names(names: Iterable[str]) -> None:
    """Raise :class:`InputError` for a side array name that cannot be a file name in the output."""
    for name in names:
        if not _SIDE_NAME.match(name) or name in ("codes", "manifest", "quantizer"):
            raise InputError(f"side array name {name!r} cannot be a file name in the output")


def manifest_head(extra: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's first fields: format tag and version, gpuquant version; then ``extra`` (JSON-able)."""
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "gpuquant_version": __version__,
            **to_jsonable(dict(extra))}


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
    fsync_path(tmp)
    if replace:
        _swap_into_place(tmp, dest)
    else:
        os.rename(tmp, dest)
    fsync_path(dest.parent)


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
    """
    dest = Path(output)
    check_output(dest, overwrite)
    check_side_names(codes.side)
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
    fsync_path(tmp / QUANTIZER)
    doc["quantizer"] = QUANTIZER
    doc["state"] = {"status": "complete", "rows_done": doc["rows"]}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return doc


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
    header = read_npy_header(p)
    _check_length(p, header)
    arr = np.load(p, mmap_mode="r", allow_pickle=False)
    if list(arr.shape) != list(entry.get("shape", arr.shape)):
        raise InputError(f"{p} has shape {arr.shape} but the manifest says {tuple(entry['shape'])}")
    return logical_view(arr, logical)


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
