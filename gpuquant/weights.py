"""Weight-format files: safetensors (FP8 weights with ``weight_scale``) and GGUF block read-back.

safetensors layout (written and read here without the ``safetensors`` package, which has no numpy
support for FP8): 8 bytes little-endian ``N``, then ``N`` bytes of JSON header (padded with spaces
to a multiple of 8), then the tensors' bytes back to back. The header maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into the data part) and may hold
``"__metadata__"``, a map of str to str only. dtypes: ``F8_E4M3``, ``F8_E5M2``, ``BF16``, ``F16``,
``F32``, ``F64``, ``I8``..``I64``, ``U8``..``U64``, ``BOOL`` (little-endian). There is no int4 dtype:
pack 4-bit codes into ``U8`` and say so in the metadata.

FP8 checkpoints (the ``safetensors-fp8`` preset, compressed-tensors ``float-quantized``):
``<prefix>.weight`` ``F8_E4M3`` ``(out, in)`` and ``<prefix>.weight_scale`` ``F32`` ``(out, 1)``
(per channel) or ``(1,)`` (per tensor); ``w = f32(weight) * weight_scale``.

GGUF: ``gguf-q8_0`` / ``gguf-q4_0`` codes are already the raw block bytes; :func:`dequantize_gguf`
decodes bytes read back from a ``.gguf`` file (e.g. ``gguf.GGUFReader(path).tensors[i].data``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.files import atomic_file

__all__ = [
    "DTYPES",
    "dequantize_fp8",
    "dequantize_gguf",
    "dtype_name",
    "fp8_weight_tensors",
    "header_bytes",
    "load_safetensors",
    "save_safetensors",
]

#: safetensors dtype name -> numpy dtype.
DTYPES: dict[str, np.dtype] = {
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
    "U8": np.dtype("u1"),
    "U16": np.dtype("<u2"),
    "U32": np.dtype("<u4"),
    "U64": np.dtype("<u8"),
    "BOOL": np.dtype(bool),
}
_NAMES = {dt.newbyteorder("=") if dt.kind in "iuf" and dt.itemsize > 1 else dt: name for name, dt in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def dtype_name(dtype: np.dtype) -> str:
    key = dtype.newbyteorder("=") if dtype.kind in "iuf" and dtype.itemsize > 1 else dtype
    try:
        return _NAMES[key]
    except KeyError:
        raise InputError(f"safetensors has no dtype for {dtype}") from None


def save_safetensors(
    path: str | os.PathLike[str], tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (name -> array) and ``metadata`` (str -> str) as a ``.safetensors`` file, atomically.

    Raises:
        InputError: a metadata key or value that is not a str, a tensor name ``__metadata__``, or a
            dtype safetensors cannot describe.
    """
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InputError(f"safetensors __metadata__ maps str to str only; got {k!r}: {v!r}")
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise InputError("a tensor cannot be called __metadata__")
        arr = np.ascontiguousarray(np.asarray(tensors[name]))
        dtype = dtype_name(arr.dtype)
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False) if arr.dtype.itemsize > 1 else arr
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    p = Path(path)
    with atomic_file(p, "wb") as f:
        f.write(header_bytes(header))
        for arr in arrays:
            f.write(arr.tobytes())
    return p


def header_bytes(header: Mapping[str, Any]) -> bytes:
    """The 8-byte little-endian length and the JSON ``header`` padded with spaces to a multiple of 8."""
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def load_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a ``.safetensors`` file: ``(tensors, metadata)``; tensors are read-only memory-mapped views.

    Raises:
        InputError: missing file, a header that is not valid, offsets that overlap, leave holes or
            run past the file, or an unknown dtype.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"safetensors file not found: {p}")
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{p} is not a safetensors file (shorter than 8 bytes)")
        n = int.from_bytes(head, "little")
        if n > min(MAX_HEADER, size - 8):
            raise InputError(f"{p}: header length {n} is larger than the file allows")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{p}: the safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise InputError(f"{p}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise InputError(f"{p}: __metadata__ must map str to str")
    data_len = size - 8 - n
    data = (np.memmap(p, dtype=np.uint8, mode="r", offset=8 + n, shape=(data_len,)) if data_len
            else np.zeros(0, np.uint8))
    tensors: dict[str, np.ndarray] = {}
    end = 0
    for name, entry in sorted(header.items(), key=lambda kv: _offsets(p, kv)[0]):
        begin, stop = _offsets(p, (name, entry))
        dtype = DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise InputError(f"{p}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
        shape = tuple(int(s) for s in entry.get("shape", ()))
        if begin != end or stop > data_len or stop - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise InputError(f"{p}: tensor {name!r} has data_offsets {[begin, stop]} that do not match its "
                             f"shape {list(shape)} {entry['dtype']} or the layout")
        tensors[name] = data[begin:stop].view(dtype).reshape(shape)
        end = stop
    if end != data_len:
        raise InputError(f"{p}: {data_len - end} bytes after the last tensor")
    return tensors, dict(meta)


def _offsets(p: Path, kv: tuple[str, Any]) -> tuple[int, int]:
    name, entry = kv
    try:
        begin, stop = (int(v) for v in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{p}: tensor {name!r} lacks valid data_offsets") from None
    if not 0 <= begin <= stop:
        raise InputError(f"{p}: tensor {name!r} has data_offsets {[begin, stop]}")
    return begin, stop


def fp8_weight_tensors(prefix: str, quantizer: Any, codes: Codes) -> dict[str, np.ndarray]:
    """``{prefix.weight: F8_E4M3 codes, prefix.weight_scale: F32 scale}`` for a ``scaled_fp8`` quantizer's codes."""
    from gpuquant.schemes.scaled_fp8 import ScaledFp8Scheme

    if not isinstance(quantizer.scheme, ScaledFp8Scheme):
        raise InputError(f"fp8_weight_tensors needs a scaled_fp8 quantizer (safetensors-fp8), not {quantizer.family!r}")
    if "weight_scale" in codes.side:
        scale = np.asarray(codes.side["weight_scale"], np.float32)
    elif quantizer.state and "weight_scale" in quantizer.state:
        scale = np.asarray(quantizer.state["weight_scale"], np.float32).reshape(1)
    else:
        raise InputError("no weight_scale: pass the Codes from transform (per channel) or a fitted quantizer")
    return {f"{prefix}.weight": np.asarray(codes.data), f"{prefix}.weight_scale": scale}


def dequantize_fp8(weight: np.ndarray, weight_scale: np.ndarray) -> np.ndarray:
    """``f32(weight) * weight_scale`` (scale (out, 1), (1,) or a scalar), float32."""
    from gpuquant.schemes.scaled_fp8 import ScaledFp8Scheme

    s = np.asarray(weight_scale, np.float32)
    if s.ndim == 1 and s.size != 1:
        s = s.reshape(-1, 1)
    return ScaledFp8Scheme.dequantize(weight, s)


def dequantize_gguf(data: Any, type_: str) -> np.ndarray:
    """Decode raw Q8_0 / Q4_0 block bytes (uint8, shape (rows, bytes per row)) to float32 (rows, d)."""
    from gpuquant.schemes.gguf import BLOCK_BYTES, QK, GgufScheme

    kind = type_.lower()
    if kind not in BLOCK_BYTES:
        raise InputError(f"GGUF type must be one of {list(BLOCK_BYTES)}, got {type_!r}")
    raw = np.asarray(data).view(np.uint8)
    raw = raw.reshape(-1, raw.shape[-1]) if raw.ndim != 2 else raw
    if raw.shape[1] % BLOCK_BYTES[kind]:
        raise InputError(f"{raw.shape[1]} bytes per row is not a whole number of {kind} blocks "
                         f"({BLOCK_BYTES[kind]} bytes each)")
    dim = raw.shape[1] // BLOCK_BYTES[kind] * QK
    return GgufScheme(type=kind).decode(raw, {}, None, dim)
