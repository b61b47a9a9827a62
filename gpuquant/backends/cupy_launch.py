"""The cupy backend's registry of kernel launchers, one per (family, mode).

A family's launchers live in its module of :mod:`gpuquant.backends.cupy_families`, registered there
with :func:`launcher`; the backend looks up ``LAUNCHERS[(scheme.family, mode)]`` (mode ``"encode"``
or ``"decode"``) and knows nothing of the families. A launcher reads its family's typed parameters
(``scheme.config``), picks the kernel instance for the input dtype and passes the constants the
per-element math takes; it is given the backend's constant cache (``constant(kind, value, dtype)``:
device copies of ranges, thresholds and scales, made once per fitted state and stream; ``value`` an
array of the state, a zero-argument callable building the host value, or any host array: see
:mod:`gpuquant.backends.cupy_constants`).

Encode launchers: ``(constant, scheme, state, x, codes, side)``; decode launchers:
``(constant, scheme, state, codes, side, y)``. ``x`` and ``codes`` are C-contiguous CuPy arrays on
the current device; ``state`` is the fitted state (``{}`` when none).

``kernels/quantize.cu`` holds the kernels of the first four families; :data:`NAME_EXPRESSIONS`
lists its template instances and :func:`quantize_kernel` fetches one. A family with its own kernel
file keeps its instance list in its launcher module and fetches its kernels with :func:`kernel`.

Every kernel fetched through :func:`kernel` is launched through a wrapper. It sizes each grid
dimension given as a :class:`~gpuquant.backends.cupy_device.Work` (``occupancy_grid``) from the
occupancy of that very kernel at the launch's block size (the driver's
``cuOccupancyMaxActiveBlocksPerMultiprocessor``, cached per kernel and block size): one wave of
resident blocks at most (:func:`~gpuquant.backends.cupy_device.grid_size`).

Seeing the launches (for tools: the SASS report, the kernel-only benchmark): the wrapper tells the
observers of the current context a :class:`Launch` (file, name expression, grid as launched, block,
arguments).
:func:`observe_launches` collects them while the kernels still run; :func:`planned_launches` runs a
family's launcher on the host (``cupy_device.host_run``), with numpy arrays for the device arrays
and host values for the constants, and returns the launches it would make without fetching,
compiling or running any kernel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np

from gpuquant.backends import cuda_loader
from gpuquant.backends.cupy_device import INPUT_TYPES, THREADS, Work, cupy_module, grid_size, host_run, sm_count

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
#: family -> ``(scheme, rows, d) -> bytes`` of device scratch its encode launcher allocates for a call
#: of ``rows`` x ``d`` (``rows`` None: the most any call allocates) for families whose launcher allocates.
SCRATCH: dict[str, Callable[[Any, int | None, int], int]] = {}


def _registrar(table: dict[str, Any], family: str) -> Callable[[Any], Any]:
    def register(fn: Any) -> Any:
        table[family] = fn
        return fn
    return register


def limits(family: str) -> Callable[[Callable[[Any], tuple[bool, str]]], Callable[[Any], tuple[bool, str]]]:
    """Register the decorated predicate: which schemes of ``family`` its kernels implement (default: all)."""
    return _registrar(LIMITS, family)


def scratch(family: str) -> Callable[[Callable[[Any, int | None, int], int]], Callable[[Any, int | None, int], int]]:
    """Register the decorated ``(scheme, rows, d) -> bytes``: the device scratch one encode call of
    ``family``'s launcher allocates (the launcher sizes its buffers with it; the planner counts it)."""
    return _registrar(SCRATCH, family)


def scratch_bytes(scheme: Any, rows: int | None, d: int) -> int:
    """Bytes of device scratch one encode call of ``rows`` x ``d`` allocates for ``scheme`` (0 for a
    family that registers none; ``rows`` None: the most any call allocates)."""
    fn = SCRATCH.get(scheme.family)
    return 0 if fn is None else int(fn(scheme, rows, d))


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
    once per device, behind the launch wrapper (see the module docstring)."""
    observers, planned = _OBSERVING.get()
    real = None if planned else cuda_loader.get_kernel(filename, name, names)

    def launch(grid: Any, block: Any, args: Any, **kw: Any) -> None:
        grid = tuple(_sized(g, real, block, kw.get("shared_mem", 0)) for g in grid)
        for observe in observers:
            observe(Launch(filename, name, tuple(names), grid, block, tuple(args)))
        if real is not None:
            real(grid, block, args, **kw)

    return launch


def _sized(dim: Any, real: Any, block: Any, shared: int) -> Any:
    """A grid dimension as launched: a :class:`Work` sized from ``real``'s occupancy (1 block when
    launches are only planned), anything else as given."""
    if not isinstance(dim, Work):
        return dim
    if real is None:
        return 1
    threads = math.prod(int(b) for b in block)
    return grid_size(occupancy(real.kernel.ptr, threads, shared), sm_count(), dim.items, dim.per_block)


@functools.cache
def occupancy(function: int, threads: int, shared: int) -> int:
    """Resident blocks per multiprocessor of the loaded kernel ``function`` (a ``CUfunction``) at
    ``threads`` threads a block and ``shared`` bytes of dynamic shared memory."""
    driver = cupy_module().cuda.driver
    return int(driver.occupancyMaxActiveBlocksPerMultiprocessor(function, threads, shared))



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
        return np.ascontiguousarray(value() if callable(value) else value, dtype)

    args: tuple[Any, ...] = ((constant, scheme, state, data, out, side) if mode == "encode"
                             else (constant, scheme, state, data, side, out))
    with host_run(), _observed(launches.append, planned=True):
        LAUNCHERS[(scheme.family, mode)](*args)
    return launches


def quantize_kernel(name: str) -> Any:
    """The kernel instance ``name`` of ``kernels/quantize.cu`` (see :func:`kernel`)."""
    return kernel(QUANTIZE_FILE, name, NAME_EXPRESSIONS)


def row_blocks(n: int, row_units: int) -> Work:
    """The grid for ``n`` rows of ``row_units`` output units, eight units per thread (occupancy-sized)."""
    return Work(n * -(-row_units // 8), THREADS)
