"""The cupy backend's registry of kernel launchers, one per (family, mode).

A family's launchers live in its module of :mod:`gpuquant.backends.cupy_families`, registered there
with :func:`launcher`; the backend looks up ``LAUNCHERS[(scheme.family, mode)]`` (mode ``"encode"``
or ``"decode"``) and knows nothing of the families. A launcher reads its family's typed parameters
(``scheme.config``), picks the kernel instance for the input dtype and passes the constants the
per-element math takes; it is given the backend's constant cache (``constant(kind, value, dtype)``:
device copies of ranges, thresholds and scales, uploaded once per stream).

Encode launchers: ``(constant, scheme, state, x, codes, side)``; decode launchers:
``(constant, scheme, state, codes, side, y)``. ``x`` and ``codes`` are C-contiguous CuPy arrays on
the current device; ``state`` is the fitted state (``{}`` when none).

``kernels/quantize.cu`` holds the kernels of the first four families; :data:`NAME_EXPRESSIONS`
lists its template instances and :func:`quantize_kernel` fetches one. A family with its own kernel
file keeps its instance list in its launcher module and fetches its kernels with :func:`kernel`.

Seeing the launches (for tools: the SASS report, the kernel-only benchmark): every kernel fetched
through :func:`kernel` is launched through a wrapper that tells the observers of the current
context a :class:`Launch` (file, name expression, grid, block, arguments).
:func:`observe_launches` collects them while the kernels still run; :func:`planned_launches` runs a
family's launcher on the host (``cupy_device.host_run``), with numpy arrays for the device arrays
and host values for the constants, and returns the launches it would make without fetching,
compiling or running any kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.backends import cuda_loader
from gpuquant.backends.cupy_device import INPUT_TYPES, grid_for, host_run

QUANTIZE_FILE = "quantize.cu"

Launcher = Callable[..., None]
#: (family, "encode" | "decode") -> launcher.
LAUNCHERS: dict[tuple[str, str], Launcher] = {}


def launcher(family: str, mode: str) -> Callable[[Launcher], Launcher]:
    """Register the decorated function as the ``mode`` launcher of ``family``."""
    def register(fn: Launcher) -> Launcher:
        LAUNCHERS[(family, mode)] = fn
        return fn
    return register


#: family -> ``(scheme) -> (supported, reason)`` for families whose kernels cover only some parameters.
LIMITS: dict[str, Callable[[Any], tuple[bool, str]]] = {}


def limits(family: str) -> Callable[[Callable[[Any], tuple[bool, str]]], Callable[[Any], tuple[bool, str]]]:
    """Register the decorated predicate: which schemes of ``family`` its kernels implement (default: all)."""
    def register(fn: Callable[[Any], tuple[bool, str]]) -> Callable[[Any], tuple[bool, str]]:
        LIMITS[family] = fn
        return fn
    return register


def _instances() -> list[str]:
    names = []
    for t in INPUT_TYPES.values():
        names += [f"scalar_encode<{t}>", f"binary_encode<{t}>", f"absmax_encode<{t}>", f"absmax_encode_rows<{t}>"]
        names += [f"float_encode<{t}, unsigned char>", f"float_encode<{t}, unsigned short>"]
    names += ["scalar_decode", "binary_decode", "absmax_decode"]
    names += ["float_decode<unsigned char>", "float_decode<unsigned short>"]
    return names


#: Every kernel instance (``name_expressions``) of ``kernels/quantize.cu``.
NAME_EXPRESSIONS: tuple[str, ...] = tuple(_instances())


@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernels/<filename>``'s instance ``name`` (one of the file's ``names``),
    its grid, block and arguments."""

    filename: str
    name: str
    names: tuple[str, ...]
    grid: Any
    block: Any
    args: tuple[Any, ...]


Observer = Callable[[Launch], None]
#: (observers, whether kernels are only recorded): see the module docstring.
_OBSERVING: ContextVar[tuple[tuple[Observer, ...], bool]] = ContextVar("gpuquant_launch_observers", default=((), False))


def kernel(filename: str, name: str, names: Any) -> Any:
    """The kernel instance ``name`` of ``kernels/<filename>`` (``names``: the file's instances), compiled
    once per device; while launches are observed, a launcher that reports each launch first."""
    observers, planned = _OBSERVING.get()
    if not observers:
        return cuda_loader.get_kernel(filename, name, names)
    real = None if planned else cuda_loader.get_kernel(filename, name, names)

    def launch(grid: Any, block: Any, args: Any, **kw: Any) -> None:
        for observe in observers:
            observe(Launch(filename, name, tuple(names), grid, block, tuple(args)))
        if real is not None:
            real(grid, block, args, **kw)

    return launch



@contextmanager
def _observed(observer: Observer, planned: bool) -> Iterator[None]:
    observers, outer_planned = _OBSERVING.get()
    token = _OBSERVING.set(((*observers, observer), planned or outer_planned))
    try:
        yield
    finally:
        _OBSERVING.reset(token)


@contextmanager
def observe_launches() -> Iterator[list[Launch]]:
    """Collect every launch of a kernel fetched through :func:`kernel` inside the block (they still run)."""
    launches: list[Launch] = []
    with _observed(launches.append, planned=False):
        yield launches


def planned_launches(scheme: Any, mode: str, state: dict[str, Any], data: np.ndarray, out: np.ndarray,
                     side: dict[str, np.ndarray]) -> list[Launch]:
    """The launches the ``mode`` launcher of ``scheme``'s family makes, recorded on the host.

    ``mode`` "encode": ``data`` is the input and ``out`` the codes; "decode": ``data`` the codes and
    ``out`` the reconstruction; numpy arrays of the shapes and dtypes the backend passes
    (``device_code_dtype`` codes). Constants are the host values; grids are one block."""
    launches: list[Launch] = []

    def constant(kind: str, value: Any, dtype: Any) -> np.ndarray:
        return np.ascontiguousarray(value, dtype)

    args: tuple[Any, ...] = ((constant, scheme, state, data, out, side) if mode == "encode"
                             else (constant, scheme, state, data, side, out))
    with host_run(), _observed(launches.append, planned=True):
        LAUNCHERS[(scheme.family, mode)](*args)
    return launches


def quantize_kernel(name: str) -> Any:
    """The kernel instance ``name`` of ``kernels/quantize.cu`` (see :func:`kernel`)."""
    return kernel(QUANTIZE_FILE, name, NAME_EXPRESSIONS)


def row_blocks(n: int, row_units: int) -> int:
    """Blocks for ``n`` rows of ``row_units`` output units, eight units per thread."""
    return grid_for(n * -(-row_units // 8))
