"""``kernels/rabitq.cu`` against the numpy reference (:mod:`gpuquant.schemes.rabitq`), bit for bit.

Host emulation (``tests/host_emulation.cpp``, threads one after another; see ``test_kernels_host``):
the 1-bit encode for float32, float16 and float64 input, both metrics, both of its loops (8 values a
step with a tail of 4, and value by value for odd dimensions or unaligned rows or centers), no row and
one row, edge values (subnormals, ±0, values whose squares overflow) and the refusal flag (NaN, ±Inf,
float64 values beyond float32, overflowing sums, in either loop); the encode of bits 2..9 (the error
factor, the extra bits' scale search and factors) for both metrics, odd d, every lane-order tail, no
row and one row, rows of zeros, rows with one non-zero value, ties in t, edge values and its flags;
the decode of codes of every ``bits`` (1, 2, 4, 8, 9) and of random code bytes. On a GPU (skipped
without one) the cupy backend against numpy through :func:`helpers.same_on_backends`.
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
    "emu_rabitq_encode1": [I32, I32, I32, VP, VP, VP, VP, I64, I64, I64, I32, I32],
    "emu_rabitq_encode_ex": [I32, I32, I32, VP, VP, VP, I64, I64, I64, I32, I32],
    "emu_rabitq_decode": [I32, I32, VP, VP, VP, I64, I64, I64],
}
DTYPES = {np.float32: 0, np.float16: 1, np.float64: 2}
NO_ROW = np.iinfo(np.uint64).max
GRIDS = [(1, 1), (3, 5)]  # (blocks, threads): one thread for every row, and a grid-stride loop


@pytest.fixture(scope="module")
def emu() -> ctypes.CDLL:
    return build_library("host_emulation.cpp", SIGNATURES)


def emulated_encode(emu: ctypes.CDLL, x: np.ndarray, center: np.ndarray, metric: str, grid: tuple[int, int],
                    bits: int = 1):
    """The launcher's sequence: the sign bits and factors, then (bits > 1) the extra bits. Returns the
    codes and the refusal flag (a nonfinite row, or n + an overflowing row; ``NO_ROW``: none)."""
    n, d = x.shape
    size = code_size(d, bits)
    codes = np.full((n, size), 0xAB, np.uint8)
    bad = np.full(1, NO_ROW, np.uint64)
    emu.emu_rabitq_encode1(*grid, DTYPES[x.dtype.type], ptr(x), ptr(center), ptr(codes), ptr(bad), n, d, size,
                           int(metric == "ip"), int(bits > 1))
    if bits > 1:
        emu.emu_rabitq_encode_ex(*grid, DTYPES[x.dtype.type], ptr(x), ptr(center), ptr(codes), n, d, size, bits - 1,
                                 int(metric == "ip"))
    return codes, int(bad[0])


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
        assert bad == NO_ROW
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
        assert bad == (NO_ROW if ok.all() else 60 + np.flatnonzero(~ok)[0])
        assert_array_equal(codes[ok], rabitq_encode(x[ok], center, 1, metric))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("d", [9, 12, 64])
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_emulated_encode_flags_nonfinite_rows(emu, rng, bad_value: float, d: int, dtype) -> None:
    """In either loop: the lowest row holding NaN or ±Inf, even after a row whose sums overflow; without
    them the lowest such row (none for float16), as n + its index; every other row as the reference."""
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
    assert bad == 11
    assert_array_equal(codes[ok], rabitq_encode(x32[ok], np.zeros(d, np.float32), 1, "l2"))
    x[~finite] = 0
    _, bad = emulated_encode(emu, x, np.zeros(d, np.float32), "l2", (2, 4))
    assert bad == (30 + 8 if dtype is not np.float16 else NO_ROW)


@pytest.mark.parametrize("d", [9, 16])
def test_emulated_encode_flags_float64_beyond_float32(emu, rng, d: int) -> None:
    """A float64 value that rounds to ±Inf in float32 makes its row nonfinite, as the conversion does."""
    x = matrix(rng, 7, d).astype(np.float64)
    x[[3, 5], 2] = [1e300, -4e38]
    _, bad = emulated_encode(emu, x, np.zeros(d, np.float32), "ip", (1, 3))
    assert bad == 3


@pytest.mark.parametrize("bits", range(2, 10))
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n, d", [(0, 16), (1, 1), (1, 2), (9, 7), (7, 16), (6, 24), (5, 33), (3, 130)])
def test_emulated_multibit_encode(emu, rng, n: int, d: int, bits: int, metric: str) -> None:
    """bits > 1: the sign bits, the three factors, the extra bits (the heap's scale search, every
    lane-order tail: d under 8, 8 to 15 left after the blocks of 16, none) and their two factors."""
    x = matrix(rng, n, d)
    for center in centers(rng, x):
        codes, bad = emulated_encode(emu, x, center, metric, (2, 3), bits)
        assert bad == NO_ROW
        assert_array_equal(codes, rabitq_encode(x, center, bits, metric))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_emulated_multibit_encode_other_inputs(emu, rng, dtype) -> None:
    """float16 and float64 rows are read as their float32 values, as the reference is given them."""
    x = matrix(rng, 13, 37).astype(dtype)
    for center in centers(rng, x.astype(np.float32)):
        codes, _ = emulated_encode(emu, x, center, "ip", (1, 4), 5)
        assert_array_equal(codes, rabitq_encode(x.astype(np.float32), center, 5, "ip"))


def special_rows(rng: np.random.Generator, d: int) -> np.ndarray:
    """Rows of zeros (±0: no extra bits, zero factors), a row under the 1e-10 norm, rows with one
    non-zero value, rows of equal magnitudes (every step a tie in t, taken lowest dimension first),
    rows of a few repeated values, subnormals, ±0 and huge values that do not overflow."""
    rows = [np.zeros(d), -np.zeros(d), np.full(d, 1e-12), np.eye(1, d, d // 2)[0] * -3.5,
            np.eye(1, d, 0)[0] * 1e-30, np.full(d, 0.25), np.where(np.arange(d) % 2, -2.0, 2.0),
            rng.choice([-1.0, 0.5, 3.0], d), np.full(d, 1e-44), np.full(d, 1e18)]
    x = np.array(rows, np.float32)
    edges = matrix(rng, 6, d, edges=np.tile(finite_edge_values(), 2))
    edges[np.abs(edges) > 1e18] = 1e18
    return np.concatenate([x, edges])


@pytest.mark.parametrize("bits", [2, 3, 7, 9])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("d", [1, 5, 16, 29])
def test_emulated_multibit_encode_special_rows(emu, rng, d: int, bits: int, metric: str) -> None:
    x = special_rows(rng, d)
    for center in [np.zeros(d, np.float32), x[5].copy(), centers(rng, x)[1]]:
        codes, bad = emulated_encode(emu, x, center, metric, (3, 2), bits)
        assert bad == NO_ROW
        with np.errstate(over="ignore"):  # the reference's 1 / o of a subnormal o is +Inf (its t is never kept)
            assert_array_equal(codes, rabitq_encode(x, center, bits, metric))


def test_emulated_multibit_encode_keeps_the_flags(emu, rng) -> None:
    """bits > 1 refuses the rows the 1-bit encode does (nonfinite, overflowing), the others exact."""
    x = matrix(rng, 12, 10)
    x[4, 3], x[2, 0], x[7, 9] = np.nan, 3e38, -np.inf
    codes, bad = emulated_encode(emu, x, np.zeros(10, np.float32), "l2", (2, 2), 4)
    assert bad == 4
    ok = np.setdiff1d(np.arange(12), [2, 4, 7])
    assert_array_equal(codes[ok], rabitq_encode(x[ok], np.zeros(10, np.float32), 4, "l2"))
    _, bad = emulated_encode(emu, x[ok], np.zeros(10, np.float32), "ip", (1, 2), 9)
    assert bad == NO_ROW
    _, bad = emulated_encode(emu, np.delete(x, [4, 7], axis=0), np.zeros(10, np.float32), "ip", (1, 2), 9)
    assert bad == 10 + 2


@pytest.mark.parametrize("n, d", [(1000, 40), (3, 70000), (0, 8)])
def test_multibit_launches_and_their_scratch(n: int, d: int) -> None:
    """The launcher's two launches for bits > 1 (one with no rows), recorded on the host: the heap
    scratch holds d keys and d levels for each thread of its grid, within the cap or one block."""
    from gpuquant.backends.cupy_families import rabitq as launchers
    from gpuquant.backends.cupy_launch import planned_launches
    from gpuquant.schemes import make_scheme

    scheme = make_scheme("rabitq", bits=4, center="zero")
    x = np.zeros((n, d), np.float32)
    codes = np.zeros((n, code_size(d, 4)), np.uint8)
    launches = planned_launches(scheme, "encode", {}, x, codes, {})
    assert [launch.name for launch in launches] == ["rabitq_encode1<float>", "rabitq_encode_ex<float>"][:1 + (n > 0)]
    assert launches[0].args[6] == code_size(d, 4) and launches[0].args[8] == 1  # rows of code_size, error factor
    if n:
        (blocks,), (threads,) = launches[1].grid, launches[1].block
        keys, levels = launches[1].args[3:5]
        assert threads == launchers.EX_THREADS and keys.size == levels.size == blocks * threads * d
        assert blocks == max(1, min(-(-n // threads), launchers.EX_SCRATCH_KEYS // (d * threads)))
        assert (keys.dtype, levels.dtype, launches[1].args[8]) == (np.uint64, np.uint16, 3)


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
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("bits", [2, 4, 8, 9])
@pytest.mark.parametrize("n, d", [(1, 1), (200, 65), (300, 768)])
def test_rabitq_multibit_on_the_gpu(backend, monkeypatch, n: int, d: int, bits: int, metric: str):
    """bits > 1: the extra-bit encode and the decode; the scratch cap lowered to one block (128 rows at
    a time), so the grid strides over the rows. The data come from a generator of the parameters, the
    same for both backends' calls."""
    from gpuquant.backends.cupy_families import rabitq as launchers

    monkeypatch.setattr(launchers, "EX_SCRATCH_KEYS", 1)
    x = matrix(np.random.default_rng([n, d, bits]), n, d)
    x[0, : d // 2] = 0.0
    fitted = gpuquant.Quantizer("rabitq", bits=bits, metric=metric, backend="numpy").fit(x)
    q = gpuquant.Quantizer.from_dict(fitted.to_dict(), backend=backend)
    codes = q.transform(x)
    return codes, q.inverse_transform(codes)
