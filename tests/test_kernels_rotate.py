"""``kernels/rotate.cu`` against :mod:`gpuquant.transforms`, bit for bit, in host emulation (see
``test_kernels_host``): the float64 row product of PCA and the orthogonal rotation (with and without
the shift and the offset of ``pca_inverse``), and the randomised Walsh-Hadamard transform and its
inverse, for odd and power-of-two dimensions, one row, edge values; on a GPU (skipped without one)
the device functions of :mod:`gpuquant.backends.cupy_rotate` through ``same_on_backends``.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from helpers import finite_edge_values, matrix, same_on_backends
from test_kernels_host import I32, I64, VP, build_library, ptr, same_bits

import gpuquant
from gpuquant import transforms as tf

SIGNATURES = {
    "emu_row_product": [I32, I32, VP, VP, VP, VP, VP, I64, I64, I64],
    "emu_hadamard": [I32, I32, VP, VP, VP, VP, VP, I64, I64, I64, I64, ctypes.c_double],
}
GRIDS = [(1, 1), (3, 7)]
# Values near float32's limit overflow to ±Inf (and Inf - Inf to NaN) in the reference too: the bits count.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


@pytest.fixture(scope="module")
def emu() -> ctypes.CDLL:
    return build_library("host_emulation.cpp", SIGNATURES)


def emulated_row_product(emu, x, m, shift=None, offset=None, grid=(2, 5)) -> np.ndarray:
    n, rows = x.shape
    out = np.full((n, m.shape[1]), np.nan, np.float32)
    m = np.ascontiguousarray(m)
    emu.emu_row_product(*grid, ptr(x), ptr(m), ptr(shift), ptr(offset), ptr(out), n, rows, m.shape[1])
    return out


def emulated_hadamard(emu, x, seed, d_out=None, inverse=False, grid=(2, 5)) -> np.ndarray:
    n, d_in = x.shape
    p = d_in if inverse else tf.hadamard_size(d_in)
    d_out = d_out or p
    signs = tf.hadamard_signs(p, seed)
    a = np.empty((n, p))
    out = np.full((n, d_out), np.nan, np.float32)
    emu.emu_hadamard(*grid, ptr(x), None if inverse else ptr(signs), ptr(signs) if inverse else None,
                     ptr(a), ptr(out), n, d_in, p, d_out, float(np.sqrt(p)))
    return out


def data(rng, n: int, d: int) -> np.ndarray:
    """Random rows with the finite edge values (subnormals, ±0, up to ±3.4e38) scattered in."""
    return np.ascontiguousarray(matrix(rng, n, d, edges=finite_edge_values() if n * d > 60 else None))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("n, d, k", [(1, 1, 1), (1, 5, 3), (40, 17, 17), (33, 64, 9), (7, 130, 131)])
def test_emulated_row_product(emu, rng, n: int, d: int, k: int, grid) -> None:
    x, m = data(rng, n, d), matrix(rng, d, k)
    shift = matrix(rng, 1, d)[0]
    same_bits(emulated_row_product(emu, x, m, grid=grid), tf.row_product(x, m))
    same_bits(emulated_row_product(emu, x, m, shift, grid=grid), tf.row_product(x, m, shift))
    comps = np.ascontiguousarray(m.T)  # (k, d): PCA's components
    y = tf.pca_apply(x, shift, comps)
    same_bits(emulated_row_product(emu, x, np.ascontiguousarray(comps.T), shift, grid=grid), y)
    same_bits(emulated_row_product(emu, y, comps, None, shift, grid=grid), tf.pca_inverse(y, shift, comps))


@pytest.mark.parametrize("d", [1, 2, 7, 64, 100, 384])
def test_emulated_orthogonal_rotation(emu, rng, d: int) -> None:
    x, q = data(rng, 9, d), tf.orthogonal_matrix(d, 5)
    y = emulated_row_product(emu, x, q)
    same_bits(y, tf.row_product(x, q))
    same_bits(emulated_row_product(emu, y, np.ascontiguousarray(q.T)), tf.row_product(y, q.T))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("n, d", [(1, 1), (1, 3), (30, 7), (17, 64), (5, 100), (3, 384)])
def test_emulated_hadamard(emu, rng, n: int, d: int, grid) -> None:
    x = data(rng, n, d)
    y = emulated_hadamard(emu, x, 11, grid=grid)
    same_bits(y, tf.hadamard_rotate(x, 11))
    back = emulated_hadamard(emu, y, 11, d_out=d, inverse=True, grid=grid)
    same_bits(back, tf.hadamard_inverse(y, d, 11))


@same_on_backends("cupy")
@pytest.mark.parametrize("d", [1, 7, 100, 384])
def test_rotations_on_the_gpu(backend, rng, d: int):
    x = data(rng, 300, d)
    q = tf.orthogonal_matrix(d, 3)
    if backend == "numpy":
        ops = tf.HOST_OPS
    else:
        from gpuquant.backends.cupy_rotate import DEVICE_OPS as ops
    y = ops.hadamard_rotate(x, 4)
    return (ops.row_product(x, q), ops.row_product(x, q.T, x[0], x[1]), y, ops.hadamard_inverse(y, d, 4))


@same_on_backends("cupy")
@pytest.mark.parametrize("pre", [{"rotate": "hadamard", "rotate_seed": 3}, {"rotate": "orthogonal"},
                                 {"pca_dim": 20, "rotate": "hadamard"}])
@pytest.mark.parametrize("scheme", ["int8-row", "faiss-rabitq", "pq"])
def test_pretransforms_on_device_rows(backend, rng, pre: dict, scheme: str):
    """Device rows go through the device pre-transforms, then the scheme's kernels; codes and the
    reconstruction equal the host path's."""
    x = matrix(rng, 300, 33)
    params = {"m": 1, "nbits": 4, "iterations": 2} if scheme == "pq" else {}  # m = 1 divides every dimension
    q = gpuquant.Quantizer(scheme, backend="numpy", **pre, **params).fit(x)
    if backend != "numpy":
        import cupy

        q, x = gpuquant.Quantizer.from_dict(q.to_dict(), backend=backend), cupy.asarray(x)
    codes = q.transform(x)
    return codes, q.inverse_transform(codes)
