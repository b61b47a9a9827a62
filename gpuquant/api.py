"""The public API: ``Quantizer`` (fit / transform / inverse_transform / save / load) and the
``quantize`` / ``dequantize`` shortcuts.

A ``Quantizer`` couples a scheme (the math, from a preset or a family name plus parameters) with a
backend (where it runs) and, once fitted, the scheme's state (float32 arrays: ranges, thresholds).
``transform`` returns :class:`gpuquant.Codes`; arrays come back where they went in (numpy in, numpy
out; CuPy in, CuPy out on the GPU backend).

Saved quantizers are one JSON file: format tag, gpuquant version, scheme name, family, every
parameter, the fitted dimension and the state arrays inline (dtype, shape, and the raw little-endian
bytes in base64, so the values round-trip exactly). Nothing is pickled.

That file is the **portable calibration file**: fit on the corpus once, save, and encode queries
later with ``Quantizer.load(path).transform(queries)``: the queries get exactly the corpus's ranges,
thresholds or scale (never ranges computed from the queries themselves, the single-query
calibration bug of per-batch quantizers). Besides what loading needs it carries a readable
``calibration`` summary: scope (tensor / dimension / row / block), range method, rounding, bit
order, signed/offset encoding, the Matryoshka ``truncate_dim`` and the dimension it was fitted on.

``truncate_dim=k`` (any scheme) makes every verb first keep the first ``k`` dimensions of each row
and L2-renormalise it (:func:`gpuquant.matryoshka.truncate_renormalize`: truncate, renormalise,
then quantize); codes and reconstructions then have ``k`` dimensions.

``pca_dim=k`` and ``rotate="orthogonal" | "hadamard"`` (with ``rotate_seed``) are pre-transforms
for any scheme (:class:`gpuquant.transforms.PreTransform`): applied after the truncation and before
the scheme (truncate, PCA, rotate, quantize), fitted by ``fit`` first (PCA from the streamed
``Covariance`` statistic), saved in the quantizer file under ``pre_transform`` and checked on load;
``inverse_transform`` undoes them, so reconstructions have the truncated input's dimensions. Their
fit runs in numpy (CuPy input to ``fit`` is refused while they are set); on the cupy backend, CuPy
input is transformed and decoded by the device products of ``kernels/rotate.cu`` (the same bits).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import files as gfiles
from gpuquant._validate import as_matrix, check_dim
from gpuquant._version import __version__
from gpuquant.backends import Backend, check_name, device_code_dtype, is_device_array, resolve_for
from gpuquant.codes import Codes
from gpuquant.errors import InputError, NotFittedError
from gpuquant.matryoshka import check_truncate_dim, truncate_renormalize
from gpuquant.schemes import FAMILIES, PRESETS, Preset, make_scheme
from gpuquant.schemes.base import validate_state
from gpuquant.schemes.statistics import REFERENCE
from gpuquant.transforms import PreTransform

FORMAT_TAG = "gpuquant.quantizer"
FORMAT_VERSION = 1


def _device_ops(x: Any, backend: Backend) -> Any:
    """The pre-transforms' device products for a device array ``x`` on the cupy backend
    (``kernels/rotate.cu``, the same bits as the host's), else None."""
    if backend.name != "cupy" or not is_device_array(x):
        return None
    from gpuquant.backends.cupy_rotate import DEVICE_OPS

    return DEVICE_OPS


class Quantizer:
    """Quantize 2-D float arrays with one scheme.

    >>> import numpy as np, gpuquant
    >>> X = np.random.default_rng(0).standard_normal((1000, 64)).astype(np.float32)
    >>> q = gpuquant.Quantizer("st-int8", backend="numpy").fit(X)
    >>> codes = q.transform(X)
    >>> np.asarray(codes).dtype, np.asarray(codes).shape
    (dtype('int8'), (1000, 64))
    >>> float(np.abs(q.inverse_transform(codes) - X).max()) < 0.05
    True
    """

    def __init__(
        self, scheme: str = "int8-row", *, backend: str = "auto", truncate_dim: int | None = None,
        pca_dim: int | None = None, rotate: str | None = None, rotate_seed: int = 0, **params: Any
    ) -> None:
        self.name = scheme
        self.scheme = make_scheme(scheme, **params)
        self.truncate_dim: int | None = None if truncate_dim is None else check_truncate_dim(truncate_dim)
        self.pre = PreTransform(pca_dim, rotate, rotate_seed)
        self.backend_name = check_name(backend)
        self._backend: Backend | None = None
        self.state: dict[str, np.ndarray] | None = self.scheme.initial_state()
        self.dim: int | None = self._dim_of(self.state)

    # -- properties ---------------------------------------------------------------------------
    @property
    def preset(self) -> str | None:
        return self.name if self.name in PRESETS else None

    @property
    def family(self) -> str:
        return self.scheme.family

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.scheme.params)

    @property
    def is_fitted(self) -> bool:
        """True once ``fit`` ran, or when the scheme needs no fit."""
        return (self.state is not None or not self.scheme.needs_fit) and self.pre.is_fitted

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = resolve_for(self.backend_name, self.scheme)
        return self._backend

    def __repr__(self) -> str:
        preset = PRESETS.get(self.name)
        base = preset.params if preset else {}
        changed = {k: v for k, v in self.scheme.params.items() if base.get(k, v) != v or not preset}
        shown = ", ".join(f"{k}={v!r}" for k, v in changed.items() if v is not None)
        fitted = f"fitted, dim={self.dim}" if self.state is not None and self.scheme.needs_fit else (
            "no fit needed" if not self.scheme.needs_fit else "not fitted")
        if self.pre.active:
            fitted = f"pre-transform fitted on {self.pre.input_dim} dims" if self.pre.is_fitted else "not fitted"
        if self.truncate_dim is not None:
            shown = ", ".join(filter(None, [shown, f"truncate_dim={self.truncate_dim}"]))
        pre = ", ".join(f"{k}={v!r}" for k, v in self.pre.params().items() if v not in (None, 0))
        shown = ", ".join(filter(None, [shown, pre]))
        return (f"Quantizer({self.name!r}{', ' + shown if shown else ''}, family={self.family!r}, "
                f"{self.scheme.bytes_per_value:g} B/value, {fitted}, backend={self.backend_name!r})")

    # -- verbs --------------------------------------------------------------------------------
    def fit(self, X: Any) -> Quantizer:
        """Train the scheme's state on every row of ``X`` (2-D float); returns ``self``."""
        X = self._prepare(as_matrix(X))
        if X.shape[0] == 0:
            raise InputError("cannot fit on 0 rows")
        if self.pre.active:
            x = self._host(X)
            self.pre.fit(lambda stat: REFERENCE[type(stat)](stat, x), x.shape[1])
            X = self.pre.apply(x)
        self.scheme.check_dim(X.shape[1])
        state = self.backend.fit(self.scheme, X)
        self.state = {k: np.asarray(v) for k, v in state.items()} if self.scheme.needs_fit else (state or None)
        self.dim = X.shape[1] if self.scheme.needs_fit or self.pre.active else self._dim_of(self.state)
        return self

    def transform(self, X: Any, out: Any = None) -> Codes:
        """Encode ``X``; ``out=`` takes a preallocated code array (or ``Codes`` with side arrays).

        Device input on the cupy backend does not wait for the GPU, so rows its kernels refuse (NaN or
        ±Inf under ``absmax``, ``gguf``, ``scaled_fp8``) raise the reference's ``InputError`` at the
        next synchronisation of this quantizer on this thread (a transform or inverse with numpy
        input, ``fit``, :meth:`check_refusals`). Until then the device codes (and a device ``out=``)
        hold unchecked values for those rows: call :meth:`check_refusals` before trusting codes kept
        on the device.
        """
        self._require_fitted()
        X = self._transformed(as_matrix(X))
        check_dim(X, self.dim)
        self.scheme.check_dim(X.shape[1])
        codes = self.backend.transform(self.scheme, self.state, X, out=out)
        return dataclasses.replace(codes, scheme=self.name)

    def check_refusals(self) -> None:
        """Raise the first row refused by this thread's transforms of device arrays not yet checked
        (see :meth:`transform`; it waits for their streams). Each refused call raises once; nothing
        is pending on backends that check inside ``transform``."""
        check = getattr(self._backend, "check_refusals", None)
        if check is not None:
            check()

    def fit_transform(self, X: Any) -> Codes:
        return self.fit(X).transform(X)

    def inverse_transform(self, codes: Codes | Any, out: Any = None) -> Any:
        """Decode ``codes`` (a ``Codes``, or a bare code array for schemes without side arrays)."""
        self._require_fitted()
        codes = self._as_codes(codes)
        self._check_codes(codes)
        if self.pre.active:
            raw = self.backend.inverse_transform(self.scheme, self.state, codes)
            ops = _device_ops(raw, self.backend)
            recon = self.pre.inverse(raw if ops else np.asarray(raw), ops)
            if out is None:
                return recon
            out[...] = recon
            return out
        return self.backend.inverse_transform(self.scheme, self.state, codes, out=out)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON document ``save`` writes (``pre_transform`` only when one is set)."""
        doc = {
            "format": FORMAT_TAG,
            "format_version": FORMAT_VERSION,
            "gpuquant_version": __version__,
            "scheme": self.name,
            "family": self.family,
            "params": self.scheme.params,
            "dim": self.dim,
            "truncate_dim": self.truncate_dim,
            "state": None if self.state is None else {k: _encode_array(v) for k, v in self.state.items()},
            "calibration": {**self.scheme.describe(), "truncate_dim": self.truncate_dim, "fitted_dim": self.dim,
                            "fitted": self.is_fitted},
        }
        if self.pre.active:
            doc["pre_transform"] = {**self.pre.params(), "input_dim": self.pre.input_dim,
                                    "state": {k: _encode_array(v) for k, v in self.pre.state.items()}}
        return doc

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the quantizer as one JSON file (atomically: a temporary file renamed into place)."""
        path = Path(path)
        with gfiles.atomic_file(path) as f:  # removed if writing fails (a full disk leaves nothing behind)
            f.write(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, doc: dict[str, Any], backend: str = "auto") -> Quantizer:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_TAG:
            raise InputError("not a gpuquant quantizer file (missing format tag)")
        if doc.get("format_version") != FORMAT_VERSION:
            raise InputError(f"unsupported quantizer format version {doc.get('format_version')!r}")
        family = doc.get("family")
        if family not in FAMILIES:
            raise InputError(f"unknown scheme family {family!r} in quantizer file")
        _check_fields(doc)
        pre = doc.get("pre_transform") or {}  # _check_fields checked that it is an object
        pre_params = {k: pre[k] for k in ("pca_dim", "rotate", "rotate_seed") if k in pre}
        q = cls(family, backend=backend, truncate_dim=doc.get("truncate_dim"), **pre_params, **doc.get("params", {}))
        q.name = str(doc.get("scheme", family))  # a family or preset name: _check_fields checked it
        if q.pre.active:
            q.pre.state = {k: _decode_array(v, k) for k, v in (pre.get("state") or {}).items()}
            _validate_pre(q.pre, pre.get("input_dim"), doc.get("dim"))
            if q.truncate_dim is not None and q.pre.input_dim not in (None, q.truncate_dim):
                raise InputError(f"the quantizer file's truncate_dim {q.truncate_dim} does not match its "
                                 f"pre_transform, fitted on {q.pre.input_dim} dimensions")
        state = doc.get("state")
        q.state = None if state is None else {k: _decode_array(v, k) for k, v in state.items()}
        q.dim = doc.get("dim")
        if q.state is not None:
            validate_state(q.scheme, q.state, q.dim)
        return q

    @classmethod
    def load(cls, path: str | os.PathLike[str], backend: str = "auto") -> Quantizer:
        """Read a quantizer written by ``save``."""
        try:
            doc = json.loads(Path(path).read_text(), parse_int=_parse_int)
        except FileNotFoundError:
            raise InputError(f"quantizer file not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(doc, backend=backend)

    # -- helpers -------------------------------------------------------------------------------
    def _prepare(self, X: Any) -> Any:
        """The Matryoshka step (truncate, renormalise) when ``truncate_dim`` is set, else ``X``."""
        return X if self.truncate_dim is None else truncate_renormalize(X, self.truncate_dim)

    def _transformed(self, X: Any) -> Any:
        """What the scheme sees: the Matryoshka step, then the pre-transforms."""
        X = self._prepare(X)
        if not self.pre.active:
            return X
        ops = _device_ops(X, self.backend)
        return self.pre.apply(X if ops else self._host(X), ops)

    @staticmethod
    def _host(X: Any) -> np.ndarray:
        if is_device_array(X):
            raise InputError("pca_dim and rotate fit on the CPU: pass numpy arrays")
        return np.asarray(X, np.float32)

    def _require_fitted(self) -> None:
        if not self.is_fitted:
            raise NotFittedError(f"this {self.name!r} quantizer needs fit(X) before transform")

    def _as_codes(self, codes: Any) -> Codes:
        if isinstance(codes, Codes):
            return codes
        if self.scheme.side_shapes(1, self.dim or 1):
            raise InputError(f"{self.name!r} codes need their side arrays: pass the Codes from transform")
        data = codes if hasattr(codes, "shape") else np.asarray(codes)
        if getattr(data, "ndim", 0) != 2:
            raise InputError(f"codes must be 2-D, got shape {tuple(getattr(data, 'shape', ()))}")
        if self.dim is None and self.scheme.code_shape(1, data.shape[1])[1] != data.shape[1]:
            raise InputError("packed codes do not say their dimension: pass the Codes from transform")
        return Codes(data, {}, self.name, self.dim or data.shape[1])

    def _check_codes(self, codes: Codes) -> None:
        if codes.scheme and codes.scheme not in (self.name, self.family):
            raise InputError(f"these codes are {codes.scheme!r} codes; this quantizer decodes {self.name!r} "
                             "(use the quantizer that made them)")
        if self.dim is not None and codes.dim != self.dim:
            raise InputError(f"codes have {codes.dim} dimensions but the quantizer was fitted on {self.dim}")
        expected = self.scheme.code_shape(len(codes), codes.dim)
        if tuple(codes.data.shape) != expected or not _dtype_matches(codes.data, self.scheme):
            raise InputError(
                f"codes of {self.name!r} for dim={codes.dim} must be {self.scheme.code_dtype}{expected}, "
                f"got {codes.data.dtype}{tuple(codes.data.shape)}"
            )
        for name, (shape, dtype) in self.scheme.side_shapes(len(codes), codes.dim).items():
            got = codes.side.get(name)
            if got is None or tuple(got.shape) != shape or got.dtype != dtype:
                raise InputError(f"side array {name!r} must be {dtype}{shape}, got "
                                 f"{'nothing' if got is None else f'{got.dtype}{tuple(got.shape)}'}")

    @staticmethod
    def _dim_of(state: dict[str, np.ndarray] | None) -> int | None:
        if not state:
            return None
        sizes = {v.size for v in state.values()}
        size = sizes.pop()
        return size if size > 1 else None


#: The fields of a quantizer file (``pre_transform`` only when one is set).
FILE_FIELDS = ("format", "format_version", "gpuquant_version", "scheme", "family", "params", "dim",
               "truncate_dim", "state", "calibration", "pre_transform")
#: The fields of a quantizer file's ``pre_transform``.
PRE_FIELDS = ("pca_dim", "rotate", "rotate_seed", "input_dim", "state")
#: Longer integer literals are no real dimension or parameter: kept unparsed, refused by field.
MAX_INT_DIGITS = 64


class _HugeNumber:
    """An integer literal of a quantizer file too long to be a value (never converted, so the check
    of its field, not the JSON parser, refuses it and names the field)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def __repr__(self) -> str:
        return f"a {self.digits}-digit number"


def _parse_int(text: str) -> int | _HugeNumber:
    digits = len(text.lstrip("-"))
    return _HugeNumber(digits) if digits > MAX_INT_DIGITS else int(text)


def _check_fields(doc: dict[str, Any]) -> None:
    """``InputError`` naming the field of a quantizer file that is unknown or of the wrong kind: the
    scheme name must be the file's family or one of its presets, ``params`` an object, ``dim`` a
    positive integer or null (the state arrays are checked against the scheme afterwards)."""
    unknown = sorted(set(doc) - set(FILE_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {unknown} in the quantizer file; known: {list(FILE_FIELDS)}")
    name, family = doc.get("scheme", doc["family"]), doc["family"]
    preset = PRESETS.get(name) if isinstance(name, str) else None
    if name != family and (preset is None or preset.family != family):
        what = f"a {preset.family!r} preset" if preset else "no preset or family"
        raise InputError(f"field 'scheme' of the quantizer file is {name!r} ({what}), but its state and "
                         f"parameters are of family {family!r}")
    for field in ("params", "pre_transform"):
        if not isinstance(doc.get(field, {}), dict):
            raise InputError(f"field {field!r} of the quantizer file must be an object, got {doc[field]!r:.80}")
    unknown = sorted(set(doc.get("pre_transform") or {}) - set(PRE_FIELDS))
    if unknown:
        raise InputError(f"unknown field(s) {unknown} in the quantizer file's pre_transform; known: {list(PRE_FIELDS)}")
    dim = doc.get("dim")
    if dim is not None and (type(dim) is not int or dim < 1):
        raise InputError(f"field 'dim' of the quantizer file must be a positive integer or null, got {dim!r}")


def _validate_pre(pre: PreTransform, d: Any, dim: int | None) -> None:
    """The saved pre-transform state against the layout its parameters declare (``InputError``);
    sets its ``input_dim``. A file saved before fitting has none and no state."""
    if d is None:
        if pre.state:
            raise InputError("the pre_transform in the quantizer file has state but no input_dim")
        return
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise InputError(f"the pre_transform's input_dim in the quantizer file must be a positive integer, got {d!r}")
    if dim is not None and pre.out_dim(d) != dim:
        raise InputError(f"the pre_transform in the quantizer file gives {pre.out_dim(d)} dimensions, "
                         f"but the scheme was fitted on {dim}")
    spec = pre.state_spec(d)
    if sorted(pre.state) != sorted(spec):
        raise InputError(f"the pre_transform state in the quantizer file holds {sorted(pre.state)}, "
                         f"expected {sorted(spec)}")
    for name, (shape, dtype) in spec.items():
        a = pre.state[name]
        if a.dtype != dtype or tuple(a.shape) != shape or not np.isfinite(a).all():
            raise InputError(f"pre_transform array {name!r} in the quantizer file must be finite "
                             f"{dtype}{shape}, got {a.dtype}{tuple(a.shape)}")
    pre.input_dim = d


def _dtype_matches(data: Any, scheme: Any) -> bool:
    """Codes dtype check; on the device fp8/bf16 codes are their raw uint bits (CuPy lacks those dtypes)."""
    return data.dtype == scheme.code_dtype or (is_device_array(data) and data.dtype == device_code_dtype(scheme))


def _encode_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": a.dtype.name, "shape": list(a.shape), "base64": base64.b64encode(le.tobytes()).decode("ascii")}


def _decode_array(doc: Any, name: str) -> np.ndarray:
    try:
        dtype = np.dtype(doc["dtype"]).newbyteorder("<")
        raw = base64.b64decode(doc["base64"], validate=True)
        arr = np.frombuffer(raw, dtype=dtype).reshape(doc["shape"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"state array {name!r} in the quantizer file is malformed: {exc}") from None
    if dtype.kind not in "fiu":
        raise InputError(f"state array {name!r} has unsupported dtype {dtype}")
    return arr.astype(dtype.newbyteorder("="))


def quantize(X: Any, scheme: str = "int8-row", *, backend: str = "auto", **params: Any) -> Codes:
    """Fit (when the scheme needs it) and transform in one call. The quantizer is not kept, so device
    codes are checked for refused rows before they are returned (:meth:`Quantizer.check_refusals`)."""
    q = Quantizer(scheme, backend=backend, **params)
    codes = q.fit_transform(X) if q.scheme.needs_fit else q.transform(X)
    q.check_refusals()
    return codes


def dequantize(codes: Codes, quantizer: Quantizer | str, *, backend: str = "auto") -> Any:
    """Decode ``codes`` with a fitted ``Quantizer`` (or, for schemes without state, a scheme name)."""
    q = Quantizer(quantizer, backend=backend) if isinstance(quantizer, str) else quantizer
    return q.inverse_transform(codes)


def as_quantizer(spec: Quantizer | str, params: dict[str, Any] | None = None) -> Quantizer:
    """``spec`` itself when it is a Quantizer (``params`` must then be empty), else a new Quantizer on
    the numpy backend for the preset / family name ``spec`` with ``params``."""
    if isinstance(spec, Quantizer):
        if params:
            raise InputError("params= goes with a scheme name; a Quantizer already has its parameters")
        return spec
    if not isinstance(spec, str):
        raise InputError(f"expected a Quantizer or a preset/family name, got {type(spec).__name__}")
    return Quantizer(spec, backend="numpy", **(params or {}))


def presets() -> list[Preset]:
    """Every named preset, in display order."""
    return list(PRESETS.values())
