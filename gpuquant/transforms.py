"""Pre-transforms that run before any scheme: PCA to fewer dimensions, and random rotations.

PCA (``pca_fit``, ``pca_apply``, ``pca_inverse``): the fit accumulates, over batches of rows, the
float64 column sums and the float64 Gram matrix ``X^T X``; the covariance is ``G / n - m m^T`` with
``m`` the float64 mean, and ``numpy.linalg.eigh`` gives its eigenvectors. The ``k`` components are
the eigenvectors of the ``k`` largest eigenvalues, largest first, each with its sign fixed so that
its entry of largest magnitude (the first such, on ties) is positive. Stored float32: ``mean``
(d,) and ``components`` (k, d). Applying it: ``(x - mean) @ components.T``; the inverse
``y @ components + mean`` (the projection back: exact only for ``k = d``). This is FAISS's
``PCAMatrix`` (no whitening, no extra rotation) up to the sign of each component and rounding.

Rotations (deterministic from ``seed``, so that only the seed need be stored):

* ``orthogonal_matrix(d, seed)``: a uniformly random orthogonal float32 (d, d) matrix: the Q of the
  QR decomposition of a float64 standard normal matrix drawn with ``numpy.random.default_rng(seed)``,
  its columns' signs fixed by the signs of R's diagonal; ``rotate(x) = x @ Q``, inverse ``y @ Q.T``;
* ``hadamard_rotate(X, seed)``: the randomised Walsh-Hadamard transform ``H D x / sqrt(p)`` with ``D``
  random ±1 signs (from the seed) and ``H`` the Sylvester Hadamard matrix of size ``p``, the next
  power of two at or above ``d``; rows are padded with zeros to ``p`` first, so the output has ``p``
  columns. No matrix is stored; the transform is its own inverse up to the signs
  (``hadamard_inverse`` undoes it and drops the padding). Computed in float64, rounded to float32.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from gpuquant.errors import InputError

F32 = np.float32
F64 = np.float64


def pca_moments(batches: Iterable[np.ndarray]) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows, float64 column sums, float64 Gram matrix) over the batches of rows, one pass."""
    n, total, gram = 0, None, None
    for batch in batches:
        b = np.asarray(batch, F64)
        if not np.isfinite(b).all():
            raise InputError("PCA fit data must be finite (it holds NaN or ±Inf)")
        if total is None:
            total, gram = np.zeros(b.shape[1]), np.zeros((b.shape[1], b.shape[1]))
        n += b.shape[0]
        total += b.sum(axis=0)
        gram += b.T @ b
    if not n:
        raise InputError("cannot fit PCA on 0 rows")
    return n, total, gram


def pca_fit(batches: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``mean`` (d,) and ``components`` (k, d) of the rows in ``batches`` (module docstring)."""
    n, total, gram = pca_moments(batches)
    d = total.size
    if not 1 <= k <= d:
        raise InputError(f"pca_dim must be from 1 to the dimension {d}, got {k}")
    mean = total / n
    with np.errstate(over="ignore", invalid="ignore"):
        cov = gram / n - np.outer(mean, mean)
    if not np.isfinite(cov).all():
        raise InputError("PCA fit data too large: its covariance overflows float64")
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    comps = vectors[:, np.argsort(-values, kind="stable")[:k]].T
    peak = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(k), peak])[:, None]
    return mean.astype(F32), comps.astype(F32)


def pca_apply(X: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    return ((X - mean) @ components.T).astype(F32)


def pca_inverse(Y: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    return (Y @ components + mean).astype(F32)


def orthogonal_matrix(d: int, seed: int) -> np.ndarray:
    """A random orthogonal float32 (d, d) matrix, the same for the same ``seed``."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(F32)


def hadamard_size(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def _signs(p: int, seed: int) -> np.ndarray:
    return np.where(np.random.default_rng(seed).integers(0, 2, p) == 1, 1.0, -1.0)


def _fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform of each row (length a power of two), in place."""
    h = 1
    while h < a.shape[1]:
        v = a.reshape(a.shape[0], -1, 2, h)
        lo, hi = v[:, :, 0, :].copy(), v[:, :, 1, :]
        v[:, :, 0, :] += hi
        v[:, :, 1, :] = lo - hi
        h *= 2
    return a


def hadamard_rotate(X: np.ndarray, seed: int) -> np.ndarray:
    """``H D x / sqrt(p)`` per row, float32 ``(n, p)`` (module docstring)."""
    n, d = X.shape
    p = hadamard_size(d)
    a = np.zeros((n, p), F64)
    a[:, :d] = X
    return (_fwht(a * _signs(p, seed)) / np.sqrt(p)).astype(F32)


def hadamard_inverse(Y: np.ndarray, d: int, seed: int) -> np.ndarray:
    """Undo :func:`hadamard_rotate`: ``D H y / sqrt(p)``, the first ``d`` columns, float32."""
    p = Y.shape[1]
    return (_fwht(np.array(Y, F64)) / np.sqrt(p) * _signs(p, seed))[:, :d].astype(F32)
