"""Checks at the public boundary: every input is validated once, here, with a message that names
the problem; backends trust what they receive."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends import is_device_array
from gpuquant.errors import InputError

FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def as_matrix(X: Any, what: str = "X") -> Any:
    """``X`` as a 2-D float array (numpy, or the device array itself), or an ``InputError``."""
    if not (isinstance(X, np.ndarray) or is_device_array(X)):
        try:
            X = np.asarray(X)
        except Exception as exc:  # noqa: BLE001 - report whatever made it unconvertible
            raise InputError(f"{what} cannot be read as an array: {exc}") from None
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise InputError(f"{what} must be 2-D (rows, dims), got shape {shape}")
    dtype = np.dtype(str(X.dtype).replace("torch.", "")) if not isinstance(X.dtype, np.dtype) else X.dtype
    if dtype not in FLOAT_DTYPES:
        raise InputError(f"{what} must be float16, float32 or float64, got dtype {X.dtype}")
    if shape[1] == 0:
        raise InputError(f"{what} has 0 dimensions (shape {shape})")
    return X


def check_dim(X: Any, dim: int | None, what: str = "X") -> None:
    if dim is not None and X.shape[1] != dim:
        raise InputError(f"{what} has {X.shape[1]} dimensions but the quantizer was fitted on {dim}")
