"""Launchers of the ``pq`` family: nearest-centroid assignment and decode on the device with CuPy.

Assignment, per sub-space, must give the reference's index (:func:`gpuquant.schemes.kmeans.nearest`:
``argmin_j |c_j|^2 - 2 x.c_j`` in float64, the lowest index on ties). The reference takes its dot
products from numpy's float64 matrix product, whose summation order is the BLAS library's, so no
kernel can promise its exact float64 scores; instead :func:`assign` proves the index. Both the
device's scores (a cuBLAS float64 product, any order, fused or not) and the reference's are within

    err_j = g * (2 |x| |c_j| + |c_j|^2),   g = (K + 4) * 2**-51   (K = d/m, twice the usual bound)

of the exact score ``S_j`` (a float64 dot product of K terms errs by at most ``K * 2**-53 * sum|x_i
c_ji|``, and ``sum|x_i c_ji| <= |x| |c_j|``; the sum of squares and the final addition add less than
two more rounding units). If the device's best ``j*`` beats every other ``j`` by more than ``2 (err_j
+ err_j*)``, then ``S_j - S_j* > err_j + err_j*`` and the reference's scores keep the same strict
order: the reference picks ``j*`` too. The rows of a sub-space where that margin fails (ties and
near-ties; none or a handful in practice) are recomputed on the host with the reference function
itself, on those rows (and so are rows holding a float32 subnormal, which the device's widening to
float64 might flush). So the codes equal the reference's for every row, up to one caveat: a
recomputed row's float64 product is numpy's for that row alone, which equals numpy's inside the whole
batch whenever the BLAS's per-element order does not depend on the number of rows (true of the
OpenBLAS and MKL kernels for these shapes; the reference's own batches rely on the same).

Decode is a gather of centroid rows (copies, so bit for bit), 4-bit codes unpacked low nibble first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import cupy_module
from gpuquant.backends.cupy_launch import launcher
from gpuquant.backends.cupy_train import as_float32
from gpuquant.schemes import Scheme
from gpuquant.schemes.kmeans import nearest
from gpuquant.schemes.pq import NONFINITE_WHY
from gpuquant.schemes.statistics import RowError


def error_scale(k_dims: int) -> float:
    """``g`` of the module docstring for sub-vectors of ``k_dims`` values."""
    return (k_dims + 4) * 2.0**-51


def assign(xp: Any, x64: Any, c64: Any) -> tuple[Any, Any]:
    """(index of the nearest row of ``c64`` for each row of ``x64``, mask of the rows whose index the
    margin does not prove) for float64 arrays of module ``xp`` (numpy or cupy): see the docstring."""
    n = x64.shape[0]
    cc = (c64 * c64).sum(axis=1)
    score = x64 @ c64.T
    score *= -2
    score += cc[None, :]
    best = score.argmin(axis=1)
    rows = xp.arange(n)
    err = xp.sqrt((x64 * x64).sum(axis=1))[:, None] * (2 * xp.sqrt(cc))[None, :]
    err += cc[None, :]
    err *= error_scale(x64.shape[1])
    s_best, e_best = score[rows, best], err[rows, best]
    rival = score - 2 * err
    rival[rows, best] = xp.inf
    sure = rival.min(axis=1) - s_best > 2 * e_best  # False for NaN: recomputed
    return best, ~sure


def nearest_proven(xp: Any, x32: Any, c32: np.ndarray, c64: Any, distrust: Any) -> tuple[Any, int]:
    """(the reference's nearest index for each float32 row of ``x32``, how many rows were recomputed):
    :func:`assign` on the module ``xp``, then :func:`~gpuquant.schemes.kmeans.nearest` on the host for
    the rows it does not prove and those ``distrust`` marks. ``c64`` is ``c32`` widened exactly."""
    best, unsure = assign(xp, x32.astype(xp.float64), c64)
    redo = xp.flatnonzero(unsure | distrust)
    if redo.size:
        rows = x32[redo]
        best[redo] = xp.asarray(nearest(rows if xp is np else rows.get(), c32)[0])
    return best, int(redo.size)


def refuse_nonfinite(cp: Any, x: Any) -> None:
    bad = ~cp.isfinite(x).all(axis=1)
    if bool(bad.any()):
        raise RowError(int(bad.argmax()), "{row} holds NaN or ±Inf; " + NONFINITE_WHY)


@launcher("pq", "encode")
def pq_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    cp = cupy_module()
    x32 = as_float32(x)  # the reference's conversion (no flushing)
    refuse_nonfinite(cp, x32)
    centroids = np.asarray(state["centroids"], np.float32)
    m, _, dsub = centroids.shape
    n = x32.shape[0]
    sub32 = x32.reshape(n, m, dsub)
    # Widened on the host (exact); the device's widening might flush float32 subnormals, so rows
    # holding one are never trusted to the margin.
    c64 = constant("pq_centroids64", lambda: centroids.astype(np.float64), np.float64)
    bits = sub32.view(cp.uint32) & 0x7FFFFFFF
    subnormal = ((bits != 0) & (bits < 0x00800000)).any(axis=2)
    idx = cp.empty((n, m), cp.uint8)
    for j in range(m):
        idx[:, j] = nearest_proven(cp, sub32[:, j], centroids[j], c64[j], subnormal[:, j])[0].astype(cp.uint8)
    codes[...] = idx if scheme.config.nbits == 8 else _pack_low_first(cp, idx)


@launcher("pq", "decode")
def pq_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    cp = cupy_module()
    centroids = constant("pq_centroids", state["centroids"], np.float32)
    m = centroids.shape[0]
    idx = c if scheme.config.nbits == 8 else _unpack_low_first(cp, c, m)
    y[...] = centroids[cp.arange(m)[None, :], idx.astype(cp.intp)].reshape(y.shape)


def _pack_low_first(cp: Any, idx: Any) -> Any:
    if idx.shape[1] % 2:
        idx = cp.concatenate([idx, cp.zeros((idx.shape[0], 1), cp.uint8)], axis=1)
    return idx[:, 0::2] | (idx[:, 1::2] << 4)


def _unpack_low_first(cp: Any, c: Any, m: int) -> Any:
    both = cp.stack([c & 15, c >> 4], axis=2).reshape(c.shape[0], -1)
    return both[:, :m]
