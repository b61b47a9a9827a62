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

from collections.abc import Callable
from typing import Any, cast

import numpy as np

from gpuquant.codes import Codes
from gpuquant.errors import BackendUnavailableError, InputError
from gpuquant.schemes import Scheme
from gpuquant.schemes.scalar import ScalarParams

#: family -> the parameter values cuVS implements (the scalar quantizer: any quantile).
REQUIRES: dict[str, dict[str, Any]] = {
    "scalar": {"granularity": "tensor", "range": "quantile", "quantile_method": "cuvs",
               "rounding": "half_away", "bits": 8, "signed": True},
    "binary": {"threshold": "zero", "bitorder": "little", "signed": False, "signed_encoding": "offset"},
}
#: (family, "fit" | "transform" | "inverse") -> implementation, registered below next to its code.
IMPLEMENTATIONS: dict[tuple[str, str], Callable[..., Any]] = {}


def implements(family: str, mode: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        IMPLEMENTATIONS[(family, mode)] = fn
        return fn
    return register


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
        required = REQUIRES.get(scheme.family)
        if required is not None and all(scheme.params.get(k) == v for k, v in required.items()):
            return True, "implemented by cuVS"
        return False, ("cuVS implements only the cuvs-sq8 scalar quantizer (any quantile) and the binary "
                       "quantizer with zero threshold and little bit order")

    # -- verbs --------------------------------------------------------------------------------
    def fit(self, scheme: Scheme, X: Any) -> dict[str, np.ndarray]:
        return IMPLEMENTATIONS[(scheme.family, "fit")](self, scheme, X)

    def transform(self, scheme: Scheme, state: dict[str, Any] | None, X: Any, out: Any = None) -> Codes:
        _refuse_out(out)
        data = IMPLEMENTATIONS[(scheme.family, "transform")](self, state, _contiguous(X))
        return Codes(_like(X, data), {}, scheme.family, X.shape[1])

    def inverse_transform(self, scheme: Scheme, state: dict[str, Any] | None, codes: Codes, out: Any = None) -> Any:
        return IMPLEMENTATIONS[(scheme.family, "inverse")](self, scheme, state, codes, out)

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


# -- scalar: cuvs.preprocessing.quantize.scalar -------------------------------------------------


@implements("scalar", "fit")
def _scalar_fit(backend: CuvsBackend, scheme: Scheme, X: Any) -> dict[str, np.ndarray]:
    from cuvs.preprocessing.quantize import scalar

    params = cast(ScalarParams, scheme.config)  # registered for the scalar family only
    trained = scalar.train(scalar.QuantizerParams(quantile=params.quantile), _contiguous(X))
    lo, hi = np.float32(trained.min), np.float32(trained.max)
    backend._trained[(float(lo), float(hi))] = trained
    return {"lo": np.array([lo], np.float32), "hi": np.array([hi], np.float32)}


@implements("scalar", "transform")
def _scalar_transform(backend: CuvsBackend, state: dict[str, Any] | None, x: Any) -> Any:
    from cuvs.preprocessing.quantize import scalar

    return scalar.transform(backend._quantizer(state), x)


@implements("scalar", "inverse")
def _scalar_inverse(backend: CuvsBackend, scheme: Scheme, state: dict[str, Any] | None, codes: Codes, out: Any) -> Any:
    _refuse_out(out)
    from cuvs.preprocessing.quantize import scalar

    return _like(codes.data, scalar.inverse_transform(backend._quantizer(state), _contiguous(codes.data)))


# -- binary: cuvs.preprocessing.quantize.binary (no fit, no inverse: gpuquant's kernel decodes) --


@implements("binary", "fit")
def _binary_fit(backend: CuvsBackend, scheme: Scheme, X: Any) -> dict[str, np.ndarray]:
    return {}


@implements("binary", "transform")
def _binary_transform(backend: CuvsBackend, state: dict[str, Any] | None, x: Any) -> Any:
    from cuvs.preprocessing.quantize import binary

    return binary.transform(x)


@implements("binary", "inverse")
def _binary_inverse(backend: CuvsBackend, scheme: Scheme, state: dict[str, Any] | None, codes: Codes, out: Any) -> Any:
    from gpuquant.backends.cupy_backend import CupyBackend

    return CupyBackend().inverse_transform(scheme, state, codes, out=out)


def _refuse_out(out: Any) -> None:
    """cuVS writes into arrays of its own: ``out=`` is refused (binary decode, gpuquant's kernel, takes it)."""
    if out is not None:
        raise InputError("backend 'cuvs' does not take out=; use backend='cupy' for preallocated outputs")


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
