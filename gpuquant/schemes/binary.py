"""Family ``binary``: one bit per dimension, ``x > threshold``, packed 8 per byte.

Parameters
----------
threshold : ``"zero"`` (no fit), ``"mean"`` or ``"median"`` per dimension (fitted).
bitorder : ``"little"`` (cuVS: dimension 8k+b is bit ``1 << b`` of byte k, as
    ``np.packbits(..., bitorder="little")``) or ``"big"`` (numpy's default and sentence-transformers:
    dimension 8k is the most significant bit).
signed : False: uint8 bytes. True: int8 bytes, in the form ``signed_encoding`` says.
signed_encoding : how a signed byte is made from the packed byte ``b`` (signed=True):
    ``"offset"`` (default): ``b - 128`` (sentence-transformers ``"binary"``; the same bits with the
    top one flipped); ``"twos_complement"``: ``b`` itself read as int8 (Vespa ``pack_bits``,
    Elasticsearch/OpenSearch ``bit`` vectors: 0x80 is -128, 0x81 is -127).

Math: bit ``(i, j) = x[i, j] > thr[j]``, an IEEE comparison (subnormals are not flushed; NaN gives 0).
Codes have shape (n, ceil(d/8)); the pad bits of the last byte are 0. State: ``thresholds``,
float32 (d,): zeros, the mean (a float64 sum over all rows divided by n, rounded to float32; the
summation order is not part of the spec, so backends agree within the float64 summation error), or
the exact median (the middle value; for even n ``float32((f64(a) + f64(b)) / 2)`` of the two middle
values). Fitting refuses NaN. These thresholds are gpuquant's own, not cuVS's: cuVS's ``mean`` sums
in float32 in a GPU-parallel order, and its ``sampling_median`` sorts a sample of about 10% of the
rows drawn with RAFT's generator; only threshold ``"zero"`` is cuVS's bit for bit. The inverse
gives +1.0 where a bit is set and -1.0 where not: the sign pattern, not the magnitudes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.schemes.base import (
    F32,
    Params,
    Scheme,
    State,
    StateSpec,
    as_bool,
    choice,
    state_or_zeros,
)
from gpuquant.schemes.edges import Counter
from gpuquant.schemes.granularity import Granularity, PerColumn
from gpuquant.schemes.statistics import (
    ColumnMean,
    ColumnMedian,
    FitSpec,
    median_of,
    median_ranks,
)

__all__ = ["BinaryScheme", "median_of", "median_ranks"]


@dataclass(frozen=True)
class BinaryParams(Params):
    """Parameters of the ``binary`` family (see the module docstring), checked once."""

    threshold: str = "zero"
    bitorder: str = "little"
    signed: bool = False
    signed_encoding: str = "offset"

    def __post_init__(self) -> None:
        choice("threshold", self.threshold, ("zero", "mean", "median"))
        choice("bitorder", self.bitorder, ("little", "big"))
        choice("signed_encoding", self.signed_encoding, ("offset", "twos_complement"))
        as_bool("signed", self.signed)


class BinaryScheme(Scheme):
    """Sign / threshold bits (see the module docstring)."""

    family = "binary"
    params_type = BinaryParams
    config: BinaryParams
    #: The reconstruction is a sign pattern only: searches compare quantized queries with it.
    search_in_code_space = True

    @property
    def granularity(self) -> Granularity | None:
        return None if self.config.threshold == "zero" else PerColumn()

    @property
    def flip(self) -> bool:
        """Whether the stored byte is the packed byte with its top bit flipped (offset encoding)."""
        return bool(self.config.signed) and self.config.signed_encoding == "offset"

    def describe(self) -> dict[str, Any]:
        p = self.config
        return {"scope": "dimension" if p.threshold != "zero" else "none",
                "range_method": f"threshold {p.threshold}", "rounding": "x > threshold",
                "bit_order": "lsb_first" if p.bitorder == "little" else "msb_first",
                "encoding": (p.signed_encoding if p.signed else "unsigned")}

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.config.signed else np.uint8)

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, (d + 7) // 8)

    def initial_state(self) -> State | None:
        return None  # zero thresholds need no state; see thresholds_for

    def fit_spec(self) -> FitSpec | None:
        kind = self.config.threshold
        if kind == "zero":
            return None
        stat = ColumnMean() if kind == "mean" else ColumnMedian()
        return FitSpec({"thresholds": stat}, 1, f"{kind} thresholds")

    def from_statistics(self, stats: dict[str, Any]) -> State:
        return {"thresholds": np.asarray(stats["thresholds"], F32)}

    def state_spec(self, d: int) -> StateSpec:
        return {} if self.config.threshold == "zero" else {"thresholds": ((d,), np.dtype(F32))}

    @staticmethod
    def thresholds_for(state: State | None, d: int) -> np.ndarray:
        return state_or_zeros(state, "thresholds", d)

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        bits = X > self.thresholds_for(state, X.shape[1])
        packed = np.packbits(bits, axis=1, bitorder=self.config.bitorder)
        codes.view(np.uint8)[...] = packed ^ np.uint8(0x80) if self.flip else packed

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """Nothing to count: every code decodes to ±1 and a bit has no range to clip to."""
        return lambda X, codes, side: (0, 0)

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        packed = np.asarray(codes).view(np.uint8)
        if self.flip:
            packed = packed ^ np.uint8(0x80)
        bits = np.unpackbits(packed, axis=1, count=dim, bitorder=self.config.bitorder)
        return np.where(bits.astype(bool), F32(1), F32(-1))

