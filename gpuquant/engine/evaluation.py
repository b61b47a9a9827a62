"""``evaluate`` out of core: the figures of :func:`gpuquant.evaluate.evaluate` on a corpus read in
batches (any input :func:`gpuquant.engine.sources.open_source` reads), or on a seeded sample of it.

With ``sample_rows=N`` the corpus is ``N`` rows drawn without replacement by numpy's PCG64 seeded
with ``seed`` (sorted, read with one gather) and evaluated in memory exactly as
:func:`~gpuquant.evaluate.evaluate` does. Otherwise the queries (the ``queries`` given, or the
first ``n_queries`` rows held out) stay in memory and the rest streams once:

* the quantizer is fitted on the corpus rows (the streaming fit) when it needs a fit;
* each batch is encoded and decoded; ``sum (x' - x)**2``, ``sum x**2`` and the rows' cosines are
  added up in float64, so ``mse = sum (x' - x)**2 / (N d)``, ``relative_error =
  sqrt(sum (x' - x)**2 / sum x**2)`` and ``mean_cosine`` are those of the whole corpus (up to the
  order of the float sums);
* the exact top-k (``q . x`` in float32) and the code search's top-k (or ``k * rescore``
  candidates) are merged batch by batch: the k largest of the running k and the batch's scores;
* rescoring gathers the candidate rows once at the end (the originals, or re-encoded ones).

Memory: two input batches, their codes and reconstructions, and ``n_queries x batch`` scores,
whatever the corpus size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.api import Quantizer
from gpuquant.engine.fit import FIT_BATCH_VALUES, batches
from gpuquant.engine.local import fit_streaming, needs_streaming_fit, prepared_rows
from gpuquant.engine.progress import Progress
from gpuquant.engine.sources import Source, open_source
from gpuquant.errors import InputError
from gpuquant.evaluate import _recall, _rescore, _search_space, _top_k, check_options, evaluate

F32 = np.float32


class _Tail(Source):
    """Rows ``[start, inner.rows)`` of ``inner`` (the corpus after the held-out queries)."""

    def __init__(self, inner: Source, start: int) -> None:
        super().__init__()
        self.inner, self.start = inner, start
        self.kind, self.label, self.dtype = inner.kind, inner.label, inner.dtype
        self.shape = (inner.rows - start, inner.dim)

    def read_into(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        return self.inner.read_into(self.start + start, self.start + stop, out)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.inner.take(np.asarray(rows, np.int64) + self.start)


class _TopK:
    """The k largest scores per query seen so far, and their row numbers."""

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((n_queries, 0), -np.inf, F32)
        self.ids = np.zeros((n_queries, 0), np.int64)

    def add(self, scores: np.ndarray, first_row: int) -> None:
        ids = np.broadcast_to(np.arange(first_row, first_row + scores.shape[1]), scores.shape)
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, ids], axis=1)
        keep = _top_k(np, all_scores, self.k)
        self.scores = np.take_along_axis(all_scores, keep, axis=1)
        self.ids = np.take_along_axis(all_ids, keep, axis=1)


def evaluate_input(src: Any, quantizer: Quantizer | str, queries: Any = None, *, k: int = 10, n_queries: int = 1000,
                   rescore: int | None = None, rescore_with: str = "original", backend: str = "auto",
                   shape: Any = None, sample_rows: int | None = None, seed: int = 0,
                   batch_rows: int | None = None, progress: bool = False, column: str | None = None,
                   dataset: str | None = None) -> dict[str, Any]:
    """:func:`gpuquant.evaluate.evaluate` of the corpus ``src`` read in batches, or of a seeded
    sample of ``sample_rows`` of its rows (see the module docstring); ``progress`` draws the
    stream's progress bar on stderr (when it is a terminal; logged either way); ``shape``, ``column``
    and ``dataset`` are :func:`~gpuquant.engine.sources.open_source`'s."""
    source = open_source(src, shape=shape, column=column, dataset=dataset)
    try:
        if sample_rows is not None:
            if sample_rows < 2:
                raise InputError(f"sample_rows must be at least 2, got {sample_rows}")
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(source.rows, size=min(sample_rows, source.rows), replace=False))
            report = evaluate(np.asarray(source.take(idx), F32), quantizer, queries, k=k, n_queries=n_queries,
                              rescore=rescore, rescore_with=rescore_with, backend=backend)
            return {**report, "sample_rows": int(idx.size), "seed": seed}
        return _stream(source, quantizer, queries, k=k, n_queries=n_queries, rescore=rescore,
                       rescore_with=rescore_with, backend=backend, batch_rows=batch_rows, progress=progress)
    finally:
        source.close()


def _split(source: Source, queries: Any, n_queries: int) -> tuple[np.ndarray, Source]:
    """(the queries, the corpus rows) as :func:`gpuquant.evaluate.evaluate` splits them."""
    if queries is None:
        if not 0 < n_queries < source.rows:
            raise InputError(f"n_queries must be in [1, {source.rows - 1}] for {source.rows} rows, got {n_queries}")
        return np.asarray(source.read(0, n_queries), F32), _Tail(source, n_queries)
    queries = np.asarray(queries, F32)
    if queries.ndim != 2 or queries.shape[1] != source.dim:
        raise InputError(f"queries must be 2-D with the corpus's {source.dim} dimensions, got shape {queries.shape}")
    return queries, source


def _fit(q: Quantizer, corpus: Source) -> None:
    if q.is_fitted:
        return
    if not needs_streaming_fit(q):
        q.fit(corpus.take(np.arange(1)))
        return
    q.scheme.check_dim(prepared_rows(q, corpus).dim)
    fit_streaming(q, corpus)


def _stream(source: Source, quantizer: Quantizer | str, queries: Any, *, k: int, n_queries: int,
            rescore: int | None, rescore_with: str, backend: str, batch_rows: int | None,
            progress: bool) -> dict[str, Any]:
    check_options(k, rescore, rescore_with)
    queries, corpus = _split(source, queries, n_queries)
    n, d = corpus.shape
    if k > n:
        raise InputError(f"k={k} exceeds the corpus size {n}")
    q = Quantizer(quantizer, backend=backend) if isinstance(quantizer, str) else quantizer
    _fit(q, corpus)
    q_vecs = _search_space(q, None, queries)[0]
    truth = _TopK(len(queries), k)
    found = _TopK(len(queries), k if rescore is None else min(k * rescore, n))
    sq_diff = sq_seen = cos_sum = 0.0
    cos_rows = code_bytes = first = 0
    bar = Progress(n, corpus.row_bytes, enabled=progress, label="evaluating")
    try:
        for x in batches(corpus, batch_rows or max(1, FIT_BATCH_VALUES // d)):
            codes = q.transform(x)
            recon = np.asarray(q.inverse_transform(codes), F32)
            seen = q._prepare(x)
            diff = (recon - seen).astype(np.float64)
            sq_diff += float((diff * diff).sum())
            sq_seen += float((seen.astype(np.float64) ** 2).sum())
            norms = np.linalg.norm(seen, axis=1) * np.linalg.norm(recon, axis=1)
            nonzero = norms > 0
            cos_sum += float(((seen * recon).sum(axis=1)[nonzero] / norms[nonzero]).astype(np.float64).sum())
            cos_rows += int(nonzero.sum())
            code_bytes += int(codes.nbytes)
            truth.add(queries @ x.T, first)
            found.add(q_vecs @ recon.T, first)
            first += x.shape[0]
            bar.update(first)
    finally:
        bar.close()
    report: dict[str, Any] = {
        "scheme": q.name, "rows": int(n), "queries": len(queries), "dims": int(d), "k": k,
        "mse": sq_diff / (n * (q.truncate_dim or d)), "relative_error": float(np.sqrt(sq_diff / sq_seen)),
        "mean_cosine": cos_sum / cos_rows if cos_rows else float("nan"),
        "recall_at_k": _recall(np, _top_slice(found.ids, found.scores, k), truth.ids),
        "bytes_per_vector": code_bytes / max(1, n),
    }
    if rescore is not None:
        report.update(rescore=rescore, rescore_with=rescore_with,
                      recall_at_k_rescored=_recall(np, _rescored(q, corpus, queries, found.ids, k, rescore_with),
                                                   truth.ids))
    return report


def _top_slice(ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k best of the running candidates (all of them when there are k)."""
    return ids if ids.shape[1] == k else np.take_along_axis(ids, _top_k(np, scores, k), axis=1)


def _rescored(q: Quantizer, corpus: Source, queries: np.ndarray, candidates: np.ndarray, k: int,
              rescore_with: str) -> np.ndarray:
    """The top k of each query's candidates re-ranked against the original (or reconstructed) rows."""
    rows = np.unique(candidates)
    x = np.asarray(corpus.take(rows), F32)
    if rescore_with == "reconstructed":
        x, queries = np.asarray(q.inverse_transform(q.transform(x)), F32), q._prepare(queries)
    picked = _rescore(np, queries, x, np.searchsorted(rows, candidates), k)
    return rows[picked]
