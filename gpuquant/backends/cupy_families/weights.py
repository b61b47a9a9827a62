"""Launchers of the weight-checkpoint families ``gguf`` and ``scaled_fp8`` (``kernels/weights.cu``).

``gguf``: ``gguf_encode`` / ``gguf_decode``, one thread per block of 32 values. ``scaled_fp8``:
``scaled_fp8_scales`` (a warp per row: max |w|, the row's scale, the refusal of a non-finite row), then
``scaled_fp8_encode`` / ``scaled_fp8_decode``, float4 by float4. A row holding NaN or ±Inf is refused
with the reference's :class:`~gpuquant.schemes.statistics.RowError` (its first such row).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import INPUT_TYPES, THREADS, cupy_module, i32, i64, occupancy_grid
from gpuquant.backends.cupy_launch import kernel, launcher
from gpuquant.backends.cupy_refusals import refusal_flag, refuse_nonfinite_later
from gpuquant.schemes import Scheme
from gpuquant.schemes.gguf import QK
from gpuquant.schemes.granularity import PerRow

WEIGHTS_FILE = "weights.cu"
#: fp8 format -> gq::Format (kernels/quant_math.cuh).
FP8_FORMATS = {"e4m3": 0, "e5m2": 1}


def _instances() -> list[str]:
    names = []
    for t in INPUT_TYPES.values():
        names += [f"gguf_encode<{t}>", f"scaled_fp8_scales<{t}>", f"scaled_fp8_encode<{t}>"]
    return [*names, "gguf_decode", "scaled_fp8_decode"]


#: Every kernel instance (``name_expressions``) of ``kernels/weights.cu``.
NAME_EXPRESSIONS: tuple[str, ...] = tuple(_instances())


def _kernel(name: str) -> Any:
    return kernel(WEIGHTS_FILE, name, NAME_EXPRESSIONS)


@launcher("gguf", "encode")
def gguf_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    bad = refusal_flag()
    _kernel(f"gguf_encode<{INPUT_TYPES[x.dtype]}>")(
        (occupancy_grid(n * (d // QK)),), (THREADS,), (x, codes, i64(n), i64(d), i32(scheme.config.type == "q4_0"), bad)
    )
    refuse_nonfinite_later(bad, "GGUF blocks need finite values")


@launcher("gguf", "decode")
def gguf_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    _kernel("gguf_decode")((occupancy_grid(n * (d // QK)),), (THREADS,), (c, y, i64(n), i64(d), i32(scheme.config.type == "q4_0")))


def _scales(constant: Any, scheme: Scheme, state: dict[str, Any], side: dict[str, Any]) -> tuple[Any, bool]:
    """The scales array the scaled_fp8 kernels read and whether it holds one scale per row."""
    if isinstance(scheme.granularity, PerRow):
        return side["weight_scale"], True
    return constant("weight_scale", state["weight_scale"], np.float32), False


@launcher("scaled_fp8", "encode")
def scaled_fp8_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any,
                      side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    t = INPUT_TYPES[x.dtype]
    scales, per_row = _scales(constant, scheme, state, side)
    m = np.float32(scheme.max_finite)
    bad = refusal_flag()
    _kernel(f"scaled_fp8_scales<{t}>")(  # one warp a row
        (occupancy_grid(n * 32),), (THREADS,), (x, scales, i64(n), i64(d), m, i32(per_row), bad)
    )
    refuse_nonfinite_later(bad, "FP8 weights need finite values")
    _kernel(f"scaled_fp8_encode<{t}>")(
        (occupancy_grid(n * d),), (THREADS,),
        (x, codes, scales, i64(n), i64(d), i32(per_row), i32(FP8_FORMATS[scheme.config.format])),
    )


@launcher("scaled_fp8", "decode")
def scaled_fp8_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any],
                      y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    scales, per_row = _scales(constant, scheme, state, side)
    if per_row:  # side arrays went through as_device: already C-contiguous (astype keeps that)
        scales = cupy_module().asarray(scales, dtype=np.float32)
    _kernel("scaled_fp8_decode")(
        (occupancy_grid(n * d),), (THREADS,), (c, scales, y, i64(n), i64(d), i32(per_row), i32(FP8_FORMATS[scheme.config.format]))
    )
