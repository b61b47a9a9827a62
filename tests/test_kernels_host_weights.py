"""The kernels of ``kernels/weights.cu`` (families ``gguf`` and ``scaled_fp8``), compiled for the host by
``tests/host_emulation.cpp`` with their threads run one after another, against the numpy reference bit
for bit: random rows of several magnitudes with every finite edge value, odd row counts, float16 and
float64 inputs, blocks whose scale is 0, subnormal, too small to invert or beyond fp16, Q4_0's ties of
magnitude, rows with NaN or ±Inf (the first refused row is the reference's), and decoding every byte.
On a GPU the same bodies also run through the cupy backend against the numpy backend
(``helpers.same_on_backends``; skipped without one)."""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
from helpers import edge_values, finite_edge_values, matrix, same_on_backends
from test_kernels_host import (
    EMU_SIGNATURES,
    GRIDS,
    I32,
    I64,
    VP,
    WARP_SIGNATURES,
    build_library,
    placed,
    ptr,
    same_bits,
)

import gpuquant
from gpuquant.schemes import make_scheme
from gpuquant.schemes.edges import byte_values
from gpuquant.schemes.statistics import RowError

F32 = ctypes.c_float
SIGNATURES = {
    **EMU_SIGNATURES,
    "emu_gguf_encode": [I32, I32, I32, VP, VP, I64, I64, I32, VP],
    "emu_gguf_decode": [I32, I32, VP, VP, I64, I64, I32],
    "emu_scaled_fp8_encode": [I32, I32, I32, VP, VP, VP, I64, I64, I32, I32],
    "emu_scaled_fp8_decode": [I32, I32, VP, VP, VP, I64, I64, I32, I32],
}
DTYPES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.float64): 2}
SHAPES = [(0, 64), (1, 32), (3, 64), (5, 96), (7, 160), (2, 1024)]
NO_ROW = np.iinfo(np.uint64).max


WARPS = {**WARP_SIGNATURES, "emu_scaled_fp8_scales": [I32, I32, I32, VP, VP, I64, I64, F32, I32, VP]}
WARP_GRIDS = [(1, 32), (3, 64)]  # scaled_fp8_scales: one warp a row, rows grid-strided


@pytest.fixture(scope="module")
def emu() -> ctypes.CDLL:
    return build_library("host_emulation.cpp", SIGNATURES)


@pytest.fixture(scope="module")
def warps() -> ctypes.CDLL:
    return build_library("host_emulation_warps.cpp", WARPS, ("-std=c++20", "-pthread"))


def weight_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Finite float32 rows: random magnitudes, the finite edge values, and (d a multiple of 32) blocks of
    32 that are all zero (±0), subnormal, tiny (1/scale overflows), beyond fp16 once scaled, or ties of
    magnitude."""
    x = matrix(rng, n, d, edges=finite_edge_values())
    if d % 32:
        return x
    blocks = x.reshape(-1, 32)
    special = [np.where(rng.random(32) < 0.5, 0.0, -0.0), rng.standard_normal(32) * 1e-40,
               rng.standard_normal(32) * 1e-37, rng.standard_normal(32) * 3e-38, rng.standard_normal(32) * 1e7,
               np.resize([3.0, -3.0, 1.0], 32), np.resize([-2.0, 2.0, 0.5], 32)]
    for i, b in zip(rng.choice(len(blocks), min(len(blocks), len(special)), replace=False), special, strict=False):
        blocks[i] = np.asarray(b, np.float32)
    return x


def inputs(rng: np.random.Generator, n: int, d: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    x = weight_rows(rng, n, d)
    if dtype == np.float16:  # finite in float16 too (the large blocks saturate at its range)
        x = np.clip(x, -60000, 60000)
    x = x.astype(dtype)
    return x, x.astype(np.float32)


def refused_row(scheme, x32: np.ndarray, state: dict) -> int:
    """The reference's refused row (``NO_ROW`` when it accepts ``x32``)."""
    try:
        scheme.encode(x32, state)
    except RowError as e:
        return e.row
    return NO_ROW


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_emulated_gguf(emu, rng, kind: str, dtype) -> None:
    scheme = make_scheme("gguf", type=kind)
    q4 = int(kind == "q4_0")
    for n, d in SHAPES:
        x, x32 = inputs(rng, n, d, dtype)
        want, _ = scheme.encode(x32, {})
        for misalign in (False, True):
            xin = placed(x, misalign)
            got = placed(np.full(want.shape, 0x5A, np.uint8), misalign)
            for blocks, threads in GRIDS:
                bad = np.full(1, NO_ROW, np.uint64)
                emu.emu_gguf_encode(blocks, threads, DTYPES[x.dtype], ptr(xin), ptr(got), n, d, q4, ptr(bad))
                assert bad[0] == NO_ROW
                same_bits(got, want)
            codes = rng.integers(0, 256, want.shape, dtype=np.uint8)
            codes[:1, : 2 * 256 : want.shape[1] // (d // 32)] = 0  # some scales decode as ±0
            codes = placed(codes, misalign)
            want_x = scheme.decode(np.ascontiguousarray(codes), {}, {}, d)
            got_x = placed(np.full((n, d), np.nan, np.float32), misalign)
            emu.emu_gguf_decode(3, 5, ptr(codes), ptr(got_x), n, d, q4)
            same_bits(got_x, want_x)


def test_gguf_decode_every_scale_and_code(emu) -> None:
    """Every fp16 scale (NaN, ±Inf, subnormal) against every Q8_0 code byte and every Q4_0 nibble."""
    for kind, width in (("q8_0", 34), ("q4_0", 18)):
        scheme = make_scheme("gguf", type=kind)
        halves = np.arange(2**16, dtype=np.uint16)
        codes = np.zeros((halves.size, width), np.uint8)
        codes[:, :2] = halves.view(np.uint8).reshape(-1, 2)
        codes[:, 2:] = (np.arange(width - 2) * 37 + halves[:, None]) % 256
        want = scheme.decode(codes, {}, {}, 32)
        got = np.full((halves.size, 32), np.nan, np.float32)
        emu.emu_gguf_decode(3, 5, ptr(codes), ptr(got), halves.size, 32, int(kind == "q4_0"))
        same_bits(got, want)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("family, kw", [("gguf", {"type": "q8_0"}), ("gguf", {"type": "q4_0"}),
                                        ("scaled_fp8", {"granularity": "channel"})])
def test_emulated_refusals(emu, warps, rng, family: str, kw: dict, bad_value: float) -> None:
    scheme = make_scheme(family, **kw)
    n, d = 9, 64
    x32 = weight_rows(rng, n, d)
    x32[7, 40] = bad_value
    x32[4, 3] = bad_value
    want = refused_row(scheme, x32, {})
    assert want == 4
    bad = np.full(1, NO_ROW, np.uint64)
    codes = np.zeros(scheme.code_shape(n, d), np.uint8)
    if family == "gguf":
        emu.emu_gguf_encode(3, 5, 0, ptr(x32), ptr(codes), n, d, int(kw["type"] == "q4_0"), ptr(bad))
    else:
        scales = np.zeros(n, np.float32)
        warps.emu_scaled_fp8_scales(3, 64, 0, ptr(x32), ptr(scales), n, d, np.float32(448), 1, ptr(bad))
    assert bad[0] == want


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_emulated_scaled_fp8(emu, warps, rng, granularity: str, fmt: str, dtype) -> None:
    scheme = make_scheme("scaled_fp8", granularity=granularity, format=fmt)
    per_row = int(granularity == "channel")
    fmt_id = {"e4m3": 0, "e5m2": 1}[fmt]
    # tensor scales: half the one a fit gives (values beyond M * s clip); 1 and 0.75 (quotients at the fp8
    # ties among the edge values); subnormal (huge quotients), huge (quotients that cast to ±0)
    tensor_scales = [None, 1.0, 0.75, 1e-40, 3e38] if not per_row else [None]
    for (n, d), tensor_scale in itertools.product([*SHAPES, (3, 7), (4, 7), (1, 1)], tensor_scales):
        x, x32 = inputs(rng, n, d, dtype)
        x[:1], x32[:1] = 0, 0  # a zero row: the scale FLT_EPSILON (-0 among the edge values codes as +0)
        state = {}
        if not per_row:
            half_fit = scheme.scale_of(np.abs(x32).max(initial=0) * np.float32(0.5))
            state = {"weight_scale": np.float32(half_fit if tensor_scale is None else tensor_scale).reshape(1)}
        want, side = scheme.encode(x32, state)
        want = want.view(np.uint8)
        scales_want = side["weight_scale"].reshape(-1) if per_row else state["weight_scale"]
        for misalign in (False, True):
            xin = placed(x, misalign)
            got = placed(np.full(want.shape, 0x5A, np.uint8), misalign)
            for (blocks, threads), (wblocks, wthreads) in zip(GRIDS, WARP_GRIDS, strict=True):
                scales = placed(np.full(n, np.nan, np.float32), misalign) if per_row else state["weight_scale"].copy()
                bad = np.full(1, NO_ROW, np.uint64)
                warps.emu_scaled_fp8_scales(wblocks, wthreads, DTYPES[x.dtype], ptr(xin), ptr(scales), n, d,
                                            np.float32(scheme.max_finite), per_row, ptr(bad))
                emu.emu_scaled_fp8_encode(blocks, threads, DTYPES[x.dtype], ptr(xin), ptr(got), ptr(scales), n, d,
                                          per_row, fmt_id)
                assert bad[0] == NO_ROW
                same_bits(got, want)
                same_bits(scales, scales_want)
            codes = placed(np.arange(n * d, dtype=np.uint8).reshape(n, d) * np.uint8(97), misalign)
            scales = placed(rng.uniform(1e-6, 10, n).astype(np.float32) if per_row else scales_want, misalign)
            with np.errstate(over="ignore"):  # huge tensor scales
                want_x = scheme.decode(np.ascontiguousarray(codes).view(scheme.code_dtype),
                                       {"weight_scale": scales.reshape(n, 1)} if per_row else {}, state, d)
            got_x = placed(np.full((n, d), np.nan, np.float32), misalign)
            emu.emu_scaled_fp8_decode(3, 5, ptr(codes), ptr(scales), ptr(got_x), n, d, per_row, fmt_id)
            same_bits(got_x, want_x)


def quotient_edges(s: np.float32, fmt: str) -> np.ndarray:
    """float32 w whose w / s lands on what the encode must get exactly: every midpoint between two fp8
    values (and beyond M), the quotients that round to ±0 or to ±2^-149 (|w / s| about 2^-150), tiny and
    huge ones; each with its float32 neighbours and both signs."""
    grid = np.unique(np.abs(byte_values(make_scheme("scaled_fp8", format=fmt).code_dtype)))
    grid = grid[np.isfinite(grid)].astype(np.float64)
    q = np.concatenate([(grid[1:] + grid[:-1]) / 2, grid, [grid[-1] * 1.5, 2.0**-150, 2.0**-149, 3 * 2.0**-151,
                                                          2.0**-40, 2.0**-36, 2.0**59, 2.0**70]])
    with np.errstate(over="ignore", under="ignore"):
        w = (q * np.float64(s)).astype(np.float32)  # q * s is exact in float64: one rounding
        w = w[np.isfinite(w)]
        w = np.concatenate([w, np.nextafter(w, np.float32(0)), np.nextafter(w, np.float32(np.inf))])
    w = np.concatenate([w, -w, [0.0, -0.0, 1e-45, -1e-45]]).astype(np.float32)
    return w[np.isfinite(w)]


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_scaled_fp8_encode_quotient_edges(emu, fmt: str) -> None:
    """fp8 ties, quotients rounding to ±0, subnormal and huge scales: the encode's quotient (Divisor band,
    the q0 outside it, the zero limit) against the reference's division, as a tensor scale and as every
    row's scale (the divisor made per float4), both walks."""
    scheme = make_scheme("scaled_fp8", granularity="tensor", format=fmt)
    for s in np.array([1.0, 0.75, 3e38, 2.0**127 * 1.75, 1e-40, 2.0**-149, 1.1754942e-38, 2.0**100 * 1.3, 5e-3],
                      np.float32):
        w = quotient_edges(s, fmt)
        x = np.resize(w, (-(-w.size // 64), 64))  # rows of 64: the flat walk when aligned
        want = scheme.encode(x, {"weight_scale": s.reshape(1)})[0].view(np.uint8)
        for misalign, per_row in itertools.product((False, True), (0, 1)):
            xin = placed(x, misalign)
            got = placed(np.full(want.shape, 0x5A, np.uint8), misalign)
            scales = np.full(x.shape[0], s, np.float32)  # per row: the same scale in every row
            emu.emu_scaled_fp8_encode(3, 5, 0, ptr(xin), ptr(got), ptr(scales), *x.shape, per_row,
                                      {"e4m3": 0, "e5m2": 1}[fmt])
            same_bits(got, want)


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
def test_scaled_fp8_decode_every_code_and_scale(emu, rng, fmt: str, misalign: bool) -> None:
    """Every fp8 byte under every edge scale (NaN, ±Inf, ±0, subnormal), per row and per tensor: the flat
    walk over float4s (aligned) and the row walk (unaligned, and rows of 255 values)."""
    for granularity in ("channel", "tensor"):
        scheme = make_scheme("scaled_fp8", granularity=granularity, format=fmt)
        per_row = int(granularity == "channel")
        edges = np.concatenate([edge_values(), rng.uniform(1e-6, 10, 5).astype(np.float32)])
        for d in (256, 255):
            codes = placed(np.resize(np.arange(256, dtype=np.uint8), (edges.size, d)), misalign)
            # (a tensor scale is not NaN: numpy's array-by-scalar loop keeps the scalar's NaN where both are)
            tensor_scales = [edges[i : i + 1] for i in range(edges.size) if not np.isnan(edges[i])][::3]
            for scales in [edges] if per_row else tensor_scales:
                side = {"weight_scale": scales.reshape(-1, 1)} if per_row else {}
                state = {} if per_row else {"weight_scale": scales}
                with np.errstate(invalid="ignore", over="ignore"):
                    want = scheme.decode(np.ascontiguousarray(codes).view(scheme.code_dtype), side, state, d)
                got = placed(np.full(want.shape, np.nan, np.float32), misalign)
                emu.emu_scaled_fp8_decode(3, 5, ptr(codes), ptr(placed(scales, misalign)), ptr(got), edges.size, d,
                                          per_row, {"e4m3": 0, "e5m2": 1}[fmt])
                same_bits(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("preset", ["gguf-q8_0", "gguf-q4_0", "safetensors-fp8"])
@same_on_backends("cupy")
def test_backend_round_trip(backend, rng, preset: str, dtype):
    x, _ = inputs(rng, 37, 160, dtype)
    q = gpuquant.Quantizer(preset, backend=backend).fit(x)
    codes = q.transform(x)
    return codes, q.inverse_transform(codes)


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@same_on_backends("cupy")
def test_backend_tensor_scale(backend, rng, fmt: str):
    x, _ = inputs(rng, 9, 96, np.float32)
    q = gpuquant.Quantizer("scaled_fp8", granularity="tensor", format=fmt, backend=backend).fit(x[:3])
    codes = q.transform(x)  # rows beyond the fitted ones clip
    return codes, q.inverse_transform(codes)


@pytest.mark.parametrize("preset", ["gguf-q8_0", "gguf-q4_0", "safetensors-fp8"])
@same_on_backends("cupy")
def test_backend_refusal(backend, rng, preset: str):
    x = weight_rows(rng, 6, 64)
    x[5, 0], x[2, 63] = np.inf, np.nan
    with pytest.raises(RowError) as info:
        gpuquant.Quantizer(preset, backend=backend).fit(x[:2]).transform(x)
    return np.array([info.value.row]), str(info.value)
