"""Launchers of the ``scalar`` family (``scalar_encode`` / ``scalar_decode`` in ``kernels/quantize.cu``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import (
    INPUT_TYPES,
    THREADS,
    i32,
    i64,
)
from gpuquant.backends.cupy_launch import launcher, quantize_kernel, row_blocks
from gpuquant.schemes import Scheme
from gpuquant.schemes.scalar import (
    affine_scale_zp,
    cuvs_scale_offset,
    floor_step,
    trunc_vdiff,
)

ROUNDINGS = {"half_away": 0, "floor": 1, "trunc": 2, "half_even": 3}
#: One ``gq::ScalarParams`` (kernels/quant_math.cuh) per range: half_away's two float64 share their
#: 16 bytes with the ``gq::Divisor`` (p2, sp, r) of the other roundings.
SCALAR_PARAMS_DTYPE = np.dtype({"names": ["scale", "offset", "p2", "sp", "r", "f0", "f1"],
                                "formats": ["<f8", "<f8", "<f4", "<f4", "<f4", "<f4", "<f4"],
                                "offsets": [0, 8, 0, 4, 8, 16, 20], "itemsize": 24})

F32 = np.float32


def divisors(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gq::make_divisor`` of each float32 ``s``: (p2, sp, r) with ``x / s == (x * p2) / sp``.

    s normal with biased exponent e: ``p2 = 2**(127 - e)``, ``sp = s * p2`` (exact, |sp| in [1, 2));
    s subnormal: ``p2 = 2**127``; ``r = f32(1 / sp)``. s = ±0: ``(+inf, ±1, ±1)``; ±inf:
    ``(0, ±1, ±1)``; NaN: ``(s, 1, 1)``.
    """
    s = np.asarray(s, F32)
    e = ((s.view(np.uint32) >> 23) & 0xFF).astype(np.int64)
    p2 = np.where(e == 0, 0x7F000000, np.where(e == 254, 0x00400000, ((254 - e) << 23) & 0x7FFFFFFF))
    nan, special = np.isnan(s), np.isnan(s) | (e == 255) | (s == 0)
    unit = np.where(nan, F32(1), np.copysign(F32(1), s)).astype(F32)  # sp and r of the special values
    with np.errstate(all="ignore"):
        p2 = np.select([nan, e == 255, s == 0], [s, F32(0), F32(np.inf)], p2.astype(np.uint32).view(F32))
        sp = np.where(special, unit, s * p2.astype(F32)).astype(F32)
        return p2.astype(F32), sp, np.where(special, unit, F32(1) / sp).astype(F32)


def scalar_params(scheme: Scheme, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per-range constants of the ``scalar`` family, from the reference's own functions.

    Returns a ``SCALAR_PARAMS_DTYPE`` array (one entry per range) holding, by rounding:
    half_away ``scale = L / (f64(hi) - f64(lo))`` (1 where hi <= lo), ``offset = -H - f64(lo) * scale``,
    ``f0 = lo``, ``f1 = hi``; floor the divisor of ``step = f32(hi - lo) / L`` (1 where 0), ``f0 = lo``,
    ``f1 = step``; trunc the divisor of ``vdiff = f32(hi - lo)`` (of +inf where 0: the level is 0),
    ``f0 = lo``, ``f1 = vdiff``; half_even the divisor of ``scale = step``, ``f0 = scale``,
    ``f1 = zp = f32(0 - lo / scale)``.

    half_even's kernel rounds ``rint(q + zp)`` with ``gq::quotient_for_rounding``, which needs
    ``|zp| <= 2**50`` or ``scale == 1`` (then the quotient is ``x`` itself). Both finite, ``hi > lo``
    gives ``|lo| / (hi - lo) <= 2**24`` (two distinct floats differ by at least the ulp of the smaller
    magnitude; equality for ``lo = -2**k`` and its neighbour), so ``|zp| <= 2**24 * L`` up to the
    rounding of ``step`` (a subnormal ``step`` needs a tiny ``lo``: ``|zp| < 2**33``); ``hi == lo``
    gives ``scale == 1``; an infinite ``step`` gives ``zp = ±0``.
    """
    p = scheme.config
    L, H = scheme.levels, scheme.half
    lo = np.asarray(lo, F32).reshape(-1)
    hi = np.asarray(hi, F32).reshape(-1)
    out = np.zeros(lo.size, SCALAR_PARAMS_DTYPE)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rounding = p.rounding
        if rounding == "half_away":
            out["scale"], out["offset"] = cuvs_scale_offset(lo, hi, L, H)
            out["f0"], out["f1"] = lo, hi
            return out
        if rounding == "floor":
            out["f0"], out["f1"] = lo, floor_step(lo, hi, L)
            divisor = out["f1"]
        elif rounding == "trunc":
            out["f0"], out["f1"] = lo, trunc_vdiff(lo, hi)
            divisor = np.where(out["f1"] == 0, F32(np.inf), out["f1"])
        else:
            out["f0"], out["f1"] = affine_scale_zp(lo, hi, L)
            divisor = out["f0"]
    out["p2"], out["sp"], out["r"] = divisors(divisor)
    return out


def _scalar_args(constant: Any, scheme: Scheme, state: dict[str, Any], n: int, d: int) -> tuple[Any, ...]:
    """Arguments of ``scalar_encode`` / ``scalar_decode`` after their input and output arrays."""
    p = scheme.config
    params = constant("scalar_params", lambda: scalar_params(scheme, state["lo"], state["hi"]).view(np.uint8), np.uint8)
    return (i64(n), i64(d), params, i32(np.size(state["lo"]) > 1), i32(ROUNDINGS[p.rounding]), i32(p.bits),
            i32(p.signed), i32(p.nibble_order == "high_first"))


@launcher("scalar", "encode")
def scalar_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    quantize_kernel(f"scalar_encode<{INPUT_TYPES[x.dtype]}>")(
        (row_blocks(n, int(codes.shape[1])),), (THREADS,), (x, codes, *_scalar_args(constant, scheme, state, n, d)),
    )


@launcher("scalar", "decode")
def scalar_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    quantize_kernel("scalar_decode")(
        (row_blocks(n, int(c.shape[1])),), (THREADS,), (c, y, *_scalar_args(constant, scheme, state, n, d)),
    )
