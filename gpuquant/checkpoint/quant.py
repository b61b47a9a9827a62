"""The weight math of ``gpuquant convert-model``: symmetric scales, codes and int32 packing, written to
give the bytes compressed-tensors' own compressors give from the same float32 weights.

For a weight ``W`` of shape ``(out, in)`` split into groups of ``g`` columns (``g = in`` per output
channel), float32 throughout (weights of other float dtypes are widened exactly first)::

    amax  = max |W| over the group                                    (exact)
    s     = f32(amax / h),  s = eps(f32) = 2**-23 where that is 0      h: half the code range
    t     = clip(f32(W / s) + 0, lo, hi)                              (+0 turns -0 into +0)

The two first steps are :func:`gpuquant.schemes.scaled_fp8.symmetric_scale` and ``scaled_values``,
the formula of the ``safetensors-fp8`` preset: ``--scheme fp8`` gives that preset's bytes.
    q     = rint(t) as int8  (int schemes)   |   fp8_e4m3fn(t) (round to nearest even)
    W'    = f32(q) * s                                                (dequantization)

==========  ==========================  =====  ==============  ======================================
scheme      compressed-tensors format   h      [lo, hi]        stored tensors
==========  ==========================  =====  ==============  ======================================
``fp8``     float-quantized, channel    448    [-448, 448]     ``weight`` F8_E4M3, ``weight_scale`` F32 (out, 1)
``w8a16``   int-quantized, channel      127.5  [-128, 127]     ``weight`` I8, ``weight_scale`` F32 (out, 1)
``w4a16``   pack-quantized, group 128   7.5    [-8, 7]         ``weight_packed`` I32 (out, in/8),
                                                               ``weight_scale`` F32 (out, in/128),
                                                               ``weight_shape`` I64 [out, in]
==========  ==========================  =====  ==============  ======================================

``h`` is compressed-tensors' ``(q_max - q_min) / 2`` (127.5 for int8, not 127). Packing (``w4a16``):
``u = q + 8`` (0..15); int32 word ``j`` of a row holds columns ``8j .. 8j+7``, column ``8j + k`` in
bits ``4k .. 4k+3`` (little end first), as compressed-tensors' ``pack_to_int32`` lays 32 values of
``b`` bits into ``b`` words. NaN or +-Inf in a weight is refused (``InputError`` naming the row).

Device (:func:`weight_quantizer`): ``fp8`` is the ``safetensors-fp8`` preset's formula, whose CUDA
kernels are bit-exact with the numpy reference, so on a working GPU (``device="auto"`` or ``"gpu"``)
its codes and scales come from that preset's quantizer on the cupy backend: the same bytes. ``w8a16``
and ``w4a16`` always run on numpy: no gpuquant kernel computes their formula (the ``absmax`` family's
scale is ``amax / 127`` (``/ 7``) with codes clipped to ``[-127, 127]`` (``[-7, 7]``), where
compressed-tensors divides by ``127.5`` (``7.5``) and clips to ``[-128, 127]`` (``[-8, 7]``)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from gpuquant.backends.arrays import is_device_array
from gpuquant.errors import BackendUnavailableError, InputError
from gpuquant.schemes.scaled_fp8 import scaled_values, symmetric_scale
from gpuquant.schemes.statistics import RowError

F32 = np.float32
GROUP = 128


@dataclass(frozen=True)
class WeightScheme:
    """One ``--scheme`` of ``convert-model`` (see the module docstring's table)."""

    name: str
    format: str
    type: str
    bits: int
    group: int | None
    half: float
    lo: float
    hi: float

    @property
    def strategy(self) -> str:
        return "channel" if self.group is None else "group"

    def args(self) -> dict[str, object]:
        """compressed-tensors' ``QuantizationArgs`` of the weights, as ``config.json`` holds them."""
        return {"num_bits": self.bits, "type": self.type, "symmetric": True, "group_size": self.group,
                "strategy": self.strategy, "dynamic": False, "observer": "minmax"}

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a 2-D weight of ``shape`` can take this scheme (groups need ``in % 128 == 0``)."""
        return len(shape) == 2 and shape[1] > 0 and (self.group is None or shape[1] % self.group == 0)


#: compressed-tensors quantization type -> the cast of the clipped values to codes.
CAST = {"float": lambda t: t.astype(ml_dtypes.float8_e4m3fn), "int": lambda t: np.rint(t).astype(np.int8)}

SCHEMES = {s.name: s for s in [
    WeightScheme("fp8", "float-quantized", "float", 8, None, 448.0, -448.0, 448.0),
    WeightScheme("w8a16", "int-quantized", "int", 8, None, 127.5, -128.0, 127.0),
    WeightScheme("w4a16", "pack-quantized", "int", 4, GROUP, 7.5, -8.0, 7.0),
]}


def quantize(w: np.ndarray, scheme: WeightScheme, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(q, s)``: codes (int8, or float8_e4m3fn for fp8) of shape ``(rows, in)`` and float32 scales
    ``(rows, groups)`` of the rows ``w`` (``first_row``: their index in the tensor, for errors)."""
    x = np.asarray(w, F32)
    rows, cols = x.shape
    g = cols if scheme.group is None else scheme.group
    x = x.reshape(rows, cols // g, g)
    amax = np.max(np.abs(x), axis=2) if x.size else np.zeros((rows, cols // g), F32)
    bad = np.flatnonzero(~np.isfinite(amax).all(axis=1))
    if bad.size:
        raise _no_scale(first_row + int(bad[0]))
    s = symmetric_scale(amax, scheme.half)
    t = scaled_values(x, s[:, :, None], scheme.lo, scheme.hi, out=np.empty_like(x))
    q = CAST[scheme.type](t)
    return q.reshape(rows, cols), s


def _no_scale(row: int) -> InputError:
    return InputError(f"row {row} holds NaN or +-Inf: it has no scale")


#: The quantizer preset whose device kernels give a scheme's exact bytes (see the module docstring:
#: the int schemes have none).
DEVICE_PRESETS = {"fp8": "safetensors-fp8"}


def weight_quantizer(scheme: WeightScheme, device: str = "auto") -> Any | None:
    """The quantizer (cupy backend) that encodes ``scheme`` on the GPU for ``device`` (``"auto"``: when
    the cupy backend works and implements the scheme's preset; ``"gpu"``: that or
    ``BackendUnavailableError``; ``"cpu"``), or None: the numpy path of :func:`quantize`."""
    from gpuquant.api import Quantizer
    from gpuquant.engine.local import pick_device
    from gpuquant.engine.run import DEVICES

    if device not in DEVICES:
        raise InputError(f"device must be one of {list(DEVICES)}, got {device!r}")
    preset = DEVICE_PRESETS.get(scheme.name)
    if preset is None:
        if device == "gpu":
            raise BackendUnavailableError(f"--scheme {scheme.name} has no GPU path (no kernel computes "
                                          "compressed-tensors' int formula); use --device auto or cpu")
        return None
    q = Quantizer(preset, backend="numpy")
    where, backend = pick_device(device, q.scheme)
    return Quantizer(preset, backend=backend.name) if where == "gpu" else None


def device_quantize(w: np.ndarray, quantizer: Any, first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(q, s)`` of :func:`quantize` computed by ``quantizer`` (from :func:`weight_quantizer`)."""
    try:
        codes = quantizer.transform(np.asarray(w, F32))
    except RowError as exc:
        raise _no_scale(first_row + exc.row) from None
    return _host(codes.data), _host(codes.side["weight_scale"])


def _host(a: Any) -> np.ndarray:
    return np.asarray(a.get() if is_device_array(a) else a)


def dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``f32(q) * s`` with ``s`` broadcast over each group of columns: float32 ``(rows, in)``."""
    rows, cols = q.shape
    groups = s.shape[1]
    x = np.asarray(q).astype(F32).reshape(rows, groups, cols // groups)
    return (x * np.asarray(s, F32)[:, :, None]).reshape(rows, cols)


def pack_int32(q: np.ndarray, bits: int = 4) -> np.ndarray:
    """Pack int8 codes of ``bits`` bits (``cols`` a multiple of ``32 / bits``) into int32 words,
    value ``q + 2**(bits-1)``, column ``k`` of each word at bits ``bits * k`` (see the docstring)."""
    per = 32 // bits
    rows, cols = q.shape
    if 32 % bits or cols % per:
        raise InputError(f"cannot pack {cols} columns of {bits} bits into int32 words")
    u = (q.astype(np.int32) + (1 << (bits - 1))).astype(np.uint32).reshape(rows, cols // per, per)
    shifts = (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    words = np.bitwise_or.reduce(u << shifts, axis=2)
    return words.astype(np.uint32).view(np.int32)


def unpack_int32(p: np.ndarray, cols: int, bits: int = 4) -> np.ndarray:
    """The inverse of :func:`pack_int32`: int8 codes ``(rows, cols)``."""
    per = 32 // bits
    u = np.asarray(p).view(np.uint32)[:, :, None] >> (np.arange(per, dtype=np.uint32) * np.uint32(bits))
    v = (u & np.uint32((1 << bits) - 1)).astype(np.int16) - (1 << (bits - 1))
    return v.reshape(p.shape[0], -1)[:, :cols].astype(np.int8)


def encode(w: np.ndarray, scheme: WeightScheme, first_row: int = 0,
           quantizer: Any = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The stored tensors (local names: ``weight`` / ``weight_packed``, ``weight_scale``) of the rows
    ``w`` and their dequantization (float32), for the error report; computed by ``quantizer`` (the
    device path of :func:`weight_quantizer`) when given, else by :func:`quantize`."""
    q, s = quantize(w, scheme, first_row) if quantizer is None else device_quantize(w, quantizer, first_row)
    stored = {"weight_packed": pack_int32(q, scheme.bits)} if scheme.bits < 8 else {"weight": q}
    return {**stored, "weight_scale": s}, dequantize(q, s)
