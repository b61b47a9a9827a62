"""Device training for the cupy backend: ranges, thresholds and quantiles (``kernels/train.cu``).

Every function takes a C-contiguous 2-D CuPy array (float16, float32 or float64; values are taken
as float32, float64 rounded to nearest even) and returns numpy float32 results equal to the
reference's (``gpuquant.schemes``):

* :func:`minmax` - min and max, global or per dimension, in one read pass (order-preserving uint32
  keys and integer atomics; NaN detected in the same pass). Exact.
* :func:`column_means` - float64 column sums (per-thread partial sums, then atomics) / n, rounded to
  float32. The summation order differs from numpy's, so the float64 sum can differ in its last bits;
  after rounding to float32 the mean equals the reference's except when the exact mean lies within a
  few float64 ulps of a float32 rounding boundary.
* :func:`column_order_statistics` - exact per-dimension order statistics (median, per-dimension
  quantiles) from a CuPy sort of a float32 copy along the rows.
* :func:`select_values` (:func:`radix_select`) - exact order statistics of *all* values by radix select over the uint32
  keys, two ranks at once, no sort: digits of 13 + 11 + 8 bits; pass 0 reads every value, pass 1
  reads every value again and keeps the candidates (values whose 13-bit key prefix is a target's:
  at most :func:`candidate_capacity` of them, as float32), pass 2 reads the candidates. For float32
  input that is 2 reads of the data plus 8 bytes per candidate; 3 reads when more values than the
  capacity share a target's 13-bit prefix (pass 2 then reads the input again).
* :func:`quantile_range` - the scalar family's quantile range: ``method="cuvs"`` sorts the values of
  the rows :func:`gpuquant.schemes.scalar.sample_rows` picks (the reference's own row selection, so
  both use identical rows); ``method="exact"`` uses every row (radix select for one global range).

:func:`fit` computes the statistics the scheme declares (:data:`DEVICE`: one implementation per
statistic of :mod:`gpuquant.schemes.statistics`) and lets the scheme turn them into its state,
like the reference ``scheme.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import INPUT_TYPES, THREADS, occupancy_grid
from gpuquant.backends.cupy_device import cupy_module as _cupy
from gpuquant.backends.cupy_launch import kernel
from gpuquant.errors import InputError
from gpuquant.schemes import Scheme
from gpuquant.schemes import statistics as st
from gpuquant.schemes.base import NAN_FIT_MESSAGE, NONFINITE_FIT_MESSAGE, keys_to_values
from gpuquant.schemes.statistics import median_of, median_ranks, quantile_positions

TRAIN_FILE = "train.cu"

#: Every kernel instance (``name_expressions``) of ``kernels/train.cu``.
RADIX_PASSES = 3
NAME_EXPRESSIONS: tuple[str, ...] = tuple(
    [f"{k}<{t}>" for k in ("to_float32", "minmax_global", "minmax_columns", "column_sums")
     for t in INPUT_TYPES.values()]
    + [f"radix_histogram<{t}, {p}>" for t in INPUT_TYPES.values() for p in range(RADIX_PASSES)]
    + [f"radix_pick<{p}>" for p in range(RADIX_PASSES)]
)
RADIX_HIST_BINS = 8192 + 2 * 2048 + 2 * 256  # RADIX_HIST_TOTAL in kernels/train.cu: every pass's histograms
RADIX_PICK_THREADS = 512  # two halves of 256, one per target
CANDIDATE_SHARE = 16  # the candidate buffer holds up to 1/16 of the values ...
CANDIDATE_MIN = 1 << 16  # ... and at least this many (all of a small input)
#: Device bytes of a radix select besides its candidates: histograms, selection state and counters (u64).
RADIX_STATE_BYTES = (RADIX_HIST_BINS + 6 + 2) * 8
_ROW_BLOCKS = 1024  # row slices of the column kernels (gridDim.y)


def _kernel(name: str):
    return kernel(TRAIN_FILE, name, NAME_EXPRESSIONS)


def _t(x: Any) -> str:
    return INPUT_TYPES[np.dtype(x.dtype)]


_KEY_POS_INF = 0xFF800000  # order_key(+inf); keys above are +NaN
_KEY_NEG_INF = 0x007FFFFF  # order_key(-inf); keys below are -NaN


def as_float32(x: Any) -> Any:
    """``x`` as a float32 CuPy array (float64 rounded to nearest even, subnormal results kept)."""
    cp = _cupy()
    if x.dtype == cp.float32:
        return x
    y = cp.empty(x.shape, cp.float32)
    _kernel(f"to_float32<{_t(x)}>")((occupancy_grid(x.size),), (THREADS,), (x, y, np.int64(x.size)))
    return y


def minmax(x: Any, per_dim: bool) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) over all values (shape (1,)) or per column (shape (d,)); ``InputError`` on NaN."""
    lo_keys, hi_keys = minmax_keys(x, per_dim)
    if (hi_keys > _KEY_POS_INF).any() or (lo_keys < _KEY_NEG_INF).any():
        raise InputError(NAN_FIT_MESSAGE)
    return keys_to_values(lo_keys), keys_to_values(hi_keys)


def minmax_keys(x: Any, per_dim: bool) -> tuple[np.ndarray, np.ndarray]:
    """Order keys (``gq::order_key``) of the min and max, global (1,) or per column (d,), one pass."""
    cp = _cupy()
    n, d = (int(s) for s in x.shape)
    width = d if per_dim else 1
    kmin = cp.full(width, 0xFFFFFFFF, cp.uint32)
    kmax = cp.zeros(width, cp.uint32)
    if per_dim:
        grid = (-(-d // THREADS), min(n, _ROW_BLOCKS))
        _kernel(f"minmax_columns<{_t(x)}>")(grid, (THREADS,), (x, np.int64(n), np.int64(d), kmin, kmax))
    else:
        _kernel(f"minmax_global<{_t(x)}>")((occupancy_grid(x.size),), (THREADS,), (x, np.int64(x.size), kmin, kmax))
    return kmin.get(), kmax.get()


def refuse_nan(x: Any) -> None:
    """``InputError`` if the device array ``x`` holds NaN (one reduction, one sync)."""
    cp = _cupy()
    if x.size and bool(cp.isnan(x).any()):
        raise InputError(NAN_FIT_MESSAGE)


def column_means(x: Any) -> np.ndarray:
    """float32(float64 column sum / n) per column."""
    cp = _cupy()
    n, d = (int(s) for s in x.shape)
    sums = cp.zeros(d, cp.float64)
    grid = (-(-d // THREADS), min(n, _ROW_BLOCKS))
    _kernel(f"column_sums<{_t(x)}>")(grid, (THREADS,), (x, np.int64(n), np.int64(d), sums))
    return (sums.get() / n).astype(np.float32)


def column_order_statistics(x: Any, ranks: list[int]) -> np.ndarray:
    """Rows ``ranks`` of ``x`` sorted along axis 0 (exact), shape (len(ranks), d), float32."""
    cp = _cupy()
    ordered = cp.sort(as_float32(x), axis=0)
    return ordered[cp.asarray(np.asarray(ranks, np.int64))].get()


def candidate_capacity(count: int) -> int:
    """Values the radix select's candidate buffer holds for ``count`` values (float32 each)."""
    return min(count, max(CANDIDATE_MIN, count // CANDIDATE_SHARE))


@dataclass(frozen=True)
class RadixSelect:
    """What :func:`radix_select` found: the two values, the NaN count, and the candidates pass 1
    counted (pass 2 read them when there were at most ``capacity``, else the input again)."""

    values: np.ndarray
    nan_count: int
    candidates: int
    capacity: int

    @property
    def input_reads(self) -> int:
        return 2 if self.candidates <= self.capacity else 3


def select_values(x: Any, k0: int, k1: int) -> tuple[np.ndarray, int]:
    """Values of ranks ``k0`` and ``k1`` (0-based) among all of ``x``'s values, and the NaN count."""
    found = radix_select(x, k0, k1)
    return found.values, found.nan_count


def radix_select(x: Any, k0: int, k1: int) -> RadixSelect:
    """Radix select of ranks ``k0`` and ``k1`` on the order-preserving keys (module docstring): each
    pass histograms one digit of the keys that share the prefix found so far (shared memory, then
    global), and ``radix_pick`` picks the digit holding each rank by a block scan. NaN keys sort
    outside ±Inf, so ranks that avoid them are exact.
    """
    cp = _cupy()
    count = int(x.size)
    sel = cp.asarray(np.array([0, 0, k0, k1, k0, k1], np.uint64))  # prefixes, ranks, ranks left
    hist = cp.zeros(RADIX_HIST_BINS, cp.uint64)
    counters = cp.zeros(2, cp.uint64)  # NaN values, candidates
    cap = candidate_capacity(count)
    cand = cp.empty(max(cap, 1), cp.float32)
    blocks = occupancy_grid(count, THREADS * 16)  # one wave of each pass's own kernel
    for p in range(RADIX_PASSES):
        _kernel(f"radix_histogram<{_t(x)}, {p}>")(
            (blocks,), (THREADS,), (x, np.int64(count), sel, hist, counters, cand, counters[1:], np.int64(cap)))
        _kernel(f"radix_pick<{p}>")((1,), (RADIX_PICK_THREADS,), (sel, hist))
    nans, candidates = (int(v) for v in counters.get())
    return RadixSelect(keys_to_values(sel.get()[:2].astype(np.uint32)), nans, candidates, cap)


def quantile_range(x: Any, quantile: float, method: str, per_dim: bool) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) at cuVS's quantile positions; ``method`` "cuvs" (sampled rows) or "exact"."""
    cp = _cupy()
    n, d = (int(s) for s in x.shape)
    idx = st.quantile_rows(st.Quantile(quantile, method), n, d)
    if idx is not None:
        x = x[cp.asarray(idx)]
    if per_dim:
        refuse_nan(x)
        lo_pos, hi_pos = quantile_positions(x.shape[0], quantile)
        lo, hi = column_order_statistics(x, [lo_pos, hi_pos])
        return lo, hi
    lo_pos, hi_pos = quantile_positions(int(x.size), quantile)
    if method == "cuvs":  # cuVS sorts its sample: so do we (at most 1e6 values)
        refuse_nan(x)
        ordered = cp.sort(as_float32(x).reshape(-1))
        values = ordered[cp.asarray(np.array([lo_pos, hi_pos]))].get()
    else:
        values, nan_count = select_values(x, lo_pos, hi_pos)
        if nan_count:
            raise InputError(NAN_FIT_MESSAGE)
    return values[:1], values[1:]


def fit(scheme: Scheme, x: Any) -> dict[str, np.ndarray]:
    """The scheme's state trained on the device array ``x`` (same results as ``scheme.fit``)."""
    spec = scheme.fit_spec()
    if spec is None:
        return scheme.initial_state() or {}
    st.require_rows(int(x.shape[0]), spec.min_rows, spec.why)
    return scheme.from_statistics(
        {name: st.implementation(DEVICE, stat, "the cupy backend's fit")(stat, x) for name, stat in spec.stats.items()})


def _absmax(stat: st.AbsMax, x: Any) -> np.float32:
    """``max |x|`` over every value from one min/max pass; refuses NaN and ±Inf."""
    lo_keys, hi_keys = minmax_keys(x, per_dim=False)
    if hi_keys[0] >= _KEY_POS_INF or lo_keys[0] <= _KEY_NEG_INF:
        raise InputError(NONFINITE_FIT_MESSAGE)
    lo, hi = keys_to_values(lo_keys)[0], keys_to_values(hi_keys)[0]
    return st.absmax_of(max(abs(lo), abs(hi)))


def _column_mean(stat: st.ColumnMean, x: Any) -> np.ndarray:
    refuse_nan(x)
    return column_means(x)


def _column_median(stat: st.ColumnMedian, x: Any) -> np.ndarray:
    refuse_nan(x)
    a, b = column_order_statistics(x, list(median_ranks(int(x.shape[0]))))
    return median_of(a, b)


def _on_the_host(stat: st.Statistic, x: Any) -> Any:
    """The numpy reference on a host copy (float32 as the reference converts): for the statistics
    not ported to the device (a float32 running sum is one serial fold; k-means and the covariance
    are not ported yet), so the cupy backend fits every family, identically."""
    return st.REFERENCE[type(stat)](stat, as_float32(x).get())


#: The device implementation of each statistic (:mod:`gpuquant.schemes.statistics`).
DEVICE: dict[type[st.Statistic], Any] = {
    st.MinMax: lambda stat, x: minmax(x, stat.axis == 0),
    st.AbsMax: _absmax,
    st.Quantile: lambda stat, x: quantile_range(x, stat.q, stat.method, stat.axis == 0),
    st.ColumnMean: _column_mean,
    st.ColumnMedian: _column_median,
    st.ColumnMeanF32: _on_the_host,
    st.KMeans: _on_the_host,
    st.Covariance: _on_the_host,
}
