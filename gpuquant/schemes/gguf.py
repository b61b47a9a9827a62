"""Family ``gguf``: llama.cpp's Q8_0 and Q4_0 weight blocks, bit for bit with its reference quantizer.

Parameters
----------
type : ``"q8_0"`` or ``"q4_0"``.

Layout (``ggml-common.h``): each row of ``d`` values (``d % 32 == 0``, else ``InputError``) is cut
into ``d / 32`` blocks of 32 consecutive values; each block is stored as its fp16 scale ``d_b``
(2 bytes, little-endian) followed by its codes. Codes are the raw block bytes as llama.cpp lays
them out, uint8 of shape ``(n, d / 32 * B)``, ``B = 34`` (Q8_0) or ``18`` (Q4_0), so
``np.asarray(codes).tobytes()`` is the tensor's data in a GGUF file. No side arrays, no fit.

Math (``quantize_row_q8_0_ref`` / ``quantize_row_q4_0_ref`` in ``ggml-quants.c``; the ``gguf``
Python package's numpy quantizer is the same arithmetic), float32 throughout, never fused:

* Q8_0: ``amax = max |x|`` over the block; ``d = f32(amax / 127)``; ``id = d ? f32(1 / d) : 0``;
  ``q = roundf(f32(x * id))`` (half away from zero) as int8. The scale is stored as
  ``fp16(d)`` (round to nearest even) but the codes use the float32 ``id``: it is ``x * (1/d)``,
  not ``x / d`` (the two differ in the last bit for some x). Decode: ``f32(fp16(d)) * q``.
* Q4_0: ``max`` = the block's value of largest magnitude, signed (the first one on ties, as C's
  strict ``amax < |v|`` scan keeps); ``d = f32(max / -8)``; ``id = d ? f32(1 / d) : 0``;
  ``q = min(15, (int8)(f32(x * id) + 8.5f))`` (truncation toward zero). Byte ``j`` (0..15) of the
  block's 16 code bytes holds element ``j`` in its low nibble and element ``j + 16`` in its high
  nibble. Decode: ``f32(fp16(d)) * (q - 8)``.

A block whose largest magnitude is below about 3.7e-37 (Q8_0) or 2.35e-38 (Q4_0) has ``1 / d``
overflow to ±inf, so every ``x * id`` is ±inf or NaN and C's cast of it to an integer is undefined:
such a block gets the codes x86 gives and the ``gguf`` package writes, q = 0 (Q8_0) and nibble 0
(Q4_0), with its scale ``fp16(d) = ±0``.

NaN or ±Inf anywhere in a row is refused (``InputError`` naming the row): llama.cpp's result for
them is an undefined C cast. A block whose scale overflows fp16 (``|d| > 65504``, i.e. values
beyond about 8.3e6 for Q8_0 and 5.2e5 for Q4_0) stores ``d = ±inf`` exactly as llama.cpp does;
such weights are outside what these formats are for. Subnormal inputs are not flushed.

Edge counts (the convert report): the 32 values of a block whose fp16 scale is ±inf are
non-finite outputs; a Q4_0 value whose ``trunc(f32(x * id) + 8.5f)`` exceeds 15 (the block's
extreme of the sign opposite to ``max``) is a clipped input. Q8_0 never clips.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.base import (
    F32,
    Params,
    Scheme,
    State,
    abs_max,
    choice,
    refuse_nonfinite_rows,
)
from gpuquant.schemes.edges import Counter, count
from gpuquant.schemes.granularity import Granularity, PerBlock

QK = 32
#: Bytes per block: fp16 scale + codes.
BLOCK_BYTES = {"q8_0": 2 + QK, "q4_0": 2 + QK // 2}


def roundf(v: np.ndarray) -> np.ndarray:
    """C ``roundf`` on float32: round half away from zero, exactly.

    ``floor(|v| + 0.5)`` would be wrong for 0.49999997 (the float32 sum rounds up to 1).
    """
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + (a - f >= F32(0.5)), v)


@dataclass(frozen=True)
class GgufParams(Params):
    """Parameters of the ``gguf`` family (see the module docstring), checked once."""

    type: str = "q8_0"

    def __post_init__(self) -> None:
        choice("type", self.type, tuple(BLOCK_BYTES))


class GgufScheme(Scheme):
    """llama.cpp Q8_0 / Q4_0 blocks (see the module docstring)."""

    family = "gguf"
    params_type = GgufParams
    config: GgufParams

    @property
    def granularity(self) -> Granularity:
        return PerBlock(QK)

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def block_bytes(self) -> int:
        return BLOCK_BYTES[self.config.type]

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, -(-d // QK) * self.block_bytes)

    def check_dim(self, d: int) -> None:
        if d % QK:
            raise InputError(
                f"GGUF {self.config.type.upper()} needs rows whose length is a multiple of {QK}; "
                f"got d={d} (pad the rows or choose another scheme)"
            )

    def describe(self) -> dict[str, Any]:
        kind = self.config.type
        return {"scope": f"block of {QK}", "range_method": "absmax" if kind == "q8_0" else "signed max / -8",
                "rounding": "half_away (roundf)" if kind == "q8_0" else "trunc(x/d + 8.5)",
                "encoding": "int8 codes" if kind == "q8_0" else "4-bit q + 8, element j low / j+16 high nibble",
                "scale": "fp16, little-endian, first 2 bytes of each block"}

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        n, d = X.shape
        nb = d // QK
        blocks = X.reshape(n, nb, QK)
        t, amax = abs_max(blocks, tmp)  # t: |x|, then f32(x * id)
        refuse_nonfinite_rows(amax, "GGUF blocks need finite values")
        out = codes.reshape(n, nb, self.block_bytes)
        if self.config.type == "q8_0":
            dscale = amax / F32(127)
            q, tiny = self._scaled(blocks, dscale, t)
            q[tiny] = 0
            out[:, :, 2:] = roundf(q).astype(np.int8).view(np.uint8)
        else:
            idx = t.argmax(axis=2)[:, :, None]  # first index of the largest |x|
            mx = np.take_along_axis(blocks, idx, axis=2)[:, :, 0]
            dscale = mx / F32(-8)
            q, tiny = self._scaled(blocks, dscale, t)
            q[tiny] = -8
            q = np.add(q, F32(8.5), out=t)
            level = np.minimum(np.trunc(q), 15).astype(np.uint8)  # values are in [0, 16.5): no wrap
            out[:, :, 2:] = level[:, :, : QK // 2] | (level[:, :, QK // 2 :] << 4)
        out[:, :, :2] = dscale.astype("<f2").view(np.uint8).reshape(n, nb, 2)

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """Non-finite: 32 per block whose stored fp16 scale is ±inf; clipped (Q4_0): level above 15
        (none in a block whose ``id`` overflows: its nibbles are 0)."""
        q4 = self.config.type == "q4_0"

        def counts(X: Any, codes: Any, side: Mapping[str, Any]) -> tuple[Any, Any]:
            n, d = X.shape
            raw = codes.view(xp.uint8).reshape(n, d // QK, self.block_bytes)
            half = raw[:, :, 0].astype(xp.uint16) | (raw[:, :, 1].astype(xp.uint16) << 8)
            nonfinite = count(xp, (half & 0x7C00) == 0x7C00) * QK
            if not q4:
                return nonfinite, 0
            blocks = X.reshape(n, d // QK, QK)
            mx = xp.take_along_axis(blocks, xp.abs(blocks).argmax(axis=2)[:, :, None], axis=2)
            dscale = mx / F32(-8)
            inv = xp.where(dscale == 0, F32(0), F32(1) / xp.where(dscale == 0, F32(1), dscale))
            beyond = xp.trunc(blocks * inv + F32(8.5)) > 15
            return nonfinite, count(xp, beyond & ~xp.isinf(inv))  # a block whose id overflows stores 0s

        return counts

    @staticmethod
    def _scaled(blocks: np.ndarray, dscale: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``f32(x * id)`` with ``id = d ? f32(1/d) : 0`` per block, written into ``out``, and the
        (n, blocks) mask of the blocks whose ``id`` overflows to ±inf (their products are not finite)."""
        with np.errstate(divide="ignore", over="ignore"):
            inv = np.where(dscale == 0, F32(0), F32(1) / np.where(dscale == 0, F32(1), dscale))
        return np.multiply(blocks, inv[:, :, None], out=out), np.isinf(inv)

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        n = codes.shape[0]
        nb = dim // QK
        raw = np.ascontiguousarray(codes).reshape(n, nb, self.block_bytes)
        dscale = raw[:, :, :2].copy().view("<f2").astype(F32)  # (n, nb, 1)
        if self.config.type == "q8_0":
            q = raw[:, :, 2:].view(np.int8).astype(F32)
        else:
            qs = raw[:, :, 2:]
            q = np.concatenate([qs & 0x0F, qs >> 4], axis=2).astype(np.int8).astype(F32) - F32(8)
        with np.errstate(over="ignore", invalid="ignore"):
            return (dscale * q).reshape(n, dim)
