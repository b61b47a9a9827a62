"""Family ``pq``: product quantization, the codes FAISS's ``ProductQuantizer`` writes.

Parameters
----------
m : sub-quantizers; the dimension must be a multiple of ``m`` (sub-space ``j`` holds dimensions
    ``j * d/m`` to ``(j + 1) * d/m - 1``).
nbits : 8 (one byte per sub-quantizer) or 4 (two per byte, sub-quantizer ``2k`` in the low nibble
    of byte ``k``, as FAISS packs them; an odd ``m`` leaves the last high nibble 0).
iterations, seed, max_train_rows : the k-means fit (the statistic
    :class:`~gpuquant.schemes.statistics.KMeans`, :mod:`gpuquant.schemes.kmeans`), one per sub-space
    on the same training rows: at most ``max_train_rows`` rows drawn without replacement with
    ``numpy.random.default_rng(seed)`` (all rows when there are fewer), then k-means with
    ``seed + j`` for sub-space ``j``. It needs at least ``2**nbits`` rows.

State: ``centroids``, float32 ``(m, 2**nbits, d/m)``. Encoding: in each sub-space the index of the
nearest centroid in squared L2 distance (float64, the lowest index on ties: FAISS computes float32
distances, so where two centroids are equally near within float32 rounding it may pick the other).
Decoding: the chosen centroids side by side (FAISS ``decode``). Rows holding NaN or ±Inf are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.base import (
    Params,
    Scheme,
    State,
    StateSpec,
    choice,
    is_integer,
    pack_nibbles,
    refuse_nonfinite_rows,
    unpack_nibbles,
)
from gpuquant.schemes.kmeans import nearest
from gpuquant.schemes.statistics import FitSpec, KMeans

NONFINITE_WHY = "product quantization needs finite values"


def pq_encode(X: np.ndarray, centroids: np.ndarray, nbits: int) -> np.ndarray:
    """uint8 codes: ``(n, m)`` for 8 bits, ``(n, ceil(m/2))`` for 4."""
    m, _, dsub = centroids.shape
    sub = X.reshape(X.shape[0], m, dsub)
    idx = np.stack([nearest(sub[:, j], centroids[j])[0] for j in range(m)], axis=1).astype(np.uint8)
    return idx if nbits == 8 else pack_nibbles(idx, "low_first")


def pq_decode(codes: np.ndarray, centroids: np.ndarray, nbits: int) -> np.ndarray:
    """float32 ``(n, m * d/m)``: each sub-space's centroid, side by side."""
    m = centroids.shape[0]
    idx = codes if nbits == 8 else unpack_nibbles(codes, m, "low_first")
    return centroids[np.arange(m), idx.astype(np.intp)].reshape(codes.shape[0], -1)


def _integer_at_least(key: str, value: Any, least: int) -> int:
    if not is_integer(value) or value < least:
        raise InputError(f"{key} must be an integer >= {least} for pq, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class PqParams(Params):
    """Parameters of the ``pq`` family (see the module docstring), checked once."""

    m: int = 8
    nbits: int = 8
    iterations: int = 25
    seed: int = 1234
    max_train_rows: int = 65536

    def __post_init__(self) -> None:
        choice("nbits", self.nbits, (4, 8))
        for key, least in {"m": 1, "iterations": 0, "seed": 0, "max_train_rows": 1}.items():
            self._set(key, _integer_at_least(key, getattr(self, key), least))


class PqScheme(Scheme):
    """Product quantization with k-means codebooks (see the module docstring)."""

    family = "pq"
    params_type = PqParams
    config: PqParams
    nonfinite_rows_refused = "nearest centroids"

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        m = self.config.m
        return (n, m if self.config.nbits == 8 else (m + 1) // 2)

    def check_dim(self, d: int) -> None:
        if d % self.config.m:
            raise InputError(f"pq with m={self.config.m} needs a dimension that m divides, got {d}")

    def describe(self) -> dict[str, Any]:
        p = self.config
        return {"scope": f"{p.m} sub-spaces", "range_method": f"k-means, {p.iterations} iterations, seed {p.seed}",
                "rounding": "nearest centroid (lowest index on ties)",
                "bit_order": "one byte per code" if p.nbits == 8 else "low nibble first", "encoding": "unsigned"}

    def fit_spec(self) -> FitSpec | None:
        p = self.config
        k = 1 << p.nbits
        return FitSpec({"centroids": KMeans(p.m, k, p.iterations, p.seed, p.max_train_rows)}, k,
                       f"{k} k-means centroids")

    def from_statistics(self, stats: dict[str, Any]) -> State:
        return {"centroids": np.asarray(stats["centroids"], np.float32)}

    def state_spec(self, d: int) -> StateSpec:
        m = self.config.m
        return {"centroids": ((m, 1 << self.config.nbits, d // m), np.dtype(np.float32))}

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        refuse_nonfinite_rows(X, NONFINITE_WHY)
        codes[...] = pq_encode(X, (state or {})["centroids"], self.config.nbits)

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        return pq_decode(np.asarray(codes), (state or {})["centroids"], self.config.nbits)

    def estimate(self, Q: np.ndarray, codes: np.ndarray, state: State | None, *, qb: int = 0,
                 metric: str | None = None) -> np.ndarray:
        """The asymmetric distance (ADC): the float query against each row's centroids, inner
        products ``<q, x'>`` (``metric="ip"``, the default) or squared distances ``|q - x'|^2``."""
        metric = metric or "ip"
        choice("metric", metric, ("ip", "l2"))
        recon = self.decode(codes, {}, state, Q.shape[1])
        ip = Q @ recon.T
        if metric == "ip":
            return ip
        return (Q * Q).sum(axis=1)[:, None] - 2 * ip + (recon * recon).sum(axis=1)[None, :]

    def search_scores(self, Q: np.ndarray, codes: np.ndarray, state: State | None) -> np.ndarray:
        return self.estimate(Q, codes, state)
