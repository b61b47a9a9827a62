"""Launchers of the ``rabitq`` family (``kernels/rabitq.cu``).

Every ``bits`` and both metrics on the GPU (no narrower limits registered), bit for bit with
:mod:`gpuquant.schemes.rabitq`. Encode: ``rabitq_encode1`` writes each row's sign bits and factors
(the error factor too when ``bits > 1``); for ``bits > 1`` ``rabitq_encode_ex`` then writes the extra
bits and their two factors, one thread per row. Its scale search merges the dimensions' level steps
in increasing ``t`` with a binary heap of ``d`` keys (and ``d`` levels) a thread, in scratch arrays
allocated here (:data:`KEY_BYTES` a key), so its grid holds at most :data:`EX_SCRATCH_KEYS` keys (at
least one block of :data:`EX_THREADS` threads); :func:`rabitq_scratch`, registered with ``@scratch``,
gives the bytes a call allocates, to this launcher and to the planner. Decode: FAISS's ``sa_decode``
from the sign bits and ``dp_multiplier`` (any ``bits``).

Refused rows lower one device flag, filed with :func:`~gpuquant.backends.cupy_refusals.refuse_later`
and raised at the next synchronisation: a row holding NaN or ±Inf to its index, another row whose
``|x|^2`` or ``|x - center|^2`` overflows float32 to ``n`` + its index, so the first nonfinite row
wins as in the reference (which checks them first) and a call raises one error, the reference's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends.cupy_device import INPUT_TYPES, THREADS, cupy_module, i32, i64, occupancy_grid
from gpuquant.backends.cupy_launch import kernel, launcher, scratch
from gpuquant.backends.cupy_refusals import refusal_flag, refuse_later
from gpuquant.schemes import Scheme
from gpuquant.schemes.rabitq import NONFINITE_WHY, RabitqScheme, code_size, overflow_error
from gpuquant.schemes.statistics import RowError

RABITQ_FILE = "rabitq.cu"
#: Every kernel instance (``name_expressions``) of ``kernels/rabitq.cu``.
NAME_EXPRESSIONS: tuple[str, ...] = (*(f"rabitq_encode1<{t}>" for t in INPUT_TYPES.values()),
                                     *(f"rabitq_encode_ex<{t}>" for t in INPUT_TYPES.values()), "rabitq_decode")
#: Threads a block of ``rabitq_encode_ex`` (its ``__launch_bounds__``).
EX_THREADS = 128
#: Heap keys (8 bytes, plus a 2-byte level each) the extra-bit encode's grid may hold at once.
EX_SCRATCH_KEYS = 1 << 23
#: Scratch bytes a heap key takes: its uint64 key and its uint16 level.
KEY_BYTES = np.dtype(np.uint64).itemsize + np.dtype(np.uint16).itemsize


def _kernel(name: str) -> Any:
    return kernel(RABITQ_FILE, name, NAME_EXPRESSIONS)


def _center(constant: Any, state: dict[str, Any], d: int) -> Any:
    return constant("rabitq_center", RabitqScheme.center_for(state, d), np.float32)


def _ex_blocks(scheme: Scheme, rows: int | None, d: int) -> int:
    """Blocks of ``rabitq_encode_ex`` for ``rows`` x ``d`` (``rows`` None: as many as may come); 0
    when the extra-bit pass does not run (``bits == 1``, no rows, no dimensions)."""
    if scheme.config.bits == 1 or rows == 0 or d == 0:
        return 0
    most = max(1, EX_SCRATCH_KEYS // (d * EX_THREADS))
    return most if rows is None else min(-(-rows // EX_THREADS), most)


@scratch("rabitq")
def rabitq_scratch(scheme: Scheme, rows: int | None, d: int) -> int:
    """Bytes of the heap scratch one encode allocates: ``KEY_BYTES`` for each of ``d`` keys a thread."""
    return _ex_blocks(scheme, rows, d) * EX_THREADS * d * KEY_BYTES


@launcher("rabitq", "encode")
def rabitq_encode(constant: Any, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
    n, d = (int(s) for s in x.shape)
    bits, inner_product = scheme.config.bits, i32(scheme.config.metric == "ip")
    center, size, kind = _center(constant, state, d), i64(code_size(d, bits)), INPUT_TYPES[x.dtype]
    refused = refusal_flag()
    _kernel(f"rabitq_encode1<{kind}>")(
        (occupancy_grid(n),), (THREADS,),
        (x, center, codes, refused, i64(n), i64(d), size, inner_product, i32(bits > 1)),
    )
    blocks = _ex_blocks(scheme, n, d)
    if blocks:
        cp = cupy_module()
        keys = cp.empty(blocks * EX_THREADS * d, dtype=np.uint64)
        levels = cp.empty(blocks * EX_THREADS * d, dtype=np.uint16)
        _kernel(f"rabitq_encode_ex<{kind}>")(
            (blocks,), (EX_THREADS,), (x, center, codes, keys, levels, i64(n), i64(d), size, i32(bits - 1), inner_product),
        )
    refuse_later(refused, lambda v: RowError(v, "{row} holds NaN or ±Inf; " + NONFINITE_WHY) if v < n
                 else overflow_error(v - n))


@launcher("rabitq", "decode")
def rabitq_decode(constant: Any, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
    n, d = (int(s) for s in y.shape)
    _kernel("rabitq_decode")(
        (occupancy_grid(n),), (THREADS,), (c, _center(constant, state, d), y, i64(n), i64(d), i64(int(c.shape[1]))),
    )
