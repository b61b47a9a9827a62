"""The warp-cooperative absmax encode kernels of ``kernels/quantize.cu`` (``absmax_encode``: lanes
per segment from 1 to 32; ``absmax_encode_rows``: a segment of 513..4096 values on 2, 4 or 8 warps),
compiled for the host by ``tests/host_emulation_warps.cpp`` with one std::thread per CUDA thread,
against the numpy reference bit for bit: codes and scales for row, block and tensor granularity, 8 and
4 bits in both nibble orders, float32/float16/float64 input, aligned and unaligned arrays, tails, a
subnormal tensor scale (quotients far beyond qmax, clipped), and the first row holding NaN or ±Inf
reported as the reference's. The other host kernels' checks are in ``test_kernels_host.py``.
"""

from __future__ import annotations

import ctypes
import itertools

import numpy as np
import pytest
from helpers import matrix
from test_kernels_host import DTYPE_IDS, WARP_SIGNATURES, absmax_inputs, build_library, placed, ptr, same_bits

from gpuquant.schemes import make_scheme


@pytest.fixture(scope="module")
def warps() -> ctypes.CDLL:
    return build_library("host_emulation_warps.cpp", WARP_SIGNATURES, ("-std=c++20", "-pthread"))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize(("granularity", "bits", "order", "eps"), [
    ("row", 8, "low_first", 1e-8), ("row", 4, "high_first", 0.0), ("block", 4, "low_first", 0.0),
    ("block", 8, "low_first", 1e-8), ("tensor", 8, "low_first", 0.0), ("tensor", 4, "high_first", 0.0)])
def test_emulated_absmax_encode(warps, rng, granularity: str, bits: int, order: str, eps: float, dtype) -> None:
    # lanes per segment: 1 (rows of 16), 2, 4, 8, 16, 32 (16 values a lane); 2 (rows of 8: a float4 a
    # lane); 32 (blocks of 48, rows of 384, 1000: several float4 a lane, or the two-pass loop)
    shapes = [(1, 1, 32), (5, 7, 32), (9, 64, 32), (4, 384, 64), (3, 1000, 40), (6, 33, 32), (5, 16, 32),
              (3, 256, 128), (2, 1024, 512), (4, 256, 256), (3, 96, 48), (4, 8, 32)]
    for k, (n, d, g) in enumerate(shapes):
        if granularity == "block" and d % g:
            continue
        scheme = make_scheme("absmax", granularity=granularity, bits=bits, block_size=g, eps=eps, nibble_order=order)
        seg, groups = (g, d // g) if granularity == "block" else (d, 1)
        x = absmax_inputs(rng, max(n, 8), d)[:n]
        with np.errstate(over="ignore"):
            xd = x.astype(dtype)
        xd[~np.isfinite(xd)] = 0
        x32 = xd.astype(np.float32)
        # a tensor scale fitted on the data, or (every other shape) a subnormal one: quotients far beyond
        # qmax, x * 2^127 overflowing, clipped
        fitted = x32 if k % 2 else np.full_like(x32, 1e-40)
        state = scheme.fit(fitted) if granularity == "tensor" else {}
        want, want_side = scheme.encode(x32, state)
        tensor_scale = state.get("scales", np.ones(1, np.float32))
        for misalign, rows in itertools.product((False, True), (0, 1)):
            xin = placed(xd, misalign)
            codes = placed(np.full(want.shape, 0x5A, np.uint8), misalign)
            scales = np.full(n * groups, np.nan, np.float32)
            bad = np.full(1, np.iinfo(np.uint64).max, np.uint64)
            warps.emu_absmax_encode(2, 64, DTYPE_IDS[xd.dtype], ptr(xin), ptr(codes), ptr(scales), ptr(bad), n, d,
                                    seg, groups, bits, int(order == "high_first"), eps, ptr(tensor_scale),
                                    int(granularity == "tensor"), rows)
            assert bad[0] == np.iinfo(np.uint64).max
            same_bits(codes.view(want.dtype), want)
            if granularity != "tensor":
                same_bits(scales.reshape(want_side["scales"].shape), want_side["scales"])
    x = matrix(rng, 70, 16)
    x[[41, 55], [3, 0]] = np.nan, np.inf
    bad = np.full(1, np.iinfo(np.uint64).max, np.uint64)
    out, scales = np.zeros((70, 16), np.uint8), np.zeros(70, np.float32)
    warps.emu_absmax_encode(3, 64, 0, ptr(x), ptr(out), ptr(scales), ptr(bad), 70, 16, 16, 1, 8, 0, 0.0, ptr(scales), 0,
                            0)
    assert bad[0] == 41


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64], ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize(("granularity", "bits", "order"), [("row", 8, "low_first"), ("row", 4, "high_first"),
                                                            ("block", 8, "low_first")])
def test_emulated_absmax_encode_rows(warps, rng, granularity: str, bits: int, order: str,
                                                           dtype) -> None:
    # absmax_encode_rows, 256 threads: segments of 513..4096 values on 2, 4 or 8 warps (4, 2 or 1
    # segments a block per step, the last step part empty); d not a multiple of 4, 4100 and
    # misaligned arrays take absmax_encode's paths
    shapes = [(5, 516, 516), (7, 768, 768), (3, 1536, 768), (4, 2052, 1026), (3, 3072, 1024), (2, 4096, 4096),
              (2, 4100, 4100), (3, 1538, 1538), (1, 1024, 1024), (3, 4096, 2048)]
    for n, d, g in shapes:
        if granularity == "block" and g > 4096:
            continue
        block = {"block_size": g} if granularity == "block" else {}
        scheme = make_scheme("absmax", granularity=granularity, bits=bits, nibble_order=order, **block)
        seg, groups = (g, d // g) if granularity == "block" else (d, 1)
        x = absmax_inputs(rng, max(n, 8), d)[rng.permutation(8)[:n]]
        with np.errstate(over="ignore"):
            xd = x.astype(dtype)
        xd[~np.isfinite(xd)] = 0
        want, want_side = scheme.encode(xd.astype(np.float32), {})
        for blocks, misalign in ((1, False), (3, False), (2, True)):
            xin = placed(xd, misalign)
            codes = placed(np.full(want.shape, 0x5A, np.uint8), misalign)
            scales = np.full(n * groups, np.nan, np.float32)
            bad = np.full(1, np.iinfo(np.uint64).max, np.uint64)
            warps.emu_absmax_encode(blocks, 256, DTYPE_IDS[xd.dtype], ptr(xin), ptr(codes), ptr(scales), ptr(bad), n, d,
                                    seg, groups, bits, int(order == "high_first"), 0.0, ptr(scales), 0, 1)
            assert bad[0] == np.iinfo(np.uint64).max, (n, d, blocks)
            same_bits(codes.view(want.dtype), want)
            same_bits(scales.reshape(want_side["scales"].shape), want_side["scales"])
    x = matrix(rng, 9, 3072)
    x[[6, 4], [3000, 1]] = np.nan, -np.inf
    bad = np.full(1, np.iinfo(np.uint64).max, np.uint64)
    out, scales = np.zeros((9, 3072), np.uint8), np.zeros(9, np.float32)
    warps.emu_absmax_encode(2, 256, 0, ptr(x), ptr(out), ptr(scales), ptr(bad), 9, 3072, 3072, 1, 8, 0, 0.0,
                            ptr(scales), 0, 1)
    assert bad[0] == 4
