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
  C-contiguous copy is made on the device first. No host synchronisation happens, except where the
  reference refuses rows: an ``absmax`` transform reads back one flag (rows holding NaN or ±Inf),
  and a ``float`` transform with ``nonfinite="raise"`` one reduction over its codes.
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

import functools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from gpuquant.backends import (
    cuda_loader,
    device_code_dtype,
    dlpack_on_cuda,
    is_device_array,
)
from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.schemes import Scheme
from gpuquant.schemes.floatcast import refuse_nonfinite_codes

QUANTIZE_FILE = "quantize.cu"
THREADS = 256
BLOCKS_PER_SM = 8
MIN_COMPUTE_CAPABILITY = 80

INPUT_TYPES: dict[np.dtype, str] = {
    np.dtype(np.float32): "float",
    np.dtype(np.float16): "__half",
    np.dtype(np.float64): "double",
}
FAMILIES = ("scalar", "absmax", "float", "binary")
ROUNDINGS = {"half_away": 0, "floor": 1, "trunc": 2, "half_even": 3}
FORMATS = {"e4m3": 0, "e5m2": 1, "fp16": 2, "bf16": 3}

#: One ``gq::ScalarParams`` (kernels/quant_math.cuh) per range.
SCALAR_PARAMS_DTYPE = np.dtype([("d0", "<f8"), ("d1", "<f8"), ("f0", "<f4"), ("f1", "<f4")])


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


def scalar_params(scheme: Scheme, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per-range constants of the ``scalar`` family, from the reference's own functions.

    Returns a ``SCALAR_PARAMS_DTYPE`` array (one entry per range) holding, by rounding:
    half_away ``scale = L / (f64(hi) - f64(lo))`` (1 where hi <= lo), ``offset = -H - f64(lo) * scale``,
    ``lo``, ``hi``; floor ``lo``, ``step = f32(hi - lo) / L`` (1 where 0); trunc ``lo``,
    ``vdiff = f32(hi - lo)``; half_even ``scale = step``, ``zp = f32(0 - lo / scale)``.
    """
    from gpuquant.schemes.scalar import (
        affine_scale_zp,
        cuvs_scale_offset,
        floor_step,
        trunc_vdiff,
    )

    p = scheme.params
    L, H = scheme.levels, scheme.half
    lo = np.asarray(lo, np.float32).reshape(-1)
    hi = np.asarray(hi, np.float32).reshape(-1)
    out = np.zeros(lo.size, SCALAR_PARAMS_DTYPE)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        rounding = p["rounding"]
        if rounding == "half_away":
            out["d0"], out["d1"] = cuvs_scale_offset(lo, hi, L, H)
            out["f0"], out["f1"] = lo, hi
        elif rounding == "floor":
            out["f0"], out["f1"] = lo, floor_step(lo, hi, L)
        elif rounding == "trunc":
            out["f0"], out["f1"] = lo, trunc_vdiff(lo, hi)
        else:
            out["f0"], out["f1"] = affine_scale_zp(lo, hi, L)
    return out


def binary_flip(scheme: Scheme) -> bool:
    """Whether binary codes store the packed byte with its top bit flipped (signed, offset encoding)."""
    return scheme.flip


def _cupy():
    import cupy

    return cupy


@functools.lru_cache(maxsize=None)
def _sm_count(device_id: int) -> int:
    cp = _cupy()
    return int(cp.cuda.Device(device_id).attributes["MultiProcessorCount"])


def grid_for(work_items: int, per_block: int = THREADS) -> int:
    """Blocks for ``work_items`` items: enough to cover them, at most a few per SM (grid-stride)."""
    cp = _cupy()
    cap = _sm_count(cp.cuda.Device().id) * BLOCKS_PER_SM
    return int(max(1, min(cap, -(-work_items // per_block))))


def wrap_device(x: Any) -> Any:
    """A CuPy view of a device array (CuPy, DLPack on CUDA, ``__cuda_array_interface__``), no copy."""
    cp = _cupy()
    if isinstance(x, cp.ndarray):
        return x
    if hasattr(x, "__dlpack__") and dlpack_on_cuda(x):
        return cp.from_dlpack(x)
    if hasattr(x, "__cuda_array_interface__"):
        return cp.asarray(x)
    raise InputError(f"expected a device array, got {type(x).__name__}")


def as_device(x: Any) -> tuple[Any, bool]:
    """``(cupy_array, came_from_host)``: device arrays wrapped without a copy, C-contiguous.

    numpy (or anything array-like on the host) is uploaded; DLPack device tensors and
    ``__cuda_array_interface__`` objects are wrapped; non-contiguous device arrays are copied to a
    contiguous array on their device.
    """
    cp = _cupy()
    if not is_device_array(x):
        return cp.asarray(np.ascontiguousarray(x)), True
    arr = wrap_device(x)
    if not arr.flags.c_contiguous:
        with arr.device:
            arr = cp.ascontiguousarray(arr)
    return arr, False


def _i64(v: int) -> np.int64:
    return np.int64(v)


def _i32(v: int) -> np.int32:
    return np.int32(v)


class CupyBackend:
    """GPU backend (see the module docstring)."""

    name = "cupy"

    #: Device copies of scheme constants kept per backend (see :meth:`_constant`), least recently used dropped.
    CONSTANTS_CACHED = 16

    def __init__(self) -> None:
        self._constants: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._constants_lock = threading.Lock()

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
        """Whether the kernels implement ``scheme``: every parameter of the four kernel families."""
        if scheme.family in FAMILIES:
            return True, "implemented by the GPU kernels"
        return False, f"scheme family {scheme.family!r} has no GPU kernels yet (use backend='numpy')"

    # -- fit ----------------------------------------------------------------------------------
    def fit(self, scheme: Scheme, X: Any) -> dict[str, np.ndarray]:
        """Train on the device; the state comes back as numpy float32 arrays."""
        from gpuquant.backends import cupy_train

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
            if n > 0:
                self._encode(scheme, state or {}, x, codes, side)
            if not host:
                return Codes(codes, side, scheme.family, d)
            host_codes = self._download(codes, out_data)
            if host_codes.dtype != scheme.code_dtype:  # fp8 / bf16 bits get their ml_dtypes dtype
                host_codes = host_codes.view(scheme.code_dtype)
            host_side = {k: self._download(v, out_side.get(k)) for k, v in side.items()}
            return Codes(host_codes, host_side, scheme.family, d)

    def _encode(self, scheme: Scheme, state: dict[str, Any], x: Any, codes: Any, side: dict[str, Any]) -> None:
        cp = _cupy()
        n, d = (int(s) for s in x.shape)
        p = scheme.params
        t = INPUT_TYPES[x.dtype]
        if scheme.family == "scalar":
            rc = d if p["bits"] == 8 else (d + 1) // 2
            cuda_loader.get_kernel(QUANTIZE_FILE, f"scalar_encode<{t}>", NAME_EXPRESSIONS)(
                (grid_for(n * -(-rc // 8)),), (THREADS,), (x, codes, *self._scalar_args(scheme, state, n, d)),
            )
        elif scheme.family == "binary":
            thr = state.get("thresholds")
            # No thresholds: a null pointer, which the kernel reads as zero thresholds.
            thr = None if thr is None else self._constant("thresholds", thr, np.float32)
            rc = (d + 7) // 8
            cuda_loader.get_kernel(QUANTIZE_FILE, f"binary_encode<{t}>", NAME_EXPRESSIONS)(
                (grid_for(n * -(-rc // 8)),), (THREADS,),
                (x, codes, _i64(n), _i64(d), thr, _i32(p["bitorder"] == "big"), _i32(binary_flip(scheme))),
            )
        elif scheme.family == "float":
            c = "unsigned char" if codes.dtype.itemsize == 1 else "unsigned short"
            cuda_loader.get_kernel(QUANTIZE_FILE, f"float_encode<{t}, {c}>", NAME_EXPRESSIONS)(
                (grid_for(n * -(-d // 8)),), (THREADS,),
                (x, codes, _i64(n), _i64(d), _i32(FORMATS[p["format"]]), _i32(p["saturate"])),
            )
            if p["nonfinite"] == "raise":
                refuse_nonfinite_codes(codes, p["format"])
        elif scheme.family == "absmax":
            seg_len, groups = self._segments(scheme, d)
            bad = cp.full(1, np.iinfo(np.uint64).max, dtype=cp.uint64)
            tensor = p["granularity"] == "tensor"
            scales = self._constant("tensor_scale", state["scales"], np.float32) if tensor else side["scales"]
            cuda_loader.get_kernel(QUANTIZE_FILE, f"absmax_encode<{t}>", NAME_EXPRESSIONS)(
                (grid_for(n * groups * 32),), (THREADS,),
                (x, codes, scales, bad, _i64(n), _i64(d), _i64(seg_len), _i64(groups), _i32(p["bits"]),
                 _i32(p["nibble_order"] == "high_first"), np.float32(p["eps"]), scales, _i32(tensor)),
            )
            row = int(bad.get()[0])
            if row != np.iinfo(np.uint64).max:
                raise InputError(f"row {row} holds NaN or ±Inf; scheme 'absmax' needs finite values")
        else:
            raise InputError(f"the cupy backend has no kernels for family {scheme.family!r}")

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
                self._decode(scheme, state or {}, c, {k: as_device(v)[0] for k, v in codes.side.items()}, y)
            return self._download(y, out) if host else y

    def _decode(self, scheme: Scheme, state: dict[str, Any], c: Any, side: dict[str, Any], y: Any) -> None:
        cp = _cupy()
        n, d = (int(s) for s in y.shape)
        p = scheme.params
        rc = int(c.shape[1])
        blocks = grid_for(n * -(-rc // 8))
        if scheme.family == "scalar":
            cuda_loader.get_kernel(QUANTIZE_FILE, "scalar_decode", NAME_EXPRESSIONS)(
                (blocks,), (THREADS,), (c, y, *self._scalar_args(scheme, state, n, d)),
            )
        elif scheme.family == "binary":
            cuda_loader.get_kernel(QUANTIZE_FILE, "binary_decode", NAME_EXPRESSIONS)(
                (blocks,), (THREADS,), (c, y, _i64(n), _i64(d), _i32(p["bitorder"] == "big"), _i32(binary_flip(scheme)))
            )
        elif scheme.family == "float":
            name = "float_decode<unsigned char>" if c.dtype.itemsize == 1 else "float_decode<unsigned short>"
            cuda_loader.get_kernel(QUANTIZE_FILE, name, NAME_EXPRESSIONS)(
                (blocks,), (THREADS,), (c, y, _i64(n), _i64(d), _i32(FORMATS[p["format"]]))
            )
        elif scheme.family == "absmax":
            seg_len, groups = self._segments(scheme, d)
            tensor = p["granularity"] == "tensor"
            # side["scales"] went through as_device: already C-contiguous (astype keeps that).
            scales = (self._constant("tensor_scale", state["scales"], np.float32) if tensor
                      else cp.asarray(side["scales"], dtype=cp.float32))
            cuda_loader.get_kernel(QUANTIZE_FILE, "absmax_decode", NAME_EXPRESSIONS)(
                (blocks,), (THREADS,),
                (c, scales, y, _i64(n), _i64(d), _i64(seg_len), _i64(groups), _i32(p["bits"]),
                 _i32(p["nibble_order"] == "high_first"), _i32(tensor)),
            )
        else:
            raise InputError(f"the cupy backend has no kernels for family {scheme.family!r}")

    def _scalar_args(self, scheme: Scheme, state: dict[str, Any], n: int, d: int) -> tuple[Any, ...]:
        """Arguments of ``scalar_encode`` / ``scalar_decode`` after their input and output arrays."""
        p = scheme.params
        params = scalar_params(scheme, state["lo"], state["hi"])
        return (_i64(n), _i64(d), self._constant("scalar_params", params.view(np.uint8), np.uint8),
                _i32(params.size > 1), _i32(ROUNDINGS[p["rounding"]]), _i32(p["bits"]), _i32(p["signed"]),
                _i32(p["nibble_order"] == "high_first"))

    def _constant(self, kind: str, value: Any, dtype: Any) -> Any:
        """A device copy of the host constant ``value`` as ``dtype`` (C-contiguous), cached on the backend.

        Scheme constants (scalar ranges, binary thresholds, absmax tensor scales) are the same for
        every batch, so they are uploaded once: the cache is keyed by (kind, dtype, device, current
        stream, the exact bytes of the host value) and holds :attr:`CONSTANTS_CACHED` entries, least
        recently used dropped. A copy is made and used on one stream only, so its upload is ordered
        before every kernel that reads it, and its memory goes back to the pool of that stream. A
        value already on a device is used as it is (``cupy.asarray``), not cached.
        """
        cp = _cupy()
        if not isinstance(value, np.ndarray) and is_device_array(value):
            return cp.asarray(value, dtype=dtype)
        host = np.ascontiguousarray(value, dtype=dtype)
        key = (kind, host.dtype.str, cp.cuda.runtime.getDevice(), cp.cuda.get_current_stream().ptr, host.tobytes())
        with self._constants_lock:
            arr = self._constants.get(key)
            if arr is not None:
                self._constants.move_to_end(key)
                return arr
            arr = self._constants[key] = cp.asarray(host)
            if len(self._constants) > self.CONSTANTS_CACHED:
                self._constants.popitem(last=False)
            return arr

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _segments(scheme: Scheme, d: int) -> tuple[int, int]:
        """(values per scale, scales per row) of an absmax scheme (one segment per row for "tensor")."""
        if scheme.params["granularity"] == "block":
            return scheme.params["block_size"], scheme.groups(d)
        return d, 1

    @staticmethod
    def _device_output(out: Any, host: bool, shape: tuple[int, ...], dtype: np.dtype, what: str) -> Any:
        """A device array to write into: a new one, or the caller's device ``out`` after checks."""
        cp = _cupy()
        if out is None or host:
            if host and out is not None:
                if not isinstance(out, np.ndarray) or tuple(out.shape) != tuple(shape) or out.dtype.itemsize != dtype.itemsize:
                    raise InputError(f"out= for {what} must be a numpy array of shape {tuple(shape)}, got {out!r:.80}")
            return cp.empty(shape, dtype)
        arr = out if isinstance(out, cp.ndarray) else wrap_device(out)
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
