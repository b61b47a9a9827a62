"""Family ``rabitq``: RaBitQ codes, byte for byte as FAISS's ``IndexRaBitQ.sa_encode`` writes them.

Parameters
----------
bits : 1..9 bits per dimension: one sign bit, plus ``bits - 1`` extra bits of magnitude.
metric : ``"l2"`` or ``"ip"``: which distance the stored factors serve (FAISS ``METRIC_L2`` /
    ``METRIC_INNER_PRODUCT``); the bits are the same, one factor differs.
center : ``"mean"`` (fitted: the column mean as FAISS's ``IndexRaBitQ.train`` forms it, a float32
    running sum over the rows in order divided by ``float32(n)``: the statistic
    :class:`~gpuquant.schemes.statistics.ColumnMeanF32`) or ``"zero"`` (no fit).

Math, per row ``x`` with centre ``c`` (``r = x - c`` in float32; sums in the orders of
:mod:`gpuquant.schemes.float_order`: "running" is the plain left-to-right float32 loop, "lanes" the
vectorised one):

* sign bits: bit ``j = r[j] > 0``, LSB first (dimension ``8k + b`` is bit ``1 << b`` of byte k);
* factors: running sums ``|r|^2 = sum r[j]*r[j]``, ``|x|^2 = sum x[j]*x[j]``, ``s = sum |r[j]|``;
  ``dp = s * (1/sqrt|r|^2 or 1 if |r|^2 < eps) * (1/sqrt d)``; ``dp_multiplier = (1/dp or 1 if
  |dp| < eps) * sqrt|r|^2`` and ``or_minus_c_l2sqr = |r|^2`` (l2) or ``|r|^2 - |x|^2`` (ip), with
  ``eps = 2**-23``. For ``bits > 1`` an error factor follows: with ``h = s / 2`` and ``ratio =
  (|r|^2 * (d/4)) / (h*h)`` (when ``|h| > eps``), ``e = sqrt|r|^2 * 1.9 * sqrt((ratio - 1) / (d - 1))``
  (``d - 1`` read as 1 for d = 1; ``e = 0`` unless ``ratio > 1``), times 2 for l2;
* extra bits (``bits > 1``, ``B = bits - 1``, ``M = 2**B - 1``): ``n = sqrt(lanes |r|^2)``; a row
  with ``n < 1e-10`` gets zero codes and factors. Else ``o = |r / n|``, a scale ``t`` is searched
  (:func:`_best_scale`: FAISS's sweep over the points where a level of ``floor(t * o)`` changes,
  keeping the first ``t`` of largest ``<level + 1/2, o> / |level + 1/2|``), the levels are
  ``min(trunc(float64(t * o[j]) + 1e-5), M)``, bit-flipped (``M - level``) where ``r[j] < 0``, and
  packed ``B`` bits per dimension, dimension-major, LSB first. ``ip = sum (level + 1/2) * o[j]`` in
  float64; ``f_rescale_ex = float32(1 / ip) (1 if not normal) * -2 * n`` (l2) or ``... * n`` (ip);
  ``f_add_ex = n * n`` (l2) or ``lanes <r, c>`` (ip).

Layout of one row's ``code_size`` bytes: sign bits (``ceil(d/8)``), the factors (``or_minus_c_l2sqr,
dp_multiplier`` and, for ``bits > 1``, the error factor; little-endian float32), then for ``bits > 1``
the extra bits (``ceil(d*B/8)``) and ``f_add_ex, f_rescale_ex``. Decoding is FAISS's ``sa_decode``:
``x'[j] = (bit - 1/2) * dp_multiplier * 2 * (1/sqrt d) + c[j]`` from the sign bits alone. Input rows
holding NaN or ±Inf, or whose ``|x|^2`` or ``|r|^2`` overflows float32, are refused (FAISS's
factors would not be finite).
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
    Params,
    Scheme,
    State,
    StateSpec,
    choice,
    is_integer,
    refuse_nonfinite_rows,
    state_or_zeros,
)
from gpuquant.schemes.float_order import lane_dot, running_sum
from gpuquant.schemes.statistics import ColumnMeanF32, FitSpec, RowError

METRICS = ("l2", "ip")
EPS = F32(np.finfo(F32).eps)
ERROR_BOUND = F32(1.9)
TIGHT_START = np.array([0.0, 0.15, 0.20, 0.52, 0.59, 0.71, 0.75, 0.77, 0.81], F32)
LEVEL_EPS = 1e-5  # added in float64 before truncating a level
ZERO_NORM = F32(1e-10)
NONFINITE_WHY = "RaBitQ codes need finite values"


def code_size(d: int, bits: int) -> int:
    """Bytes per row: sign bits, 8 (1 bit) or 12 bytes of factors, then extra bits and 8 bytes."""
    size = (d + 7) // 8 + (8 if bits == 1 else 12)
    return size if bits == 1 else size + (d * (bits - 1) + 7) // 8 + 8


def rabitq_encode(X: np.ndarray, center: np.ndarray, bits: int, metric: str) -> np.ndarray:
    """uint8 codes ``(n, code_size(d, bits))`` of finite float32 ``X`` (see the module docstring)."""
    n, d = X.shape
    R = X - center
    sums = running_sum(R * R), running_sum(X * X), running_sum(np.abs(R))
    overflow = ~(np.isfinite(sums[0]) & np.isfinite(sums[1]))
    if overflow.any():
        raise overflow_error(int(np.argmax(overflow)))
    parts = [np.packbits(R > 0, axis=1, bitorder="little"), _as_bytes(_sign_factors(sums, d, metric, bits > 1))]
    if bits > 1:
        ex_codes, ex_factors = _extra_bits(R, center, bits - 1, metric)
        parts += [ex_codes, _as_bytes(ex_factors)]
    return np.concatenate(parts, axis=1) if n else np.empty((0, code_size(d, bits)), np.uint8)


def overflow_error(row: int) -> RowError:
    """The error for a row whose ``|x|^2`` or ``|x - center|^2`` overflows float32 (a :class:`RowError`,
    so the backends and the engine name the row of the whole input)."""
    return RowError(row, "{row}: |x|^2 or |x - center|^2 overflows float32, "
                         "so its RaBitQ factors would not be finite")


def rabitq_decode(codes: np.ndarray, center: np.ndarray, bits: int, d: int) -> np.ndarray:
    """FAISS ``sa_decode``: the reconstruction from the sign bits and ``dp_multiplier``."""
    start = (d + 7) // 8
    bit = np.unpackbits(codes[:, :start], axis=1, count=d, bitorder="little").astype(F32)
    dp_multiplier = np.ascontiguousarray(codes[:, start + 4:start + 8]).view("<f4").astype(F32)
    inv_sqrt_d = F32(1) / np.sqrt(F32(d))
    return (bit - F32(0.5)) * dp_multiplier * F32(2) * inv_sqrt_d + center


def rabitq_estimate(Q: np.ndarray, codes: np.ndarray, center: np.ndarray, bits: int, metric: str,
                    qb: int = 0) -> np.ndarray:
    """FAISS's distance estimates ``(len(Q), len(codes))`` float32 from the queries ``Q`` to the coded
    rows: squared L2 distances (``metric="l2"``, smaller is nearer) or inner products (``"ip"``).

    With ``rq = q - c``: for ``bits = 1``, ``dot = (2/sqrt d) <bits, rq> - sum(rq)/sqrt d`` (with ``qb``
    in 1..8 the query is first quantized to ``qb`` bits between its min and max, as FAISS's
    ``qb`` search parameter does), ``pre = or_minus_c_l2sqr + |rq|^2 - 2 dp_multiplier dot`` and the
    estimate is ``max(0, pre)`` (l2) or ``(|q|^2 - pre) / 2`` (ip). For ``bits > 1`` it is FAISS's full
    multi-bit distance, ``base + f_add_ex + f_rescale_ex <level - 2**B + 1/2, rq>`` with ``level`` the
    sign bit above the extra bits and ``base = |rq|^2`` (l2, then ``max(0, .)``) or ``<q, c>`` (ip);
    ``qb`` only steers FAISS's pruning there, not the value. Matrix products: equal to FAISS's per-pair
    sums up to float32 rounding, not bit for bit.
    """
    d = Q.shape[1]
    rq = (Q - center).astype(F32)
    head = (d + 7) // 8
    signs = np.unpackbits(codes[:, :head], axis=1, count=d, bitorder="little").astype(F32)
    if bits > 1:
        return _multibit_estimate(Q, rq, codes, signs, center, bits - 1, metric)
    fac = np.ascontiguousarray(codes[:, head:head + 8]).view("<f4").astype(F32)
    inv_sqrt_d = F32(1) / np.sqrt(F32(d))
    rq_sq = (rq * rq).sum(axis=1, dtype=F32)
    dot = _one_bit_dot(rq, signs, qb) * inv_sqrt_d
    pre = fac[:, 0][None, :] + rq_sq[:, None] - F32(2) * fac[:, 1][None, :] * dot
    if metric == "l2":
        return np.maximum(pre, F32(0))
    return F32(-0.5) * (pre - (Q * Q).sum(axis=1, dtype=F32)[:, None])


def _one_bit_dot(rq: np.ndarray, signs: np.ndarray, qb: int) -> np.ndarray:
    """``2 <bits, rq> - sum(rq)`` (times ``1/sqrt d`` by the caller), with ``rq`` quantized to ``qb``
    bits when ``qb > 0``: ``v = vmin + delta * clip(trunc((rq - vmin) / delta + 1/2), 0, 2**qb - 1)``."""
    if qb == 0:
        return F32(2) * (rq @ signs.T) - rq.sum(axis=1, dtype=F32)[:, None]
    max_code = F32((1 << qb) - 1)
    vmin, vmax = rq.min(axis=1, keepdims=True), rq.max(axis=1, keepdims=True)
    delta = (vmax - vmin) / max_code
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (rq - vmin) * (F32(1) / delta)
    levels = np.where(delta > 0, np.clip(np.trunc(scaled + F32(0.5)), 0, max_code), F32(0)).astype(F32)
    dot = F32(2) * delta * (levels @ signs.T) + F32(2) * vmin * signs.sum(axis=1)[None, :]
    return dot - (delta * levels.sum(axis=1, keepdims=True) + F32(rq.shape[1]) * vmin)


def _multibit_estimate(Q: np.ndarray, rq: np.ndarray, codes: np.ndarray, signs: np.ndarray, center: np.ndarray,
                       ex_bits: int, metric: str) -> np.ndarray:
    n, d = signs.shape
    start = (d + 7) // 8 + 12
    stop = start + (d * ex_bits + 7) // 8
    planes = np.unpackbits(codes[:, start:stop], axis=1, count=d * ex_bits, bitorder="little")
    ex = (planes.reshape(n, d, ex_bits).astype(np.int64) << np.arange(ex_bits)).sum(axis=2)
    level = (signs.astype(np.int64) * (1 << ex_bits) + ex).astype(F32) - F32((1 << ex_bits) - 0.5)
    fac = np.ascontiguousarray(codes[:, stop:stop + 8]).view("<f4").astype(F32)
    base = (rq * rq).sum(axis=1, dtype=F32) if metric == "l2" else (Q @ center).astype(F32)
    dist = base[:, None] + fac[:, 0][None, :] + fac[:, 1][None, :] * (rq @ level.T)
    return np.maximum(dist, F32(0)) if metric == "l2" else dist


def _as_bytes(columns: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(columns, dtype="<f4").view(np.uint8)


def _sign_factors(sums: tuple[np.ndarray, ...], d: int, metric: str, with_error: bool) -> np.ndarray:
    """(n, 2) or (n, 3) float32 from the running sums ``|r|^2, |x|^2, sum |r|``:
    ``or_minus_c_l2sqr, dp_multiplier`` [, error factor]."""
    norm_sq, x_sq, abs_sum = sums
    inv_sqrt_d = F32(1) / np.sqrt(F32(d))
    sqrt_norm = np.sqrt(norm_sq)
    with np.errstate(divide="ignore", over="ignore"):  # 1 / a tiny dp: the branch np.where drops
        inv_norm = np.where(norm_sq < EPS, F32(1), F32(1) / sqrt_norm)
        dp = abs_sum * inv_norm * inv_sqrt_d
        inv_dp = np.where(np.abs(dp) < EPS, F32(1), F32(1) / dp)
    cols = [norm_sq - x_sq if metric == "ip" else norm_sq, inv_dp * sqrt_norm]
    if with_error:
        cols.append(_error_factor(norm_sq, sqrt_norm, abs_sum, d) * F32(2 if metric == "l2" else 1))
    return np.stack(cols, axis=1)


def _error_factor(norm_sq: np.ndarray, sqrt_norm: np.ndarray, abs_sum: np.ndarray, d: int) -> np.ndarray:
    half = F32(0.5) * abs_sum
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (norm_sq * (F32(d) * F32(0.25))) / (half * half)
        spread = np.sqrt((ratio - F32(1)) / F32(max(d - 1, 1)))
    error = sqrt_norm * ERROR_BOUND * spread
    return np.where((np.abs(half) > EPS) & (ratio > F32(1)), error, F32(0))


def _extra_bits(R: np.ndarray, center: np.ndarray, ex_bits: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Packed extra-bit codes (n, ceil(d*B/8)) and factors (n, 2): ``f_add_ex, f_rescale_ex``."""
    n, d = R.shape
    max_code = (1 << ex_bits) - 1
    norm = np.sqrt(lane_dot(R, R))
    live = norm >= ZERO_NORM
    with np.errstate(divide="ignore", invalid="ignore"):
        o = np.abs(R / norm[:, None])
    levels = np.zeros((n, d), np.int64)
    for i in np.flatnonzero(live):
        t = _best_scale(o[i], ex_bits)
        levels[i] = np.minimum(((t * o[i]).astype(F64) + LEVEL_EPS).astype(np.int64), max_code)
    ip = np.cumsum((levels + 0.5) * o.astype(F64), axis=1)[:, -1] if d else np.zeros(n)
    levels[live] = np.where(R[live] < 0, max_code - levels[live], levels[live])
    with np.errstate(divide="ignore"):
        inv_ip = (1.0 / ip).astype(F32)
    inv_ip = np.where(np.isfinite(inv_ip) & (np.abs(inv_ip) >= np.finfo(F32).tiny), inv_ip, F32(1))
    if metric == "l2":
        factors = [norm * norm, inv_ip * F32(-2) * norm]
    else:
        factors = [lane_dot(R, np.broadcast_to(center, R.shape)), inv_ip * norm]
    factors = np.where(live[:, None], np.stack(factors, axis=1), F32(0))
    bit_planes = (levels[:, :, None] >> np.arange(ex_bits)) & 1
    return np.packbits(bit_planes.reshape(n, d * ex_bits).astype(np.uint8), axis=1, bitorder="little"), factors


def _best_scale(o: np.ndarray, ex_bits: int) -> np.float32:
    """FAISS's scale search for one row's ``o = |r| / |r|`` (float32, (d,), max > 0).

    From ``t_start = t_end * tight[B]`` (``t_end = (M + 10) / max o``) each dimension's level
    ``trunc(t * o + 1e-5)`` steps up at ``t = (level + 1) * (1 / o)``; the steps are visited in
    increasing ``t`` (ties: lower dimension first), a dimension stops stepping at ``t_end`` or, after
    its first step, at level ``M``. At each step the running float32 numerator ``sum (level + 1/2) o``
    and the running product form of ``1 / sqrt(sum level^2 + level + d/4)`` give the score; the first
    ``t`` of highest positive score wins (0 if none).
    """
    max_code = (1 << ex_bits) - 1
    d = o.size
    t_end = F32(max_code + 10) / o.max()
    t_start = t_end * TIGHT_START[ex_bits]
    with np.errstate(divide="ignore"):
        inv_o = F32(1) / o
    cur = ((t_start * o).astype(F64) + LEVEL_EPS).astype(np.int64)
    denom0 = _chain_sum(F32(d) * F32(0.25), (cur * cur + cur).astype(F32))
    numer0 = _chain_sum(F32(0), (cur.astype(F32) + F32(0.5)) * o)
    # every step each dimension may take, then only those before t_end (t grows with the level)
    last = np.maximum(cur + 1, np.minimum(max_code, np.floor(t_end * o.astype(F64)).astype(np.int64) + 2))
    counts = np.maximum(last - cur, 0)
    dims = np.repeat(np.arange(d), counts)
    level = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) + np.repeat(cur + 1, counts)
    t = level.astype(F32) * inv_o[dims]
    keep = t < t_end
    dims, level, t = dims[keep], level[keep], t[keep]
    order = np.lexsort((dims, t))
    dims, level, t = dims[order], level[order], t[order]
    if t.size == 0:
        return F32(0)
    delta = F32(2) * level.astype(F32)
    denom = np.cumsum(np.concatenate([[denom0], delta]), dtype=F32)[1:]
    numer = np.cumsum(np.concatenate([[numer0], o[dims]]), dtype=F32)[1:]
    old = denom - delta
    step = F32(1) - F32(0.5) * delta / (old + delta * F32(0.5))
    inv_sqrt = np.multiply.accumulate(np.concatenate([[F32(1) / np.sqrt(denom0)], step]), dtype=F32)[1:]
    score = numer * inv_sqrt
    best = int(np.argmax(score))
    return t[best] if score[best] > 0 else F32(0)


def _chain_sum(start: np.float32, values: np.ndarray) -> np.float32:
    """``((start + v[0]) + v[1]) + ...`` in float32."""
    return np.cumsum(np.concatenate([[start], values]).astype(F32), dtype=F32)[-1]


@dataclass(frozen=True)
class RabitqParams(Params):
    """Parameters of the ``rabitq`` family (see the module docstring), checked once."""

    bits: int = 1
    metric: str = "l2"
    center: str = "mean"

    def __post_init__(self) -> None:
        bits = self.bits
        if not is_integer(bits) or not 1 <= bits <= 9:
            raise InputError(f"bits must be an integer from 1 to 9 for rabitq, got {bits!r}")
        self._set("bits", int(bits))
        choice("metric", self.metric, METRICS)
        choice("center", self.center, ("mean", "zero"))


class RabitqScheme(Scheme):
    """RaBitQ sign bits, extra bits and factors, as FAISS (see the module docstring)."""

    family = "rabitq"
    params_type = RabitqParams
    config: RabitqParams
    nonfinite_rows_refused = "per-row RaBitQ factors"

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, code_size(d, self.config.bits))

    def describe(self) -> dict[str, Any]:
        p = self.config
        return {"scope": "row", "range_method": f"center {p.center}, RaBitQ factors ({p.metric})",
                "rounding": f"sign bit + {p.bits - 1} extra bits (FAISS RaBitQuantizer)",
                "bit_order": "lsb_first", "encoding": "unsigned"}

    def fit_spec(self) -> FitSpec | None:
        return None if self.config.center == "zero" else FitSpec({"center": ColumnMeanF32()}, 1, "a RaBitQ center")

    def from_statistics(self, stats: dict[str, Any]) -> State:
        return {"center": np.asarray(stats["center"], F32)}

    def state_spec(self, d: int) -> StateSpec:
        return {} if self.config.center == "zero" else {"center": ((d,), np.dtype(F32))}

    @staticmethod
    def center_for(state: State | None, d: int) -> np.ndarray:
        return state_or_zeros(state, "center", d)

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        refuse_nonfinite_rows(X, NONFINITE_WHY)
        codes[...] = rabitq_encode(X, self.center_for(state, X.shape[1]), self.config.bits, self.config.metric)

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        return rabitq_decode(np.asarray(codes), self.center_for(state, dim), self.config.bits, dim)

    def estimate(self, Q: np.ndarray, codes: np.ndarray, state: State | None, *, qb: int = 0,
                 metric: str | None = None) -> np.ndarray:
        """FAISS's RaBitQ estimate (:func:`rabitq_estimate`) for the quantizer's own metric only
        (its factors serve that one)."""
        own = self.config.metric
        if metric not in (None, own):
            raise InputError(f"metric={metric!r} is not available here; this quantizer estimates {own!r}")
        return rabitq_estimate(Q, codes, self.center_for(state, Q.shape[1]), self.config.bits, own, qb)

    def search_scores(self, Q: np.ndarray, codes: np.ndarray, state: State | None) -> np.ndarray:
        est = self.estimate(Q, codes, state)
        return -est if self.config.metric == "l2" else est
