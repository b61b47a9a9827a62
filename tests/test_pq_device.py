"""The cupy backend's ``pq`` assignment (:mod:`gpuquant.backends.cupy_families.pq`): the margin that
proves an index equal to the reference's (:func:`gpuquant.schemes.kmeans.nearest`), checked here
with numpy as the array module, against scores summed in other orders, on ties and near-ties; on a
GPU (skipped without one) the cupy backend against numpy bit for bit through ``same_on_backends``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from helpers import matrix, same_on_backends
from numpy.testing import assert_array_equal

import gpuquant
from gpuquant.backends.cupy_families.pq import assign, error_scale, nearest_proven
from gpuquant.schemes.kmeans import nearest

F64 = np.float64


def other_order_scores(x: np.ndarray, c: np.ndarray, reverse: bool) -> np.ndarray:
    """``|c|^2 - 2 x.c`` in float64 summed term by term (forward or backward), unlike the BLAS."""
    x64, c64 = x.astype(F64), c.astype(F64)
    cols = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    dot = np.zeros((len(x), len(c)))
    cc = np.zeros(len(c))
    for i in cols:
        dot += x64[:, i, None] * c64[None, :, i]
        cc += c64[:, i] * c64[:, i]
    return cc[None, :] - 2 * dot


def near_ties(rng: np.random.Generator, n: int, k: int, dsub: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows placed on (or a rounding away from) the bisector of two centroids, and duplicated centroids."""
    c = matrix(rng, k, dsub)
    c[k - 1] = c[0]  # an exact duplicate: a true tie, the lowest index wins
    a, b = c[rng.integers(0, k, n)], c[rng.integers(0, k, n)]
    x = ((a.astype(F64) + b) / 2).astype(np.float32)
    x[::3] = np.nextafter(x[::3], np.float32(np.inf))
    return x, c


@pytest.mark.parametrize("k, dsub", [(16, 1), (256, 8), (256, 3), (16, 24)])
def test_proven_rows_agree_with_every_order(rng, k: int, dsub: int) -> None:
    x = np.concatenate([matrix(rng, 3000, dsub), near_ties(rng, 500, k, dsub)[0]])
    c = np.concatenate([near_ties(rng, 10, k, dsub)[1][: k // 2], matrix(rng, k - k // 2, dsub)])
    best, unsure = assign(np, x.astype(F64), c.astype(F64))
    sure = ~unsure
    assert_array_equal(best[sure], nearest(x, c)[0][sure])
    for reverse in (False, True):
        assert_array_equal(best[sure], other_order_scores(x, c, reverse).argmin(axis=1)[sure])
    assert unsure.sum() < 0.25 * len(x)  # the margin is tight enough to leave most rows to the device


@pytest.mark.parametrize("k, dsub", [(16, 2), (256, 8)])
def test_nearest_proven_equals_the_reference(rng, k: int, dsub: int) -> None:
    x, c = near_ties(rng, 2000, k, dsub)
    x = np.concatenate([x, matrix(rng, 2000, dsub)])
    distrust = np.zeros(len(x), bool)
    distrust[::97] = True
    got, redone = nearest_proven(np, x, c, c.astype(F64), distrust)
    assert_array_equal(got, nearest(x, c)[0])
    assert distrust.sum() <= redone < len(x)  # exact ties and bisector rows go back to the reference


def exact_scores(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``|c|^2 - 2 x.c`` rounded once from the exact value (products of float32 are exact in float64)."""
    x64, c64 = x.astype(F64), c.astype(F64)
    return np.array([[float(Fraction(math.fsum(cj * cj)) - 2 * Fraction(math.fsum(xi * cj)))
                      for cj in c64] for xi in x64])


@pytest.mark.parametrize("k, dsub", [(16, 24), (64, 8), (16, 1)])
def test_error_bound_covers_the_reference(rng, k: int, dsub: int) -> None:
    """The reference's scores are within half the margin's ``err`` of the exact ones (the other half
    is the device's), and every proven index is the exact argmin, with room to spare."""
    x, c = near_ties(rng, 150, k, dsub)
    x = np.concatenate([x, matrix(rng, 150, dsub, scale=1e3)])
    x64, c64 = x.astype(F64), c.astype(F64)
    ref = (c64 * c64).sum(axis=1)[None, :] - 2 * (x64 @ c64.T)
    exact = exact_scores(x, c)
    norms = np.sqrt((x64 * x64).sum(axis=1))[:, None] * np.sqrt((c64 * c64).sum(axis=1))[None, :]
    err = error_scale(dsub) * (2 * norms + (c64 * c64).sum(axis=1)[None, :])
    assert (np.abs(ref - exact) <= err / 2).all()
    best, unsure = assign(np, x64, c64)
    rows = np.flatnonzero(~unsure)
    gap = exact[rows] - exact[rows, best[rows]][:, None]
    gap[np.arange(len(rows)), best[rows]] = np.inf
    assert (gap > (err[rows] + err[rows, best[rows]][:, None])).all()


def test_one_row_and_one_centroid(rng) -> None:
    x, c = matrix(rng, 1, 5), matrix(rng, 1, 5)
    best, unsure = assign(np, x.astype(F64), c.astype(F64))
    assert best.tolist() == [0] and not unsure.any()


@same_on_backends("cupy")
@pytest.mark.parametrize("nbits, m", [(8, 4), (4, 5), (4, 8)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_pq_on_the_gpu(backend, rng, nbits: int, m: int, dtype):
    x = matrix(rng, 700, 8 * m).astype(dtype)
    x[3] = x[4]  # equal rows, and rows on bisectors: the margin's fallback runs
    fitted = gpuquant.Quantizer("pq", m=m, nbits=nbits, iterations=3, backend="numpy").fit(x)
    q = gpuquant.Quantizer.from_dict(fitted.to_dict(), backend=backend)
    centroids = fitted.state["centroids"]
    ties = ((centroids[0, 0].astype(F64) + centroids[0, 1]) / 2).astype(np.float32)
    x[:50, :8] = ties
    codes = q.transform(x)
    return codes, q.inverse_transform(codes)


@same_on_backends("cupy")
def test_pq_fit_on_the_gpu(backend, rng):
    """Fitting on the cupy backend runs the reference k-means on a host copy: the same centroids."""
    return gpuquant.Quantizer("pq", m=4, nbits=4, iterations=2, backend=backend).fit(matrix(rng, 300, 12)).state
