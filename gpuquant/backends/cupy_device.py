"""Device plumbing shared by the cupy backend's modules: the CuPy import, launch geometry, and
device views of the arrays callers pass in.

* :func:`cupy_module` imports CuPy on first use (never at package import).
* :func:`grid_for` sizes a grid-stride launch: enough blocks of :data:`THREADS` threads to cover
  the work, at most :data:`BLOCKS_PER_SM` per multiprocessor.
* :func:`as_device` / :func:`wrap_device`: CuPy views of device arrays (CuPy, DLPack on CUDA,
  ``__cuda_array_interface__``) without copies, host arrays uploaded, non-contiguous device arrays
  made contiguous on their device.
* :data:`INPUT_TYPES`: the C++ type of each input dtype in the kernels' template instances.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from gpuquant.backends import dlpack_on_cuda, is_device_array
from gpuquant.errors import InputError

THREADS = 256
BLOCKS_PER_SM = 8

INPUT_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "float",
    np.dtype(np.float16): "__half",
    np.dtype(np.float64): "double",
}


def cupy_module() -> Any:
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    cp = cupy_module()
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def grid_for(work_items: int, per_block: int = THREADS) -> int:
    """Blocks for ``work_items`` items: enough to cover them, at most a few per SM (grid-stride)."""
    cp = cupy_module()
    cap = _sm_count(cp.cuda.Device().id) * BLOCKS_PER_SM
    return int(max(1, min(cap, -(-work_items // per_block))))


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


def i64(v: int) -> np.int64:
    return np.int64(v)


def i32(v: int) -> np.int32:
    return np.int32(v)
