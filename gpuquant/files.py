"""Files gpuquant reads and writes that are not the code store: ``.npy`` input matrices, the dtype
rule for ``.npy`` files, JSON conversion and atomic file writes. (The code store's format is
:mod:`gpuquant.store`'s, built on these.)

Reading (:func:`load_matrix`): a ``.npy`` file is checked before any data is touched (magic,
header, dtype, ndim and that the file is as long as its header says) and then memory-mapped
read-only, so a large input is never read whole by this function. Every problem is raised as
:class:`gpuquant.InputError` naming the file and what is wrong with it.

Writing arrays whose dtype ``.npy`` cannot describe (ml_dtypes float8 / bfloat16 / int4):
:func:`storage_view` views them as the unsigned integer of the same width (uint8 / uint16), so the
file holds the exact bytes and plain ``np.load`` reads it; :func:`logical_view` undoes it.

Writing a file atomically (:func:`atomic_file`, :func:`write_json_atomic`): a temporary sibling,
flushed, fsync'ed and renamed onto the target, so a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_dtypes  # noqa: F401  (registers float8/bfloat16/int4 names with numpy.dtype)
import numpy as np

from gpuquant.errors import InputError

__all__ = [
    "FLOAT_DTYPES",
    "NpyHeader",
    "atomic_file",
    "check_length",
    "check_matrix_header",
    "fsync_path",
    "load_matrix",
    "logical_view",
    "native",
    "read_npy_header",
    "storage_view",
    "to_jsonable",
    "write_json_atomic",
]

#: Source dtypes a quantizer accepts.
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


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
            unreadable header, a negative dimension or an object dtype.
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
    if any(int(s) < 0 for s in shape):
        raise InputError(f"{p} is not a valid .npy file: its header claims a negative dimension, shape {shape}")
    if dtype.hasobject:
        raise InputError(f"{p} holds Python objects (dtype {dtype}); gpuquant reads numeric arrays only")
    return NpyHeader(tuple(int(s) for s in shape), np.dtype(dtype), bool(fortran), offset)


def check_length(p: Path, header: NpyHeader) -> None:
    """Raise :class:`InputError` when the file is shorter than its header says."""
    have = p.stat().st_size - header.data_offset
    if have < header.data_bytes:
        raise InputError(
            f"{p} is truncated: its header says {header.shape} {header.dtype} "
            f"({header.data_bytes} bytes of data) but only {have} bytes follow the header"
        )


def native(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order (big-endian float input is converted as it is read)."""
    return dtype.newbyteorder("=")


def check_matrix_header(p: Path, header: NpyHeader, *, allow_no_rows: bool = False) -> None:
    """Raise :class:`InputError` unless the header describes a 2-D float matrix (either byte order),
    not empty (``allow_no_rows``: zero rows are allowed, as in one shard of a directory)."""
    if len(header.shape) != 2:
        raise InputError(
            f"{p} holds a {len(header.shape)}-D array of shape {header.shape}; "
            "expected a 2-D matrix (rows x dims)"
        )
    if native(header.dtype) not in FLOAT_DTYPES:
        raise InputError(
            f"{p} has dtype {header.dtype}; expected float32 (float16 and float64 are accepted too)"
        )
    if (header.shape[0] == 0 and not allow_no_rows) or header.shape[1] == 0:
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
    check_length(p, header)
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
    raises, the temporary file is removed and ``path`` is untouched. The file's mode follows the
    umask, as ``open`` would make it (``mkstemp``'s is always 0600)."""
    p = Path(path)
    fd, tmp = _new_sibling(p)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _new_sibling(p: Path) -> tuple[int, str]:
    """A new, empty ``.NAME.XXXXXXXX.partial`` next to ``p``, opened for writing with mode 0666 & ~umask."""
    while True:
        tmp = p.parent / f".{p.name}.{os.urandom(4).hex()}.partial"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue


def write_json_atomic(path: str | os.PathLike[str], doc: Any) -> None:
    """Write ``doc`` as JSON to ``path`` through a temporary sibling and an atomic rename."""
    with atomic_file(path) as f:
        json.dump(to_jsonable(doc), f, indent=2, allow_nan=False)
        f.write("\n")
