"""Float32 sums in a stated order, so references match compiled peers bit for bit.

Floating-point addition is not associative: a sum of float32 values is only defined once its order
is. This module writes out the orders the FAISS families need, row-wise over a matrix (one result
per row, every row summed the same way):

* :func:`running_sum`: ``((0 + a[0]) + a[1]) + ...`` in float32, the plain C loop;
* :func:`fma`: ``round(a * b + c)`` with one rounding (fused multiply-add), exact;
* :func:`lane_dot`: ``sum(x * y)`` as FAISS's AVX-512 build computes ``fvec_inner_product`` /
  ``fvec_norm_L2sqr`` (a compiler-vectorised loop, measured against faiss-cpu 1.15): 16 lanes,
  lane ``l`` accumulating ``acc[l] = fma(x[i], y[i], acc[l])`` for ``i = 16 k + l`` over the whole
  blocks of 16; if 8 or more values remain, the lanes fold to 8 (``acc[l] + acc[l + 8]``) and one
  more fused step takes the next 8 values; the lanes then fold in halves (8 -> 4 -> 2 -> 1, lane
  ``l`` plus lane ``l + h``), and the last values (fewer than 8) are added one by one with ``fma``.

:func:`fma` is exact: the product of two float32 values is exact in float64, so only the float64
sum can round; where that sum lands exactly on a float32 rounding midpoint, the sign of its
rounding error (Knuth's two-sum) says on which side the exact value lies.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
F64 = np.float64
LANES = 16


def running_sum(a: np.ndarray) -> np.ndarray:
    """Row sums of float32 ``a`` (n, d), added left to right in float32 from +0 (n zeros for d = 0)."""
    acc = np.zeros(a.shape[0], F32)
    for j in range(a.shape[1]):
        acc += a[:, j]
    return acc


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Elementwise ``round_to_float32(a * b + c)`` with a single rounding (float32 inputs, finite)."""
    p = a.astype(F64) * b.astype(F64)  # exact: 24 + 24 bits fit in 53
    c64 = c.astype(F64)
    s = p + c64
    bp = s - c64
    err = (p - bp) + (c64 - (s - bp))  # s + err == p + c exactly (two-sum)
    r = s.astype(F32)
    nb = np.nextafter(r, np.where(s > r.astype(F64), F32(np.inf), F32(-np.inf)))
    tie = (s != r.astype(F64)) & (2 * s == r.astype(F64) + nb.astype(F64))  # s is a float32 midpoint
    # there the exact value lies on err's side of s (err == 0: a true tie, to even as astype did)
    r = np.where(tie & (err > 0), np.maximum(r, nb), r)
    return np.where(tie & (err < 0), np.minimum(r, nb), r)


def lane_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise ``sum(x * y)`` of float32 (n, d) arrays in FAISS's AVX-512 order (module docstring)."""
    n, d = x.shape
    whole = d // LANES * LANES
    acc = np.zeros((n, LANES), F32)
    for i in range(0, whole, LANES):
        acc = fma(x[:, i:i + LANES], y[:, i:i + LANES], acc)
    half = LANES // 2
    acc = acc[:, :half] + acc[:, half:]
    start = whole
    if d - whole >= half:
        acc = fma(x[:, whole:whole + half], y[:, whole:whole + half], acc)
        start = whole + half
    while acc.shape[1] > 1:
        h = acc.shape[1] // 2
        acc = acc[:, :h] + acc[:, h:]
    total = acc[:, 0]
    for i in range(start, d):
        total = fma(x[:, i], y[:, i], total)
    return total
