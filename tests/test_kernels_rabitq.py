"""``kernels/rabitq.cu`` against the numpy reference (:mod:`gpuquant.schemes.rabitq`), bit for bit.

Host emulation (``tests/host_emulation.cpp``, threads one after another; see ``test_kernels_host``):
the 1-bit encode for float32, float16 and float64 input, both metrics, both of its loops (8 values a
step with a tail of 4, and value by value for odd dimensions or unaligned rows or centers), no row and
one row, edge values (subnormals, ±0, values whose squares overflow) and the refusal flags (NaN, ±Inf,
float64 values beyond float32, overflowing sums, in either loop); the decode of
codes of every ``bits`` (1, 2, 4, 8, 9) and of random code bytes. On a GPU (skipped without one) the
cupy backend against numpy through :func:`helpers.same_on_backends`.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from helpers import finite_edge_values, matrix, same_on_backends
from numpy.testing import assert_array_equal
from test_kernels_host import I32, I64, VP, build_library, ptr, same_bits

import gpuquant
from gpuquant.schemes.float_order import running_sum
from gpuquant.schemes.rabitq import code_size, rabitq_decode, rabitq_encode

SIGNATURES = {
    "emu_rabitq_encode1": [I32, I32, I32, VP, VP, VP, VP, I64, I64, I32],
    "emu_rabitq_decode": [I32, I32, VP, VP, VP, I64, I64, I64],
}
DTYPES = {np.float32: 0, np.float16: 1, np.float64: 2}
NO_ROW = np.iinfo(np.uint64).max
GRIDS = [(1, 1), (3, 5)]  # (blocks, threads): one thread for every row, and a grid-stride loop


@pytest.fixture(scope="module")
def emu() -> ctypes.CDLL:
    return build_library("host_emulation.cpp", SIGNATURES)


def emulated_encode(emu: ctypes.CDLL, x: np.ndarray, center: np.ndarray, metric: str, grid: tuple[int, int]):
    n, d = x.shape
    codes = np.full((n, code_size(d, 1)), 0xAB, np.uint8)
    bad = np.full(2, NO_ROW, np.uint64)
    emu.emu_rabitq_encode1(*grid, DTYPES[x.dtype.type], ptr(x), ptr(center), ptr(codes), ptr(bad), n, d,
                           int(metric == "ip"))
    return codes, bad


def emulated_decode(emu: ctypes.CDLL, codes: np.ndarray, center: np.ndarray, d: int, grid: tuple[int, int]):
    n = codes.shape[0]
    y = np.full((n, d), np.nan, np.float32)
    emu.emu_rabitq_decode(*grid, ptr(codes), ptr(center), ptr(y), n, d, codes.shape[1])
    return y


def centers(rng: np.random.Generator, x32: np.ndarray) -> list[np.ndarray]:
    """A zero center and a random one of the data's magnitude."""
    scale = np.median(np.abs(x32)) if x32.size else 1.0
    return [np.zeros(x32.shape[1], np.float32), (rng.standard_normal(x32.shape[1]) * scale).astype(np.float32)]


def unaligned(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` one element past an aligned address (the kernel's scalar path)."""
    buf = np.empty(x.size + 1, x.dtype)
    view = buf[1:].reshape(x.shape)
    view[...] = x
    return view


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("n, d, misalign", [(1, 1, False), (1, 384, False), (40, 7, False), (33, 17, False),
                                            (25, 131, False), (20, 64, True), (9, 12, False), (11, 4, False),
                                            (6, 36, False), (0, 16, False), (5, 40, "center")])
def test_emulated_encode(emu, rng, n: int, d: int, dtype, metric: str, grid, misalign) -> None:
    """Both loops: 8 values a step with a tail of 4 (d a multiple of 4, aligned rows and center) and one
    value at a time (other d, unaligned rows or center)."""
    x = matrix(rng, n, d).astype(dtype)
    x = unaligned(x) if misalign is True else x
    x32 = x.astype(np.float32)
    for center in centers(rng, x32):
        center = unaligned(center) if misalign == "center" else center
        codes, bad = emulated_encode(emu, x, center, metric, grid)
        assert_array_equal(bad, [NO_ROW, NO_ROW])
        assert_array_equal(codes, rabitq_encode(x32, center, 1, metric))


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("d", [5, 12, 64, 99])
def test_emulated_encode_edges(emu, rng, d: int, metric: str) -> None:
    """Subnormals, ±0 and huge values: rows whose squares overflow are flagged (the lowest one) and
    every other row equals the reference."""
    x = matrix(rng, 60, d, edges=np.tile(finite_edge_values(), 3))
    x[5] = 0.0
    x[6] = -0.0
    x[7] = 1e-45
    for center in centers(rng, x):
        codes, bad = emulated_encode(emu, x, center, metric, (2, 7))
        with np.errstate(over="ignore", invalid="ignore"):
            r = x - center
            ok = np.isfinite(running_sum(r * r)) & np.isfinite(running_sum(x * x))
        assert bad[0] == NO_ROW
        assert bad[1] == (NO_ROW if ok.all() else np.flatnonzero(~ok)[0])
        assert_array_equal(codes[ok], rabitq_encode(x[ok], center, 1, metric))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("d", [9, 12, 64])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_emulated_encode_flags_nonfinite_rows(emu, rng, bad_value: float, d: int, dtype) -> None:
    """In either loop: the lowest row holding NaN or ±Inf, and the lowest other row whose sums
    overflow (none for float16), even one before the nonfinite rows; every other row as the reference."""
    x = matrix(rng, 30, d)
    x[[11, 20], d - 1] = bad_value
    if dtype is not np.float16:
        x[[8, 20, 25], 1] = 3e38  # |x|^2 overflows: rows 8 and 25, and nonfinite row 20
    x = x.astype(dtype)
    codes, bad = emulated_encode(emu, x, np.zeros(d, np.float32), "l2", (2, 4))
    x32 = x.astype(np.float32)
    finite = np.isfinite(x32).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        ok = finite & np.isfinite(running_sum(x32 * x32))
    assert_array_equal(bad, [11, 8 if dtype is not np.float16 else NO_ROW])
    assert_array_equal(codes[ok], rabitq_encode(x32[ok], np.zeros(d, np.float32), 1, "l2"))


@pytest.mark.parametrize("d", [9, 16])
def test_emulated_encode_flags_float64_beyond_float32(emu, rng, d: int) -> None:
    """A float64 value that rounds to ±Inf in float32 makes its row nonfinite, as the conversion does."""
    x = matrix(rng, 7, d).astype(np.float64)
    x[[3, 5], 2] = [1e300, -4e38]
    _, bad = emulated_encode(emu, x, np.zeros(d, np.float32), "ip", (1, 3))
    assert_array_equal(bad, [3, NO_ROW])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("bits", [1, 2, 4, 8, 9])
@pytest.mark.parametrize("n, d", [(1, 1), (30, 7), (17, 33), (3, 384)])
def test_emulated_decode(emu, rng, n: int, d: int, bits: int, grid) -> None:
    x = matrix(rng, n, d)
    for center in centers(rng, x):
        codes = rabitq_encode(x, center, bits, "l2")
        same_bits(emulated_decode(emu, codes, center, d, grid), rabitq_decode(codes, center, bits, d))


@pytest.mark.parametrize("bits", [1, 3])
def test_emulated_decode_of_any_bytes(emu, rng, bits: int) -> None:
    """Random code bytes with dp_multiplier taken from the finite edge values (subnormals, ±0, huge)."""
    d = 19
    edges = finite_edge_values()
    codes = rng.integers(0, 256, (len(edges), code_size(d, bits)), dtype=np.uint8)
    head = (d + 7) // 8
    codes[:, head + 4:head + 8] = edges.astype("<f4").view(np.uint8).reshape(-1, 4)
    center = matrix(rng, 1, d, edges=edges[:6])[0]
    same_bits(emulated_decode(emu, codes, center, d, (2, 3)), rabitq_decode(codes, center, bits, d))


@same_on_backends("cupy")
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("n, d", [(1, 1), (1000, 384), (77, 131)])
def test_rabitq_on_the_gpu(backend, rng, n: int, d: int, dtype, metric: str):
    x = matrix(rng, n, d).astype(dtype)
    fitted = gpuquant.Quantizer("rabitq", bits=1, metric=metric, backend="numpy").fit(x)
    q = gpuquant.Quantizer.from_dict(fitted.to_dict(), backend=backend)
    codes = q.transform(x)
    return codes, q.inverse_transform(codes)


@same_on_backends("cupy")
@pytest.mark.parametrize("bits", [2, 4, 8, 9])
def test_rabitq_multibit_decode_on_the_gpu(backend, rng, bits: int):
    """Encoding bits > 1 stays on the CPU (the backend's ``supports`` says so); their decode runs on
    the GPU when the cupy backend is called directly."""
    from gpuquant.backends import resolve

    x = matrix(rng, 200, 65)
    q = gpuquant.Quantizer("rabitq", bits=bits, backend="numpy").fit(x)
    return resolve(backend).inverse_transform(q.scheme, q.state, q.transform(x))
