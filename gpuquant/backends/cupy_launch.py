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
file keeps its instance list in its launcher module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gpuquant.backends import cuda_loader
from gpuquant.backends.cupy_device import INPUT_TYPES, grid_for

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
        names += [f"scalar_encode<{t}>", f"binary_encode<{t}>", f"absmax_encode<{t}>"]
        names += [f"float_encode<{t}, unsigned char>", f"float_encode<{t}, unsigned short>"]
    names += ["scalar_decode", "binary_decode", "absmax_decode"]
    names += ["float_decode<unsigned char>", "float_decode<unsigned short>"]
    return names


#: Every kernel instance (``name_expressions``) of ``kernels/quantize.cu``.
NAME_EXPRESSIONS: tuple[str, ...] = tuple(_instances())


def quantize_kernel(name: str) -> Any:
    """The kernel instance ``name`` of ``kernels/quantize.cu`` (compiled once per device)."""
    return cuda_loader.get_kernel(QUANTIZE_FILE, name, NAME_EXPRESSIONS)


def row_blocks(n: int, row_units: int) -> int:
    """Blocks for ``n`` rows of ``row_units`` output units, eight units per thread."""
    return grid_for(n * -(-row_units // 8))
