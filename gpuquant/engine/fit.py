"""Fitting over a stream: the same state as the in-memory ``Quantizer.fit``, without holding the rows.

A scheme declares the statistics its fit needs (:mod:`gpuquant.schemes.statistics`); this module
computes each statistic over rows it cannot hold at once, and the scheme turns the results into its
state (``scheme.from_statistics``). Rows are converted to float32 first, as everywhere.

* schemes without a fit spec (no state, or state known without data): nothing to read.
* inputs of at most :data:`GATHER_BYTES` as float32: every row is read and the reference
  ``scheme.fit`` runs on them: identical by construction.
* ``MinMax`` and ``AbsMax``: one pass of per-column min and max (NaN propagates); the reference
  statistic then runs on the 2-row summary ``[mins; maxs]``, whose min, max and max |x| (global or
  per column) are exactly those of all rows, so the values and every check (NaN, ±Inf) are the
  reference's own.
* ``Quantile`` with ``method="cuvs"``: the sample is ``sample_rows(n, min(1e6 // d, n))`` (at most
  a million values), gathered by row (random reads, not a full pass) and given to the reference,
  which then uses all of them: identical to the in-memory fit at any size.
* ``Quantile`` with ``method="exact"`` and ``ColumnMedian``: exact order statistics by a radix
  select over order-preserving uint32 keys: three passes (11, 11 and 10 bits of the key), each a
  histogram of the next digit among the values whose higher digits match the ranks' prefix, per
  column or over all values. No sort, memory bounded by one batch and ``d * 2048`` counters.
  Equal to ``np.partition``'s values (a zero may come back as -0.0 where the reference has +0.0 or
  the other way round: they compare equal and give the same codes).
* ``ColumnMean``: a float64 column sum accumulated row by row in the input's order (numpy's own
  order for ``X.sum(axis=0, dtype=float64)`` on a C-ordered matrix), divided by n, rounded to
  float32: equal to the reference.
* ``ColumnMeanF32``: the float32 running sum carried from batch to batch in row order
  (:meth:`Rows.fold`): the reference's own loop, so equal to it.
* ``KMeans``: the training rows (:func:`gpuquant.schemes.statistics.train_rows`) gathered by row,
  then the reference's k-means on them: identical at any size.
* ``Covariance``: per-block float64 moments merged by addition; the blocks' order changes the
  float64 sums' last bits only (one block, as for inputs the reference could hold: identical).

NaN is refused exactly where the reference refuses it, with the reference's message, naming the
first row of the input that holds it (a pass over the input, on that error only).

The math is written once, in :func:`fit_rows`, against :class:`Rows` (read all, take sampled rows,
a map-and-merge over row blocks, a float64 column sum): :class:`StreamRows` reads a :class:`Source`
in batches here; ``gpuquant.cluster.DaskRows`` computes the per-block partials on a Dask cluster.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from gpuquant.engine.sources import Source
from gpuquant.errors import InputError
from gpuquant.schemes import statistics as st
from gpuquant.schemes.base import (
    F32,
    F64,
    State,
    keys_to_values,
    order_keys,
)

log = logging.getLogger("gpuquant.engine")

#: Inputs up to this many float32 bytes are fitted in memory (all rows gathered).
GATHER_BYTES = 256 * 2**20
#: Values per batch of a fit pass.
FIT_BATCH_VALUES = 1 << 22
DIGITS = (11, 11, 10)  # radix-select digit widths, most significant first


def batches(source: Source, batch_rows: int | None = None) -> Iterator[np.ndarray]:
    """float32 batches of the whole source, in order; the next batch is read (into the second of
    two reused buffers) while the caller works on the current one."""
    rows = batch_rows or max(1, FIT_BATCH_VALUES // source.dim)
    bufs = [np.empty((min(rows, source.rows), source.dim), source.dtype) for _ in range(2)]
    ranges = [(a, min(source.rows, a + rows)) for a in range(0, source.rows, rows)]
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpuquant-fit-reader")
    try:
        pending = pool.submit(source.read_into, *ranges[0], bufs[0]) if ranges else None
        for i in range(len(ranges)):
            x = pending.result()  # type: ignore[union-attr]
            if i + 1 < len(ranges):
                pending = pool.submit(source.read_into, *ranges[i + 1], bufs[(i + 1) % 2])
            yield np.asarray(x, dtype=F32)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _split(x: np.ndarray, fn: Callable[[np.ndarray], Any]) -> list[Any]:
    """``fn`` over row slices of ``x`` on the numpy backend's threads (numpy releases the GIL)."""
    from gpuquant.backends.numpy_backend import _pool, worker_count

    parts = max(1, min(worker_count(), x.shape[0] // 1024))
    if parts == 1:
        return [fn(x)]
    edges = np.linspace(0, x.shape[0], parts + 1).astype(int)
    return [f.result() for f in [_pool().submit(fn, x[a:b]) for a, b in itertools.pairwise(edges)]]


class Rows:
    """The row access a fit needs, so that one implementation of the math serves every layout:
    :class:`StreamRows` (a :class:`Source`, batches in order on this machine) and
    ``gpuquant.cluster``'s rows of a Dask array (per-chunk partials merged on the client)."""

    shape: tuple[int, int]

    def read_all(self) -> np.ndarray:
        """Every row, float32."""
        raise NotImplementedError

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at the sorted indices ``rows``, float32."""
        raise NotImplementedError

    def reduce(self, fn: Callable[[np.ndarray], Any], merge: Callable[[Any, Any], Any]) -> Any:
        """``fn`` over float32 row blocks covering every row once, partials combined with ``merge``
        (associative and commutative: the blocks may be merged in any order)."""
        raise NotImplementedError

    def column_sum(self) -> np.ndarray:
        """float64 column sums (``InputError`` on NaN)."""
        raise NotImplementedError

    def first_bad_row(self, nonfinite: bool) -> int | None:
        """The first row holding NaN (or ±Inf too, when ``nonfinite``); None where not known."""
        return None

    def fold(self, fn: Callable[[Any, np.ndarray], Any], init: Any) -> Any:
        """``acc = fn(acc, block)`` over float32 row blocks in row order, one after the other, from
        ``acc = init`` (for sums whose order is part of the result)."""
        raise NotImplementedError


class StreamRows(Rows):
    """:class:`Rows` of a :class:`Source` read in batches, with read-ahead and per-batch work split
    over the numpy backend's threads."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.shape = source.shape

    def read_all(self) -> np.ndarray:
        return np.asarray(self.source.read(0, self.source.rows), dtype=F32)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.source.take(rows), dtype=F32)

    def reduce(self, fn: Callable[[np.ndarray], Any], merge: Callable[[Any, Any], Any]) -> Any:
        acc = None
        for x in batches(self.source):
            for part in _split(x, fn):
                acc = part if acc is None else merge(acc, part)
        return acc

    def column_sum(self) -> np.ndarray:
        """Accumulated row by row in the input's order: numpy's own order for
        ``X.sum(axis=0, dtype=float64)`` on a C-ordered matrix."""
        acc = np.zeros(self.source.dim, F64)
        for x in batches(self.source):
            acc = add_rows(acc, x)
        return acc

    def first_bad_row(self, nonfinite: bool) -> int | None:
        start = 0
        for x in batches(self.source):
            bad = ~np.isfinite(x) if nonfinite else np.isnan(x)
            if bad.any():
                return start + st.first_row(bad)
            start += x.shape[0]
        return None

    def fold(self, fn: Callable[[Any, np.ndarray], Any], init: Any) -> Any:
        acc = init
        for x in batches(self.source):
            acc = fn(acc, x)
        return acc


def add_rows(acc: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``acc`` plus every row of ``x`` in float64, one row after the other (``RowError`` on NaN)."""
    st.refuse_nan(x)
    return np.add.reduce(np.concatenate([acc[None, :], x.astype(F64)]), axis=0)


def merge_minmax(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(a[0], b[0]), np.maximum(a[1], b[1])


def block_minmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.min(axis=0), x.max(axis=0)


def merge_hists(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    return [p + q for p, q in zip(a, b, strict=True)]


def fit_stream(scheme: Any, source: Source, *, gather_bytes: int = GATHER_BYTES,
               on_pass: Callable[[str], None] | None = None) -> State:
    """The state ``scheme.fit`` would compute on all rows of ``source`` (see the module docstring)."""
    return fit_rows(scheme, StreamRows(source), gather_bytes=gather_bytes, on_pass=on_pass)


def fit_rows(scheme: Any, rows: Rows, *, gather_bytes: int = GATHER_BYTES,
             on_pass: Callable[[str], None] | None = None) -> State:
    """The state ``scheme.fit`` would compute on all of ``rows`` (see the module docstring); a NaN
    (or ±Inf) refusal names the first such row of the input where ``rows`` can find it."""
    try:
        return _fit_rows(scheme, rows, gather_bytes, on_pass)
    except st.RowError as exc:
        if exc.of_input:
            raise
        row = rows.first_bad_row(nonfinite=exc.template == st.NONFINITE_FIT_ROW)
        if row is None:
            raise InputError(st.ROW_FREE[exc.template]) from None
        raise st.RowError(row, exc.template, of_input=True) from None


def _fit_rows(scheme: Any, rows: Rows, gather_bytes: int, on_pass: Callable[[str], None] | None) -> State:
    n, d = rows.shape
    say = on_pass or (lambda what: log.info("fit: %s", what))
    spec = scheme.fit_spec()
    if spec is None:  # no state to learn, or one known without data
        return scheme.fit(np.empty((0, d), F32))
    if n * d * 4 <= gather_bytes:
        say(f"reading all {n} rows")
        try:
            return scheme.fit(rows.read_all())
        except st.RowError as exc:
            raise exc.shifted(0) from None
    st.require_rows(n, spec.min_rows, spec.why)
    results = {name: _streamed(stat, rows, say) for name, stat in spec.stats.items()}
    return scheme.from_statistics(results)


def fit_pre_transform(pre: Any, rows: Rows, on_pass: Callable[[str], None] | None = None) -> None:
    """Fit a quantizer's pre-transform (:class:`gpuquant.transforms.PreTransform`) on ``rows`` (after
    the Matryoshka step) by the streamed statistics it asks for."""
    say = on_pass or (lambda what: log.info("pre-transform fit: %s", what))
    pre.fit(lambda stat: _streamed(stat, rows, say), rows.shape[1])


def _streamed(stat: st.Statistic, rows: Rows, say: Callable[[str], None]) -> Any:
    """``stat`` computed over ``rows`` by its streaming implementation (:data:`STREAMING`)."""
    return st.implementation(STREAMING, stat, "the streaming fit")(stat, rows, say)


def _on_sample(fn: Callable[[np.ndarray], Any], rows: Rows, idx: np.ndarray) -> Any:
    """``fn`` on the rows ``idx`` of ``rows``; a ``RowError`` names its row as a row of the input."""
    try:
        return fn(rows.take(idx))
    except st.RowError as exc:
        raise st.RowError(int(idx[exc.row]), exc.template, of_input=True) from None


def _summary(stat: st.Statistic, rows: Rows, say: Callable[[str], None]) -> Any:
    """``MinMax`` / ``AbsMax``: the reference on the 2-row summary of per-column mins and maxes."""
    say("min/max pass")
    lo, hi = rows.reduce(block_minmax, merge_minmax)
    return st.REFERENCE[type(stat)](stat, np.stack([np.asarray(lo, F32), np.asarray(hi, F32)]))


def _quantile(stat: st.Quantile, rows: Rows, say: Callable[[str], None]) -> Any:
    n, d = rows.shape
    if stat.method == "cuvs":
        idx = st.quantile_rows(stat, n, d)
        idx = np.arange(n) if idx is None else idx
        say(f"gathering the {idx.size} sampled rows")
        return _on_sample(lambda x: st.REFERENCE[st.Quantile](stat, x), rows, idx)
    per_dim = stat.axis == 0
    lo_pos, hi_pos = st.quantile_positions(n if per_dim else n * d, stat.q)
    return tuple(select(rows, [lo_pos, hi_pos], per_dim, say))


def _column_mean(stat: st.ColumnMean, rows: Rows, say: Callable[[str], None]) -> np.ndarray:
    say("column sums")
    return (rows.column_sum() / rows.shape[0]).astype(F32)


def _column_median(stat: st.ColumnMedian, rows: Rows, say: Callable[[str], None]) -> np.ndarray:
    return st.median_of(*select(rows, list(st.median_ranks(rows.shape[0])), True, say))


def _column_mean_f32(stat: st.ColumnMeanF32, rows: Rows, say: Callable[[str], None]) -> np.ndarray:
    say("float32 running column sums")

    def add(total: np.ndarray, x: np.ndarray) -> np.ndarray:
        st.refuse_nonfinite(x)
        return st.running_column_sum(total, x)

    return st.mean_f32(rows.fold(add, np.zeros(rows.shape[1], F32)), rows.shape[0])


def _kmeans(stat: st.KMeans, rows: Rows, say: Callable[[str], None]) -> np.ndarray:
    idx = st.train_rows(rows.shape[0], stat.max_rows, stat.seed)
    say(f"gathering the {idx.size} k-means training rows")
    return _on_sample(lambda x: st.kmeans_codebooks(stat, x), rows, idx)


def _covariance(stat: st.Covariance, rows: Rows, say: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    say("float64 moments (column sums and X^T X)")
    return st.covariance_of(rows.reduce(st.moments, st.merge_moments))


#: The streaming implementation of each statistic (:mod:`gpuquant.schemes.statistics`).
STREAMING: dict[type[st.Statistic], Callable[[Any, Rows, Callable[[str], None]], Any]] = {
    st.MinMax: _summary,
    st.AbsMax: _summary,
    st.Quantile: _quantile,
    st.ColumnMean: _column_mean,
    st.ColumnMedian: _column_median,
    st.ColumnMeanF32: _column_mean_f32,
    st.KMeans: _kmeans,
    st.Covariance: _covariance,
}


# --------------------------------------------------------------------------------------------
# radix select


def select(source: Source | Rows, ranks: list[int], per_dim: bool,
           say: Callable[[str], None] = lambda _: None) -> list[np.ndarray]:
    """Exact order statistics at ``ranks`` (0-based, ascending) of every column (``per_dim``) or of all
    values, by three streaming radix-select passes. Returns one float32 array per rank, shape (d,)
    or (1,). Refuses NaN like the reference (``fit data contains NaN``)."""
    rows = source if isinstance(source, Rows) else StreamRows(source)
    d = rows.shape[1]
    cols = d if per_dim else 1
    prefix = [np.zeros(cols, np.uint32) for _ in ranks]
    remaining = [np.full(cols, r, np.int64) for r in ranks]
    shift_done = 32
    for pass_no, width in enumerate(DIGITS):
        shift = shift_done - width
        bins = 1 << width
        say(f"radix select pass {pass_no + 1} of {len(DIGITS)}")
        offsets = (np.arange(d, dtype=np.intp) * bins)[None, :] if per_dim else np.intp(0)
        wanted = [(p[None, :] if per_dim else p[0]) for p in prefix]

        def count(x: np.ndarray, pass_no: int = pass_no, shift: int = shift, shift_done: int = shift_done,
                  bins: int = bins, offsets: Any = offsets, wanted: list[Any] = wanted) -> list[np.ndarray]:
            """This pass's histograms (one per rank) of the rows ``x``."""
            if pass_no == 0:
                st.refuse_nan(x)
            keys = order_keys(x)
            flat = ((keys >> np.uint32(shift)) & np.uint32(bins - 1)).astype(np.intp)
            flat += offsets
            if pass_no == 0:
                return [np.bincount(flat.reshape(-1), minlength=cols * bins)] * len(ranks)
            high = keys >> np.uint32(shift_done)
            return [np.bincount(flat[high == want], minlength=cols * bins) for want in wanted]

        hists = rows.reduce(count, merge_hists)
        for j in range(len(ranks)):
            h = hists[j].reshape(cols, bins)
            cum = np.cumsum(h, axis=1)
            bucket = (cum <= remaining[j][:, None]).sum(axis=1)
            below = np.where(bucket > 0, cum[np.arange(cols), np.maximum(bucket - 1, 0)], 0)
            remaining[j] = remaining[j] - below
            prefix[j] = (prefix[j] << np.uint32(width)) | bucket.astype(np.uint32)
        shift_done = shift
    return [keys_to_values(p) for p in prefix]


__all__ = ["GATHER_BYTES", "Rows", "StreamRows", "fit_pre_transform", "fit_rows", "fit_stream", "keys_to_values",
           "order_keys", "select"]
