"""Launchers of the ``absmax`` family (``absmax_encode``, ``absmax_encode_rows`` for segments of 513..4096
values, ``absmax_decode``: ``kernels/quantize.cu``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import (
    INPUT_TYPES,
    THREADS,
    cupy_module,
    i32,
    i64,
    occupancy_grid,
)
from gpuquant.backends.cupy_launch import launcher, quantize_kernel, row_blocks
from gpuquant.backends.cupy_refusals import refusal_flag, refuse_nonfinite_later
from gpuquant.schemes import Scheme
from gpuquant.schemes.granularity import PerBlock, PerTensor


def _segments(scheme: Scheme, d: int) -> tuple[int, int]:
    """(values per scale, scales per row) of an absmax scheme (one segment per row for "tensor")."""
    g = scheme.granularity
    if isinstance(g, PerBlock):
        return g.size, d // g.size
    return d, 1


#: Values one warp holds in registers in the absmax encode kernels (16 a lane).
WARP_VALUES = 512


def _rows_path(seg_len: int, d: int, bits: int, x: Any, codes: Any) -> bool:
    """Whether ``absmax_encode_rows`` takes the segments: 513..4096 values (held by 2, 4 or 8 warps of a
    block), d a multiple of 4, x aligned to a vector of 4 values and the codes to 4 of theirs."""
    code_align = 4 if bits == 8 else 2
    return (WARP_VALUES < seg_len <= THREADS // 32 * WARP_VALUES and seg_len % 4 == 0 and d % 4 == 0
            and _address(x) % (4 * x.dtype.itemsize) == 0 and _address(codes) % code_align == 0)


def _address(a: Any) -> int:
    """Device (CuPy) or host (numpy, when launches are planned) address of ``a``'s first element."""
    return int(a.data.ptr) if hasattr(a.data, "ptr") else int(a.ctypes.data)


@launcher("absmax", "encode")
def absmax_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    p = scheme.config
    seg_len, groups = _segments(scheme, d)
    bad = refusal_flag()
    tensor = isinstance(scheme.granularity, PerTensor)
    scales = constant("tensor_scale", state["scales"], np.float32) if tensor else side["scales"]
    rows = _rows_path(seg_len, d, p.bits, x, codes)
    warps = n * groups * (-(-seg_len // WARP_VALUES) if rows else 1)
    quantize_kernel(f"{'absmax_encode_rows' if rows else 'absmax_encode'}<{INPUT_TYPES[x.dtype]}>")(
        (occupancy_grid(warps * 32),), (THREADS,),
        (x, codes, scales, bad, i64(n), i64(d), i64(seg_len), i64(groups), i32(p.bits),
         i32(p.nibble_order == "high_first"), np.float32(p.eps), scales, i32(tensor)),
    )
    refuse_nonfinite_later(bad, f"scheme {scheme.family!r} needs finite values")


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
