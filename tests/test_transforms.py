"""Pre-transforms: PCA against FAISS's ``PCAMatrix`` up to sign, and the seeded rotations."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import bits
from numpy.testing import assert_array_equal

from gpuquant import InputError
from gpuquant.transforms import (
    hadamard_inverse,
    hadamard_rotate,
    orthogonal_matrix,
    pca_apply,
    pca_fit,
    pca_inverse,
)


def correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows with well separated variances (distinct eigenvalues), off the origin."""
    mix = rng.standard_normal((d, d))
    return ((rng.standard_normal((n, d)) * np.geomspace(4, 0.05, d)) @ mix + 1.5).astype(np.float32)


@pytest.mark.parametrize("d,k", [(12, 5), (31, 31), (8, 1)])
def test_pca_is_faiss_up_to_sign(rng, d, k):
    faiss = pytest.importorskip("faiss")
    x = correlated(rng, 2000, d)
    mean, comps = pca_fit([x[:700], x[700:]], k)
    ref = faiss.PCAMatrix(d, k)
    ref.train(x)
    theirs, ours = ref.apply(x), pca_apply(x, mean, comps)
    sign = np.sign((theirs.astype(np.float64) * ours).sum(axis=0))
    assert (np.abs(theirs - ours * sign) <= 1e-5 * np.abs(theirs).max()).all()
    assert np.allclose(faiss.vector_to_array(ref.mean), mean, rtol=1e-5)  # FAISS sums in float32


def test_pca_signs_batches_and_inverse(rng):
    x = correlated(rng, 600, 9)
    mean, comps = pca_fit([x], 9)
    peak = comps[np.arange(9), np.argmax(np.abs(comps), axis=1)]
    assert (peak > 0).all()
    assert np.allclose(comps @ comps.T, np.eye(9), atol=1e-5)
    m2, c2 = pca_fit([x[:1], x[1:300], x[300:]], 9)
    assert np.allclose(m2, mean, atol=1e-6) and np.allclose(c2, comps, atol=1e-4)
    back = pca_inverse(pca_apply(x, mean, comps), mean, comps)
    assert np.abs(back - x).max() <= 1e-4 * np.abs(x).max()


@pytest.mark.parametrize("k", [0, 10])
def test_pca_refuses_bad_dims(rng, k):
    with pytest.raises(InputError, match="pca_dim"):
        pca_fit([correlated(rng, 50, 9)], k)


def test_pca_refuses_non_finite_and_empty(rng):
    x = correlated(rng, 50, 4)
    x[3, 2] = np.inf
    with pytest.raises(InputError, match="finite"):
        pca_fit([x], 2)
    with pytest.raises(InputError, match="0 rows"):
        pca_fit([], 2)


def test_orthogonal_matrix_seeded(rng):
    q = orthogonal_matrix(13, 7)
    assert q.dtype == np.float32 and np.allclose(q @ q.T, np.eye(13), atol=1e-6)
    assert_array_equal(bits(q), bits(orthogonal_matrix(13, 7)))
    assert not np.array_equal(q, orthogonal_matrix(13, 8))


@pytest.mark.parametrize("d", [1, 5, 8, 13, 64])
def test_hadamard_is_the_matrix_and_inverts(rng, d):
    x = rng.standard_normal((20, d)).astype(np.float32)
    y = hadamard_rotate(x, seed=3)
    p = y.shape[1]
    assert p == 1 << max(0, (d - 1).bit_length())
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    full = hadamard_rotate(np.eye(p, dtype=np.float32), seed=3)  # the unit rows give D H / sqrt(p)
    assert np.allclose(full * np.sqrt(p), np.sign(full[:, :1]) * h, atol=1e-6)
    padded = np.zeros((20, p), np.float32)
    padded[:, :d] = x
    assert np.allclose(y, padded @ full, atol=1e-5)
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    assert np.abs(hadamard_inverse(y, d, seed=3) - x).max() <= 1e-5 * max(1.0, float(np.abs(x).max()))
    assert_array_equal(bits(y), bits(hadamard_rotate(x, seed=3)))
