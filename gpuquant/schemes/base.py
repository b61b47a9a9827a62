"""What every scheme provides, and the helpers the families share.

A scheme is the math of one code format: its parameters (a frozen :class:`Params` dataclass,
validated once; ``scheme.config``), the code layout for an ``(n, d)`` input, what its fit needs and
the fitted state it makes (float32 arrays such as ranges or thresholds, laid out as
``state_spec(d)`` declares), and three numpy reference functions:

* ``fit(X) -> state``: trains on all rows of ``X`` (float32, 2-D): the statistics ``fit_spec()``
  names (:mod:`gpuquant.schemes.statistics`), turned into the state by ``from_statistics``; every
  other fit (streaming, Dask, device) computes the same statistics its own way;
* ``encode(X, state) -> (codes, side)``: codes laid out as the peer stores them, plus side arrays;
* ``decode(codes, side, state, dim) -> float32``: the reconstruction.

The references are written once, here, and are what every backend must reproduce bit for bit. All
arithmetic is IEEE float32 or float64 as each family's docstring says: no fused multiply-add, no
flushing of subnormals. Inputs are converted to float32 before any scheme sees them (float16
widens exactly; float64 is rounded to nearest even).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, ClassVar

import numpy as np

from gpuquant.errors import InputError
from gpuquant.schemes.edges import Counter, host_counter
from gpuquant.schemes.granularity import Granularity
from gpuquant.schemes.statistics import (
    F32,
    F64,
    NAN_FIT_MESSAGE,
    NONFINITE_FIT_MESSAGE,
    FitSpec,
    compute,
    refuse_rows,
)

State = dict[str, np.ndarray]
#: The fitted state's layout: array name -> (shape, dtype).
StateSpec = dict[str, tuple[tuple[int, ...], np.dtype]]
NIBBLE_ORDERS = ("low_first", "high_first")
__all__ = ["F32", "F64", "NAN_FIT_MESSAGE", "NONFINITE_FIT_MESSAGE", "Params", "Scheme", "State", "StateSpec"]


class Params:
    """Base of the families' typed parameters: frozen dataclasses whose ``__post_init__`` checks
    every value once (``InputError`` naming it) and normalises it; field order is the order the
    parameters are saved in."""

    def to_dict(self) -> dict[str, Any]:
        """The parameters as saved (quantizer files, store manifests), in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    def _set(self, name: str, value: Any) -> None:
        """Normalise a field inside ``__post_init__`` (the dataclass is frozen)."""
        object.__setattr__(self, name, value)


class Scheme(ABC):
    """One code format with its parameters. Subclasses define one family each."""

    family: ClassVar[str]
    params_type: ClassVar[type[Params]]
    #: True when the reconstruction keeps only the codes' pattern (binary signs), so a search must
    #: compare quantized queries with it rather than the queries themselves.
    search_in_code_space: ClassVar[bool] = False
    #: Set by families whose encoding refuses rows holding NaN or ±Inf because of per-row or
    #: per-block constants: the reason, quoted when the engine names such a row by its number.
    nonfinite_rows_refused: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        known = [f.name for f in fields(self.params_type)]  # type: ignore[arg-type]
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise InputError(
                f"unknown parameter(s) {unknown} for scheme family {self.family!r}; "
                f"known: {sorted(known)}"
            )
        self.config = self.params_type(**params)

    @property
    def params(self) -> dict[str, Any]:
        """The parameters as a dict (what quantizer files and manifests save)."""
        return self.config.to_dict()

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "ranges")
        return f"{type(self).__name__}({args})"

    @property
    def granularity(self) -> Granularity | None:
        """Which values share one set of constants (:mod:`gpuquant.schemes.granularity`); None for
        formats without any (casts)."""
        return None

    # -- what subclasses define ---------------------------------------------------------------
    @property
    def needs_fit(self) -> bool:
        """Whether ``fit`` must run before ``transform``: the scheme declares statistics to learn."""
        return self.fit_spec() is not None

    @property
    @abstractmethod
    def code_dtype(self) -> np.dtype:
        """The dtype of the codes as the peer stores them."""

    @abstractmethod
    def code_shape(self, n: int, d: int) -> tuple[int, int]:
        """Shape of the codes of an ``(n, d)`` input."""

    def side_shapes(self, n: int, d: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Shapes and dtypes of the side arrays of an ``(n, d)`` input (none by default)."""
        return {}

    def check_dim(self, d: int) -> None:
        """Raise ``InputError`` if this scheme cannot encode rows of ``d`` values."""

    def initial_state(self) -> State | None:
        """State known without data (e.g. given ranges, zero thresholds), else None."""
        return None

    def fit_spec(self) -> FitSpec | None:
        """The statistics the fit needs (:mod:`gpuquant.schemes.statistics`); None: no fit."""
        return None

    def from_statistics(self, stats: dict[str, Any]) -> State:
        """The state from the results of :meth:`fit_spec`'s statistics (the only family-specific
        step of every fit; each backend computes the statistics its own way)."""
        raise NotImplementedError(f"scheme family {self.family!r} declares no fit")

    def fit(self, X: np.ndarray) -> State:
        """Reference training on all rows of float32 ``X``: the declared statistics by their numpy
        reference, turned into the state (schemes without a fit: their initial state, or none)."""
        spec = self.fit_spec()
        if spec is None:
            return self.initial_state() or {}
        return self.from_statistics(compute(spec, X))

    def state_spec(self, d: int) -> StateSpec:
        """Names, shapes and dtypes of the fitted state for ``d`` dimensions (empty: no state)."""
        return {}

    def check_state(self, state: State) -> None:
        """Raise ``InputError`` if ``state``'s values break the family's rules (beyond shape, dtype
        and finiteness, which :func:`validate_state` checks for every family)."""

    def encode(self, X: np.ndarray, state: State | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Reference encoding of float32 ``X``: new code and side arrays."""
        n, d = X.shape
        codes = np.empty(self.code_shape(n, d), self.code_dtype)
        side = {k: np.empty(shape, dtype) for k, (shape, dtype) in self.side_shapes(n, d).items()}
        with np.errstate(all="ignore"):  # NaN/Inf results are defined by the spec, not warnings
            self.encode_into(X, state, codes, side)
        return codes, side

    @abstractmethod
    def encode_into(
        self,
        X: np.ndarray,
        state: State | None,
        codes: np.ndarray,
        side: dict[str, np.ndarray],
        tmp: np.ndarray | None = None,
    ) -> None:
        """Encode float32 ``X`` into ``codes`` and ``side`` (arrays of the layout's shapes).

        ``tmp``, when given, is a float32 scratch array of ``X.size`` values that the caller reuses
        across calls (the CPU backend passes one per thread); otherwise one is allocated.
        """

    @abstractmethod
    def decode(
        self, codes: np.ndarray, side: Mapping[str, np.ndarray], state: State | None, dim: int
    ) -> np.ndarray:
        """Reference decoding to float32, shape ``(n, dim)``."""

    def estimate(self, Q: np.ndarray, codes: np.ndarray, state: State | None, *, qb: int = 0,
                 metric: str | None = None) -> np.ndarray:
        """Distance estimates ``(len(Q), len(codes))`` float32 from float32 queries to coded rows as
        the family's peer search computes them without decoding (families that have one override
        this; ``qb``: query bits, ``metric``: ``"l2"`` or ``"ip"``)."""
        raise InputError(f"scheme family {self.family!r} has no distance estimator")

    def search_scores(self, Q: np.ndarray, codes: np.ndarray, state: State | None) -> np.ndarray:
        """How the peer's search ranks the codes for float32 queries ``Q``, larger is nearer (families
        with an estimator; the others are searched through their reconstruction)."""
        raise InputError(f"scheme family {self.family!r} has no distance estimator")

    @property
    def has_estimator(self) -> bool:
        """Whether the family defines :meth:`estimate` (searches then rank by :meth:`search_scores`)."""
        return type(self).estimate is not Scheme.estimate

    def edge_counter(self, state: State | None, xp: Any = np) -> Counter:
        """The per-batch counter of values decoding to NaN/±Inf and of inputs clipped to the ends
        of the codes' range (:mod:`gpuquant.schemes.edges`), for array module ``xp``. Families
        declare their own; this default decodes on the host and counts no clipping."""
        return host_counter(self.decode, self.code_dtype, state, xp)

    def edge_counts(self, X: np.ndarray, codes: np.ndarray, side: Mapping[str, np.ndarray],
                    state: State | None) -> tuple[int, int]:
        """Reference ``(nonfinite_outputs, clipped_inputs)`` of float32 ``X`` encoded as ``codes`` / ``side``."""
        with np.errstate(all="ignore"):  # overflow and NaN are what is being counted
            nonfinite, clipped = self.edge_counter(state, np)(np.asarray(X, F32), codes, side)
        return int(nonfinite), int(clipped)

    def describe(self) -> dict[str, Any]:
        """The calibration summary saved with a quantizer: scope, range method, rounding, bit order,
        signed/offset encoding (informative; the parameters and state are what loading uses)."""
        return {}

    # -- shared -------------------------------------------------------------------------------
    @property
    def bytes_per_value(self) -> float:
        """Code bytes per input value, side arrays excluded."""
        _, cols = self.code_shape(1, 1024)
        return self.code_dtype.itemsize * cols / 1024


def validate_state(scheme: Scheme, state: State, d: int | None, where: str = "the quantizer file") -> None:
    """Check a state read from outside (a saved file) against the layout ``scheme`` declares:
    exactly the declared arrays, each float32 of the declared shape and finite, then the family's
    own rules (:meth:`Scheme.check_state`). ``InputError`` naming the array otherwise."""
    spec = scheme.state_spec(d or 0)
    unknown = sorted(set(state) - set(spec))
    if unknown:
        raise InputError(f"unknown state array(s) {unknown} in {where} for scheme family {scheme.family!r}; "
                         f"expected {sorted(spec)}")
    for name, (shape, dtype) in spec.items():
        a = state.get(name)
        if a is None:
            raise InputError(f"state array {name!r} is missing from {where}")
        if a.dtype != dtype or tuple(a.shape) != shape:
            raise InputError(f"state array {name!r} in {where} must be {dtype}{shape}, got {a.dtype}{tuple(a.shape)}")
        if not np.isfinite(a).all():
            raise InputError(f"state array {name!r} in {where} holds NaN or ±Inf")
    try:
        scheme.check_state(state)
    except InputError as exc:
        raise InputError(f"the state in {where} is invalid: {exc}") from None


def scratch(tmp: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape``: a view of the caller's ``tmp`` buffer, or a new one."""
    if tmp is None:
        return np.empty(shape, F32)
    return tmp.reshape(-1)[: int(np.prod(shape))].reshape(shape)


def state_or_zeros(state: State | None, name: str, d: int) -> np.ndarray:
    """The fitted state array ``name``, or float32 zeros of ``d`` values for a scheme whose
    parameters need no fit (binary ``threshold="zero"``, rabitq ``center="zero"``)."""
    return state[name] if state and name in state else np.zeros(d, F32)


def has_nan(a: np.ndarray) -> bool:
    """Whether ``a`` holds NaN; a cheap sum first, the full scan only if the sum is not finite."""
    if a.size == 0:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        if np.isfinite(np.add.reduce(a, axis=None)):
            return False
    return bool(np.isnan(a).any())


def choice(key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    """``value`` if it is one of ``allowed``, else a clear ``InputError`` naming parameter ``key``."""
    if value not in allowed:
        raise InputError(f"{key}={value!r} is not supported; choose one of {list(allowed)}")
    return value


def is_integer(value: Any) -> bool:
    """Whether ``value`` is a Python or numpy integer (a bool is not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{key} must be True or False, got {value!r}")
    return bool(value)


def abs_max(x: np.ndarray, tmp: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """``|x|`` (in the caller's scratch, see :func:`scratch`) and its max over the last axis (0 for
    none); NaN propagates, so the max is finite exactly when every value is."""
    t = np.abs(x, out=scratch(tmp, x.shape))
    return t, t.max(axis=-1, initial=F32(0))


def refuse_nonfinite_rows(v: np.ndarray, why: str) -> None:
    """:class:`RowError` naming the first row ``i`` where ``v[i]`` (any shape per row) holds NaN or ±Inf."""
    refuse_rows(~np.isfinite(v), "{row} holds NaN or ±Inf; " + why)


def pack_nibbles(levels: np.ndarray, order: str) -> np.ndarray:
    """Pack 4-bit values (uint8 in 0..15, shape (n, d)) two per byte, shape (n, ceil(d/2)).

    Byte j holds elements 2j and 2j+1; ``low_first`` puts element 2j in the low nibble (FAISS),
    ``high_first`` in the high nibble (bitsandbytes). An odd d leaves the last unused nibble 0.
    """
    n, d = levels.shape
    if d % 2:
        levels = np.concatenate([levels, np.zeros((n, 1), np.uint8)], axis=1)
    first, second = levels[:, 0::2], levels[:, 1::2]
    if order == "high_first":
        first, second = second, first
    return (first | (second << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, d: int, order: str) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: uint8 values 0..15, shape (n, d)."""
    low, high = packed & 0x0F, packed >> 4
    if order == "high_first":
        low, high = high, low
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.uint8)
    out[:, 0::2], out[:, 1::2] = low, high
    return out[:, :d]


def sign_extend_nibble(nibbles: np.ndarray) -> np.ndarray:
    """4-bit two's complement (uint8 0..15) to int8 -8..7 (a numpy or CuPy array)."""
    return ((nibbles.astype(np.int8) ^ 8) - 8).astype(np.int8)


def order_keys(x: np.ndarray) -> np.ndarray:
    """float32 -> uint32 keys whose unsigned order is the float order (-NaN < -inf < ... < inf < NaN)
    (``gq::order_key`` in ``kernels/train.cu``: the radix selects of the CPU and GPU fits)."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    flip = (u >> np.uint32(31)) * np.uint32(0x7FFFFFFF)  # negative: flip every bit; positive: the sign bit
    return u ^ (flip | np.uint32(0x80000000))


def keys_to_values(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`order_keys`: uint32 keys to float32 values."""
    keys = np.asarray(keys, np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.astype(np.uint32).view(F32)
