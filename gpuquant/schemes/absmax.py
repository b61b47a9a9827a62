"""Family ``absmax``: symmetric codes with one float32 scale per row, per block of a row, or per tensor.

Parameters
----------
granularity : ``"row"``, ``"block"`` (blocks of ``block_size`` consecutive values of a row) or
    ``"tensor"`` (one scale fitted on the calibration data and kept in the quantizer's state, so
    queries encoded later share the corpus's scale: the int8 vector-database presets).
bits : 8 (int8 codes in [-127, 127]) or 4 (nibbles in [-7, 7], two per byte).
block_size : G, 32..4096, even; ``d % G == 0`` is required (granularity="block").
eps : added to the absmax before dividing (the row-wise int8 recipe's 1e-8 keeps all-zero rows finite).
nibble_order : ``"low_first"`` or ``"high_first"`` (bits=4).

Math, with ``qmax = 127`` (8 bits) or ``7`` (4 bits), float32 throughout, round half to even::

    m = max |x| over the row or block            (exact; over every fitted value for "tensor")
    s = f32(f32(m + f32(eps)) / qmax)             -> side array "scales"
    q = clip(rint(f32(x / s)), -qmax, qmax)       (q = 0 where s == 0: then every x is ±0)
    x' = f32(q * s)                               (inverse)

This is the common numpy row-wise int8 recipe exactly (``int8-row``: eps=1e-8) and the symmetric
int4 recipe per group (``int4-block``: G=64, eps=0). 4-bit codes are the nibble ``q & 0xF`` (two's complement),
packed as in :func:`gpuquant.schemes.base.pack_nibbles`; rows of odd ``d`` (granularity="row")
end with a zero pad nibble.

Side arrays: ``scales`` float32, shape (n,) for rows, (n, d // G) for blocks; none for "tensor",
whose state is ``scales`` float32 of shape (1,).
NaN or ±Inf anywhere in a row makes its scale meaningless: encoding refuses it (``InputError`` naming
the first such row), and so does "tensor" (one rule for the family); fitting "tensor" refuses NaN and
±Inf too. Values beyond the fitted range clip to ±qmax. "row" and "block" need no fit: the scales
come from each row itself.

Edge counts (the convert report): a value whose ``rint(x / s)`` lies beyond ±qmax is a clipped
input (it happens with a "tensor" scale fitted on other rows); a code whose ``q * s`` overflows
float32 is a non-finite output.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.base import (
    F32,
    NIBBLE_ORDERS,
    Params,
    Scheme,
    State,
    StateSpec,
    abs_max,
    choice,
    pack_nibbles,
    refuse_nonfinite_rows,
    sign_extend_nibble,
    unpack_nibbles,
)
from gpuquant.schemes.edges import Counter, count, nibbles
from gpuquant.schemes.granularity import (
    Granularity,
    PerBlock,
    PerRow,
    PerTensor,
    spelling,
)
from gpuquant.schemes.statistics import AbsMax, FitSpec

#: The family's spellings of its granularities.
GRANULARITIES: dict[str, type[Granularity]] = {"row": PerRow, "block": PerBlock, "tensor": PerTensor}


@dataclass(frozen=True)
class AbsmaxParams(Params):
    """Parameters of the ``absmax`` family (see the module docstring), checked once."""

    granularity: str = "row"
    bits: int = 8
    block_size: int = 64
    eps: float = 0.0
    nibble_order: str = "low_first"

    def __post_init__(self) -> None:
        self._set("granularity", spelling(self.granularity, GRANULARITIES))
        choice("bits", self.bits, (8, 4))
        choice("nibble_order", self.nibble_order, NIBBLE_ORDERS)
        g = self.block_size
        if not isinstance(g, (int, np.integer)) or not 32 <= g <= 4096 or g % 2:
            raise InputError(f"block_size must be an even integer in [32, 4096], got {g!r}")
        self._set("block_size", int(g))
        eps = self.eps
        if not isinstance(eps, (int, float)) or not 0.0 <= eps < np.inf:
            raise InputError(f"eps must be a finite number >= 0, got {eps!r}")
        self._set("eps", float(eps))


class AbsmaxScheme(Scheme):
    """Symmetric per-row / per-block quantizer (see the module docstring)."""

    family = "absmax"
    params_type = AbsmaxParams
    config: AbsmaxParams
    nonfinite_rows_refused = "per-row/per-block scales"

    @property
    def granularity(self) -> Granularity:
        kind = GRANULARITIES[self.config.granularity]
        return PerBlock(self.config.block_size) if kind is PerBlock else kind()

    @property
    def qmax(self) -> int:
        return 127 if self.config.bits == 8 else 7

    def describe(self) -> dict[str, Any]:
        p = self.config
        return {"scope": p.granularity + (f" of {p.block_size}" if isinstance(self.granularity, PerBlock) else ""),
                "range_method": "absmax", "rounding": "half_even", "encoding": f"signed int{p.bits}",
                **({"nibble_order": p.nibble_order} if p.bits == 4 else {})}

    @property
    def code_dtype(self) -> np.dtype:
        return np.dtype(np.int8 if self.config.bits == 8 else np.uint8)

    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        return (n, d) if self.config.bits == 8 else (n, (d + 1) // 2)

    def groups(self, d: int) -> int:
        """Scales per row."""
        return d // self.config.block_size if isinstance(self.granularity, PerBlock) else 1

    def side_shapes(self, n: int, d: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        if isinstance(self.granularity, PerTensor):
            return {}
        shape = (n, self.groups(d)) if isinstance(self.granularity, PerBlock) else (n,)
        return {"scales": (shape, np.dtype(F32))}

    def check_dim(self, d: int) -> None:
        g = self.config.block_size
        if isinstance(self.granularity, PerBlock) and d % g:
            raise InputError(
                f"block_size={g} does not divide the row length d={d}; choose a block size that does"
            )

    def fit_spec(self) -> FitSpec | None:
        if not isinstance(self.granularity, PerTensor):
            return None
        return FitSpec({"absmax": AbsMax()}, 1, "a tensor scale")

    def from_statistics(self, stats: dict[str, Any]) -> State:
        return {"scales": self.tensor_scale(stats["absmax"])}

    def state_spec(self, d: int) -> StateSpec:
        return {"scales": ((1,), np.dtype(F32))} if isinstance(self.granularity, PerTensor) else {}

    def check_state(self, state: State) -> None:
        if (state["scales"] < 0).any():
            raise InputError("state array 'scales' must be >= 0")

    def tensor_scale(self, m: float | np.floating) -> np.ndarray:
        """The "tensor" state's scale ``f32(f32(m + f32(eps)) / qmax)``, shape (1,), of the absmax ``m``."""
        return np.asarray((F32(m) + F32(self.config.eps)) / F32(self.qmax), F32).reshape(1)

    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        n, d = X.shape
        blocks = X.reshape(n, self.groups(d), d // self.groups(d))
        t, m = abs_max(blocks, tmp)
        own = ((m + F32(self.config.eps)) / F32(self.qmax)).astype(F32)
        s = own
        if isinstance(self.granularity, PerTensor):  # the row's own scale then only checks NaN / Inf
            assert state is not None
            s = np.broadcast_to(np.asarray(state["scales"], F32).reshape(1, 1), (n, 1))
        refuse_nonfinite_rows(own, f"scheme {self.family!r} needs finite values")
        np.divide(blocks, np.where(s == 0, F32(1), s)[:, :, None], out=t)
        np.rint(t, out=t)
        np.clip(t, -self.qmax, self.qmax, out=t)
        if isinstance(self.granularity, PerBlock):
            side["scales"][...] = s
        elif isinstance(self.granularity, PerRow):
            side["scales"][...] = s[:, 0]
        if self.config.bits == 8:
            np.copyto(codes, t.reshape(n, d), casting="unsafe")
        else:
            nibbles = t.reshape(n, d).astype(np.int8).view(np.uint8) & 0x0F
            codes[...] = pack_nibbles(nibbles, self.config.nibble_order)

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """Clipped: ``|rint(f32(x / s))| > qmax``; non-finite: ``f32(q * s)`` not finite."""
        fixed = None
        if isinstance(self.granularity, PerTensor):
            assert state is not None
            fixed = xp.asarray(state["scales"]).reshape(1, 1, 1)
        p = self.config

        def counts(X: Any, codes: Any, side: Mapping[str, Any]) -> tuple[Any, Any]:
            n, d = X.shape
            g = self.groups(d)
            s = fixed if fixed is not None else side["scales"].reshape(n, g, 1)
            q = codes if p.bits == 8 else sign_extend_nibble(nibbles(xp, codes, d, p.nibble_order))
            y = q.astype(F32).reshape(n, g, d // g) * s
            t = xp.rint(X.reshape(n, g, d // g) / xp.where(s == 0, F32(1), s))
            return count(xp, ~xp.isfinite(y)), count(xp, xp.abs(t) > self.qmax)

        return counts

    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        q = codes
        if self.config.bits == 4:
            q = sign_extend_nibble(unpack_nibbles(codes, dim, self.config.nibble_order))
        n = q.shape[0]
        if isinstance(self.granularity, PerTensor):
            assert state is not None
            s = np.broadcast_to(np.asarray(state["scales"], F32).reshape(1), (n,))
        else:
            s = np.asarray(side["scales"], F32)
        with np.errstate(over="ignore"):  # q * s may round past float32's max for |x| near it
            g = self.groups(dim)
            out = q.astype(F32).reshape(n, g, dim // g) * s.reshape(n, g, 1)
        return out.reshape(n, dim)
