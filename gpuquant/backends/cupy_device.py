"""Device plumbing shared by the cupy backend's modules: the CuPy import, launch geometry, and
device views of the arrays callers pass in.

* :func:`cupy_module` imports CuPy on first use (never at package import).
* :func:`occupancy_grid` sizes a grid-stride launch from the occupancy of the kernel it launches:
  a :class:`Work` that the launch wrapper (``cupy_launch.kernel``) turns into
  :func:`grid_size` ``(blocks_per_sm, sm_count, items, per_block)`` blocks, ``blocks_per_sm`` being
  what the driver says the kernel keeps resident per multiprocessor at that block size (one wave).
* :func:`as_device` / :func:`wrap_device`: CuPy views of device arrays (CuPy, DLPack on CUDA,
  ``__cuda_array_interface__``) without copies, host arrays uploaded, non-contiguous device arrays
  made contiguous on their device.
* :data:`INPUT_TYPES`: the C++ type of each input dtype in the kernels' template instances.
* :data:`NO_ROW` / :func:`row_flags`: the device flags in which a kernel records the first row it
  refuses (``NO_ROW``: none), read back by the launcher or at the next check
  (:mod:`gpuquant.backends.cupy_refusals`).
* :func:`host_run`: a block in which the launch code runs on the host (numpy stands in for the few
  CuPy calls launchers make, grids are one block): what
  :func:`gpuquant.backends.cupy_launch.planned_launches` records launches in, without a device.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from gpuquant.backends import dlpack_on_cuda, is_device_array
from gpuquant.errors import InputError

THREADS = 256

INPUT_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "float",
    np.dtype(np.float16): "__half",
    np.dtype(np.float64): "double",
}


class _HostArray(np.ndarray):
    """A numpy array with CuPy's ``get()`` (the host stand-in's arrays)."""

    def get(self, stream: Any = None) -> np.ndarray:
        return np.asarray(self)


#: The CuPy calls launchers make (a flag buffer, scratch, dtype casts, a refusal's reduction), on the host:
#: see :func:`host_run`.
_HOST_CUPY = SimpleNamespace(
    float32=np.float32,
    uint64=np.uint64,
    arange=np.arange,
    where=np.where,
    minimum=np.minimum,
    asarray=lambda a, dtype=None: np.asarray(a, dtype),
    full=lambda shape, value, dtype: np.full(shape, value, dtype).view(_HostArray),
    empty=lambda shape, dtype: np.empty(shape, dtype).view(_HostArray),
)
_HOST_RUN: ContextVar[bool] = ContextVar("gpuquant_cupy_host_run", default=False)


@contextmanager
def host_run() -> Iterator[None]:
    """Inside the block :func:`cupy_module` is a numpy stand-in and launch grids are one block.

    Only for recording the launches a call makes (``cupy_launch.planned_launches``): kernels must
    not run inside it, and a launcher's read-back flags read their initial value."""
    token = _HOST_RUN.set(True)
    try:
        yield
    finally:
        _HOST_RUN.reset(token)


def cupy_module() -> Any:
    if _HOST_RUN.get():
        return _HOST_CUPY
    import cupy

    return cupy


@functools.cache
def _sm_count(device_id: int) -> int:
    cp = cupy_module()
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def sm_count() -> int:
    """Multiprocessors of the current device."""
    return _sm_count(cupy_module().cuda.Device().id)


def grid_size(blocks_per_sm: int, sms: int, work_items: int, per_block: int) -> int:
    """Blocks of a grid-stride launch: enough to cover ``work_items`` at ``per_block`` items a block,
    at most one wave (``blocks_per_sm`` resident on each of ``sms`` multiprocessors), at least 1."""
    return int(max(1, min(blocks_per_sm * sms, -(-work_items // per_block))))


class Work(NamedTuple):
    """A grid dimension still to size: ``items`` of work, ``per_block`` of them for a block at most."""

    items: int
    per_block: int


def occupancy_grid(work_items: int, per_block: int = THREADS) -> Work:
    """The grid of a grid-stride launch over ``work_items``, sized at launch from the kernel's occupancy."""
    return Work(int(work_items), int(per_block))


def wrap_device(x: Any) -> Any:
    """A CuPy view of a device array (CuPy, DLPack on CUDA, ``__cuda_array_interface__``), no copy."""
    cp = cupy_module()
    if isinstance(x, cp.ndarray):
        return x
    if hasattr(x, "__dlpack__") and dlpack_on_cuda(x):
        return cp.from_dlpack(x)
    if hasattr(x, "__cuda_array_interface__"):
        return cp.asarray(x)
    raise InputError(f"expected a device array, got {type(x).__name__}")


def as_device(x: Any) -> tuple[Any, bool]:
    """``(cupy_array, came_from_host)``: device arrays wrapped without a copy, C-contiguous.

    numpy (or anything array-like on the host) is uploaded; DLPack device tensors and
    ``__cuda_array_interface__`` objects are wrapped; non-contiguous device arrays are copied to a
    contiguous array on their device.
    """
    cp = cupy_module()
    if not is_device_array(x):
        return cp.asarray(np.ascontiguousarray(x)), True
    arr = wrap_device(x)
    if not arr.flags.c_contiguous:
        with arr.device:
            arr = cp.ascontiguousarray(arr)
    return arr, False


#: A row flag's value while no row was recorded (see :func:`row_flags`).
NO_ROW = np.iinfo(np.uint64).max


def row_flags(count: int) -> Any:
    """``count`` uint64 device flags set to :data:`NO_ROW`, in which a kernel records a refused row."""
    return cupy_module().full(count, NO_ROW, dtype=np.uint64)


def i64(v: int) -> np.int64:
    return np.int64(v)


def i32(v: int) -> np.int32:
    return np.int32(v)
