"""Launchers of the ``binary`` family (``binary_encode`` / ``binary_decode`` in ``kernels/quantize.cu``)."""

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


def binary_flip(scheme: Scheme) -> bool:
    """Whether binary codes store the packed byte with its top bit flipped (signed, offset encoding)."""
    return scheme.flip


@launcher("binary", "encode")
def binary_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    thr = state.get("thresholds")
    # No thresholds: a null pointer, which the kernel reads as zero thresholds.
    thr = None if thr is None else constant("thresholds", thr, np.float32)
    quantize_kernel(f"binary_encode<{INPUT_TYPES[x.dtype]}>")(
        (row_blocks(n, (d + 7) // 8),), (THREADS,),
        (x, codes, i64(n), i64(d), thr, i32(scheme.config.bitorder == "big"), i32(binary_flip(scheme))),
    )


@launcher("binary", "decode")
def binary_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    quantize_kernel("binary_decode")(
        (row_blocks(n, int(c.shape[1])),), (THREADS,),
        (c, y, i64(n), i64(d), i32(scheme.config.bitorder == "big"), i32(binary_flip(scheme))),
    )
