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
#: One ``gq::ScalarParams`` (kernels/quant_math.cuh) per range.
SCALAR_PARAMS_DTYPE = np.dtype([("d0", "<f8"), ("d1", "<f8"), ("f0", "<f4"), ("f1", "<f4")])


def scalar_params(scheme: Scheme, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per-range constants of the ``scalar`` family, from the reference's own functions.

    Returns a ``SCALAR_PARAMS_DTYPE`` array (one entry per range) holding, by rounding:
    half_away ``scale = L / (f64(hi) - f64(lo))`` (1 where hi <= lo), ``offset = -H - f64(lo) * scale``,
    ``lo``, ``hi``; floor ``lo``, ``step = f32(hi - lo) / L`` (1 where 0); trunc ``lo``,
    ``vdiff = f32(hi - lo)``; half_even ``scale = step``, ``zp = f32(0 - lo / scale)``.
    """
    p = scheme.config
    L, H = scheme.levels, scheme.half
    lo = np.asarray(lo, np.float32).reshape(-1)
    hi = np.asarray(hi, np.float32).reshape(-1)
    out = np.zeros(lo.size, SCALAR_PARAMS_DTYPE)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rounding = p.rounding
        if rounding == "half_away":
            out["d0"], out["d1"] = cuvs_scale_offset(lo, hi, L, H)
            out["f0"], out["f1"] = lo, hi
        elif rounding == "floor":
            out["f0"], out["f1"] = lo, floor_step(lo, hi, L)
        elif rounding == "trunc":
            out["f0"], out["f1"] = lo, trunc_vdiff(lo, hi)
        else:
            out["f0"], out["f1"] = affine_scale_zp(lo, hi, L)
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
