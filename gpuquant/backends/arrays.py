"""Where an array lives (host or CUDA device) and the dtype codes take on the device; shared by the
API, the backends and the engine without importing any GPU library."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.schemes import Scheme


def dlpack_on_cuda(x: Any) -> bool:
    """True for objects whose DLPack device (``__dlpack_device__``) is CUDA or CUDA managed memory."""
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return dev()[0] in (2, 13)  # kDLCUDA, kDLCUDAManaged
    except Exception:  # noqa: BLE001 - a foreign object's probe failing means "not a device array"
        return False


def is_device_array(x: Any) -> bool:
    """True for CuPy arrays and anything exposing CUDA memory (``__cuda_array_interface__`` or a CUDA DLPack device)."""
    return hasattr(x, "__cuda_array_interface__") or dlpack_on_cuda(x)


def array_module(x: Any) -> Any:
    """The array module of ``x``: ``cupy`` for a device array (:func:`is_device_array`), else ``numpy``."""
    if not isinstance(x, np.ndarray) and is_device_array(x):
        import cupy

        return cupy
    return np


def device_code_dtype(scheme: Scheme) -> np.dtype:
    """dtype of the codes on the device (fp8 -> uint8, bf16 -> uint16: CuPy lacks those dtypes)."""
    dtype = scheme.code_dtype
    if dtype.isbuiltin == 2:  # a type numpy itself lacks (ml_dtypes fp8, bfloat16): so does CuPy
        return np.dtype(np.uint8 if dtype.itemsize == 1 else np.uint16)
    return dtype
