"""Family ``scalar``: one affine range per tensor or per dimension, 8 or 4 bits.

Parameters
----------
granularity : ``"tensor"`` (one range) or ``"dimension"`` (one range per column; ``"column"`` is accepted
    and saved as ``"dimension"``, see :mod:`gpuquant.schemes.granularity`).
range : ``"minmax"``, ``"quantile"``, ``"absmax"`` (``[-max|x|, max|x|]``) or ``"given"``
    (``ranges=[lo, hi]``, each a scalar or a length-d list: calibration ranges from elsewhere;
    ``lo > hi`` is refused, where sentence-transformers would quantize with a negative step).
quantile : in (0, 1] (range="quantile"), default 0.99.
quantile_method : ``"cuvs"`` (cuVS: sort the values of at most ``1_000_000 // d`` rows) or
    ``"exact"`` (all rows).
rounding : ``"half_away"`` (cuVS), ``"floor"`` (sentence-transformers), ``"trunc"`` (FAISS),
    ``"half_even"`` (affine with a zero point). Each comes with its peer's exact arithmetic, below.
bits : 8 or 4.  signed : store ``u - H`` as int8 instead of ``u`` as uint8.
nibble_order : ``"low_first"`` or ``"high_first"`` (bits=4): which nibble holds the even element.

Fitted state: ``lo`` and ``hi``, float32, shape (1,) or (d,).

Edge counts (the convert report): a value outside ``[lo, hi]`` or NaN is a clipped input (it is
stored as level 0 or L); a code whose level decodes to NaN or ±Inf (a range so wide that its step
overflows float32) is a non-finite output.

Math. ``L = 2**bits - 1``, ``H = 2**(bits-1)``. Every value gets a level ``u`` in ``[0, L]``; the code is
``u`` (uint8) or ``u - H`` (int8, signed). With bits=4 two levels share a byte (nibble = the 4-bit
two's complement of the code when signed). ``f32``/``f64`` mark IEEE operations, round to nearest
even, never fused:

* half_away (cuVS ``quantize_op``, double arithmetic):
  ``scale = hi > lo ? L / (f64(hi) - f64(lo)) : 1``, ``offset = -H - f64(lo) * scale``;
  ``x <= lo`` or NaN → 0; ``x >= hi`` → L; else ``u = lroundf((float)(scale * f64(x) + offset)) + H``
  (the double result rounded to float32, then half away from zero).
  Inverse: ``(float)((f64(u - H) - offset) / scale)``.
* floor (sentence-transformers ``quantize_embeddings``): ``step = f32((hi - lo) / L)``, 1 where 0;
  ``u = clip(floor(f32((x - lo) / step)), 0, L)``. Inverse: ``(float)(f64(u) * f64(step) + f64(lo))``.
* trunc (FAISS ScalarQuantizer, RS_minmax): ``vdiff = f32(hi - lo)``; ``t = f32((x - lo) / vdiff)``
  (0 where vdiff == 0), clamped to [0, 1]; bits=8: ``u = (int) f32(255 * t)``; bits=4:
  ``u = (int) f64(f64(t) * 15.0)``. Inverse: ``lo + f32((u + 0.5f) / L) * vdiff`` in float32.
* half_even (the affine uint8 recipe ``round(x/scale + zero_point)``): ``scale = f32((hi - lo) / L)``, 1
  where 0; ``zp = f32(0 - lo / scale)``; ``u = clip(rint(f32(x / scale) + zp), 0, L)``.
  Inverse: ``f32((u - zp) * scale)``.

NaN maps to level 0 under every rounding (the peers' own NaN results are undefined C casts), +Inf to
L and -Inf to 0. Fitting refuses NaN and refuses ranges that come out non-finite. One row is enough
to fit, per tensor or per dimension (``lo == hi``: every code is level 0, every value decodes to
``lo``, as FAISS and sentence-transformers do); no row is not. Quantile positions
follow cuVS: ``S`` sorted values, ``q32 = float32(quantile)``,
``pos_max = ceil((0.5 + 0.5 * q32) * S) - 1``, ``pos_min = S - pos_max - 1``. With
``quantile_method="cuvs"`` and more than ``1_000_000 // d`` rows, the rows are a sample drawn by
:func:`sample_rows` (numpy's PCG64 seeded with 137; cuVS draws its own sample with RAFT's
generator, so above that size the fitted range is close to cuVS's but not equal); at or below that
size every row is used and the range equals cuVS's exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.base import (
    F32,
    F64,
    NIBBLE_ORDERS,
    Params,
    Scheme,
    State,
    StateSpec,
    as_bool,
    choice,
    has_nan,
    pack_nibbles,
    scratch,
    sign_extend_nibble,
    unpack_nibbles,
)
from gpuquant.schemes.edges import Counter, count, nibbles
from gpuquant.schemes.granularity import Granularity, PerColumn, PerTensor, spelling
from gpuquant.schemes.statistics import (
    CUVS_MAX_SAMPLES,
    CUVS_SEED,
    FitSpec,
    MinMax,
    Quantile,
    cuvs_sample_size,
    quantile_positions,
    sample_rows,
)

__all__ = ["CUVS_MAX_SAMPLES", "CUVS_SEED", "ScalarScheme", "cuvs_sample_size", "quantile_positions", "sample_rows"]
ROUNDINGS = ("half_away", "floor", "trunc", "half_even")
#: The family's spellings of its granularities (saved as written here).
GRANULARITIES: dict[str, type[Granularity]] = {"tensor": PerTensor, "dimension": PerColumn}


@dataclass(frozen=True)
class ScalarParams(Params):
    """Parameters of the ``scalar`` family (see the module docstring), checked once."""

    granularity: str = "tensor"
    range: str = "minmax"
    quantile: float = 0.99
    quantile_method: str = "cuvs"
    rounding: str = "half_even"
    bits: int = 8
    signed: bool = False
    nibble_order: str = "low_first"
    ranges: Any = None

    def __post_init__(self) -> None:
        self._set("granularity", spelling(self.granularity, GRANULARITIES))
        choice("range", self.range, ("minmax", "quantile", "absmax", "given"))
        choice("quantile_method", self.quantile_method, ("cuvs", "exact"))
        choice("rounding", self.rounding, ROUNDINGS)
        choice("bits", self.bits, (8, 4))
        choice("nibble_order", self.nibble_order, NIBBLE_ORDERS)
        as_bool("signed", self.signed)
        q = self.quantile
        if not isinstance(q, (int, float)) or not 0.0 < float(np.float32(q)) <= 1.0:
            raise InputError(f"quantile must be in (0, 1], got {q!r}")
        self._set("quantile", float(q))
        if self.range == "given":
            self._set("ranges", _given_ranges(self.ranges, self.granularity))
        elif self.ranges is not None:
            raise InputError("ranges=... is only used with range='given'")


class ScalarScheme(Scheme):
    """Affine range quantizer (see the module docstring for the exact math)."""

    family = "scalar"
    params_type = ScalarParams
    config: ScalarParams

    @property
    def granularity(self) -> Granularity:
        return GRANULARITIES[self.config.granularity]()

    # -- layout -------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        p = self.config
        method = p.range
        if method == "quantile":
            method = f"quantile {p.quantile} ({p.quantile_method})"
        return {"scope": p.granularity, "range_method": method, "rounding": p.rounding,
                "encoding": (f"signed int{p.bits} = level - {self.half}" if p.signed
                             else f"unsigned {p.bits}-bit level"),
                **({"nibble_order": p.nibble_order} if p.bits == 4 else {})}

    @property
    def code_dtype(self) -> np.dtype:
        if self.config.bits == 8 and self.config.signed:
            return np.dtype(np.int8)
        return np.dtype(np.uint8)

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, d) if self.config.bits == 8 else (n, (d + 1) // 2)

    @property
    def levels(self) -> int:
        return 2 ** self.config.bits - 1

    @property
    def half(self) -> int:
        return 2 ** (self.config.bits - 1)

    def initial_state(self) -> State | None:
        if self.config.range != "given":
            return None
        lo, hi = np.asarray(self.config.ranges, dtype=F32)
        return {"lo": lo.copy(), "hi": hi.copy()}

    def check_dim(self, d: int) -> None:
        state = self.initial_state()
        if state is not None and state["lo"].size not in (1, d):
            raise InputError(f"given ranges have {state['lo'].size} dimensions, input has {d}")

    # -- fit ----------------------------------------------------------------------------------
    def fit_spec(self) -> FitSpec | None:
        p = self.config
        if p.range == "given":
            return None
        per_dim = isinstance(self.granularity, PerColumn)
        axis = 0 if per_dim else None
        stat = (Quantile(p.quantile, p.quantile_method, axis) if p.range == "quantile"
                else MinMax(axis))
        return FitSpec({"range": stat}, 1, "per-dimension ranges" if per_dim else "a range")

    def from_statistics(self, stats: dict[str, Any]) -> State:
        return self.finish_range(*stats["range"])

    def state_spec(self, d: int) -> StateSpec:
        if self.config.range == "given":
            width = len(self.config.ranges[0])
        else:
            width = d if isinstance(self.granularity, PerColumn) else 1
        return {"lo": ((width,), np.dtype(F32)), "hi": ((width,), np.dtype(F32))}

    def check_state(self, state: State) -> None:
        check_range(state["lo"], state["hi"])

    def finish_range(self, lo: np.ndarray, hi: np.ndarray) -> State:
        """The state from a fitted min and max (or quantile pair): ``[-max|.|, max|.|]`` for
        range="absmax", as float32 arrays of shape (1,) or (d,), checked finite with ``lo <= hi``."""
        if self.config.range == "absmax":
            hi = np.maximum(np.abs(lo), np.abs(hi))
            lo = -hi
        lo = np.asarray(lo, F32).reshape(-1).copy()
        hi = np.asarray(hi, F32).reshape(-1).copy()
        check_range(lo, hi)
        return {"lo": lo, "hi": hi}

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """Clipped: values outside ``[lo, hi]`` and NaN. Non-finite: codes whose (level, column)
        decodes to NaN or ±Inf, looked up in a table of every level's decoding (made once)."""
        assert state is not None
        lo, hi = xp.asarray(state["lo"]), xp.asarray(state["hi"])
        table = self.nonfinite_levels(state)
        bad = xp.asarray(table) if table.any() else None

        def counts(X: Any, codes: Any, side: Mapping[str, Any]) -> tuple[Any, Any]:
            clipped = count(xp, ~((X >= lo) & (X <= hi)))
            if bad is None:
                return 0, clipped
            d = X.shape[1]
            u = self.levels_xp(xp, codes, d).astype(xp.intp)
            return count(xp, bad[u, xp.arange(d) if table.shape[1] > 1 else 0]), clipped

        return counts

    def nonfinite_levels(self, state: State) -> np.ndarray:
        """``(L + 1, width)`` bool: whether level u of column j decodes to NaN or ±Inf."""
        width = state["lo"].size
        u = np.repeat(np.arange(self.levels + 1, dtype=F32)[:, None], width, axis=1)
        codes = np.empty(self.code_shape(*u.shape), self.code_dtype)
        self.store_into(u, codes)
        return ~np.isfinite(self.decode(codes, {}, state, width))

    def levels_xp(self, xp: Any, codes: Any, d: int) -> Any:
        """The unsigned levels (uint8 0..L) of ``codes`` with array module ``xp``."""
        p = self.config
        if p.bits == 8:
            u = codes.view(xp.uint8)
            return u ^ 0x80 if p.signed else u
        nib = nibbles(xp, codes, d, p.nibble_order)
        return nib ^ self.half if p.signed else nib

    # -- encode / decode ----------------------------------------------------------------------
    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        assert state is not None
        u = self.levels_of(X, state["lo"], state["hi"], scratch(tmp, X.shape))
        self.store_into(u, codes)

    def levels_of(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Unsigned levels ``u`` (a float array holding integers 0..L) of float32 ``x``.

        ``t`` is float32 scratch of ``x``'s shape; the float32 roundings compute in it.
        """
        rounding = self.config.rounding
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if rounding == "half_away":
                return _levels_half_away(x, lo, hi, self.levels, self.half)
            if rounding == "trunc":
                u = _levels_trunc(x, lo, hi, self.config.bits, t)
            elif rounding == "floor":
                u = _levels_floor(x, lo, hi, self.levels, t)
            else:
                u = _levels_half_even(x, lo, hi, self.levels, t)
        if has_nan(u):
            u[np.isnan(u)] = 0
        return u

    def store_into(self, u: np.ndarray, codes: np.ndarray) -> None:
        """Levels to codes as stored: uint8 ``u``, int8 ``u - H``, or packed nibbles."""
        p = self.config
        if p.bits == 8:
            if p.signed:
                np.subtract(u, 128, out=u)
            np.copyto(codes, u, casting="unsafe")
            return
        nib = u.astype(np.uint8)
        if p.signed:
            nib = (nib - self.half) & 0x0F  # two's complement nibble of u - H
        codes[...] = pack_nibbles(nib, p.nibble_order)

    def unstore(self, codes: np.ndarray, dim: int) -> np.ndarray:
        """Codes back to unsigned levels (float64, exact)."""
        p = self.config
        if p.bits == 8:
            u = codes.astype(F64)
            return u + 128 if p.signed else u
        nib = unpack_nibbles(codes, dim, p.nibble_order)
        if p.signed:
            return sign_extend_nibble(nib).astype(F64) + self.half
        return nib.astype(F64)

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        assert state is not None
        u = self.unstore(codes, dim)
        lo, hi = state["lo"], state["hi"]
        rounding = self.config.rounding
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if rounding == "half_away":
                scale, offset = cuvs_scale_offset(lo, hi, self.levels, self.half)
                return ((u - self.half - offset) / scale).astype(F32)
            if rounding == "floor":
                step = floor_step(lo, hi, self.levels)
                return (u * step.astype(F64) + lo.astype(F64)).astype(F32)
            if rounding == "trunc":
                xi = (u.astype(F32) + F32(0.5)) / F32(self.levels)
                return lo + xi * (hi - lo)
            scale, zp = affine_scale_zp(lo, hi, self.levels)
            return ((u.astype(F32) - zp) * scale).astype(F32)


def check_range(lo: np.ndarray, hi: np.ndarray) -> None:
    """``InputError`` unless every ``lo`` and ``hi`` is finite with ``lo <= hi``."""
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise InputError("the fitted range is not finite (the data holds ±Inf inside the range)")
    if (lo > hi).any():
        raise InputError("a range has lo > hi")


def _given_ranges(ranges: Any, granularity: str) -> list[list[float]]:
    if ranges is None:
        raise InputError("range='given' needs ranges=[lo, hi] (scalars or per-dimension lists)")
    arr = np.asarray(ranges, dtype=F32)
    if arr.ndim == 1 and arr.size == 2:
        arr = arr.reshape(2, 1)
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise InputError(f"ranges must have shape (2,) or (2, d), got {np.shape(ranges)}")
    if granularity == "tensor" and arr.shape[1] != 1:
        raise InputError("granularity='tensor' takes one range: ranges=[lo, hi]")
    reversed_ = np.flatnonzero(arr[0] > arr[1])
    if reversed_.size:
        j = int(reversed_[0])
        raise InputError(
            f"ranges: lo > hi in dimension {j} (lo={float(arr[0, j]):g}, hi={float(arr[1, j]):g}); gpuquant refuses a "
            "reversed range (almost always min and max swapped). sentence-transformers would quantize with "
            "it anyway, with a negative step: values above lo get level 0 and values below lo count up "
            "from it. Pass ranges=[mins, maxs]")
    check_range(arr[0], arr[1])
    return arr.tolist()


def cuvs_scale_offset(lo: np.ndarray, hi: np.ndarray, L: int, H: int) -> tuple[np.ndarray, np.ndarray]:
    """half_away constants: ``scale = L / (f64(hi) - f64(lo))`` (1 where hi <= lo),
    ``offset = -H - f64(lo) * scale``."""
    lo64, hi64 = lo.astype(F64), hi.astype(F64)
    with np.errstate(divide="ignore"):
        scale = np.where(hi64 > lo64, L / (hi64 - lo64), 1.0)
    return scale, -H - lo64 * scale


def _levels_half_away(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, L: int, H: int) -> np.ndarray:
    scale, offset = cuvs_scale_offset(lo, hi, L, H)
    v = (x.astype(F64) * scale + offset).astype(F32).astype(F64)
    u = np.trunc(v + np.copysign(0.5, v)) + H  # lroundf: exact in double for |v| < 2**52
    u = np.where(x < hi, u, L)
    return np.where(lo < x, u, 0.0)


def floor_step(lo: np.ndarray, hi: np.ndarray, L: int) -> np.ndarray:
    """floor constant (and half_even's scale): ``step = f32(f32(hi - lo) / L)``, 1 where 0."""
    step = (hi - lo) / F32(L)
    return np.where(step == 0, F32(1), step).astype(F32)


def _levels_floor(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, L: int, t: np.ndarray) -> np.ndarray:
    np.subtract(x, lo, out=t)
    np.divide(t, floor_step(lo, hi, L), out=t)
    np.floor(t, out=t)
    return np.clip(t, 0, L, out=t)


def trunc_vdiff(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """trunc constant: ``vdiff = f32(hi - lo)``."""
    return (hi - lo).astype(F32)


def _levels_trunc(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits: int, t: np.ndarray) -> np.ndarray:
    vdiff = trunc_vdiff(lo, hi)
    np.subtract(x, lo, out=t)
    np.divide(t, np.where(vdiff == 0, F32(1), vdiff), out=t)
    if (vdiff == 0).any():
        t[:, np.broadcast_to(vdiff == 0, t.shape[1:])] = 0
    np.clip(t, 0, 1, out=t)  # FAISS: if (t < 0) t = 0; if (t > 1) t = 1 -- NaN stays NaN
    if bits == 4:
        return np.trunc(t.astype(F64) * 15.0)
    np.multiply(t, F32(255), out=t)
    return np.trunc(t, out=t)


def affine_scale_zp(lo: np.ndarray, hi: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """half_even constants: ``scale = floor_step``, ``zp = f32(0 - lo / scale)``."""
    scale = floor_step(lo, hi, L)
    return scale, (F32(0) - lo / scale).astype(F32)


def _levels_half_even(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, L: int, t: np.ndarray) -> np.ndarray:
    scale, zp = affine_scale_zp(lo, hi, L)
    np.divide(x, scale, out=t)
    np.add(t, zp, out=t)
    np.rint(t, out=t)
    return np.clip(t, 0, L, out=t)
