"""The ``cuvs`` backend: NVIDIA cuVS's own quantizers behind gpuquant's verbs (extra ``cuvs``).

It runs two schemes, the ones cuVS implements:

* ``cuvs-sq8`` (family ``scalar``: one global quantile range, half away from zero, signed 8 bits,
  cuVS's row sampling): ``cuvs.preprocessing.quantize.scalar.train / transform /
  inverse_transform``. cuVS's Python API cannot build a quantizer from a given min/max, so this
  backend transforms only with a quantizer it trained itself in this process (``fit`` with
  ``backend="cuvs"``); a state from elsewhere (a saved file, another backend) is refused with
  that reason. Its fitted ``lo``/``hi`` are cuVS's min/max rounded to float32 (they are float32
  values for float32 data), so the same state also runs on the ``cupy`` and ``numpy`` backends.
* ``binary`` with the zero threshold and little bit order: ``cuvs.preprocessing.quantize.binary
  .transform``. cuVS has no binary inverse: ``inverse_transform`` uses gpuquant's kernels.

Host arrays come back as numpy, device arrays (CuPy, ``__cuda_array_interface__``) as CuPy, as on
the other backends. cuVS, CuPy and the GPU are imported only when this backend is used; the
backend is never picked by ``auto`` (name it to compare against cuVS).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.codes import Codes
from gpuquant.errors import BackendUnavailableError, InputError
from gpuquant.schemes import Scheme

#: Parameters of the scalar scheme that cuVS implements (any quantile).
CUVS_SCALAR = {"granularity": "tensor", "range": "quantile", "quantile_method": "cuvs",
               "rounding": "half_away", "bits": 8, "signed": True}
#: Parameters of the binary scheme that cuVS implements.
CUVS_BINARY = {"threshold": "zero", "bitorder": "little", "signed": False}


def _scheme_kind(scheme: Scheme) -> str | None:
    p = scheme.params
    if scheme.family == "scalar" and all(p.get(k) == v for k, v in CUVS_SCALAR.items()):
        return "scalar"
    if scheme.family == "binary" and all(p.get(k) == v for k, v in CUVS_BINARY.items()) and \
            p.get("signed_encoding", "offset") == "offset":
        return "binary"
    return None


class CuvsBackend:
    """cuVS's scalar and binary quantizers (see the module docstring)."""

    name = "cuvs"

    def __init__(self) -> None:
        self._trained: dict[tuple[float, float], Any] = {}  # (lo, hi) -> cuVS Quantizer

    @staticmethod
    def is_available() -> tuple[bool, str]:
        try:
            import cuvs  # noqa: F401
            from cuvs.preprocessing.quantize import binary, scalar  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
            return False, f"cannot import cuVS ({exc}); install the 'cuvs' extra: pip install 'gpuquant[cuvs]'"
        from gpuquant.backends.cupy_backend import CupyBackend

        ok, why = CupyBackend.is_available()
        return (True, "cuVS and a GPU are available") if ok else (False, why)

    @staticmethod
    def supports(scheme: Scheme) -> tuple[bool, str]:
        if _scheme_kind(scheme) is not None:
            return True, "implemented by cuVS"
        return False, ("cuVS implements only the cuvs-sq8 scalar quantizer (any quantile) and the binary "
                       "quantizer with zero threshold and little bit order")

    # -- verbs --------------------------------------------------------------------------------
    def fit(self, scheme: Scheme, X: Any) -> dict[str, np.ndarray]:
        if _scheme_kind(scheme) == "binary":
            return {}
        from cuvs.preprocessing.quantize import scalar

        trained = scalar.train(scalar.QuantizerParams(quantile=scheme.params["quantile"]), _contiguous(X))
        lo, hi = np.float32(trained.min), np.float32(trained.max)
        self._trained[(float(lo), float(hi))] = trained
        return {"lo": np.array([lo], np.float32), "hi": np.array([hi], np.float32)}

    def transform(self, scheme: Scheme, state: dict[str, Any] | None, X: Any, out: Any = None) -> Codes:
        if out is not None:
            raise InputError("backend 'cuvs' does not take out=; use backend='cupy' for preallocated outputs")
        n, d = X.shape
        x = _contiguous(X)
        if _scheme_kind(scheme) == "binary":
            from cuvs.preprocessing.quantize import binary

            return Codes(_like(X, binary.transform(x)), {}, scheme.family, d)
        from cuvs.preprocessing.quantize import scalar

        return Codes(_like(X, scalar.transform(self._quantizer(state), x)), {}, scheme.family, d)

    def inverse_transform(self, scheme: Scheme, state: dict[str, Any] | None, codes: Codes, out: Any = None) -> Any:
        if _scheme_kind(scheme) == "binary":
            from gpuquant.backends.cupy_backend import CupyBackend

            return CupyBackend().inverse_transform(scheme, state, codes, out=out)
        if out is not None:
            raise InputError("backend 'cuvs' does not take out=; use backend='cupy' for preallocated outputs")
        from cuvs.preprocessing.quantize import scalar

        return _like(codes.data, scalar.inverse_transform(self._quantizer(state), _contiguous(codes.data)))

    # -- helpers ------------------------------------------------------------------------------
    def _quantizer(self, state: dict[str, Any] | None) -> Any:
        key = (float(state["lo"][0]), float(state["hi"][0])) if state else None
        trained = self._trained.get(key) if key else None
        if trained is None:
            raise BackendUnavailableError(
                "backend 'cuvs' can only use a range it trained itself in this process: cuVS's Python API "
                "cannot build a quantizer from a given min/max. Fit with backend='cuvs' first, or run this "
                "state on backend='cupy' (same codes)."
            )
        return trained


def _contiguous(a: Any) -> Any:
    """A C-contiguous array cuVS accepts (host stays host, device stays device)."""
    if hasattr(a, "__cuda_array_interface__"):
        import cupy

        return cupy.ascontiguousarray(cupy.asarray(a))
    return np.ascontiguousarray(a)


def _like(template: Any, result: Any) -> Any:
    """cuVS's result as numpy for host input and as CuPy for device input."""
    if hasattr(template, "__cuda_array_interface__"):
        import cupy

        return cupy.asarray(result)
    if hasattr(result, "copy_to_host"):
        return result.copy_to_host()
    return np.asarray(result)
