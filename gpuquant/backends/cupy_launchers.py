"""The cupy backend's kernel launchers (``kernels/quantize.cu``), one per (family, mode).

Each launcher is registered next to its code with :func:`launcher`; the backend looks up
``LAUNCHERS[(scheme.family, mode)]`` (mode ``"encode"`` or ``"decode"``) and knows nothing of the
families. A family's launchers read its parameters, pick the kernel instance for the input dtype,
and pass the constants the per-element math in ``kernels/quant_math.cuh`` takes; they are given the
backend's constant cache (``constant(kind, value, dtype)``: device copies of ranges, thresholds and
scales, uploaded once per stream).

Encode launchers: ``(constant, scheme, state, x, codes, side)``; decode launchers:
``(constant, scheme, state, codes, side, y)``. ``x`` and ``codes`` are C-contiguous CuPy arrays on
the current device; ``state`` is the fitted state (``{}`` when none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gpuquant.backends import cuda_loader
from gpuquant.backends.cupy_device import (
    INPUT_TYPES,
    THREADS,
    cupy_module,
    grid_for,
    i32,
    i64,
)
from gpuquant.errors import InputError
from gpuquant.schemes import Scheme
from gpuquant.schemes.floatcast import refuse_nonfinite_codes
from gpuquant.schemes.granularity import PerBlock, PerTensor
from gpuquant.schemes.scalar import (
    affine_scale_zp,
    cuvs_scale_offset,
    floor_step,
    trunc_vdiff,
)

QUANTIZE_FILE = "quantize.cu"
ROUNDINGS = {"half_away": 0, "floor": 1, "trunc": 2, "half_even": 3}
FORMATS = {"e4m3": 0, "e5m2": 1, "fp16": 2, "bf16": 3}

#: One ``gq::ScalarParams`` (kernels/quant_math.cuh) per range.
SCALAR_PARAMS_DTYPE = np.dtype([("d0", "<f8"), ("d1", "<f8"), ("f0", "<f4"), ("f1", "<f4")])

Launcher = Callable[..., None]
#: (family, "encode" | "decode") -> launcher.
LAUNCHERS: dict[tuple[str, str], Launcher] = {}


def launcher(family: str, mode: str) -> Callable[[Launcher], Launcher]:
    """Register the decorated function as the ``mode`` launcher of ``family``."""
    def register(fn: Launcher) -> Launcher:
        LAUNCHERS[(family, mode)] = fn
        return fn
    return register


def _instances() -> list[str]:
    names = []
    for t in INPUT_TYPES.values():
        names += [f"scalar_encode<{t}>", f"binary_encode<{t}>", f"absmax_encode<{t}>"]
        names += [f"float_encode<{t}, unsigned char>", f"float_encode<{t}, unsigned short>"]
    names += ["scalar_decode", "binary_decode", "absmax_decode"]
    names += ["float_decode<unsigned char>", "float_decode<unsigned short>"]
    return names


#: Every kernel instance (``name_expressions``) of ``kernels/quantize.cu``.
NAME_EXPRESSIONS: tuple[str, ...] = tuple(_instances())


def _kernel(name: str) -> Any:
    return cuda_loader.get_kernel(QUANTIZE_FILE, name, NAME_EXPRESSIONS)


def _row_blocks(n: int, row_bytes: int) -> int:
    """Blocks for ``n`` rows of ``row_bytes`` output units, eight units per thread."""
    return grid_for(n * -(-row_bytes // 8))


# -- scalar -----------------------------------------------------------------------------------


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
    params = scalar_params(scheme, state["lo"], state["hi"])
    return (i64(n), i64(d), constant("scalar_params", params.view(np.uint8), np.uint8),
            i32(params.size > 1), i32(ROUNDINGS[p.rounding]), i32(p.bits), i32(p.signed),
            i32(p.nibble_order == "high_first"))


@launcher("scalar", "encode")
def scalar_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    _kernel(f"scalar_encode<{INPUT_TYPES[x.dtype]}>")(
        (_row_blocks(n, int(codes.shape[1])),), (THREADS,), (x, codes, *_scalar_args(constant, scheme, state, n, d)),
    )


@launcher("scalar", "decode")
def scalar_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    _kernel("scalar_decode")(
        (_row_blocks(n, int(c.shape[1])),), (THREADS,), (c, y, *_scalar_args(constant, scheme, state, n, d)),
    )


# -- binary -----------------------------------------------------------------------------------


def binary_flip(scheme: Scheme) -> bool:
    """Whether binary codes store the packed byte with its top bit flipped (signed, offset encoding)."""
    return scheme.flip


@launcher("binary", "encode")
def binary_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    thr = state.get("thresholds")
    # No thresholds: a null pointer, which the kernel reads as zero thresholds.
    thr = None if thr is None else constant("thresholds", thr, np.float32)
    _kernel(f"binary_encode<{INPUT_TYPES[x.dtype]}>")(
        (_row_blocks(n, (d + 7) // 8),), (THREADS,),
        (x, codes, i64(n), i64(d), thr, i32(scheme.config.bitorder == "big"), i32(binary_flip(scheme))),
    )


@launcher("binary", "decode")
def binary_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    _kernel("binary_decode")(
        (_row_blocks(n, int(c.shape[1])),), (THREADS,),
        (c, y, i64(n), i64(d), i32(scheme.config.bitorder == "big"), i32(binary_flip(scheme))),
    )


# -- float ------------------------------------------------------------------------------------


def _word(a: Any) -> str:
    return "unsigned char" if a.dtype.itemsize == 1 else "unsigned short"


@launcher("float", "encode")
def float_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    p = scheme.config
    _kernel(f"float_encode<{INPUT_TYPES[x.dtype]}, {_word(codes)}>")(
        (_row_blocks(n, d),), (THREADS,),
        (x, codes, i64(n), i64(d), i32(FORMATS[p.format]), i32(p.saturate)),
    )
    if p.nonfinite == "raise":
        refuse_nonfinite_codes(codes, p.format)


@launcher("float", "decode")
def float_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    _kernel(f"float_decode<{_word(c)}>")(
        (_row_blocks(n, int(c.shape[1])),), (THREADS,), (c, y, i64(n), i64(d), i32(FORMATS[scheme.config.format]))
    )


# -- absmax -----------------------------------------------------------------------------------


def _segments(scheme: Scheme, d: int) -> tuple[int, int]:
    """(values per scale, scales per row) of an absmax scheme (one segment per row for "tensor")."""
    g = scheme.granularity
    if isinstance(g, PerBlock):
        return g.size, d // g.size
    return d, 1


@launcher("absmax", "encode")
def absmax_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    cp = cupy_module()
    n, d = (int(s) for s in x.shape)
    p = scheme.config
    seg_len, groups = _segments(scheme, d)
    bad = cp.full(1, np.iinfo(np.uint64).max, dtype=cp.uint64)
    tensor = isinstance(scheme.granularity, PerTensor)
    scales = constant("tensor_scale", state["scales"], np.float32) if tensor else side["scales"]
    _kernel(f"absmax_encode<{INPUT_TYPES[x.dtype]}>")(
        (grid_for(n * groups * 32),), (THREADS,),
        (x, codes, scales, bad, i64(n), i64(d), i64(seg_len), i64(groups), i32(p.bits),
         i32(p.nibble_order == "high_first"), np.float32(p.eps), scales, i32(tensor)),
    )
    row = int(bad.get()[0])
    if row != np.iinfo(np.uint64).max:
        raise InputError(f"row {row} holds NaN or ±Inf; scheme 'absmax' needs finite values")


@launcher("absmax", "decode")
def absmax_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    cp = cupy_module()
    n, d = (int(s) for s in y.shape)
    p = scheme.config
    seg_len, groups = _segments(scheme, d)
    tensor = isinstance(scheme.granularity, PerTensor)
    # side["scales"] went through as_device: already C-contiguous (astype keeps that).
    scales = (constant("tensor_scale", state["scales"], np.float32) if tensor
              else cp.asarray(side["scales"], dtype=cp.float32))
    _kernel("absmax_decode")(
        (_row_blocks(n, int(c.shape[1])),), (THREADS,),
        (c, scales, y, i64(n), i64(d), i64(seg_len), i64(groups), i32(p.bits),
         i32(p.nibble_order == "high_first"), i32(tensor)),
    )
