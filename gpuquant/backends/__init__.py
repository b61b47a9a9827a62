"""The backends layer: the same verbs (fit, transform, inverse_transform) on different hardware.

* ``numpy``: the CPU path, always available; the reference math in row chunks on every core.
* ``cupy``: our CUDA kernels (``kernels/*.cu``) through CuPy, when a GPU works.
* ``cuvs``: NVIDIA cuVS's own scalar and binary quantizers, for side-by-side comparison (never
  picked by ``auto``).

``auto`` is decided in one place, :func:`pick_auto`: the first backend of :data:`AUTO_ORDER`
(``cupy``, then ``numpy``) that works here and, given a scheme, implements it (its ``supports``),
with the reason each one before it was skipped. An explicitly named backend never falls back: if
it cannot run, ``resolve`` raises ``BackendUnavailableError`` with the reason, and
``resolve_for(name, scheme)`` raises it too when the backend does not implement the scheme. GPU
libraries are imported only inside the GPU backends' modules, which are imported only when that
backend is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np

from gpuquant.codes import Codes
from gpuquant.errors import BackendUnavailableError, InputError
from gpuquant.schemes import Scheme

_MODULES = {
    "numpy": ("gpuquant.backends.numpy_backend", "NumpyBackend"),
    "cupy": ("gpuquant.backends.cupy_backend", "CupyBackend"),
    "cuvs": ("gpuquant.backends.cuvs_backend", "CuvsBackend"),
}
AUTO_ORDER = ("cupy", "numpy")


class Backend(Protocol):
    """What every backend implements; inputs are validated by the caller (``Quantizer``)."""

    name: str

    @staticmethod
    def is_available() -> tuple[bool, str]: ...

    @staticmethod
    def supports(scheme: Scheme) -> tuple[bool, str]:
        """Whether this backend implements ``scheme`` (family and parameter values), and why not."""
        ...

    def fit(self, scheme: Scheme, X: Any) -> dict[str, Any]: ...

    def transform(self, scheme: Scheme, state: dict[str, Any] | None, X: Any, out: Any = None) -> Codes: ...

    def inverse_transform(
        self, scheme: Scheme, state: dict[str, Any] | None, codes: Codes, out: Any = None
    ) -> Any: ...


def _backend_class(name: str) -> type:
    module, cls = _MODULES[name]
    return getattr(importlib.import_module(module), cls)


def availability(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` can run here, and why not."""
    try:
        cls = _backend_class(name)
    except ImportError as exc:
        return False, f"cannot import the {name} backend: {exc}"
    return cls.is_available()


def available_backends() -> list[tuple[str, bool, str]]:
    """Every backend as (name, usable, reason)."""
    return [(name, *availability(name)) for name in _MODULES]


def supports(name: str, scheme: Scheme) -> tuple[bool, str]:
    """Whether backend ``name`` implements ``scheme`` (family and parameter values), and why not:
    the backend's own ``supports`` (the numpy reference implements every scheme; the GPU
    backends the families they register implementations for)."""
    try:
        cls = _backend_class(name)
    except ImportError as exc:
        return False, f"cannot import the {name} backend: {exc}"
    return cls.supports(scheme)


def pick_auto(scheme: Scheme | None = None) -> tuple[str, dict[str, str]]:
    """The backend ``auto`` means here: the first of :data:`AUTO_ORDER` that is available and (given
    ``scheme``) implements it; returned with ``{name: reason}`` for each backend skipped before it."""
    skipped: dict[str, str] = {}
    for candidate in AUTO_ORDER:
        ok, reason = availability(candidate)
        if ok and scheme is not None:
            ok, reason = supports(candidate, scheme)
        if ok:
            return candidate, skipped
        skipped[candidate] = reason
    raise BackendUnavailableError("no backend is available")  # numpy always is


def resolve_for(name: str, scheme: Scheme) -> Backend:
    """The backend to run ``scheme`` on: like :func:`resolve`, also checking :func:`supports`."""
    if name == "auto":
        return _backend_class(pick_auto(scheme)[0])()
    backend = resolve(name)
    ok, reason = supports(name, scheme)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} cannot run this scheme: {reason}")
    return backend


def check_name(name: str) -> str:
    """``name`` when it names a backend or is ``"auto"``; else ``InputError`` listing the names."""
    if name != "auto" and name not in _MODULES:
        raise InputError(f"unknown backend {name!r}; choose one of {['auto', *_MODULES]}")
    return name


def resolve(name: str) -> Backend:
    """The backend called ``name`` (or the first usable one for ``"auto"``)."""
    check_name(name)
    if name == "auto":
        return _backend_class(pick_auto()[0])()
    ok, reason = availability(name)
    if not ok:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {reason}")
    return _backend_class(name)()


def dlpack_on_cuda(x: Any) -> bool:
    """True for objects whose DLPack device (``__dlpack_device__``) is CUDA or CUDA managed memory."""
    dev = getattr(x, "__dlpack_device__", None)
    if dev is None:
        return False
    try:
        return dev()[0] in (2, 13)  # kDLCUDA, kDLCUDAManaged
    except Exception:  # noqa: BLE001 - a foreign object's probe failing means "not a device array"
        return False


def is_device_array(x: Any) -> bool:
    """True for CuPy arrays and anything exposing CUDA memory (``__cuda_array_interface__`` or a CUDA DLPack device)."""
    return hasattr(x, "__cuda_array_interface__") or dlpack_on_cuda(x)


def array_module(x: Any) -> Any:
    """The array module of ``x``: ``cupy`` for a device array (:func:`is_device_array`), else ``numpy``."""
    if not isinstance(x, np.ndarray) and is_device_array(x):
        import cupy

        return cupy
    return np


def device_code_dtype(scheme: Scheme) -> np.dtype:
    """dtype of the codes on the device (fp8 -> uint8, bf16 -> uint16: CuPy lacks those dtypes)."""
    dtype = scheme.code_dtype
    if dtype.isbuiltin == 2:  # a type numpy itself lacks (ml_dtypes fp8, bfloat16): so does CuPy
        return np.dtype(np.uint8 if dtype.itemsize == 1 else np.uint16)
    return dtype
