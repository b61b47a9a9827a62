"""The division primitives of ``kernels/quant_math.cuh``, compiled for the host by
``tests/host_division.cpp``, against the host's IEEE float32 division (x86-64 SSE, no FTZ).

- The reciprocal of every significand m in [1, 2) from every start within 3 ulp of RN(1/m) (what the
  hardware's approximate reciprocal gives on the GPU) is RN(1/m): exhaustive.
- ``quotient_for_rounding`` of every x in [1, 2) by the 16 divisors whose reciprocal is the least
  accurate (RN(1/s) nearest a half ulp from 1/s), over 10^7 random pairs, 6 * 10^6 quotients next to midpoints or exact,
  and the special divisors: the quotient's bits in band; outside it the sign, the magnitude class
  and every rounding function the kernels apply to it (floor, trunc, rint, rint(q + zp) for
  |zp| <= 2^50, each then clipped); ``bounded_quotient`` (no band test) likewise where |x * p2| <= 2^60.
- faiss-sq4's ``(int)(f64(t) * 15)`` in integer arithmetic (``times15_trunc``), for every t in [0, 1].
- the in-band steps against exact remainders: q1 faithful with an exact remainder (q0's need not be).
- ``div_exact`` over 10^7 random bit patterns, subnormal operands and results, ties of subnormal
  results, the overflow edge and every pair of special values: bit for bit (NaN: a NaN).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from helpers import edge_values
from test_kernels_host import VP, build_library, ptr, same_bits

from gpuquant.backends.cupy_families.scalar import divisors
from gpuquant.schemes.scalar import affine_scale_zp

U64, I64, I32 = ctypes.c_ulonglong, ctypes.c_longlong, ctypes.c_int
SIGNATURES = {
    "recip_exhaustive": [I32, VP],
    "make_divisors": [VP, I64, VP],
    "qmax_divisors_ok": [],
    "times15_exhaustive": [ctypes.c_uint32, ctypes.c_uint32, VP],
    "quotient_check": [U64, I64, I32, VP, VP],
    "quotient_worst_divisors": [I32, VP],
    "div_exact_check": [U64, I64, I32, VP],
    "markstein_steps": [U64, I64, VP, VP],
}


@pytest.fixture(scope="module")
def div() -> ctypes.CDLL:
    library = build_library("host_division.cpp", SIGNATURES)
    for name in ("recip_exhaustive", "times15_exhaustive", "quotient_check", "quotient_worst_divisors",
                 "div_exact_check"):
        getattr(library, name).restype = I64
    return library


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**63))


def test_reciprocal_of_every_significand(div: ctypes.CDLL) -> None:
    bad = np.zeros(2, np.float32)
    failures = div.recip_exhaustive(3, ptr(bad))
    assert failures == 0, f"{failures} (m, start) pairs miss RN(1/m); first m = {bad[0]!r}, start {bad[1]:+.0f} ulp"


def test_quotient_by_the_worst_divisors(div: ctypes.CDLL) -> None:
    bad = np.zeros(2, np.float32)
    failures = div.quotient_worst_divisors(16, ptr(bad))
    assert failures == 0, f"{failures} quotients differ; first x = {bad[0]!r}, s = {bad[1]!r}"


@pytest.mark.parametrize(("kind", "count"), [(0, 5_000_000), (1, 5_000_000), (2, 4_000_000), (3, 2_000_000),
                                             (4, 200_000)],
                         ids=["random-bits", "random-exponents", "midpoints", "exact", "special-divisors"])
def test_quotient_for_rounding(div: ctypes.CDLL, rng: np.random.Generator, kind: int, count: int) -> None:
    in_band, bad = np.zeros(1, np.int64), np.zeros(2, np.float32)
    seed = _seed(rng)
    failures = div.quotient_check(seed, count, kind, ptr(in_band), ptr(bad))
    assert failures == 0, f"seed {seed}: {failures} pairs differ; first x = {bad[0]!r}, s = {bad[1]!r}"
    if kind != 4:  # the in-band sequence itself is exercised, not only the early-outs
        assert in_band[0] > count // 10


def test_the_quotient_steps_meet_the_proof(div: ctypes.CDLL, rng: np.random.Generator) -> None:
    """In band, q1 is faithful and its remainder exact (what Markstein's last step needs); the first
    remainder is not always exact (quant_math.cuh's comment says so), which q1 does not need."""
    counts, bad = np.zeros(2, np.int64), np.zeros(2, np.float32)
    seed = _seed(rng)
    div.markstein_steps(seed, 3_000_000, ptr(counts), ptr(bad))
    assert counts[1] == 0, f"seed {seed}: {counts[1]} pairs break the proof; first x = {bad[0]!r}, s = {bad[1]!r}"
    assert counts[0] > 0


@pytest.mark.parametrize(("kind", "count"), [(0, 10_000_000), (1, 2_000_000), (2, 2_000_000), (3, 2_000_000),
                                             (4, 256)],
                         ids=["random-bits", "subnormal-and-extreme", "subnormal-ties", "overflow-edge", "specials"])
def test_div_exact(div: ctypes.CDLL, rng: np.random.Generator, kind: int, count: int) -> None:
    bad = np.zeros(2, np.float32)
    seed = _seed(rng)
    failures = div.div_exact_check(seed, count, kind, ptr(bad))
    assert failures == 0, f"seed {seed}: {failures} quotients differ; first {bad[0]!r} / {bad[1]!r}"


def test_faiss_sq4_level_without_float64(div: ctypes.CDLL) -> None:
    bad = np.zeros(2, np.float32)
    failures = div.times15_exhaustive(0, 0x3F800000, ptr(bad))
    assert failures == 0, f"{failures} values of t in [0, 1] differ; first t = {bad[0]!r}"


def test_absmax_qmax_constants(div: ctypes.CDLL) -> None:
    assert div.qmax_divisors_ok() == 1


def test_divisor_of_special_values(div: ctypes.CDLL) -> None:
    s = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -3.0, 2.0**127, 2.0**-149, 2.0**-126], np.float32)
    out = np.zeros((s.size, 3), np.float32)
    div.make_divisors(ptr(s), s.size, ptr(out))
    p2, sp, r = out.T
    assert p2[0] == np.inf and p2[1] == np.inf and sp[0] == 1 and sp[1] == -1 and r[1] == -1
    assert p2[2] == 0 and p2[3] == 0 and sp[2] == 1 and sp[3] == -1
    assert np.isnan(p2[4]) and sp[4] == 1 and r[4] == 1
    assert (p2[5], sp[5], r[5]) == (1, 1, 1) and (p2[6], sp[6]) == (0.5, -1.5)
    assert p2[7] == np.float32(2.0**-127) and sp[7] == 1  # 2^-127: the subnormal factor
    assert p2[8] == np.float32(2.0**127) and sp[8] == np.float32(2.0**-22) and r[8] == np.float32(2.0**22)
    assert p2[9] == np.float32(2.0**126) and sp[9] == 1


def test_backend_divisors_equal_the_kernel_setup(div: ctypes.CDLL, rng: np.random.Generator) -> None:
    """The backend's numpy ``divisors`` (per-column ``gq::Divisor`` of the scalar family) equals
    ``gq::make_divisor`` bit for bit: random bit patterns (every class) and the edge values."""
    s = np.concatenate([rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
                        edge_values(), np.float32([2.0**127, 2.0**-127, 2.0**-149, 2.0**-126, -np.nan])])
    want = np.zeros((s.size, 3), np.float32)
    div.make_divisors(ptr(s), s.size, ptr(want))
    for got, col in zip(divisors(s), want.T):
        same_bits(got, col)


@pytest.mark.parametrize("levels", [255, 15])
def test_half_even_ranges_meet_the_quotient_precondition(rng: np.random.Generator, levels: int) -> None:
    """half_even's kernel needs |zp| <= 2^50 or scale == 1 (``scalar_params``' docstring says why
    every finite range does): random bit patterns, neighbouring floats, subnormal and flat ranges."""
    a = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    a = a[np.isfinite(a)]
    b = np.concatenate([rng.permutation(a), np.nextafter(a, np.float32(np.inf)), a,
                        np.nextafter(a, np.float32(0)), (a * np.float32(0.999)).astype(np.float32)])
    a = np.tile(a, 5)
    with np.errstate(over="ignore"):
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        scale, zp = affine_scale_zp(lo, hi, levels)
    ok = (np.abs(zp) <= 2.0**50) | (scale == 1)
    assert ok.all(), f"lo {lo[~ok][:3]!r} hi {hi[~ok][:3]!r}: zp {zp[~ok][:3]!r}, scale {scale[~ok][:3]!r}"
    assert (lo == hi).any() and (np.abs(zp) > 2.0**50).any()  # both sides of the precondition occur
