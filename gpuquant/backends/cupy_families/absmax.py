"""Launchers of the ``absmax`` family (``absmax_encode`` / ``absmax_decode`` in ``kernels/quantize.cu``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import (
    INPUT_TYPES,
    THREADS,
    cupy_module,
    grid_for,
    i32,
    i64,
)
from gpuquant.backends.cupy_launch import launcher, quantize_kernel, row_blocks
from gpuquant.errors import InputError
from gpuquant.schemes import Scheme
from gpuquant.schemes.granularity import PerBlock, PerTensor


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
    quantize_kernel(f"absmax_encode<{INPUT_TYPES[x.dtype]}>")(
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
    quantize_kernel("absmax_decode")(
        (row_blocks(n, int(c.shape[1])),), (THREADS,),
        (c, scales, y, i64(n), i64(d), i64(seg_len), i64(groups), i32(p.bits),
         i32(p.nibble_order == "high_first"), i32(tensor)),
    )
