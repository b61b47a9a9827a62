"""Which backends exist, which one runs a scheme here, and ``auto`` (the package docstring of
:mod:`gpuquant.backends` tells the rules)."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

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


def _backend_class(name: str) -> type[Backend]:
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
