"""The kernels' per-element math (kernels/quant_math.cuh), compiled for the host, against the numpy
reference bit for bit: every scheme family, rounding, bit and nibble order, the float formats with
and without saturation, on millions of fresh random values and every edge value.

``tests/host_check.cpp`` includes the same header as the CUDA kernels and lays rows out as they do;
``tests/host_emulation.cpp`` compiles ``kernels/quantize.cu`` itself, its threads run one after
another, to check the kernels' loops (tasks, vector paths, unaligned views, tails) as well;
``tests/host_emulation_warps.cpp`` runs the warp- and block-cooperative kernels (``kernels/train.cu``
here, its radix select in ``test_kernels_radix.py``, absmax encode in ``test_kernels_host_absmax.py``)
with one std::thread per CUDA thread. All are built here with
``g++ -O2 -ffp-contract=off -fno-fast-math`` (C++17; C++20 for the threaded one) into
``tests/_hostlib/`` (cached by a hash of the sources). No GPU needed; skipped without g++.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_means_agree, edge_values, matrix

from gpuquant.backends.cupy_backend import SCALAR_PARAMS_DTYPE, binary_flip, scalar_params
from gpuquant.backends.cupy_train import keys_to_values
from gpuquant.errors import InputError
from gpuquant.schemes import make_scheme

HERE = Path(__file__).parent
FLAGS = ["-O2", "-std=c++17", "-ffp-contract=off", "-fno-fast-math", "-shared", "-fPIC"]
FORMATS = {"e4m3": 0, "e5m2": 1, "fp16": 2, "bf16": 3}
ROUNDINGS = {"half_away": 0, "floor": 1, "trunc": 2, "half_even": 3}
VP, I64, I32, F32 = ctypes.c_void_p, ctypes.c_longlong, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "scalar_encode": [VP, I64, I64, VP, I32, I32, I32, I32, I32, VP],
    "scalar_decode": [VP, I64, I64, VP, I32, I32, I32, I32, I32, VP],
    "binary_encode": [VP, I64, I64, VP, I32, I32, VP],
    "float_encode": [VP, I64, I32, I32, VP],
    "float_decode": [VP, I64, I32, VP],
    "absmax_encode": [VP, I64, I64, I64, I64, I32, I32, F32, VP, VP],
    "absmax_decode": [VP, VP, I64, I64, I64, I64, I32, I32, VP],
    "order_keys": [VP, I64, VP],
    "key_values": [VP, I64, VP],
}


EMU_SIGNATURES = {
    "emu_scalar_encode": [I32, I32, I32, VP, VP, I64, I64, VP, I32, I32, I32, I32, I32],
    "emu_binary_encode": [I32, I32, I32, VP, VP, I64, I64, VP, I32, I32],
    "emu_binary_decode": [I32, I32, VP, VP, I64, I64, I32, I32],
    "emu_float_encode": [I32, I32, I32, VP, VP, I64, I64, I32, I32],
    "emu_float_decode": [I32, I32, VP, VP, I64, I64, I32],
    "emu_absmax_decode": [I32, I32, VP, VP, VP, I64, I64, I64, I64, I32, I32, I32],
    "emu_absmax_decode_wide": [I32, I32, VP, VP, VP, I64, I64, I64, I64, I32, I32, I32],
    "emu_div_u32": [ctypes.c_ulonglong, VP, VP, I64],
}


def build_library(source_name: str, signatures: dict[str, list], flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile tests/<source_name> against the shipped kernel sources (cached) and load it."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip(f"no host C++ compiler (g++) to build tests/{source_name}")
    source = HERE / source_name
    with importlib.resources.as_file(importlib.resources.files("gpuquant.kernels")) as kernels:
        digest = hashlib.sha256(source.read_bytes() + " ".join([*FLAGS, *flags]).encode())
        for path in sorted(HERE.glob("host_*.h")):  # the shared host prelude (tests/host_emulation.h)
            digest.update(path.read_bytes())
        for path in sorted(Path(kernels).iterdir()):
            if path.suffix in (".cu", ".cuh"):
                digest.update(path.read_bytes())
        target = HERE / "_hostlib" / f"{source.stem}_{digest.hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            cmd = [cxx, *FLAGS, *flags, f"-I{kernels}", str(source), "-o", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
            os.replace(tmp, target)
    library = ctypes.CDLL(str(target))
    for name, argtypes in signatures.items():
        getattr(library, name).argtypes = argtypes
    return library


@pytest.fixture(scope="session")
def lib() -> ctypes.CDLL:
    library = build_library("host_check.cpp", SIGNATURES)
    library.absmax_encode.restype = I64
    return library


@pytest.fixture(scope="session")
def emu() -> ctypes.CDLL:
    return build_library("host_emulation.cpp", EMU_SIGNATURES)


WARP_SIGNATURES = {
    "emu_absmax_encode": [I32, I32, I32, VP, VP, VP, VP, I64, I64, I64, I64, I32, I32, F32, VP, I32, I32],
    "emu_scalar_decode": [I32, I32, VP, VP, I64, I64, VP, I32, I32, I32, I32, I32],
    "emu_to_float32": [I32, I32, I32, VP, VP, I64],
    "emu_minmax_global": [I32, I32, I32, VP, I64, VP, VP],
    "emu_minmax_columns": [I32, I32, I32, I32, VP, I64, I64, VP, VP],
    "emu_column_sums": [I32, I32, I32, I32, VP, I64, I64, VP],
}


@pytest.fixture(scope="session")
def warps() -> ctypes.CDLL:
    """The warp/block-cooperative kernels, threads emulated with std::thread (C++20 barriers)."""
    return build_library("host_emulation_warps.cpp", WARP_SIGNATURES, ("-std=c++20", "-pthread"))


def ptr(a: np.ndarray | None) -> int | None:
    """Raw data pointer for ctypes (the caller keeps ``a`` alive during the call)."""
    return None if a is None else a.ctypes.data


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Assert equal bit patterns; on failure show the first differing positions."""
    got, want = np.ascontiguousarray(got), np.ascontiguousarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    view = {1: np.uint8, 2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    g, w = got.view(view).reshape(-1), want.view(view).reshape(-1)
    bad = np.flatnonzero(g != w)
    assert bad.size == 0, f"{bad.size} of {g.size} differ; first at {bad[:5]}: got {g[bad[:5]]}, want {w[bad[:5]]}"


def random_floats(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 values of every magnitude: random bit patterns, normals at many scales, subnormals."""
    part = size // 4
    bits = rng.integers(0, 2**32, part, dtype=np.uint64).astype(np.uint32).view(np.float32)
    normal = (rng.standard_normal(part) * np.exp2(rng.integers(-30, 30, part))).astype(np.float32)
    sub = (rng.integers(-(2**23), 2**23, part).astype(np.int64)).astype(np.float32) * np.float32(2.0**-149)
    small = rng.uniform(-300, 300, size - 3 * part).astype(np.float32)
    return np.concatenate([bits, normal, sub.astype(np.float32), small])


def tie_values(rng: np.random.Generator, mbits: int, emin: int, emax: int, per: int = 2000) -> np.ndarray:
    """float32 values at and next to the rounding boundaries of a format with ``mbits`` mantissa bits."""
    out = []
    for e in range(emin - mbits - 3, emax + 3):
        drop = 23 - mbits + max(0, emin - e)
        mant = rng.integers(0, 2**23, per, dtype=np.int64)
        if drop < 23:
            half = 1 << (drop - 1)
            low = rng.choice(np.array([0, 1, half - 1, half, half + 1, (1 << drop) - 1]), per)
            mant = (mant & ~((1 << drop) - 1)) | low
        sign = rng.integers(0, 2, per, dtype=np.int64) << 31
        expo = np.int64(min(max(e + 127, 1), 254)) << 23
        out.append((sign | expo | mant).astype(np.uint32).view(np.float32))
    return np.concatenate(out)


FORMAT_RANGES = {"e4m3": (3, -6, 8), "e5m2": (2, -14, 15), "fp16": (10, -14, 15), "bf16": (7, -126, 127)}


@pytest.mark.parametrize("saturate", [False, True])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_float_encode(lib, rng, fmt: str, saturate: bool) -> None:
    mbits, emin, emax = FORMAT_RANGES[fmt]
    x = np.concatenate([edge_values(), random_floats(rng, 2_000_000), tie_values(rng, mbits, emin, emax)])
    if fmt == "fp16":  # every upper 19-bit pattern with the low 13 bits at and around the tie
        upper = np.arange(2**19, dtype=np.uint32) << 13
        lows = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], np.uint32)
        x = np.concatenate([x, (upper[:, None] | lows).reshape(-1).view(np.float32)])
    if fmt == "bf16":
        upper = np.arange(2**16, dtype=np.uint32) << 16
        lows = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
        x = np.concatenate([x, (upper[:, None] | lows).reshape(-1).view(np.float32)])
    scheme = make_scheme("float", format=fmt, saturate=saturate)
    want, _ = scheme.encode(x.reshape(1, -1), {})
    got = np.empty(x.size, np.uint16)
    lib.float_encode(ptr(x), x.size, FORMATS[fmt], int(saturate), ptr(got))
    same_bits(got.astype(want.dtype.itemsize == 1 and np.uint8 or np.uint16), want.reshape(-1))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_float_decode_every_code(lib, fmt: str) -> None:
    scheme = make_scheme("float", format=fmt)
    width = scheme.code_dtype.itemsize
    codes = np.arange(2 ** (8 * width), dtype=np.uint8 if width == 1 else np.uint16)
    want = scheme.decode(codes.view(scheme.code_dtype).reshape(1, -1), {}, {}, codes.size)
    got = np.empty(codes.size, np.float32)
    wide = codes.astype(np.uint16)  # kept alive: ctypes gets a raw pointer
    lib.float_decode(ptr(wide), codes.size, FORMATS[fmt], ptr(got))
    same_bits(got, want.reshape(-1))


def scalar_cases(rng: np.random.Generator, d: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, lo, hi) ranges, per dimension (d,), including the awkward ones."""
    base = rng.standard_normal(d).astype(np.float32)
    width = np.abs(rng.standard_normal(d)).astype(np.float32) * np.float32(3)
    cases = [
        ("random", base - width, base + width),
        ("ties", np.zeros(d, np.float32), np.full(d, 255, np.float32)),
        ("ties15", np.zeros(d, np.float32), np.full(d, 15, np.float32)),
        ("symmetric", np.full(d, -127, np.float32), np.full(d, 127, np.float32)),
        ("subnormal", np.full(d, -3e-39, np.float32), np.full(d, 2e-39, np.float32)),
        ("tiny_width", np.full(d, 1.0, np.float32), np.full(d, np.nextafter(np.float32(1), np.float32(2)), np.float32)),
        ("negzero", np.full(d, -0.0, np.float32), np.full(d, 1.0, np.float32)),
        ("huge", np.full(d, -3e38, np.float32), np.full(d, 3e38, np.float32)),
    ]
    degenerate_lo = base.copy()
    cases.append(("degenerate", degenerate_lo, degenerate_lo.copy()))
    far = base.copy()
    far[::2] = np.float32(2.0**60) * np.sign(base[::2])  # flat ranges: half_even's |zp| > 2^50, scale 1
    cases.append(("far_flat", far, far.copy()))
    mixed_hi = (base + width).copy()
    mixed_hi[::3] = base[::3]  # some dimensions with lo == hi
    cases.append(("mixed", base.copy(), mixed_hi))
    return cases


@np.errstate(all="ignore")  # extreme ranges overflow hi - lo; the values stay what they are
def scalar_inputs(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    d = lo.size
    span = np.where(hi > lo, hi - lo, np.float32(1))
    x = (lo + rng.uniform(-0.2, 1.2, (n, d)).astype(np.float32) * span).astype(np.float32)
    x[: n // 4] = matrix(rng, n // 4, d, scale=float(np.median(span)), edges=edge_values())
    step = rng.integers(0, 256, (n // 8, d)).astype(np.float32)
    x[n // 4 : n // 4 + n // 8] = lo + step * ((hi - lo) / np.float32(255)) + np.float32(0.5) * (hi - lo) / np.float32(255)
    x[-1], x[-2] = lo, hi
    x[-3], x[-4] = np.nextafter(lo, np.float32(-np.inf)), np.nextafter(hi, np.float32(np.inf))
    x[-5], x[-6] = np.nextafter(lo, np.float32(np.inf)), np.nextafter(hi, np.float32(-np.inf))
    return np.ascontiguousarray(x, np.float32)


SCALAR_VARIANTS = [
    (rounding, bits, signed, order)
    for rounding in ROUNDINGS
    for bits in (8, 4)
    for signed in (False, True)
    for order in (("low_first", "high_first") if bits == 4 else ("low_first",))
]


@pytest.mark.parametrize("granularity", ["tensor", "dimension"])
@pytest.mark.parametrize(("rounding", "bits", "signed", "order"), SCALAR_VARIANTS)
def test_scalar(lib, rng, granularity: str, rounding: str, bits: int, signed: bool, order: str) -> None:
    d = int(rng.choice([1, 7, 13, 127, 384]))
    n = max(8, 60_000 // d)
    for name, lo, hi in scalar_cases(rng, d):
        if granularity == "tensor":
            lo, hi = lo[:1], hi[:1]
        ranges = [lo.tolist(), hi.tolist()] if granularity == "dimension" else [float(lo[0]), float(hi[0])]
        scheme = make_scheme("scalar", granularity=granularity, range="given", ranges=ranges, rounding=rounding,
                             bits=bits, signed=signed, nibble_order=order)
        state = scheme.initial_state()
        x = scalar_inputs(rng, np.broadcast_to(state["lo"], d).copy(), np.broadcast_to(state["hi"], d).copy(), n)
        params = scalar_params(scheme, state["lo"], state["hi"])
        assert params.dtype == SCALAR_PARAMS_DTYPE
        args = (int(params.size > 1), ROUNDINGS[rounding], bits, int(signed), int(order == "high_first"))
        want, _ = scheme.encode(x, state)
        got = np.empty_like(want)
        lib.scalar_encode(ptr(x), n, d, ptr(params), *args, ptr(got))
        same_bits(got, want)
        codes = rng.integers(0, 256, want.shape, dtype=np.uint8).view(want.dtype)
        codes[0] = want[0]
        want_x = scheme.decode(codes, {}, state, d)
        got_x = np.empty((n, d), np.float32)
        lib.scalar_decode(ptr(codes), n, d, ptr(params), *args, ptr(got_x))
        same_bits(got_x, want_x)


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bitorder", ["little", "big"])
@pytest.mark.parametrize("threshold", ["zero", "fitted"])
def test_binary(lib, rng, threshold: str, bitorder: str, signed: bool) -> None:
    for d in (1, 7, 8, 13, 64, 385):
        n = max(8, 200_000 // d)
        x = matrix(rng, n, d, edges=edge_values())
        x[-1] = -x[-1]
        thr = None
        state: dict[str, np.ndarray] = {}
        if threshold == "fitted":
            thr = rng.standard_normal(d).astype(np.float32)
            thr[::5] = np.float32(1e-40)
            thr[1::5] = np.float32(-0.0)
            x[: n // 2] = thr  # x == threshold: bit 0
            x[n // 2 : n // 2 + 4] = np.nextafter(thr, np.float32(np.inf))
            state = {"thresholds": thr}
        scheme = make_scheme("binary", threshold="zero" if thr is None else "mean", bitorder=bitorder, signed=signed)
        want, _ = scheme.encode(x, state)
        got = np.empty_like(want)
        lib.binary_encode(ptr(x), n, d, ptr(thr), int(bitorder == "big"), int(signed), ptr(got))
        same_bits(got, want)


def absmax_inputs(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = matrix(rng, n, d, edges=edge_values()[np.isfinite(edge_values())])
    x[1] = 0.0
    x[2] = -0.0
    x[3] = (rng.standard_normal(d) * 1e-39).astype(np.float32)  # subnormal values and scale
    x[4] = np.float32(1e-44)
    x[5] = (rng.integers(-127, 128, d) * np.float32(0.5)).astype(np.float32)  # ties after the divide
    x[6] = np.float32(3e38)
    return x


@pytest.mark.parametrize("eps", [0.0, 1e-8])
@pytest.mark.parametrize(("bits", "order"), [(8, "low_first"), (4, "low_first"), (4, "high_first")])
@pytest.mark.parametrize("granularity", ["row", "block"])
def test_absmax(lib, rng, granularity: str, bits: int, order: str, eps: float) -> None:
    for d, g in ((1, 32), (7, 32), (64, 32), (384, 64), (1000, 40), (129, 32)):
        if granularity == "block" and d % g:
            continue
        n = max(16, 100_000 // d)
        scheme = make_scheme("absmax", granularity=granularity, bits=bits, block_size=g, eps=eps, nibble_order=order)
        seg, groups = (g, d // g) if granularity == "block" else (d, 1)
        x = absmax_inputs(rng, n, d)
        want, want_side = scheme.encode(x, {})
        codes = np.zeros(want.shape, np.uint8)
        scales = np.empty(n * groups, np.float32)
        bad = lib.absmax_encode(ptr(x), n, d, seg, groups, bits, int(order == "high_first"), eps, ptr(codes), ptr(scales))
        assert bad == -1
        same_bits(codes.view(want.dtype), want)
        same_bits(scales.reshape(want_side["scales"].shape), want_side["scales"])
        rand_codes = rng.integers(0, 256, want.shape, dtype=np.uint8)
        rand_scales = want_side["scales"].copy()
        rand_scales.reshape(-1)[::7] = np.float32(1e-41)
        want_x = scheme.decode(rand_codes.view(want.dtype), {"scales": rand_scales}, {}, d)
        got_x = np.empty((n, d), np.float32)
        rand_scales = np.ascontiguousarray(rand_scales)
        lib.absmax_decode(ptr(rand_codes), ptr(rand_scales), n, d, seg, groups, bits,
                          int(order == "high_first"), ptr(got_x))
        same_bits(got_x, want_x)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_absmax_refuses_non_finite_rows(lib, rng, bad_value: float) -> None:
    n, d = 50, 16
    x = matrix(rng, n, d)
    x[17, 3] = bad_value
    x[40, 0] = bad_value
    scheme = make_scheme("absmax")
    with pytest.raises(InputError) as info:
        scheme.encode(x, {})
    want_row = int(re.search(r"row (\d+)", str(info.value)).group(1))
    codes, scales = np.zeros((n, d), np.uint8), np.empty(n, np.float32)
    assert lib.absmax_encode(ptr(x), n, d, d, 1, 8, 0, 0.0, ptr(codes), ptr(scales)) == want_row == 17


def test_order_keys(lib, rng) -> None:
    x = np.concatenate([edge_values(), random_floats(rng, 1_000_000)])
    x = x[~np.isnan(x)]
    keys = np.empty(x.size, np.uint32)
    lib.order_keys(ptr(x), x.size, ptr(keys))
    order = np.argsort(keys, kind="stable")
    assert (np.diff(x[order]) >= 0).all()  # keys sort like the floats (-0 before +0)
    back = np.empty(x.size, np.float32)
    lib.key_values(ptr(keys), keys.size, ptr(back))
    same_bits(back, x)
    same_bits(keys_to_values(keys), x)


# -- the kernels' own loops, emulated on the host ---------------------------------------------------
GRIDS = [(1, 1), (3, 5)]  # (blocks, threads): one thread doing every task; a grid-stride mix
EMU_SHAPES = [(1, 1), (3, 3), (5, 7), (17, 13), (4, 64), (3, 130), (2, 1000)]
DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.float16): 1, np.dtype(np.float64): 2}


def placed(a: np.ndarray, misalign: bool) -> np.ndarray:
    """``a`` copied into a fresh buffer, 16-byte aligned or deliberately one element off."""
    flat = a.reshape(-1)
    buf = np.zeros(flat.size + 64 // a.itemsize + 2, a.dtype)
    start = (-buf.ctypes.data % 64) // a.itemsize + (1 if misalign else 0)
    out = buf[start : start + flat.size].reshape(a.shape)
    out[...] = a
    return out


def emu_inputs(rng: np.random.Generator, n: int, d: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    x = matrix(rng, n, d, edges=edge_values())
    with np.errstate(over="ignore", invalid="ignore"):  # NaN payloads and huge values in narrow types
        xd = x.astype(dtype)
        return xd, xd.astype(np.float32)


EMU_VARIANTS = [
    ("scalar", dict(granularity=g, range="given", rounding=r, bits=b, signed=s, nibble_order=o))
    for r in ROUNDINGS for g in ("tensor", "dimension")
    for b, s, o in [(8, False, "low_first"), (8, True, "low_first"), (4, True, "low_first"), (4, False, "high_first")]
] + [
    ("binary", dict(threshold=t, bitorder=o, signed=s, signed_encoding=e)) for t in ("zero", "mean")
    for o in ("little", "big") for s, e in ((False, "offset"), (True, "offset"), (True, "twos_complement"))
] + [("float", dict(format=f, saturate=s)) for f in FORMATS for s in (False, True)]


def variant_id(v) -> str:
    return v[0] + "-" + "-".join(str(x) for x in v[1].values())


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "unaligned"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("variant", EMU_VARIANTS, ids=variant_id)
def test_emulated_kernels(emu, warps, rng, variant, dtype, misalign: bool) -> None:
    family, kw = variant
    for n, d in EMU_SHAPES:
        x, x32 = emu_inputs(rng, n, d, dtype)
        state: dict[str, np.ndarray] = {}
        if family == "scalar":
            lo = rng.standard_normal(d if kw["granularity"] == "dimension" else 1).astype(np.float32)
            hi = lo + np.abs(rng.standard_normal(lo.size)).astype(np.float32)
            hi[::4] = lo[::4]
            scheme = make_scheme("scalar", ranges=[lo.tolist(), hi.tolist()], **kw)
            state = scheme.initial_state()
        else:
            scheme = make_scheme(family, **kw)
            if kw.get("threshold") == "mean":
                state = {"thresholds": rng.standard_normal(d).astype(np.float32)}
        want, _ = scheme.encode(x32, state)
        xin = placed(x, misalign)
        got = placed(np.zeros_like(want), misalign)
        for blocks, threads in GRIDS:
            got[...] = 0x5A if got.dtype.itemsize == 1 else 0
            p = scheme.params
            if family == "scalar":
                params = scalar_params(scheme, state["lo"], state["hi"])
                args = (int(params.size > 1), ROUNDINGS[p["rounding"]], p["bits"], int(p["signed"]),
                        int(p["nibble_order"] == "high_first"))
                emu.emu_scalar_encode(blocks, threads, DTYPE_IDS[x.dtype], ptr(xin), ptr(got), n, d, ptr(params), *args)
            elif family == "binary":
                thr = state.get("thresholds", np.zeros(d, np.float32))
                emu.emu_binary_encode(blocks, threads, DTYPE_IDS[x.dtype], ptr(xin), ptr(got), n, d, ptr(thr),
                                      int(p["bitorder"] == "big"), int(binary_flip(scheme)))
            else:
                emu.emu_float_encode(blocks, threads, DTYPE_IDS[x.dtype], ptr(xin), ptr(got), n, d,
                                     FORMATS[p["format"]], int(p["saturate"]))
            same_bits(got, want)
            codes = placed(want, misalign)
            if family == "scalar":
                codes = placed(rng.integers(0, 256, want.shape, dtype=np.uint8).view(want.dtype), misalign)
            want_x = scheme.decode(np.ascontiguousarray(codes), {}, state, d)
            got_x = placed(np.full((n, d), np.nan, np.float32), misalign)
            if family == "scalar":
                # its block shares a table: threads run concurrently (the warps library)
                warps.emu_scalar_decode(blocks, threads, ptr(codes), ptr(got_x), n, d, ptr(params), *args)
            elif family == "binary":
                emu.emu_binary_decode(blocks, threads, ptr(codes), ptr(got_x), n, d, int(p["bitorder"] == "big"),
                                      int(binary_flip(scheme)))
            else:
                emu.emu_float_decode(blocks, threads, ptr(codes), ptr(got_x), n, d, FORMATS[p["format"]])
            same_bits(got_x, want_x)


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "unaligned"])
@pytest.mark.parametrize(("granularity", "bits", "order"), [("row", 8, "low_first"), ("row", 4, "high_first"),
                                                            ("block", 4, "low_first"), ("block", 8, "low_first"),
                                                            ("tensor", 8, "low_first"), ("tensor", 4, "high_first")])
def test_emulated_absmax_decode(emu, rng, granularity: str, bits: int, order: str, misalign: bool) -> None:
    # aligned rows of whole float4s take the flat walk over float4s (absmax_decode_quads), the others the
    # row walk; blocks of 34 values split float4s; scales include NaN, ±Inf, ±0 and subnormals
    for n, d, g in [(1, 1, 32), (5, 7, 32), (3, 64, 32), (4, 384, 64), (2, 1000, 40), (3, 96, 96), (3, 68, 34),
                    (1, 4, 32), (7, 8, 32), (0, 64, 32)]:
        if granularity == "block" and d % g:
            continue
        scheme = make_scheme("absmax", granularity=granularity, bits=bits, block_size=g, nibble_order=order)
        seg, groups = (g, d // g) if granularity == "block" else (d, 1)
        codes = placed(rng.integers(0, 256, scheme.code_shape(n, d), dtype=np.uint8), misalign)
        scales = placed(matrix(rng, max(n, 1), groups, edges=edge_values()), misalign)  # a tensor scale for n = 0
        if granularity == "tensor":
            state, side = {"scales": scales.reshape(-1)[:1].copy()}, {}
        else:
            state, side = {}, {"scales": scales[:n].reshape(scheme.side_shapes(n, d)["scales"][0])}
        with np.errstate(invalid="ignore", over="ignore"):  # Inf * 0, huge scales
            want = scheme.decode(np.ascontiguousarray(codes).view(scheme.code_dtype), side, state, d)
        for blocks, threads in GRIDS:
            wide = emu.emu_absmax_decode_wide  # block scales by 64-bit division (any layout's scales read as blocks)
            for decode in (emu.emu_absmax_decode, wide) if granularity == "block" else (emu.emu_absmax_decode,):
                got = placed(np.full((n, d), np.nan, np.float32), misalign)
                decode(blocks, threads, ptr(codes), ptr(scales), ptr(got), n, d, seg, groups, bits,
                       int(order == "high_first"), int(granularity == "tensor"))
                same_bits(got, want)


def test_division_by_an_invariant_divisor(emu, rng) -> None:
    """gq::DivU32 (absmax decode's block index) equals x // s for every edge of x and s."""
    top = 2**32 - 1
    divisors = [1, 2, 3, 5, 7, 31, 32, 33, 40, 64, 96, 127, 128, 1000, 2**16 - 1, 2**16, 2**16 + 1, 2**31 - 1, 2**31,
                2**31 + 1, top - 1, top, *rng.integers(1, 2**32, 40).tolist(), *rng.integers(1, 5000, 40).tolist()]
    for s in divisors:
        k = np.unique(np.concatenate([[0, 1, top // s], rng.integers(0, top // s + 1, 2000)])).astype(np.uint64)
        multiples = k * np.uint64(s)
        x = np.concatenate([[0, 1, s - 1, s, s + 1, top, top - 1, 2**31, 2**31 - 1], multiples,
                            np.maximum(multiples.astype(np.int64) - 1, 0), multiples + 1,
                            rng.integers(0, 2**32, 5000)])
        x = x[x <= top].astype(np.uint32)
        q = np.empty_like(x)
        emu.emu_div_u32(s, ptr(x), ptr(q), x.size)
        np.testing.assert_array_equal(q, x.astype(np.uint64) // np.uint64(s), err_msg=f"divisor {s}")


# -- block-cooperative training kernels, threads emulated (absmax encode: test_kernels_host_absmax.py) ------
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
def test_emulated_training(warps, rng, dtype) -> None:
    from gpuquant.backends.cupy_train import keys_to_values

    for n, d in [(1, 1), (3, 5), (40, 13), (257, 70)]:
        x = matrix(rng, n, d, edges=finite(edge_values()))
        with np.errstate(over="ignore"):
            xd = np.ascontiguousarray(x.astype(dtype))
        xd[~np.isfinite(xd)] = 0  # float16 overflow: training data must be finite
        x32 = xd.astype(np.float32)
        t = DTYPE_IDS[xd.dtype]
        y = np.empty(x32.shape, np.float32)
        warps.emu_to_float32(2, 64, t, ptr(xd), ptr(y), xd.size)
        same_bits(y, x32)
        kmin, kmax = np.full(1, 0xFFFFFFFF, np.uint32), np.zeros(1, np.uint32)
        warps.emu_minmax_global(3, 64, t, ptr(xd), xd.size, ptr(kmin), ptr(kmax))
        assert keys_to_values(kmin)[0] == x32.min() and keys_to_values(kmax)[0] == x32.max()
        kmin, kmax = np.full(d, 0xFFFFFFFF, np.uint32), np.zeros(d, np.uint32)
        warps.emu_minmax_columns(-(-d // 32), 3, 32, t, ptr(xd), n, d, ptr(kmin), ptr(kmax))
        assert np.array_equal(keys_to_values(kmin), x32.min(axis=0))
        assert np.array_equal(keys_to_values(kmax), x32.max(axis=0))
        sums = np.zeros(d, np.float64)
        warps.emu_column_sums(-(-d // 32), 3, 32, t, ptr(xd), n, d, ptr(sums))
        want = make_scheme("binary", threshold="mean").fit(x32)["thresholds"]
        assert_means_agree((sums / n).astype(np.float32), want, x32)


def finite(v: np.ndarray) -> np.ndarray:
    return v[np.isfinite(v)]
