"""What a fit reads from the data: the statistics schemes declare, and their numpy reference.

A scheme that needs training says so with :meth:`gpuquant.schemes.base.Scheme.fit_spec`: a
:class:`FitSpec` naming the statistics it needs (each a small frozen description such as
``MinMax(axis=0)``) and the fewest rows that make them meaningful. The scheme then turns their
results into its state (:meth:`~gpuquant.schemes.base.Scheme.from_statistics`). Every layer that
fits (the numpy reference below, the streaming fit, the Dask fit, the device fit, and the planner's
byte counts) implements *statistics*, once each, and never asks which family it serves: a family
built from existing statistics needs no code outside its scheme module.

The statistics, over float32 data ``X`` of shape ``(n, d)``; ``axis=None`` means over every value,
``axis=0`` over the rows of each column (one result per dimension):

* :class:`MinMax` ``(axis)``: ``(min, max)``; NaN propagates and is refused (:data:`NAN_FIT_ROW`).
* :class:`AbsMax` ``(axis)``: ``max |x|`` (0 for no values); NaN and ±Inf are refused
  (:data:`NONFINITE_FIT_ROW`). Only ``axis=None`` is used so far.
* :class:`Quantile` ``(q, method, axis)``: the pair of order statistics at cuVS's positions
  (:func:`quantile_positions`); ``method="cuvs"`` reads the rows :func:`sample_rows` picks
  (at most ``1_000_000 // d``), ``"exact"`` every row. NaN in what is read is refused.
* :class:`ColumnMean`: ``float32(float64 column sum / n)``; NaN refused.
* :class:`ColumnMedian`: the exact middle value per column (for even ``n``
  ``float32((f64(a) + f64(b)) / 2)`` of the two middle values); NaN refused.
* :class:`ColumnMeanF32`: FAISS's float32 centroid: a float32 running sum over the rows in order,
  ``((0 + x[0]) + x[1]) + ...`` per column (:func:`running_column_sum`), divided by ``float32(n)``;
  NaN and ±Inf refused, and a sum that overflows float32.
* :class:`KMeans` ``(m, k, iterations, seed, max_rows)``: ``k`` k-means centroids in each of ``m``
  equal sub-spaces of the columns, float32 ``(m, k, d/m)``, trained on the rows
  :func:`train_rows` picks (:mod:`gpuquant.schemes.kmeans`); NaN and ±Inf in them refused.
* :class:`Covariance`: the float64 column mean ``mu = s / n`` and covariance ``G / n - mu mu^T``
  from the moments ``(n, s = sum x, G = sum x x^T)`` (float64), which merge by addition; NaN and
  ±Inf refused, and a covariance that overflows float64.

Every refusal is a :class:`RowError` naming the first row that holds the bad value (a row of the
quantile's sample is named as the row of ``X`` it came from). A layer that sees only part of the
input shifts the row by where its part starts (:meth:`RowError.shifted`); one that cannot name a
row (a summary of many rows, a device reduction) says :data:`NAN_FIT_MESSAGE` or
:data:`NONFINITE_FIT_MESSAGE` instead.

Each implementation is mergeable over row blocks (min/max and sums merge directly; order statistics
by histogram passes over order-preserving keys, :mod:`gpuquant.engine.fit`). ``ColumnMeanF32`` is
a fold over the rows in order instead (a float32 running sum does not merge); ``KMeans`` gathers
its training rows; ``Covariance`` merges its moments by addition.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.kmeans import kmeans

F32 = np.float32
F64 = np.float64
NAN_FIT_MESSAGE = "fit data contains NaN; remove or replace NaN rows before fitting"
NONFINITE_FIT_MESSAGE = "fit data contains NaN or ±Inf; remove or replace those rows before fitting"
#: :class:`RowError` templates of the fit refusals above, naming the row.
NAN_FIT_ROW = "fit data contains NaN ({row}); remove or replace NaN rows before fitting"
NONFINITE_FIT_ROW = "fit data contains NaN or ±Inf ({row}); remove or replace those rows before fitting"
#: The fit refusals' messages where the row cannot be named.
ROW_FREE = {NAN_FIT_ROW: NAN_FIT_MESSAGE, NONFINITE_FIT_ROW: NONFINITE_FIT_MESSAGE}
CUVS_MAX_SAMPLES = 1_000_000
CUVS_SEED = 137
Axis = Literal[0] | None


class RowError(InputError):
    """An ``InputError`` about one row. ``template`` holds ``{row}``, filled with ``row N`` (N counted
    from the first row of the array checked) or, once :meth:`shifted`, ``row N of the input``."""

    def __init__(self, row: int, template: str, *, of_input: bool = False) -> None:
        self.row, self.template, self.of_input = int(row), template, of_input
        super().__init__(template.format(row=f"row {self.row}" + (" of the input" if of_input else "")))

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (Dask workers send it back)
        return _row_error, (self.row, self.template, self.of_input)

    def shifted(self, start: int) -> RowError:
        """The same error for the input in which the checked array starts at row ``start``."""
        return RowError(self.row + start, self.template, of_input=True)


def _row_error(row: int, template: str, of_input: bool) -> RowError:
    return RowError(row, template, of_input=of_input)


def first_row(bad: np.ndarray) -> int:
    """The first row ``i`` of ``bad`` (any shape per row) where ``bad[i]`` holds a True value."""
    return int(np.argmax(bad.any(axis=tuple(range(1, bad.ndim)))))


def refuse_rows(bad: np.ndarray, template: str) -> None:
    """:class:`RowError` with ``template`` naming the first row ``i`` where ``bad[i]`` holds a True value."""
    if bad.any():
        raise RowError(first_row(bad), template)


class Statistic:
    """Base of the statistic descriptions (frozen dataclasses: hashable, comparable, printable)."""


@dataclass(frozen=True)
class MinMax(Statistic):
    axis: Axis = None


@dataclass(frozen=True)
class AbsMax(Statistic):
    axis: Axis = None


@dataclass(frozen=True)
class Quantile(Statistic):
    q: float
    method: str = "cuvs"
    axis: Axis = None


@dataclass(frozen=True)
class ColumnMean(Statistic):
    pass


@dataclass(frozen=True)
class ColumnMedian(Statistic):
    pass


@dataclass(frozen=True)
class ColumnMeanF32(Statistic):
    pass


@dataclass(frozen=True)
class KMeans(Statistic):
    m: int
    k: int
    iterations: int
    seed: int
    max_rows: int


@dataclass(frozen=True)
class Covariance(Statistic):
    pass


@dataclass(frozen=True)
class FitSpec:
    """What a scheme's fit needs: named statistics, and the fewest rows (with the phrase for the
    error message: ``cannot fit {why} on {n} row(s): need at least {min_rows}``)."""

    stats: dict[str, Statistic] = field(default_factory=dict)
    min_rows: int = 1
    why: str = "a range"


def require_rows(n: int, minimum: int, why: str) -> None:
    if n < minimum:
        raise InputError(f"cannot fit {why} on {n} row(s): need at least {minimum}")


def refuse_nan(X: np.ndarray) -> None:
    """:class:`RowError` naming the first row of ``X`` that holds NaN."""
    refuse_rows(np.isnan(X), NAN_FIT_ROW)


def cuvs_sample_size(n: int, d: int) -> int:
    """Rows cuVS sorts for its quantile: ``min(1_000_000 // d, n)`` (at least 1)."""
    return max(1, min(CUVS_MAX_SAMPLES // d, n))


def sample_rows(n: int, n_sample: int) -> np.ndarray:
    """Sorted row indices of the quantile sample: all rows, or ``n_sample`` drawn without replacement
    (:func:`train_rows` with seed :data:`CUVS_SEED`)."""
    return train_rows(n, n_sample, CUVS_SEED)


def quantile_positions(size: int, quantile: float) -> tuple[int, int]:
    """cuVS's (pos_min, pos_max) into ``size`` sorted values for ``quantile``."""
    q = float(np.float32(quantile))
    pos_max = math.ceil((0.5 + 0.5 * q) * size) - 1
    return size - pos_max - 1, pos_max


def quantile_rows(stat: Quantile, n: int, d: int) -> np.ndarray | None:
    """The rows a quantile reads: the cuVS sample's indices, or None for every row."""
    rows = n if stat.method == "exact" else cuvs_sample_size(n, d)
    return None if rows >= n else sample_rows(n, rows)


def median_ranks(n: int) -> tuple[int, int]:
    """0-based ranks of the two middle values of ``n`` (equal for odd ``n``)."""
    return (n - 1) // 2, n // 2


def median_of(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The median from the values at :func:`median_ranks`: ``float32((f64(a) + f64(b)) / 2)``."""
    return ((a.astype(F64) + b.astype(F64)) / 2).astype(F32)


def refuse_nonfinite(X: np.ndarray) -> None:
    """:class:`RowError` naming the first row of ``X`` that holds NaN or ±Inf."""
    refuse_rows(~np.isfinite(X), NONFINITE_FIT_ROW)


def running_column_sum(total: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``total`` (float32 (d,), updated in place and returned) plus the rows of ``X`` one after the
    other, in float32 (:class:`ColumnMeanF32`'s order; streamed, batch after batch in row order)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused by mean_f32
        for row in X:
            total += row
    return total


def mean_f32(total: np.ndarray, n: int) -> np.ndarray:
    """:class:`ColumnMeanF32` from the running sum of ``n`` rows (``InputError`` if it overflowed)."""
    if not np.isfinite(total).all():
        raise InputError("the column sums of the fit data overflow float32: no finite float32 mean")
    return total / F32(n)


def train_rows(n: int, max_rows: int, seed: int) -> np.ndarray:
    """Indices (ascending) of the rows :class:`KMeans` trains on: all ``n``, or ``max_rows`` of them
    drawn without replacement with ``numpy.random.default_rng(seed)`` (a streamed fit gathers just these)."""
    if n <= max_rows:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False))


def kmeans_codebooks(stat: KMeans, X: np.ndarray) -> np.ndarray:
    """:class:`KMeans` on the training rows ``X`` (already picked by :func:`train_rows`): k-means with
    seed ``seed + j`` in sub-space ``j``, float32 ``(m, k, d/m)``."""
    refuse_nonfinite(X)
    sub = X.reshape(X.shape[0], stat.m, X.shape[1] // stat.m)
    return np.stack([kmeans(np.ascontiguousarray(sub[:, j]), stat.k, stat.iterations, stat.seed + j)
                     for j in range(stat.m)])


Moments = tuple[int, np.ndarray, np.ndarray]


def moments(X: np.ndarray) -> Moments:
    """``(n, float64 column sums, float64 X^T X)`` of one block of rows (NaN and ±Inf refused)."""
    refuse_nonfinite(X)
    x = X.astype(F64)
    return X.shape[0], x.sum(axis=0), x.T @ x


def merge_moments(a: Moments, b: Moments) -> Moments:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def covariance_of(m: Moments) -> tuple[np.ndarray, np.ndarray]:
    """:class:`Covariance` from merged moments: float64 ``(mean, covariance)``."""
    n, total, gram = m
    mean = total / n
    with np.errstate(over="ignore", invalid="ignore"):
        cov = gram / n - np.outer(mean, mean)
    if not np.isfinite(cov).all():
        raise InputError("the fit data's covariance overflows float64")
    return mean, cov


def absmax_of(m: Any) -> np.float32:
    """``m`` (a ``max |x|``) checked finite: NaN propagates through the max, so one test covers both."""
    m = F32(m)
    if not np.isfinite(m):
        raise InputError(NONFINITE_FIT_MESSAGE)
    return m


# -- the numpy reference of each statistic, on all rows in memory -----------------------------


def _minmax(stat: MinMax, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = X.min(axis=stat.axis), X.max(axis=stat.axis)
    if np.isnan(lo).any() or np.isnan(hi).any():
        refuse_nan(X)
    return lo, hi


def _absmax(stat: AbsMax, X: np.ndarray) -> np.float32:
    try:
        return absmax_of(np.abs(X).max(initial=F32(0)))
    except InputError:
        raise RowError(first_row(~np.isfinite(X)), NONFINITE_FIT_ROW) from None


def _quantile(stat: Quantile, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    idx = quantile_rows(stat, *X.shape)
    sample = X if idx is None else X[idx]
    try:
        refuse_nan(sample)
    except RowError as exc:  # name the row of X, not of the sample
        raise exc if idx is None else RowError(int(idx[exc.row]), exc.template) from None
    values = np.array(sample, dtype=F32) if stat.axis == 0 else np.array(sample, F32).reshape(-1)
    lo_pos, hi_pos = quantile_positions(values.shape[0], stat.q)
    part = np.partition(values, [lo_pos, hi_pos], axis=0)
    return part[lo_pos], part[hi_pos]


def _column_mean(stat: ColumnMean, X: np.ndarray) -> np.ndarray:
    refuse_nan(X)
    return (X.sum(axis=0, dtype=F64) / X.shape[0]).astype(F32)


def _column_median(stat: ColumnMedian, X: np.ndarray) -> np.ndarray:
    refuse_nan(X)
    lo, hi = median_ranks(X.shape[0])
    part = np.partition(X, [lo, hi], axis=0)
    return median_of(part[lo], part[hi])


def _column_mean_f32(stat: ColumnMeanF32, X: np.ndarray) -> np.ndarray:
    refuse_nonfinite(X)
    return mean_f32(running_column_sum(np.zeros(X.shape[1], F32), X), X.shape[0])


def _kmeans(stat: KMeans, X: np.ndarray) -> np.ndarray:
    idx = train_rows(X.shape[0], stat.max_rows, stat.seed)
    try:
        return kmeans_codebooks(stat, X[idx])
    except RowError as exc:  # name the row of X, not of the training sample
        raise RowError(int(idx[exc.row]), exc.template) from None


#: The numpy reference of each statistic (all rows in memory).
REFERENCE: dict[type[Statistic], Callable[[Any, np.ndarray], Any]] = {
    MinMax: _minmax,
    AbsMax: _absmax,
    Quantile: _quantile,
    ColumnMean: _column_mean,
    ColumnMedian: _column_median,
    ColumnMeanF32: _column_mean_f32,
    KMeans: _kmeans,
    Covariance: lambda stat, X: covariance_of(moments(X)),
}


def implementation(table: dict[type[Statistic], Any], stat: Statistic, where: str) -> Any:
    """``table``'s implementation of ``stat``, or an error naming the layer that lacks it."""
    try:
        return table[type(stat)]
    except KeyError:
        raise NotImplementedError(f"{where} has no implementation of the statistic {stat!r}") from None


def compute(spec: FitSpec, X: np.ndarray) -> dict[str, Any]:
    """The numpy reference: every statistic of ``spec`` on all rows of float32 ``X``."""
    require_rows(X.shape[0], spec.min_rows, spec.why)
    return {name: implementation(REFERENCE, stat, "the numpy reference")(stat, X) for name, stat in spec.stats.items()}
