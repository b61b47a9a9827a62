"""The radix select of ``kernels/train.cu`` (``cupy_train.select_values``) on the host, threads
emulated (``tests/host_emulation_warps.cpp``: one std::thread per CUDA thread, warps meet at
barriers), against numpy: the two selected values equal ``np.partition``'s (the reference's exact
quantiles) and, bit for bit, the values at those ranks in the order of the keys (``-0`` before
``+0``). Covers float32, float16 and float64 input, aligned and unaligned data, counts with tails,
one value, ties, ±0, subnormals, ±Inf, columns of one value, NaN counting, and both ways of pass 2:
over the candidates pass 1 kept, and over the input again when they did not all fit; the histograms
are zero after a select, and the same launches run again on the same buffers give the same result.
On a GPU (skipped without one): ``cupy_train.radix_select`` itself, both ways of pass 2.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import edge_values, matrix
from numpy.testing import assert_array_equal
from test_kernels_host import I32, I64, VP, build_library, ptr, same_bits

from gpuquant.backends.cupy_train import RADIX_HIST_BINS, candidate_capacity
from gpuquant.schemes.base import keys_to_values, order_keys
from gpuquant.schemes.statistics import quantile_positions

SIGNATURES = {"emu_select": [I32, I32, I32, VP, I64, VP, VP, VP, VP, I64]}
DTYPES = {np.float32: 0, np.float16: 1, np.float64: 2}


@pytest.fixture(scope="module")
def warps():
    return build_library("host_emulation_warps.cpp", SIGNATURES, ("-std=c++20", "-pthread"))


def emulated_select(warps, x: np.ndarray, k0: int, k1: int, cap: int, grid: tuple[int, int] = (3, 64)):
    """(the two values, NaN count, candidate count) as select_values computes them."""
    sel = np.array([0, 0, k0, k1, k0, k1], np.uint64)
    hist, counters = np.zeros(RADIX_HIST_BINS, np.uint64), np.zeros(2, np.uint64)
    cand = np.full(max(cap, 1), np.nan, np.float32)
    args = (*grid, DTYPES[x.dtype.type], ptr(x), x.size, ptr(sel), ptr(hist), ptr(counters), ptr(cand), cap)
    warps.emu_select(*args)
    assert not hist.any()  # each pick cleared its histograms
    first = keys_to_values(sel[:2].astype(np.uint32)), int(counters[0]), int(counters[1])
    warps.emu_select(*args)  # the same launches on the same buffers again, as a benchmark replays them
    assert_array_equal(keys_to_values(sel[:2].astype(np.uint32)), first[0])
    assert int(counters[1]) == first[2]
    return first


def check(warps, x: np.ndarray, ranks: list[tuple[int, int]], cap: int | None = None, grid=(3, 64)) -> list[int]:
    """Every rank pair equals numpy; returns the candidate counts."""
    x32 = x.astype(np.float32).reshape(-1)
    by_key = keys_to_values(np.sort(order_keys(x32)))
    counts = []
    for k0, k1 in ranks:
        got, nans, cands = emulated_select(warps, x, k0, k1, candidate_capacity(x.size) if cap is None else cap, grid)
        part = np.partition(x32, [k0, k1])
        assert np.array_equal(got, part[[k0, k1]]), (k0, k1, got, part[[k0, k1]])
        same_bits(got, by_key[[k0, k1]])
        assert nans == 0
        counts.append(cands)
    return counts


def rank_pairs(rng: np.random.Generator, size: int) -> list[tuple[int, int]]:
    pairs = [(0, size - 1), (size // 2, (size - 1) // 2), quantile_positions(size, 0.99)]
    return pairs + [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(3)]


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("n, d", [(1, 1), (1, 3), (3, 5), (40, 13), (257, 70), (64, 32)])
def test_select_equals_numpy(warps, rng, dtype, n: int, d: int) -> None:
    x = matrix(rng, n, d, edges=edge_values()[~np.isnan(edge_values())])
    with np.errstate(over="ignore"):
        xd = np.ascontiguousarray(x.astype(dtype))
    check(warps, xd, rank_pairs(rng, xd.size))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda t: np.dtype(t).name)
def test_select_unaligned_and_tails(warps, rng, dtype) -> None:
    """Data one element past an aligned address (single values) and counts of 4k + 1..3 (a tail)."""
    for size in (5, 6, 7, 1001):
        buf = matrix(rng, 1, size + 1).astype(dtype).reshape(-1)
        check(warps, buf[1:], rank_pairs(rng, size))
        check(warps, np.ascontiguousarray(buf[:size]), rank_pairs(rng, size))


def test_select_ties_zeros_and_constant_columns(warps, rng) -> None:
    pools = [
        rng.integers(-3, 4, (500, 77)).astype(np.float32),  # many duplicates, ±0
        np.where(rng.random((60, 9)) < 0.5, np.float32(-0.0), np.float32(0.0)),  # only ±0
        np.full((10, 10), np.float32(-0.0)),
        np.full((33, 1), np.float32(2.5)),  # a column of one value
        np.array([[np.float32(1e-45), -np.inf, np.inf, 0.0, -1e-45, -0.0]], np.float32),
    ]
    for x in pools:
        check(warps, x, rank_pairs(rng, x.size))


def test_select_candidates(warps, rng) -> None:
    """Pass 2 reads the candidates when they fit (their count is what shares a target's 13-bit key
    prefix), and the input again when they do not: the same values either way."""
    x = matrix(rng, 300, 40)
    pairs = rank_pairs(rng, x.size)
    prefix = order_keys(x.reshape(-1)) >> 19
    ordered = np.sort(order_keys(x.reshape(-1))) >> 19
    want = [int(np.isin(prefix, np.unique(ordered[[k0, k1]])).sum()) for k0, k1 in pairs]
    assert check(warps, x, pairs) == want
    assert check(warps, x, pairs, cap=0) == want
    assert check(warps, x, pairs, cap=min(want) - 1) == want
    constant = np.full((100, 50), np.float32(1.5))  # every value a candidate
    assert check(warps, constant, [(0, 4999), (17, 2500)], cap=4999) == [5000, 5000]


def test_select_grids(warps, rng) -> None:
    """One warp, several blocks with idle warps, many blocks."""
    x = matrix(rng, 123, 17)
    for grid in [(1, 32), (7, 96), (40, 64)]:
        check(warps, x, rank_pairs(rng, x.size), grid=grid)


@pytest.mark.parametrize("nan", [np.nan, -np.nan])
def test_select_counts_nan(warps, rng, nan: float) -> None:
    x = matrix(rng, 20, 6)
    x[5, 1] = nan
    x[19, 5] = nan
    assert emulated_select(warps, x, 0, 3, candidate_capacity(x.size))[1] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("kept", [True, False], ids=["candidates", "input-again"])
def test_radix_select_on_the_gpu(gpu, rng, monkeypatch, kept: bool) -> None:
    """cupy_train.radix_select on a GPU, several blocks: pass 2 over the candidates, and (no room for
    any) over the input again."""
    cp = pytest.importorskip("cupy")
    from gpuquant.backends import cupy_train

    if not kept:
        monkeypatch.setattr(cupy_train, "CANDIDATE_MIN", 0)
        monkeypatch.setattr(cupy_train, "CANDIDATE_SHARE", 2**62)
    x = matrix(rng, 3001, 257, edges=edge_values()[np.isfinite(edge_values())])
    for dtype in DTYPES:
        with np.errstate(over="ignore"):
            xd = x.astype(dtype)
        xd[~np.isfinite(xd)] = 0
        x32 = xd.astype(np.float32).reshape(-1)
        by_key = keys_to_values(np.sort(order_keys(x32)))
        for k0, k1 in rank_pairs(rng, x32.size):
            found = cupy_train.radix_select(cp.asarray(xd), k0, k1)
            assert np.array_equal(found.values, np.partition(x32, [k0, k1])[[k0, k1]])
            same_bits(found.values, by_key[[k0, k1]])
            assert found.nan_count == 0 and found.input_reads == (2 if kept else 3)


def test_select_candidates_at_the_capacity_edge(warps, rng) -> None:
    """Ties that fill the candidate buffer exactly (pass 2 reads the candidates) and one value more
    than it holds (pass 2 reads the input again); unwritten slots hold NaN, so a read past the kept
    candidates would show."""
    x = np.repeat(rng.integers(-2, 3, 60).astype(np.float32), 7).reshape(20, 21)  # 5 values, 84 ties each
    x[0, :3] = [np.float32(-0.0), np.float32(0.0), np.float32(-0.0)]
    for k0, k1 in [(0, x.size - 1), (100, 101), (x.size // 2, 3)]:
        keys = order_keys(x.reshape(-1)) >> 19
        picked = np.unique(np.sort(order_keys(x.reshape(-1)))[[k0, k1]] >> 19)
        want = int(np.isin(keys, picked).sum())
        for cap in (want, want - 1):
            assert check(warps, x, [(k0, k1)], cap=cap) == [want]
