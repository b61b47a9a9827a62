"""The GPU backend: gpuquant's CUDA kernels (``kernels/quantize.cu``, ``kernels/train.cu``) via CuPy.

Results equal the numpy reference (``gpuquant.schemes``) bit for bit; the per-element math is in
``kernels/quant_math.cuh`` (IEEE float32/float64 in inline PTX, independent of CuPy's ``-ftz=true``).

Arrays in and out:

* numpy in -> numpy out: the input is uploaded (as float16/32/64, whatever it is; a non-contiguous
  array is made contiguous first), computed, and the codes downloaded (a host synchronisation, as
  the result must come back).
* device in -> CuPy out, on the input's device and the current CuPy stream, without copies: CuPy
  arrays, anything with ``__cuda_array_interface__`` and DLPack device tensors (torch) are wrapped,
  not copied. A non-contiguous (strided, Fortran-order) device input is the one exception: a
  C-contiguous copy is made on the device first. No host synchronisation happens, except in ``pq``
  (host checks). Rows an ``absmax``, ``gguf``, ``scaled_fp8``, ``rabitq`` or ``float`` (with
  ``nonfinite="raise"``) transform refuses (NaN or ±Inf; for ``rabitq`` also norms that overflow
  float32, for ``float`` also values that round past the format's largest finite one) are recorded
  on the device and raised at the next synchronisation: the next download of a result (numpy input:
  before ``transform`` writes any output), ``fit``, the engine's pipeline when the batch completes, or
  :meth:`CupyBackend.check_refusals` (see :mod:`gpuquant.backends.cupy_refusals`).
* ``out=``: transform takes a code array or a ``Codes`` (with its side arrays) of the right shape
  and dtype, C-contiguous; inverse_transform a float32 ``(n, d)`` array. numpy ``out`` for numpy
  input, CuPy ``out`` for device input.

Device code dtypes: CuPy has no fp8/bfloat16 dtypes, so on the device e4m3/e5m2 codes are ``uint8``
and bf16 codes ``uint16`` arrays holding the same bits (fp16 codes are ``float16``); numpy results
carry the ml_dtypes dtype (a view of the same bits). inverse_transform accepts either.

Fitting (:meth:`CupyBackend.fit`) runs on the device (``gpuquant.backends.cupy_train``) and returns
the state as numpy arrays. Kernels need compute capability 8.0 or newer (warp reductions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpuquant.backends import cupy_train, device_code_dtype, is_device_array
from gpuquant.backends.cupy_constants import ConstantCache
from gpuquant.backends.cupy_device import (
    INPUT_TYPES,
    THREADS,
    as_device,
    cupy_module,
    wrap_device,
)
from gpuquant.backends.cupy_families import scalar as _scalar
from gpuquant.backends.cupy_families.binary import binary_flip
from gpuquant.backends.cupy_launch import LAUNCHERS, LIMITS, NAME_EXPRESSIONS, QUANTIZE_FILE
from gpuquant.backends.cupy_refusals import RefusalLog, Refusals
from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.schemes import Scheme

SCALAR_PARAMS_DTYPE, scalar_params = _scalar.SCALAR_PARAMS_DTYPE, _scalar.scalar_params
MIN_COMPUTE_CAPABILITY = 80
#: The state of schemes without one: one object, so their constants' cache keys stay the same.
_NO_STATE: dict[str, Any] = {}
#: The families the kernels implement (every parameter of each).
FAMILIES = tuple(dict.fromkeys(family for family, _ in LAUNCHERS))
__all__ = ["FAMILIES", "INPUT_TYPES", "NAME_EXPRESSIONS", "QUANTIZE_FILE", "SCALAR_PARAMS_DTYPE", "THREADS",
           "CupyBackend", "binary_flip", "scalar_params"]


def _launcher(scheme: Scheme, mode: str) -> Any:
    try:
        return LAUNCHERS[(scheme.family, mode)]
    except KeyError:
        raise InputError(f"the cupy backend has no kernels for family {scheme.family!r}") from None


class CupyBackend:
    """GPU backend (see the module docstring)."""

    name = "cupy"

    #: Device copies of scheme constants kept per backend (:mod:`~gpuquant.backends.cupy_constants`).
    CONSTANTS_CACHED = 16

    def __init__(self) -> None:
        self._constants = ConstantCache(self.CONSTANTS_CACHED)
        self._refusals = RefusalLog()

    @staticmethod
    def is_available() -> tuple[bool, str]:
        """(True, device description) when CuPy imports and a device of compute capability 8.0+ works."""
        try:
            import cupy
        except Exception as exc:  # noqa: BLE001 - any import failure means "not here", with the reason
            return False, f"cannot import cupy: {exc}"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
            if count == 0:
                return False, "no CUDA device"
            device = cupy.cuda.Device()
            cc = int(device.compute_capability)
            int(cupy.arange(4, dtype=cupy.int32).sum())  # the device really runs kernels
        except Exception as exc:  # noqa: BLE001 - driver/runtime errors all mean "no usable GPU"
            return False, f"no usable CUDA device: {exc}"
        if cc < MIN_COMPUTE_CAPABILITY:
            return False, f"device compute capability {cc // 10}.{cc % 10} < 8.0"
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        name = name.decode() if isinstance(name, bytes) else name
        return True, f"{name} (compute capability {cc // 10}.{cc % 10}, {count} device(s))"

    @staticmethod
    def supports(scheme: Scheme) -> tuple[bool, str]:
        """Whether the kernels implement ``scheme``: every parameter of a family with launchers, unless its
        launcher module registers narrower limits (:data:`~gpuquant.backends.cupy_launch.LIMITS`)."""
        if (scheme.family, "encode") in LAUNCHERS:
            if scheme.family in LIMITS:
                return LIMITS[scheme.family](scheme)
            return True, "implemented by the GPU kernels"
        return False, f"scheme family {scheme.family!r} has no GPU kernels yet (use backend='numpy')"

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, scheme: Scheme, X: Any) -> dict[str, np.ndarray]:
        """Train on the device; the state comes back as numpy float32 arrays (pending refusals first)."""
        self.check_refusals()
        x, _ = as_device(X)
        with x.device:
            return cupy_train.fit(scheme, x)

    # -- transform ----------------------------------------------------------------------------
    def transform(self, scheme: Scheme, state: dict[str, Any] | None, X: Any, out: Any = None) -> Codes:
        """Encode ``X`` (numpy in -> numpy codes; device in -> CuPy codes, no copy, no sync)."""
        x, host = as_device(X)
        n, d = (int(s) for s in x.shape)
        with x.device:
            out_data = out.data if isinstance(out, Codes) else out
            out_side = out.side if isinstance(out, Codes) else {}
            codes = self._device_output(out_data, host, scheme.code_shape(n, d), device_code_dtype(scheme), "codes")
            side = {
                name: self._device_output(out_side.get(name), host, shape, dtype, f"side array {name!r}")
                for name, (shape, dtype) in scheme.side_shapes(n, d).items()
            }
            with self._refusals.filing():  # numpy input: this call's own refusals and earlier ones, checked
                if n > 0:
                    self._launch("encode", scheme, state, x, codes, side)
                if host:
                    self.check_refusals()
            if not host:
                return Codes(codes, side, scheme.family, d)
            host_codes = self._download(codes, out_data)
            if host_codes.dtype != scheme.code_dtype:  # fp8 / bf16 bits get their ml_dtypes dtype
                host_codes = host_codes.view(scheme.code_dtype)
            host_side = {k: self._download(v, out_side.get(k)) for k, v in side.items()}
            return Codes(host_codes, host_side, scheme.family, d)

    def _launch(self, mode: str, scheme: Scheme, state: dict[str, Any] | None, *arrays: Any) -> None:
        """Run the ``mode`` launcher of ``scheme``'s family on the arrays, with the call's cached constants."""
        state = _NO_STATE if state is None else state
        _launcher(scheme, mode)(self._constants.bound(scheme, state), scheme, state, *arrays)

    def take_refusals(self) -> Refusals:
        """The refused-row checks this thread's transforms left pending, handed to the caller, who calls
        their ``raise_first()`` once it has waited for the device (the engine's pipeline: per batch)."""
        return self._refusals.take()

    def check_refusals(self) -> None:
        """Raise the first row refused by this thread's pending transforms (waits for their streams);
        later refused transforms stay pending, each raised by a check of its own."""
        self._refusals.check()

    # -- inverse ------------------------------------------------------------------------------
    def inverse_transform(self, scheme: Scheme, state: dict[str, Any] | None, codes: Codes, out: Any = None) -> Any:
        """Decode to float32 ``(n, d)`` (numpy codes -> numpy; CuPy codes -> CuPy)."""
        data = codes.data
        host = not is_device_array(data)
        if host:
            data = np.ascontiguousarray(np.asarray(data))
            data = data.view(np.uint8 if data.dtype.itemsize == 1 else np.uint16)
        c, _ = as_device(data)
        n, d = int(c.shape[0]), int(codes.dim)
        with c.device:
            y = self._device_output(out, host, (n, d), np.dtype(np.float32), "the reconstruction")
            if n > 0:
                self._launch("decode", scheme, state, c, {k: as_device(v)[0] for k, v in codes.side.items()}, y)
            if not host:
                return y
            self.check_refusals()
            return self._download(y, out)

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _device_output(out: Any, host: bool, shape: tuple[int, ...], dtype: np.dtype, what: str) -> Any:
        """A device array to write into: a new one, or the caller's device ``out`` after checks."""
        cp = cupy_module()
        if out is None or host:
            if host and out is not None and (not isinstance(out, np.ndarray) or tuple(out.shape) != tuple(shape)
                                             or out.dtype.itemsize != dtype.itemsize):
                raise InputError(f"out= for {what} must be a numpy array of shape {tuple(shape)}, got {out!r:.80}")
            return cp.empty(shape, dtype)
        arr = wrap_device(out)
        if tuple(arr.shape) != tuple(shape) or arr.dtype.itemsize != dtype.itemsize or not arr.flags.c_contiguous:
            raise InputError(
                f"out= for {what} must be a C-contiguous device array of shape {tuple(shape)} and dtype {dtype}, "
                f"got {arr.dtype}{tuple(arr.shape)}"
            )
        return arr

    @staticmethod
    def _download(dev: Any, out: Any) -> np.ndarray:
        """``dev`` copied to the host: into ``out`` (same itemsize) when given, else a new array."""
        if out is None:
            return dev.get()
        target = out.view(dev.dtype) if out.dtype != dev.dtype else out
        if target.flags.c_contiguous:
            dev.get(out=target)
        else:
            target[...] = dev.get()
        return out
