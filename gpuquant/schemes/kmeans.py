"""k-means in numpy, deterministic from a seed: the fit statistic of product quantization.

* :func:`nearest`: for each row of ``X`` the index of the nearest centroid in squared L2 distance,
  ranked by ``|c|^2 - 2 x.c`` in float64 (the distance less the row's own ``|x|^2``, so a float32
  distance could only order them differently by rounding), ties to the lowest index;
* :func:`kmeans`: Lloyd's algorithm. The first centroids are ``k`` distinct rows drawn with
  ``numpy.random.default_rng(seed)``; each of ``iterations`` rounds assigns every row to its nearest
  centroid and moves each centroid to the float64 mean of its rows, rounded to float32. A centroid
  left with no rows takes the row farthest from its own centroid among rows whose cluster keeps
  another row (the lowest row index on ties), which then counts as assigned to it, so no cluster is
  ever empty when the means are taken.
"""

from __future__ import annotations

import numpy as np

from gpuquant.errors import InputError

F32 = np.float32
F64 = np.float64


def nearest(X: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, squared distance) of the nearest row of ``C`` (k, d) for each row of ``X`` (n, d)."""
    x, c = X.astype(F64), C.astype(F64)
    score = x @ c.T
    score *= -2
    score += (c * c).sum(axis=1)[None, :]  # |x - c|^2 - |x|^2: the same order for each row
    idx = np.argmin(score, axis=1)  # the first minimum: the lowest index on ties
    return idx, np.maximum((x * x).sum(axis=1) + score[np.arange(len(x)), idx], 0)


def kmeans(X: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """float32 (k, d) centroids of float32 ``X`` (n >= k rows) by :func:`nearest` and Lloyd updates."""
    n = X.shape[0]
    if n < k:
        raise InputError(f"k-means with {k} centroids needs at least {k} training rows, got {n}")
    rng = np.random.default_rng(seed)
    C = X[np.sort(rng.choice(n, size=k, replace=False))].astype(F32)
    x64 = X.astype(F64)
    for _ in range(iterations):
        assign, dist = nearest(X, C)
        counts = np.bincount(assign, minlength=k)
        for empty in np.flatnonzero(counts == 0):
            far = int(np.argmax(np.where(counts[assign] > 1, dist, -1.0)))  # n >= k: some cluster has two
            counts[assign[far]] -= 1
            assign[far], dist[far] = empty, 0.0
            counts[empty] = 1
        sums = np.stack([np.bincount(assign, weights=col, minlength=k) for col in x64.T], axis=1)
        C = (sums / counts[:, None]).astype(F32)
    return C
