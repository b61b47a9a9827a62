"""Launchers of the ``float`` family (``float_encode`` / ``float_decode`` in ``kernels/quantize.cu``)."""

from __future__ import annotations

from typing import Any

from gpuquant.backends.cupy_device import (
    INPUT_TYPES,
    THREADS,
    i32,
    i64,
)
from gpuquant.backends.cupy_launch import launcher, quantize_kernel, row_blocks
from gpuquant.backends.cupy_refusals import refuse_rows_later
from gpuquant.schemes import Scheme
from gpuquant.schemes.floatcast import nonfinite_code_rows, nonfinite_codes_error

FORMATS = {"e4m3": 0, "e5m2": 1, "fp16": 2, "bf16": 3}


def _word(a: Any) -> str:
    return "unsigned char" if a.dtype.itemsize == 1 else "unsigned short"


@launcher("float", "encode")
def float_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    p = scheme.config
    quantize_kernel(f"float_encode<{INPUT_TYPES[x.dtype]}, {_word(codes)}>")(
        (row_blocks(n, d),), (THREADS,),
        (x, codes, i64(n), i64(d), i32(FORMATS[p.format]), i32(p.saturate)),
    )
    if p.nonfinite == "raise":  # the reference's refusal, reduced on the device and filed for the next check
        refuse_rows_later(nonfinite_code_rows(codes, p.format), nonfinite_codes_error(p.format))


@launcher("float", "decode")
def float_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    quantize_kernel(f"float_decode<{_word(c)}>")(
        (row_blocks(n, int(c.shape[1])),), (THREADS,), (c, y, i64(n), i64(d), i32(FORMATS[scheme.config.format]))
    )
