"""Quality of a scheme on real data: reconstruction error and search recall against float32.

``evaluate(X, quantizer, queries=None, k=10, rescore=None)`` quantizes the corpus ``X`` (fitting
the quantizer on it first when it needs a fit and is not fitted) and reports:

* ``mse``: mean of ``(x' - x)**2`` over all values; ``relative_error``: ``||X' - X||_F / ||X||_F``;
  ``mean_cosine``: mean over rows of ``cos(x, x')`` (rows of zero norm skipped);
* ``recall_at_k``: for each query, the fraction of its exact top-k neighbours (largest inner
  product ``q . x`` in float32 over the corpus) that a search over the codes finds. The code search
  ranks by ``q . x'`` with ``x'`` the reconstruction (dequantized dot product) for scalar and float
  formats; for binary codes it ranks by Hamming distance between the binarized query and the codes,
  computed exactly as ``d - 2 * hamming = s(q) . s(x)`` on the ±1 decodings; families with their
  peer's estimator (``rabitq``, ``pq``: ``scheme.has_estimator``) rank by it (the scheme's
  ``search_scores``, float query; :func:`gpuquant.estimate.estimate`);
* ``recall_at_k_rescored`` (when ``rescore=m``): the code search keeps ``k * m`` candidates, which
  are re-ranked with the float32 query against the original rows (``rescore_with="original"``) or
  the reconstructions (``"reconstructed"``), and the top k of those are compared;
* ``bytes_per_vector``: code bytes plus side-array bytes per row.

With ``truncate_dim=k`` on the quantizer, the errors and cosines compare the reconstruction with
what the scheme quantized (the truncated, renormalised rows), while the exact neighbours, and the
rescoring against the original rows, use the full-dimensional float32 data: recall then measures
truncation and quantization together, as a search over the stored codes would see them. The code
search and the rescoring against reconstructions use the queries truncated the same way.

Without ``queries``, the first ``n_queries`` rows of ``X`` are held out as queries and searched
against the rest. Runs where the data lives: numpy arrays on the CPU, CuPy arrays on the GPU (the
quantizer's backend must be able to take them). Search is done in blocks of queries, so memory
stays at ``block * n_corpus`` float32 scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant._validate import as_matrix
from gpuquant.api import Quantizer
from gpuquant.backends import array_module
from gpuquant.errors import InputError

QUERY_BLOCK = 256


def _top_k(xp: Any, scores: Any, k: int) -> Any:
    """Indices of the k largest scores per row (order within the k unspecified)."""
    k = min(k, scores.shape[1])
    return xp.argpartition(-scores, k - 1, axis=1)[:, :k]


def _search(xp: Any, queries: Any, corpus: Any, *ks: int, score: Any = None) -> list[Any]:
    """Indices of the top ``k`` inner products (or ``score(query block)``, larger is nearer) of each
    query, for each ``k`` in ``ks``, from one score block per query block."""
    out: list[list[Any]] = [[] for _ in ks]
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        block = queries[start:start + QUERY_BLOCK]
        scores = block @ corpus.T if score is None else score(block)
        for found, k in zip(out, ks, strict=True):
            found.append(_top_k(xp, scores, k))
    return [xp.concatenate(found) if found else xp.zeros((0, k), np.int64) for found, k in zip(out, ks, strict=True)]


def _recall(xp: Any, found: Any, truth: Any) -> float:
    k = truth.shape[1]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits) / (truth.shape[0] * k)


def _rescore(xp: Any, queries: Any, rows: Any, candidates: Any, k: int) -> Any:
    picked = []
    for start in range(0, queries.shape[0], QUERY_BLOCK):
        cand = candidates[start:start + QUERY_BLOCK]
        scores = xp.einsum("qd,qcd->qc", queries[start:start + QUERY_BLOCK], rows[cand])
        order = _top_k(xp, scores, k)
        picked.append(xp.take_along_axis(cand, order, axis=1))
    return xp.concatenate(picked)


def _search_space(q: Quantizer, codes_recon: Any, queries: Any) -> tuple[Any, Any]:
    """(query vectors, corpus vectors) the code search ranks by inner product."""
    if q.scheme.search_in_code_space:
        return q.inverse_transform(q.transform(queries)), codes_recon
    return q._prepare(queries), codes_recon


def _code_scores(q: Quantizer, codes: Any) -> Any:
    """The code search's scorer (larger is nearer) for schemes with a peer estimator, else None."""
    if not q.scheme.has_estimator:
        return None
    data = np.asarray(codes.data)
    return lambda block: q.scheme.search_scores(q._transformed(block).astype(np.float32), data, q.state)

def check_options(k: int, rescore: int | None, rescore_with: str) -> None:
    """``InputError`` for a ``k``, ``rescore`` or ``rescore_with`` that :func:`evaluate` cannot take."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if rescore is not None and rescore < 1:
        raise InputError(f"rescore must be >= 1 (candidates = k * rescore), got {rescore}")
    if rescore_with not in ("original", "reconstructed"):
        raise InputError(f"rescore_with must be 'original' or 'reconstructed', got {rescore_with!r}")
    if rescore is None and rescore_with != "original":
        raise InputError(f"rescore_with={rescore_with!r} needs rescore (the number of candidates to re-rank); "
                         "without it nothing is rescored")


def sample_recall(q: Quantizer, queries: np.ndarray, corpus: np.ndarray, recon: np.ndarray, k: int = 10) -> float:
    """recall@k of the code search (``queries`` against ``recon``, the decoded codes of ``corpus``)
    against the exact float32 search of ``corpus``: the convert report's sample of a code-space scheme."""
    (truth,) = _search(np, queries, corpus, k)
    q_vecs, c_vecs = _search_space(q, recon, queries)
    (found,) = _search(np, q_vecs, c_vecs, k)
    return _recall(np, found, truth)


def evaluate(
    X: Any,
    quantizer: Quantizer | str,
    queries: Any = None,
    *,
    k: int = 10,
    n_queries: int = 1000,
    rescore: int | None = None,
    rescore_with: str = "original",
    backend: str = "auto",
) -> dict[str, Any]:
    """Reconstruction error and recall@k of ``quantizer`` on corpus ``X`` (see the module docstring)."""
    X = as_matrix(X)
    check_options(k, rescore, rescore_with)
    xp = array_module(X)
    X = X.astype(np.float32, copy=False)
    if queries is None:
        if not 0 < n_queries < X.shape[0]:
            raise InputError(f"n_queries must be in [1, {X.shape[0] - 1}] for {X.shape[0]} rows, got {n_queries}")
        queries, X = X[:n_queries], X[n_queries:]
    else:
        queries = as_matrix(queries, "queries").astype(np.float32, copy=False)
        if queries.shape[1] != X.shape[1]:
            raise InputError(f"queries have {queries.shape[1]} dimensions, the corpus {X.shape[1]}")
    if k > X.shape[0]:
        raise InputError(f"k={k} exceeds the corpus size {X.shape[0]}")

    q = Quantizer(quantizer, backend=backend) if isinstance(quantizer, str) else quantizer
    if not q.is_fitted:
        q.fit(X)
    codes = q.transform(X)
    q.check_refusals()  # device input: the rows the transform refused raise before any use of its codes
    recon = q.inverse_transform(codes)

    seen = q._prepare(X)  # what the scheme quantized: X itself, or its Matryoshka truncation
    diff = recon - seen
    norms = xp.linalg.norm(seen, axis=1) * xp.linalg.norm(recon, axis=1)
    nonzero = norms > 0
    cosines = (seen * recon).sum(axis=1)[nonzero] / norms[nonzero]
    (truth,) = _search(xp, queries, X, k)
    score = _code_scores(q, codes)
    q_vecs, c_vecs = (queries, recon) if score else _search_space(q, recon, queries)
    ks = [k] if rescore is None else [k, min(k * rescore, X.shape[0])]  # top k, and the rescoring candidates
    found, *candidates = _search(xp, q_vecs, c_vecs, *ks, score=score)
    report: dict[str, Any] = {
        "scheme": q.name,
        "rows": int(X.shape[0]),
        "queries": int(queries.shape[0]),
        "dims": int(X.shape[1]),
        "k": k,
        "mse": float((diff * diff).mean()),
        "relative_error": float(xp.linalg.norm(diff) / xp.linalg.norm(seen)),
        "mean_cosine": float(cosines.mean()) if cosines.size else float("nan"),
        "recall_at_k": _recall(xp, found, truth),
        "bytes_per_vector": codes.nbytes / max(1, len(codes)),
    }
    if rescore is not None:
        if rescore_with == "original":
            rescored = _rescore(xp, queries, X, candidates[0], k)
        else:
            rescored = _rescore(xp, q._prepare(queries), recon, candidates[0], k)
        report["rescore"] = rescore
        report["rescore_with"] = rescore_with
        report["recall_at_k_rescored"] = _recall(xp, rescored, truth)
    return report
