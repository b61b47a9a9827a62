"""Matryoshka truncation: keep the first ``k`` dimensions of each row and L2-renormalise, before quantizing.

Order (it matters): **truncate, renormalise, then quantize**. A Matryoshka embedding's prefix is
a usable embedding only after renormalising; quantizing first and truncating the codes would
keep ranges and scales fitted on dimensions that are gone.

Exact arithmetic, per row ``x`` (the first ``k`` values, converted to float32 first: float16 widens
exactly, float64 rounds to nearest even)::

    ss   = sum over j of f64(y_j) * f64(y_j)      float64 (each square is exact in float64)
    n    = f32(sqrt(ss))                            float64 sqrt, rounded once to float32
    out  = f32(y / n)   where n > 0;   out = y (all zeros) where n == 0

NaN or ±Inf in the kept values make ``n`` NaN or Inf and propagate (``Inf / Inf`` is NaN); the
scheme's own NaN/Inf policy then applies. Values past ``k`` are never read.

numpy and CuPy run this same function. The only difference is the order in which the float64
sum is accumulated (numpy: pairwise along the row; CuPy: its reduction tree), so ``ss`` can differ
by about ``k * 2**-53`` relative. ``n`` is then identical unless ``sqrt(ss)`` lies that close to a
float32 rounding boundary (about ``k * 2**-29`` of rows, i.e. 2e-6 for k = 1024); in such a row
``n`` differs by one float32 ulp and each output value by at most 2 ulp (relative ``2**-22``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends import array_module
from gpuquant.backends.numpy_backend import row_chunks
from gpuquant.errors import InputError

CHUNK_ROWS_VALUES = 1 << 20


def check_truncate_dim(k: Any) -> int:
    """``k`` as an int, or ``InputError`` unless it is a positive integer (bools are not)."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise InputError(f"truncate_dim must be a positive integer, got {k!r}")
    return int(k)


def truncate_renormalize(X: Any, k: int, out: Any = None) -> Any:
    """``X[:, :k]`` with each row scaled to unit L2 norm (float32), numpy or CuPy as ``X`` is.

    ``out``: a float32 ``(n, k)`` array of ``X``'s kind to write the result into (returned).

    >>> import numpy as np
    >>> truncate_renormalize(np.array([[3.0, 4.0, 12.0]], np.float32), 2)
    array([[0.6, 0.8]], dtype=float32)
    """
    k = check_truncate_dim(k)
    if X.shape[1] < k:
        raise InputError(f"truncate_dim={k} but the input has only {X.shape[1]} dimensions")
    xp = array_module(X)
    if xp is not np:
        return _renorm(xp, xp.asarray(X)[:, :k], out)  # CuPy view of any device array (no copy)
    if out is None:
        out = np.empty((X.shape[0], k), np.float32)
    for start, stop in row_chunks(X.shape[0], k, CHUNK_ROWS_VALUES):
        _renorm(np, X[start:stop, :k], out[start:stop])
    return out


def _renorm(xp: Any, x: Any, out: Any) -> Any:
    """``f32(y / f32(sqrt(sum f64(y)**2)))`` per row of ``y = f32(x)`` (rows of norm 0 divided by 1), into ``out``."""
    y = xp.asarray(x, dtype=xp.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        y64 = y.astype(xp.float64)
        norm = xp.sqrt((y64 * y64).sum(axis=1, keepdims=True)).astype(xp.float32)
        return xp.divide(y, xp.where(norm == 0, xp.float32(1), norm), out=out)
