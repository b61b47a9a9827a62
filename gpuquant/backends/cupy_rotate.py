"""The pre-transforms' products on the device (``kernels/rotate.cu``), bit for bit with
:mod:`gpuquant.transforms`: :data:`DEVICE_OPS` mirrors ``transforms.HOST_OPS`` (``row_product``
for PCA and the orthogonal rotation, ``hadamard_rotate`` / ``hadamard_inverse``), taking numpy or
CuPy arrays and returning CuPy float32 arrays.

Why not ``cupy.matmul``: the reference sums each row's float64 products in a stated order (so a row's
result never depends on its batch), which a cuBLAS product does not promise; the kernels keep it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import THREADS, Work, cupy_module, i64, occupancy_grid
from gpuquant.backends.cupy_launch import kernel
from gpuquant.transforms import hadamard_signs, hadamard_size

ROTATE_FILE = "rotate.cu"
#: Every kernel of ``kernels/rotate.cu`` (``name_expressions``).
NAME_EXPRESSIONS: tuple[str, ...] = ("row_product", "hadamard_load", "hadamard_stage", "hadamard_store")


def _kernel(name: str) -> Any:
    return kernel(ROTATE_FILE, name, NAME_EXPRESSIONS)


def _rows_grid(n: int) -> Work:
    """Blocks for ``n`` rows, one row per block at a time (grid-stride over rows), one wave at most."""
    return occupancy_grid(n * THREADS)


def _f32(cp: Any, a: Any) -> Any:
    from gpuquant.backends.cupy_train import as_float32

    return cp.ascontiguousarray(as_float32(cp.asarray(a)))


def row_product(X: Any, M: Any, shift: Any = None, offset: Any = None) -> Any:
    """Device ``transforms.row_product``."""
    cp = cupy_module()
    x, m = _f32(cp, X), _f32(cp, M)
    n, rows = (int(s) for s in x.shape)
    cols = int(m.shape[1])
    out = cp.empty((n, cols), cp.float32)
    if n:
        extra = [None if v is None else _f32(cp, v) for v in (shift, offset)]
        _kernel("row_product")((_rows_grid(n),), (THREADS,), (x, m, *extra, out, i64(n), i64(rows), i64(cols)))
    return out


def _hadamard(x: Any, p: int, d_out: int, seed: int, inverse: bool) -> Any:
    cp = cupy_module()
    n, d_in = (int(s) for s in x.shape)
    signs = cp.asarray(hadamard_signs(p, seed))
    a = cp.empty((n, p), cp.float64)
    out = cp.empty((n, d_out), cp.float32)
    if n:
        grid = (_rows_grid(n),), (THREADS,)
        _kernel("hadamard_load")(*grid, (x, None if inverse else signs, a, i64(n), i64(d_in), i64(p)))
        h = 1
        while h < p:
            _kernel("hadamard_stage")(*grid, (a, i64(n), i64(p), i64(h)))
            h *= 2
        _kernel("hadamard_store")(*grid, (a, signs if inverse else None, out, i64(n), i64(p), i64(d_out),
                                          np.float64(np.sqrt(p))))
    return out


def hadamard_rotate(X: Any, seed: int) -> Any:
    """Device ``transforms.hadamard_rotate``."""
    x = _f32(cupy_module(), X)
    p = hadamard_size(int(x.shape[1]))
    return _hadamard(x, p, p, seed, inverse=False)


def hadamard_inverse(Y: Any, d: int, seed: int) -> Any:
    """Device ``transforms.hadamard_inverse``."""
    y = _f32(cupy_module(), Y)
    return _hadamard(y, int(y.shape[1]), d, seed, inverse=True)


DEVICE_OPS = SimpleNamespace(row_product=row_product, hadamard_rotate=hadamard_rotate,
                             hadamard_inverse=hadamard_inverse)
