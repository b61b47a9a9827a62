"""Family ``float``: casts to fp8 (e4m3fn, e5m2), fp16 and bf16.

Parameters
----------
format : ``"e4m3"`` (``ml_dtypes.float8_e4m3fn``, max 448), ``"e5m2"`` (``ml_dtypes.float8_e5m2``,
    max 57344), ``"fp16"`` (``numpy.float16``, max 65504) or ``"bf16"`` (``ml_dtypes.bfloat16``).
saturate : False (default): exactly the ml_dtypes / numpy cast, round to nearest even. Overflow
    after rounding gives NaN for e4m3fn (it has no Inf: |x| > 464 and ±Inf -> 0x7F|sign) and ±Inf
    for the others. True: every non-NaN value is clamped to ±max finite first (±Inf too), which is
    what storage usually wants and what CUDA's ``__NV_SATFINITE`` conversion does.
nonfinite : ``"keep"`` (default): NaN and ±Inf results are codes like any other (below).
    ``"raise"``: a row holding NaN or ±Inf, or a value that rounds past the format's largest finite
    value, is refused with ``InputError`` naming the row; this is pgvector's ``halfvec`` rule (it
    rejects NaN, infinities and overflow on input), so codes that load are the only codes made.

NaN becomes the format's canonical quiet NaN with its sign kept: e4m3 ``0x7F``, e5m2 ``0x7E``,
fp16 ``0x7E00``, bf16 ``0x7FC0`` (| sign bit). ml_dtypes already does this; numpy's float16 cast
keeps NaN payload bits, which we do not. Subnormal float32 inputs are never flushed (bf16 keeps
them exactly as ml_dtypes does). Codes have the ml_dtypes / numpy dtype, shape (n, d); the inverse
casts back to float32, which is exact. No fit.

Edge counts (the convert report): a code whose bits are NaN or ±Inf is a non-finite output (NaN
input, or overflow without ``saturate``); with ``saturate`` a value beyond ±max is a clipped input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from gpuquant.schemes.base import (
    F32,
    Params,
    Scheme,
    State,
    as_bool,
    choice,
    has_nan,
    scratch,
)
from gpuquant.schemes.edges import Counter, count
from gpuquant.schemes.statistics import RowError

FORMATS: dict[str, tuple[np.dtype, float, int]] = {
    # name: (dtype, max finite, canonical quiet NaN bits without sign)
    "e4m3": (np.dtype(ml_dtypes.float8_e4m3fn), 448.0, 0x7F),
    "e5m2": (np.dtype(ml_dtypes.float8_e5m2), 57344.0, 0x7E),
    "fp16": (np.dtype(np.float16), 65504.0, 0x7E00),
    "bf16": (np.dtype(ml_dtypes.bfloat16), float(ml_dtypes.finfo(ml_dtypes.bfloat16).max), 0x7FC0),
}
#: format -> mask ``m`` such that a code's bits ``b`` are NaN or ±Inf exactly when ``b & m == m``: the
#: exponent field for e5m2, fp16 and bf16; e4m3fn has no Inf and NaN is its only all-ones pattern.
NONFINITE_MASKS = {"e4m3": 0x7F, "e5m2": 0x7C, "fp16": 0x7C00, "bf16": 0x7F80}
_UINT = {1: np.uint8, 2: np.uint16}


def nonfinite_code_rows(codes: Any, fmt: str) -> Any:
    """Per row of ``fmt`` codes (a numpy or CuPy array of any dtype of the format's width): whether it
    holds NaN or ±Inf (from the input or from overflow); an array of the codes' kind."""
    bits = codes.view(_UINT[codes.dtype.itemsize])
    mask = NONFINITE_MASKS[fmt]
    return ((bits & mask) == mask).any(axis=1)


def nonfinite_codes_error(fmt: str) -> Callable[[int], RowError]:
    """The error refusing a row of ``fmt`` codes that holds NaN or ±Inf (``nonfinite="raise"``)."""
    template = (f"{{row}} holds NaN, ±Inf or a value beyond ±{FORMATS[fmt][1]:g}; "
                f"format {fmt!r} with nonfinite='raise' refuses them")
    return lambda row: RowError(row, template)


def refuse_nonfinite_codes(codes: Any, fmt: str) -> None:
    """Raise :func:`nonfinite_codes_error` naming the first row of numpy ``codes`` that
    :func:`nonfinite_code_rows` finds."""
    rows = nonfinite_code_rows(codes, fmt)
    if codes.shape[0] and bool(rows.any()):
        raise nonfinite_codes_error(fmt)(int(rows.argmax()))


@dataclass(frozen=True)
class FloatParams(Params):
    """Parameters of the ``float`` family (see the module docstring), checked once."""

    format: str = "e4m3"
    saturate: bool = False
    nonfinite: str = "keep"

    def __post_init__(self) -> None:
        choice("format", self.format, tuple(FORMATS))
        choice("nonfinite", self.nonfinite, ("keep", "raise"))
        as_bool("saturate", self.saturate)


class FloatScheme(Scheme):
    """Round-to-nearest-even casts to narrow float formats (see the module docstring)."""

    family = "float"
    params_type = FloatParams
    config: FloatParams

    def describe(self) -> dict[str, Any]:
        return {"scope": "none", "range_method": "none", "rounding": "half_even",
                "encoding": self.config.format + (" saturating" if self.config.saturate else "")}

    @property
    def code_dtype(self) -> np.dtype:
        return FORMATS[self.config.format][0]

    @property
    def max_finite(self) -> float:
        return FORMATS[self.config.format][1]

    @property
    def nan_bits(self) -> int:
        return FORMATS[self.config.format][2]

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, d)

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        x = X
        if self.config.saturate:
            x = np.clip(X, F32(-self.max_finite), F32(self.max_finite), out=scratch(tmp, X.shape))
        with np.errstate(invalid="ignore", over="ignore"):
            np.copyto(codes, x, casting="unsafe")
        if self.config.nonfinite == "raise":  # refuses every row holding NaN: none is left to rewrite
            refuse_nonfinite_codes(codes, self.config.format)
        elif has_nan(X):
            nan = np.isnan(X)
            bits = codes.view(_UINT[self.code_dtype.itemsize])
            sign = np.signbit(X[nan]).astype(bits.dtype) << (8 * self.code_dtype.itemsize - 1)
            bits[nan] = sign | self.nan_bits

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """Non-finite outputs: codes whose bits are NaN or ±Inf (:data:`NONFINITE_MASKS`; overflow
        without ``saturate`` lands here). Clipped inputs: with ``saturate``, values beyond ±max."""
        mask, word = NONFINITE_MASKS[self.config.format], _UINT[self.code_dtype.itemsize]
        limit, saturate = F32(self.max_finite), self.config.saturate

        def counts(X: Any, codes: Any, side: Mapping[str, Any]) -> tuple[Any, Any]:
            bits = codes.view(word)
            return count(xp, (bits & mask) == mask), count(xp, xp.abs(X) > limit) if saturate else 0

        return counts

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        return np.asarray(codes).astype(F32)
