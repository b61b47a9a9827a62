"""Launchers of the ``rabitq`` family (``kernels/rabitq.cu``).

On the GPU: the 1-bit codes (sign bits and the two factors, for both metrics) and the decode of every
``bits`` (FAISS's ``sa_decode`` reads the sign bits and ``dp_multiplier`` only). The extra-bit codes
of ``bits > 1`` stay on the CPU: their per-row scale search visits the level steps in sorted order,
a serial sweep that is not ported yet, so :func:`rabitq_supported` refuses those schemes and
``backend="auto"`` picks numpy for them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import INPUT_TYPES, NO_ROW, THREADS, i32, i64, occupancy_grid, row_flags
from gpuquant.backends.cupy_launch import kernel, launcher, limits
from gpuquant.schemes import Scheme
from gpuquant.schemes.rabitq import NONFINITE_WHY, RabitqScheme, overflow_error
from gpuquant.schemes.statistics import RowError

RABITQ_FILE = "rabitq.cu"
#: Every kernel instance (``name_expressions``) of ``kernels/rabitq.cu``.
NAME_EXPRESSIONS: tuple[str, ...] = (*(f"rabitq_encode1<{t}>" for t in INPUT_TYPES.values()), "rabitq_decode")


def _kernel(name: str) -> Any:
    return kernel(RABITQ_FILE, name, NAME_EXPRESSIONS)


@limits("rabitq")
def rabitq_supported(scheme: Scheme) -> tuple[bool, str]:
    if scheme.config.bits == 1:
        return True, "implemented by the GPU kernels"
    return False, "rabitq with bits > 1 has no GPU kernel yet (its scale search runs on the CPU: backend='numpy')"


def _center(constant: Any, state: dict[str, Any], d: int) -> Any:
    return constant("rabitq_center", RabitqScheme.center_for(state, d), np.float32)


@launcher("rabitq", "encode")
def rabitq_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    ok, reason = rabitq_supported(scheme)
    if not ok:
        raise NotImplementedError(reason)
    n, d = (int(s) for s in x.shape)
    bad = row_flags(2)
    _kernel(f"rabitq_encode1<{INPUT_TYPES[x.dtype]}>")(
        (occupancy_grid(n),), (THREADS,),
        (x, _center(constant, state, d), codes, bad, i64(n), i64(d), i32(scheme.config.metric == "ip")),
    )
    nonfinite, overflow = (int(v) for v in bad.get())
    if nonfinite != NO_ROW:
        raise RowError(nonfinite, "{row} holds NaN or ±Inf; " + NONFINITE_WHY)
    if overflow != NO_ROW:
        raise overflow_error(overflow)


@launcher("rabitq", "decode")
def rabitq_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    _kernel("rabitq_decode")(
        (occupancy_grid(n),), (THREADS,), (c, _center(constant, state, d), y, i64(n), i64(d), i64(int(c.shape[1]))),
    )
