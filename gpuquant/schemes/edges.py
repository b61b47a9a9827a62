"""Edge counts: how many stored values decode to NaN or ±Inf, and how many input values were
clipped or saturated to the ends of what the codes can hold.

A family declares its counter with :meth:`gpuquant.schemes.base.Scheme.edge_counter`:
``edge_counter(state, xp)`` prepares the constants once (``xp`` is the array module: numpy, or
cupy for the same counts on the device) and returns a function of one batch,
``count(X, codes, side) -> (nonfinite_outputs, clipped_inputs)``, with ``X`` the batch as float32
and ``codes`` / ``side`` what the encoding wrote (on the device, fp8 and bf16 codes are their
unsigned integer words). The counts are integers: numpy integers with numpy, 0-d device arrays
with cupy, so a stream adds them up without waiting for the device.

With numpy it is the reference (:meth:`~gpuquant.schemes.base.Scheme.edge_counts`); every count
is a comparison or an IEEE operation that numpy and CUDA round alike, so the device counts are
the same. The helpers below are the array pieces the families share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

#: One batch's counts: ``(X, codes, side) -> (nonfinite_outputs, clipped_inputs)``.
Counter = Callable[[Any, Any, Mapping[str, Any]], tuple[Any, Any]]


def count(xp: Any, mask: Any) -> Any:
    """The number of true values in ``mask``: a numpy integer, or a 0-d device array (a sum, never
    read back here: older CuPy's ``count_nonzero`` returned a Python int, which waits for the device)."""
    return np.count_nonzero(mask) if xp is np else mask.sum(dtype=xp.int64)


def nibbles(xp: Any, packed: Any, d: int, order: str) -> Any:
    """The 4-bit values (uint8 0..15, shape (n, d)) of packed bytes, as
    :func:`gpuquant.schemes.base.unpack_nibbles` lays them out, with any array module."""
    packed = packed.view(xp.uint8)
    low, high = packed & 0x0F, packed >> 4
    if order == "high_first":
        low, high = high, low
    return xp.stack([low, high], axis=-1).reshape(packed.shape[0], -1)[:, :d]


def byte_values(dtype: np.dtype) -> np.ndarray:
    """float32 value of each of the 256 codes of a one-byte float ``dtype`` (fp8): a decode table."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)


def host_counter(decode: Callable[..., np.ndarray], code_dtype: np.dtype, state: Any, xp: Any) -> Counter:
    """A counter for a family without its own: decodes each batch on the host (numpy) and counts the
    non-finite values; it knows no range, so it counts nothing as clipped."""
    host = getattr(xp, "asnumpy", np.asarray)

    def counts(X: Any, codes: Any, side: Mapping[str, Any]) -> tuple[Any, Any]:
        y = decode(host(codes).view(code_dtype), {k: host(v) for k, v in side.items()}, state, X.shape[1])
        return np.count_nonzero(~np.isfinite(y)), 0

    return counts
