"""Distance estimates between float queries and stored codes, as the peers' searches compute them.

``estimate(quantizer, queries, codes, qb=0, metric=None)`` returns a float32 ``(len(queries),
len(codes))`` matrix without decoding the corpus, by the scheme's own estimator
(:meth:`gpuquant.schemes.base.Scheme.estimate`): for ``rabitq`` FAISS's RaBitQ estimator for the
quantizer's metric (squared L2 distances or inner products; ``qb`` in 0..8 quantizes the query as
FAISS's ``qb`` search parameter does, 0: the float query), for ``pq`` the asymmetric distance
(inner products by default, ``metric="l2"`` for squared distances). Families without an estimator
are refused.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant._validate import as_matrix
from gpuquant.api import Quantizer
from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.schemes import FAMILIES, Scheme
from gpuquant.schemes.base import is_integer


def estimate(quantizer: Quantizer, queries: Any, codes: Codes | Any, *, qb: int = 0,
             metric: str | None = None) -> np.ndarray:
    """Estimated distances or inner products from ``queries`` to ``codes`` (module docstring)."""
    if not quantizer.scheme.has_estimator:
        with_one = [name for name, cls in FAMILIES.items() if cls.estimate is not Scheme.estimate]
        raise InputError(f"estimate works on {' and '.join(with_one)} codes, not {quantizer.family!r}")
    if not is_integer(qb) or not 0 <= qb <= 8:
        raise InputError(f"qb must be an integer from 0 to 8, got {qb!r}")
    Q = quantizer._transformed(as_matrix(queries, "queries")).astype(np.float32)
    data = np.asarray(codes.data if isinstance(codes, Codes) else codes)
    quantizer._check_codes(Codes(data, {}, quantizer.name, Q.shape[1]))
    return quantizer.scheme.estimate(Q, data, quantizer.state, qb=int(qb), metric=metric)
