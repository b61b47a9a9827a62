"""The CPU backend: the schemes' numpy reference, in row chunks, on every core.

Each call splits the rows into chunks of about ``CHUNK_VALUES`` values (at least one row), converts
a chunk to float32 (float16 widens exactly, float64 rounds to nearest even; memmaps and strided
views are read chunk by chunk, never loaded whole) and runs the scheme's reference on it in a
thread pool (numpy releases the GIL inside its loops, so chunks run in parallel). Results are
written into the output (allocated once, or the caller's ``out=``), so the codes are identical to
one reference call over the whole array. Temporaries are bounded: each worker holds at most about
``40 * CHUNK_VALUES`` bytes at a time (a float32 scratch buffer it keeps between calls, the
float32 copy of a chunk that is not float32 already, and the float64 intermediates of the
double-precision roundings), whatever the input size.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any

import numpy as np

from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.schemes import Scheme
from gpuquant.schemes.statistics import RowError

CHUNK_VALUES = 1 << 18


def worker_count() -> int:
    """Threads used: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=worker_count(), thread_name_prefix="gpuquant")


def row_chunks(n: int, d: int, chunk_values: int = CHUNK_VALUES) -> Iterator[tuple[int, int]]:
    """Consecutive ``(start, stop)`` row ranges of about ``chunk_values`` values each."""
    step = max(1, chunk_values // max(d, 1))
    for start in range(0, n, step):
        yield start, min(n, start + step)


_local = threading.local()


def _thread_scratch(size: int) -> np.ndarray:
    """This thread's float32 scratch buffer of at least ``size`` values (kept between calls)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < size:
        buf = _local.buf = np.empty(max(size, CHUNK_VALUES), np.float32)
    return buf[:size]


def as_float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _run_chunks(n: int, d: int, work: Callable[[int, int], None]) -> None:
    chunks = list(row_chunks(n, d))
    if len(chunks) <= 1:
        for start, stop in chunks:
            work(start, stop)
        return
    for future in [_pool().submit(work, start, stop) for start, stop in chunks]:
        future.result()


def _output(out: Any, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise InputError(f"out= for {what} must be a numpy array on the numpy backend, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise InputError(f"out= for {what} must have shape {tuple(shape)} and dtype {dtype}, "
                         f"got {out.shape} {out.dtype}")
    return out


class NumpyBackend:
    """CPU backend (see the module docstring)."""

    name = "numpy"

    @staticmethod
    def is_available() -> tuple[bool, str]:
        return True, "always available"

    @staticmethod
    def supports(scheme: Scheme) -> tuple[bool, str]:
        return True, "the numpy reference implements every scheme"

    def fit(self, scheme: Scheme, X: np.ndarray) -> dict[str, np.ndarray]:
        return scheme.fit(as_float32(X))

    def transform(self, scheme: Scheme, state: dict[str, Any] | None, X: np.ndarray, out: Any = None) -> Codes:
        n, d = X.shape
        given_side = out.side if isinstance(out, Codes) else {}
        codes = _output(out.data if isinstance(out, Codes) else out, scheme.code_shape(n, d), scheme.code_dtype,
                        "codes")
        side = {
            name: _output(given_side.get(name), shape, dtype, f"side array {name!r}")
            for name, (shape, dtype) in scheme.side_shapes(n, d).items()
        }

        def work(start: int, stop: int) -> None:
            try:
                with np.errstate(all="ignore"):  # NaN/Inf results are defined by the spec
                    chunk = as_float32(X[start:stop])
                    scheme.encode_into(
                        chunk, state, codes[start:stop], {k: v[start:stop] for k, v in side.items()},
                        tmp=_thread_scratch(chunk.size),
                    )
            except RowError as exc:
                raise exc.shifted(start) from None
            except InputError as exc:
                raise InputError(f"in rows {start}..{stop - 1} of the input: {exc}") from None

        _run_chunks(n, d, work)
        return Codes(codes, side, scheme.family, d)

    def inverse_transform(self, scheme: Scheme, state: dict[str, Any] | None, codes: Codes,
                          out: Any = None) -> np.ndarray:
        n, d = len(codes), codes.dim
        result = _output(out, (n, d), np.dtype(np.float32), "the reconstruction")

        def work(start: int, stop: int) -> None:
            side = {name: values[start:stop] for name, values in codes.side.items()}
            with np.errstate(all="ignore"):
                result[start:stop] = scheme.decode(codes.data[start:stop], side, state, d)

        _run_chunks(n, d, work)
        return result
