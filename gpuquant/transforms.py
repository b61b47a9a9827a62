"""Pre-transforms that run before any scheme: PCA to fewer dimensions, and random rotations.

PCA (``pca_components``, ``pca_apply``, ``pca_inverse``): the fit is the ``Covariance`` statistic
(:mod:`gpuquant.schemes.statistics`: float64 column sums and Gram matrix ``X^T X`` accumulated over
batches; the covariance is ``G / n - m m^T`` with ``m`` the float64 mean), and ``numpy.linalg.eigh``
gives its eigenvectors. The ``k`` components are
the eigenvectors of the ``k`` largest eigenvalues, largest first, each with its sign fixed so that
its entry of largest magnitude (the first such, on ties) is positive. Stored float32: ``mean``
(d,) and ``components`` (k, d). Applying it: ``(x - mean) @ components.T``; the inverse
``y @ components + mean`` (the projection back: exact only for ``k = d``). This is FAISS's
``PCAMatrix`` (no whitening, no extra rotation) up to the sign of each component and rounding.
Every product with a stored matrix is :func:`row_product` (float64 in a fixed order, rounded once),
so a row's result never depends on which batch it came in.

Rotations (deterministic from ``seed``, so that only that integer need be stored):

* ``orthogonal_matrix(d, seed)``: a uniformly random orthogonal float32 (d, d) matrix: the Q of the
  QR decomposition of a float64 standard normal matrix drawn with ``numpy.random.default_rng(seed)``,
  its columns' signs fixed by the signs of R's diagonal; ``rotate(x) = x @ Q``, inverse ``y @ Q.T``;
* ``hadamard_rotate(X, seed)``: the randomised Walsh-Hadamard transform ``H D x / sqrt(p)`` with ``D``
  random ±1 signs (drawn from ``seed``) and ``H`` the Sylvester Hadamard matrix of size ``p``, the next
  power of two at or above ``d``; rows are padded with zeros to ``p`` first, so the output has ``p``
  columns. No matrix is stored; the transform is its own inverse up to the signs
  (``hadamard_inverse`` undoes it and drops the padding). Computed in float64, rounded to float32.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.base import F32, F64, State, StateSpec, choice, is_integer
from gpuquant.schemes.statistics import Covariance, Statistic


def pca_components(mean: np.ndarray, cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``mean`` (d,) and ``components`` (k, d) from the float64 mean and covariance (the
    :class:`~gpuquant.schemes.statistics.Covariance` statistic; module docstring)."""
    d = mean.size
    if not 1 <= k <= d:
        raise InputError(f"pca_dim must be from 1 to the dimension {d}, got {k}")
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    comps = vectors[:, np.argsort(-values, kind="stable")[:k]].T
    peak = np.argmax(np.abs(comps), axis=1)
    comps *= np.sign(comps[np.arange(k), peak])[:, None]
    return mean.astype(F32), comps.astype(F32)


def row_product(X: np.ndarray, M: np.ndarray, shift: np.ndarray | None = None,
                offset: np.ndarray | None = None) -> np.ndarray:
    """float32 ``(X - shift) @ M`` computed so that each row's result depends on that row alone (a
    BLAS product's last bits change with the batch's shape): in float64, ``acc += (x[:, j] -
    shift[j]) * M[j]`` for ``j`` in order, rounded once to float32; then, given ``offset``, that
    plus ``offset`` in float64, rounded to float32 again. (``kernels/rotate.cu`` does the same.)"""
    x = np.asarray(X, F64)
    if shift is not None:
        x = x - np.asarray(shift, F64)
    m = np.asarray(M, F64)
    acc = np.zeros((x.shape[0], m.shape[1]), F64)
    for j in range(m.shape[0]):
        acc += x[:, j:j + 1] * m[j]
    out = acc.astype(F32)
    return out if offset is None else (out.astype(F64) + np.asarray(offset, F64)).astype(F32)


def pca_apply(X: np.ndarray, mean: np.ndarray, components: np.ndarray, ops: Any = None) -> np.ndarray:
    return (ops or HOST_OPS).row_product(X, components.T, mean)


def pca_inverse(Y: np.ndarray, mean: np.ndarray, components: np.ndarray, ops: Any = None) -> np.ndarray:
    return (ops or HOST_OPS).row_product(Y, components, None, mean)


def orthogonal_matrix(d: int, seed: int) -> np.ndarray:
    """A random orthogonal float32 (d, d) matrix, the same for the same ``seed``."""
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return (q * np.sign(np.diag(r))).astype(F32)


def hadamard_size(d: int) -> int:
    return 1 << max(0, (d - 1).bit_length())


def hadamard_signs(p: int, seed: int) -> np.ndarray:
    return np.where(np.random.default_rng(seed).integers(0, 2, p) == 1, 1.0, -1.0)


def _fwht(a: np.ndarray) -> np.ndarray:
    """Unnormalised Walsh-Hadamard transform of each row (length a power of two), in place."""
    h = 1
    while h < a.shape[1]:
        v = a.reshape(a.shape[0], a.shape[1] // (2 * h), 2, h)  # no -1: it is ambiguous for 0 rows
        lo, hi = v[:, :, 0, :].copy(), v[:, :, 1, :]
        v[:, :, 0, :] += hi
        v[:, :, 1, :] = lo - hi
        h *= 2
    return a


def hadamard_rotate(X: np.ndarray, seed: int) -> np.ndarray:
    """``H D x / sqrt(p)`` per row of ``X`` as float32, float32 ``(n, p)`` (module docstring)."""
    n, d = X.shape
    p = hadamard_size(d)
    a = np.zeros((n, p), F64)
    a[:, :d] = np.asarray(X, F32)
    return (_fwht(a * hadamard_signs(p, seed)) / np.sqrt(p)).astype(F32)


def hadamard_inverse(Y: np.ndarray, d: int, seed: int) -> np.ndarray:
    """Undo :func:`hadamard_rotate`: ``D H y / sqrt(p)``, the first ``d`` columns, float32."""
    p = Y.shape[1]
    return (_fwht(np.array(np.asarray(Y, F32), F64)) / np.sqrt(p) * hadamard_signs(p, seed))[:, :d].astype(F32)


ROTATIONS = (None, "orthogonal", "hadamard")
#: The products :class:`PreTransform` is made of, on the host; the cupy backend's device versions
#: (``gpuquant.backends.cupy_rotate.DEVICE_OPS``) give the same bits.
HOST_OPS = SimpleNamespace(row_product=row_product, hadamard_rotate=hadamard_rotate,
                           hadamard_inverse=hadamard_inverse)


class PreTransform:
    """The steps between the Matryoshka truncation and the scheme: PCA to ``pca_dim`` dimensions,
    then a ``rotate`` ("orthogonal" or "hadamard", drawn from ``rotate_seed``); either may be off.

    State (float32, saved in the quantizer file and checked on load): ``pca_mean`` (d,) and
    ``pca_components`` (k, d) for PCA; ``rotation`` (p, p) for the orthogonal rotation (the matrix
    itself, so that a file never depends on how a numpy release draws it). The Hadamard rotation
    needs none. ``apply`` runs truncation's output through them in order; ``inverse`` undoes them
    in reverse order (PCA's projection back is exact only for ``k = d``).
    """

    def __init__(self, pca_dim: int | None = None, rotate: str | None = None, rotate_seed: int = 0) -> None:
        if pca_dim is not None and (not is_integer(pca_dim) or pca_dim < 1):
            raise InputError(f"pca_dim must be a positive integer, got {pca_dim!r}")
        choice("rotate", rotate, ROTATIONS)
        if not is_integer(rotate_seed) or rotate_seed < 0:
            raise InputError(f"rotate_seed must be a non-negative integer, got {rotate_seed!r}")
        self.pca_dim = None if pca_dim is None else int(pca_dim)
        self.rotate, self.rotate_seed = rotate, int(rotate_seed)
        self.state: State = {}
        self.input_dim: int | None = None  # set by fit (and by loading): the dimensions it was fitted on

    @property
    def active(self) -> bool:
        return self.pca_dim is not None or self.rotate is not None

    def params(self) -> dict[str, Any]:
        return {"pca_dim": self.pca_dim, "rotate": self.rotate, "rotate_seed": self.rotate_seed}

    @property
    def is_fitted(self) -> bool:
        return self.input_dim is not None or not self.active

    def _rotated_dim(self, d: int) -> int:
        """Dimensions after PCA (the rotation's input)."""
        return d if self.pca_dim is None else self.pca_dim

    def check_input(self, d: int) -> None:
        """``InputError`` unless the fitted steps take rows of ``d`` dimensions (after truncation)."""
        if self.input_dim is not None and d != self.input_dim:
            raise InputError(f"the rows have {d} dimensions but pca_dim/rotate were fitted on {self.input_dim}")

    def out_dim(self, d: int) -> int:
        """Dimensions the scheme sees for ``d`` input dimensions (refused if fitted on others)."""
        self.check_input(d)
        k = self._rotated_dim(d)
        return hadamard_size(k) if self.rotate == "hadamard" else k

    def state_spec(self, d: int) -> StateSpec:
        """The state's layout for ``d`` input dimensions (after truncation)."""
        f32 = np.dtype(F32)
        spec: StateSpec = {}
        if self.pca_dim is not None:
            spec.update(pca_mean=((d,), f32), pca_components=((self.pca_dim, d), f32))
        if self.rotate == "orthogonal":
            k = self._rotated_dim(d)
            spec["rotation"] = ((k, k), f32)
        return spec

    def fit(self, statistic: Callable[[Statistic], Any], d: int) -> None:
        """Fit on rows of ``d`` dimensions; ``statistic(stat)`` computes a statistic over them (the
        numpy reference, the streaming or the Dask fit)."""
        if self.pca_dim is not None and not 1 <= self.pca_dim <= d:
            raise InputError(f"pca_dim must be from 1 to the dimension {d}, got {self.pca_dim}")
        state: State = {}
        if self.pca_dim is not None:
            mean, cov = statistic(Covariance())
            mean, comps = pca_components(mean, cov, self.pca_dim)
            state.update(pca_mean=mean, pca_components=comps)
        if self.rotate == "orthogonal":
            state["rotation"] = orthogonal_matrix(self._rotated_dim(d), self.rotate_seed)
        self.state, self.input_dim = state, d

    def apply(self, X: Any, ops: Any = None) -> Any:
        """float32 rows as the scheme sees them (``ops``: :data:`HOST_OPS` or the device's)."""
        self.check_input(X.shape[1])
        ops = ops or HOST_OPS
        if self.pca_dim is not None:
            X = pca_apply(X, self.state["pca_mean"], self.state["pca_components"], ops)
        if self.rotate == "orthogonal":
            X = ops.row_product(X, self.state["rotation"])
        elif self.rotate == "hadamard":
            X = ops.hadamard_rotate(X, self.rotate_seed)
        return X

    def inverse(self, Y: Any, ops: Any = None) -> Any:
        """Undo :meth:`apply`: float32 ``(n, input_dim)``."""
        ops = ops or HOST_OPS
        d = int(self.input_dim or Y.shape[1])
        if self.rotate == "orthogonal":
            Y = ops.row_product(Y, self.state["rotation"].T)
        elif self.rotate == "hadamard":
            Y = ops.hadamard_inverse(Y, self._rotated_dim(d), self.rotate_seed)
        if self.pca_dim is not None:
            Y = pca_inverse(Y, self.state["pca_mean"], self.state["pca_components"], ops)
        return Y
