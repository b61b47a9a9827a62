"""Family ``scaled_fp8``: FP8 weights with a float32 ``weight_scale`` per output channel or per tensor.

This is the checkpoint layout of compressed-tensors' ``float-quantized`` FP8 weights (what vLLM
loads from a ``.safetensors`` file: ``weight`` as ``F8_E4M3`` and ``weight_scale`` as ``F32``);
:mod:`gpuquant.weights` writes and reads such files.

Parameters
----------
granularity : ``"channel"`` (default: one scale per row, i.e. per output channel of an
    ``(out_features, in_features)`` weight; no fit) or ``"tensor"`` (one scale for the whole
    tensor, fitted on it and kept in the state).
format : ``"e4m3"`` (``float8_e4m3fn``, max ``M = 448``, the default) or ``"e5m2"`` (max 57344).

Math, float32 throughout, never fused: the bytes compressed-tensors writes (``calculate_qparams``
with ``symmetric=True``, then its compressor's ``quantize`` with the zero point it registers)::

    amax = max |w| over the row (channel) or over every fitted value (tensor)     (exact)
    s    = f32(amax / M), and FLT_EPSILON = 2**-23 where that is 0    (only a zero scale is replaced)
    q    = fp8(clip(f32(w / s) + 0, -M, M))       round to nearest even (ml_dtypes cast); the + 0
                                                  (the zero point) turns a -0 weight into +0 (0x00)
    w'   = f32(f32(q) * s)                        (inverse)

:func:`symmetric_scale` and :func:`scaled_values` are these two steps; ``gpuquant convert-model``
(:mod:`gpuquant.checkpoint.quant`) uses them too, with the half range of its integer formats.

Codes: the fp8 values (``ml_dtypes`` dtype), shape ``(n, d)``. ``granularity="channel"`` has the
side array ``weight_scale`` float32 of shape ``(n, 1)`` (the shape compressed-tensors writes);
``"tensor"`` keeps ``weight_scale`` of shape ``(1,)`` in its state. NaN or ±Inf anywhere in a row is
refused (``InputError`` naming the row), and fitting "tensor" refuses them too: a non-finite scale
would poison every value. With a "tensor" scale fitted elsewhere, values beyond ``M * s`` clip.

Edge counts (the convert report): a value with ``|f32(w / s)| > M`` is a clipped input; a code
whose ``f32(f32(q) * s)`` overflows float32 is a non-finite output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes import floatcast
from gpuquant.schemes.base import (
    F32,
    Params,
    Scheme,
    State,
    StateSpec,
    abs_max,
    choice,
    refuse_nonfinite_rows,
)
from gpuquant.schemes.edges import Counter, byte_values, count
from gpuquant.schemes.granularity import Granularity, PerRow, PerTensor, spelling
from gpuquant.schemes.statistics import AbsMax, FitSpec

#: format -> (fp8 dtype, max finite value M), as the ``float`` family casts them.
FORMATS: dict[str, tuple[np.dtype, float]] = {f: floatcast.FORMATS[f][:2] for f in ("e4m3", "e5m2")}
FLT_EPSILON = F32(np.finfo(np.float32).eps)


def symmetric_scale(amax: np.ndarray, half: float) -> np.ndarray:
    """``f32(amax / half)`` with each zero replaced by ``FLT_EPSILON`` (a positive scale stays, however
    small), as float32 of ``amax``'s shape."""
    s = np.asarray(np.asarray(amax, F32) / F32(half), F32)
    return np.where(s == 0, FLT_EPSILON, s).astype(F32)


def scaled_values(x: np.ndarray, s: np.ndarray, lo: float, hi: float, out: np.ndarray) -> np.ndarray:
    """``clip(f32(x / s) + 0, lo, hi)`` into ``out`` (float32; ``s`` broadcasts against ``x``): the value
    that is rounded or cast to a code. ``+ 0`` is the symmetric zero point: ``-0`` becomes ``+0``."""
    np.divide(x, s, out=out)
    out += F32(0)
    return np.clip(out, F32(lo), F32(hi), out=out)


#: The family's spellings of its granularities (an output channel is a row of the weight).
GRANULARITIES: dict[str, type[Granularity]] = {"channel": PerRow, "tensor": PerTensor}


@dataclass(frozen=True)
class ScaledFp8Params(Params):
    """Parameters of the ``scaled_fp8`` family (see the module docstring), checked once."""

    granularity: str = "channel"
    format: str = "e4m3"

    def __post_init__(self) -> None:
        self._set("granularity", spelling(self.granularity, GRANULARITIES))
        choice("format", self.format, tuple(FORMATS))


class ScaledFp8Scheme(Scheme):
    """FP8 cast after dividing by a per-channel or per-tensor float32 scale (see the module docstring)."""

    family = "scaled_fp8"
    params_type = ScaledFp8Params
    config: ScaledFp8Params

    @property
    def granularity(self) -> Granularity:
        return GRANULARITIES[self.config.granularity]()

    @property
    def code_dtype(self) -> np.dtype:
        return FORMATS[self.config.format][0]

    @property
    def max_finite(self) -> float:
        return FORMATS[self.config.format][1]

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, d)

    def side_shapes(self, n: int, d: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        if isinstance(self.granularity, PerRow):
            return {"weight_scale": ((n, 1), np.dtype(F32))}
        return {}

    def describe(self) -> dict[str, Any]:
        return {"scope": self.config.granularity, "range_method": f"absmax / {self.max_finite:g}",
                "rounding": "half_even (fp8 cast after clipping)", "encoding": f"fp8 {self.config.format}"}

    def scale_of(self, amax: np.ndarray) -> np.ndarray:
        """``f32(amax / M)``, a zero replaced by ``FLT_EPSILON`` (:func:`symmetric_scale`)."""
        return symmetric_scale(amax, self.max_finite)

    def fit_spec(self) -> FitSpec | None:
        if not isinstance(self.granularity, PerTensor):
            return None
        return FitSpec({"absmax": AbsMax()}, 1, "a tensor scale")

    def from_statistics(self, stats: dict[str, Any]) -> State:
        return {"weight_scale": self.scale_of(stats["absmax"]).reshape(1)}

    def state_spec(self, d: int) -> StateSpec:
        return {"weight_scale": ((1,), np.dtype(F32))} if isinstance(self.granularity, PerTensor) else {}

    def check_state(self, state: State) -> None:
        if (state["weight_scale"] <= 0).any():
            raise InputError("state array 'weight_scale' must be > 0")

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        n = X.shape[0]
        t, amax = abs_max(X, tmp)
        refuse_nonfinite_rows(amax, "FP8 weights need finite values")
        if isinstance(self.granularity, PerRow):
            s = self.scale_of(amax).reshape(n, 1)
            side["weight_scale"][...] = s
        else:
            assert state is not None
            s = np.asarray(state["weight_scale"], F32).reshape(1, 1)
        scaled_values(X, s, -self.max_finite, self.max_finite, out=t)
        np.copyto(codes, t, casting="unsafe")

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        if isinstance(self.granularity, PerRow):
            s = np.asarray(side["weight_scale"], F32).reshape(-1, 1)
        else:
            assert state is not None
            s = np.asarray(state["weight_scale"], F32).reshape(1, 1)
        return self.dequantize(codes, s)

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """Clipped: ``|f32(w / s)| > M``; non-finite: ``f32(f32(q) * s)`` not finite (q decoded
        through a table of the 256 fp8 values, so the device needs no fp8 type)."""
        table = xp.asarray(byte_values(self.code_dtype))
        fixed = None
        if isinstance(self.granularity, PerTensor):
            assert state is not None
            fixed = xp.asarray(state["weight_scale"]).reshape(1, 1)
        limit = F32(self.max_finite)

        def counts(X: Any, codes: Any, side: Mapping[str, Any]) -> tuple[Any, Any]:
            s = fixed if fixed is not None else side["weight_scale"].reshape(-1, 1)
            y = table[codes.view(xp.uint8)] * s
            return count(xp, ~xp.isfinite(y)), count(xp, xp.abs(X / s) > limit)

        return counts

    @staticmethod
    def dequantize(codes: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``f32(f32(q) * s)`` for fp8 codes ``q`` and float32 scales ``s`` broadcast against them."""
        return np.asarray(codes).astype(F32) * s
