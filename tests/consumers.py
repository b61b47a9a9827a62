"""The consumers' encodings, written independently of gpuquant from each consumer's own code or docs,
so tests can compare export presets with them bit for bit. Element loops on purpose: they mirror
the consumers' C/Rust/Python loops, not gpuquant's vectorised numpy."""

from __future__ import annotations

import math
import struct

import ml_dtypes
import numpy as np


def pgvector_binary_quantize(x: np.ndarray) -> np.ndarray:
    """pgvector src/vector.c binary_quantize: ``rx[i / 8] |= (ax[i] > 0) << (7 - (i % 8))``."""
    n, d = x.shape
    out = np.zeros((n, (d + 7) // 8), np.uint8)
    for r in range(n):
        for i in range(d):
            out[r, i // 8] |= int(bool(x[r, i] > 0)) << (7 - (i % 8))
    return out


def pgvector_float4_to_half(num: float) -> int:
    """pgvector src/halfutils.h Float4ToHalfUnchecked, software branch (bits of the half)."""
    bin_ = struct.unpack("<I", struct.pack("<f", num))[0]
    exponent = (bin_ & 0x7F800000) >> 23
    mantissa = bin_ & 0x007FFFFF
    result = (bin_ & 0x80000000) >> 16
    if math.isinf(num):
        result |= 0x7C00
    elif math.isnan(num):
        result |= 0x7E00
        result |= mantissa >> 13
    elif exponent > 98:
        exponent -= 127
        s = mantissa & 0x00000FFF
        if exponent < -14:
            diff = -exponent - 14
            mantissa >>= diff
            mantissa += 1 << (23 - diff)
            s |= mantissa & 0x00000FFF
        m = mantissa >> 13
        gr = (mantissa >> 12) % 4
        if gr == 3 or (gr == 1 and s != 0):
            m += 1
        if m == 1024:
            m = 0
            exponent += 1
        if exponent > 15:
            result |= 0x7C00
        else:
            if exponent >= -14:
                result |= (exponent + 15) << 10
            result |= m
    return result


def vespa_pack_bits(x: np.ndarray) -> np.ndarray:
    """Vespa ``binarize | pack_bits``: cells > 0 become 1, 8 per int8 cell, first cell in the top bit."""
    n, d = x.shape
    out = np.zeros((n, (d + 7) // 8), np.int8)
    for r in range(n):
        for k in range(0, d, 8):
            value = 0
            for j in range(8):
                bit = 1 if k + j < d and x[r, k + j] > 0 else 0
                value = (value << 1) | bit
            out[r, k // 8] = value - 256 if value >= 128 else value
    return out


def elastic_bit_bytes(x: np.ndarray) -> np.ndarray:
    """Elastic's own recipe for ``bit`` vectors: ``np.packbits(np.where(x > 0, 1, 0)).astype(np.int8)``."""
    return np.stack([np.packbits(np.where(row > 0, 1, 0)).astype(np.int8) for row in x])


def qdrant_one_bit(x: np.ndarray) -> np.ndarray:
    """Qdrant encode_one_bit_vector with u8 words: ``if v > 0.0 { enc[i / 8] |= 1 << (i % 8) }``."""
    n, d = x.shape
    out = np.zeros((n, (d + 7) // 8), np.uint8)
    for r in range(n):
        for i, v in enumerate(x[r]):
            if v > 0.0:
                out[r, i // 8] |= 1 << (i % 8)
    return out


def milvus_convert_bool_list_to_bytes(bool_list: list[int]) -> bytes:
    """The Milvus user guide's helper for BINARY_VECTOR inserts (length a multiple of 8)."""
    if len(bool_list) % 8 != 0:
        raise ValueError("The length of a boolean list must be a multiple of 8")
    byte_array = bytearray(len(bool_list) // 8)
    for i, bit in enumerate(bool_list):
        if bit == 1:
            byte_array[i // 8] |= 1 << (i % 8)
    return bytes(byte_array)


def symmetric_int8(x: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    """One scale from the corpus: ``s = max|corpus| / 127`` (float32), ``clip(rint(x / s), -127, 127)``."""
    s = np.float32(np.max(np.abs(corpus))) / np.float32(127)
    return np.clip(np.rint(x / np.float32(s)), -127, 127).astype(np.int8)


def _c_roundf(v: float) -> int:
    """C roundf on a float32 value (exact in double): half away from zero."""
    a = abs(v)
    f = math.floor(a)
    r = f + 1 if a - f >= 0.5 else f
    return int(math.copysign(r, v))


def ggml_q8_0(x: np.ndarray) -> np.ndarray:
    """ggml-quants.c quantize_row_q8_0_ref, block by block, float32 scalars."""
    f32 = np.float32
    n, d = x.shape
    out = bytearray()
    for r in range(n):
        for b in range(0, d, 32):
            blk = x[r, b : b + 32]
            amax = f32(0)
            for v in blk:
                amax = max(amax, f32(abs(v)))
            dd = f32(amax / f32(127))
            idd = f32(f32(1) / dd) if dd != 0 else f32(0)
            out += np.float16(dd).tobytes()
            out += bytes(np.int8(_c_roundf(float(f32(v * idd)))).view(np.uint8) for v in blk)
    return np.frombuffer(bytes(out), np.uint8).reshape(n, d // 32 * 34)


def ggml_q4_0(x: np.ndarray) -> np.ndarray:
    """ggml-quants.c quantize_row_q4_0_ref, block by block, float32 scalars."""
    f32 = np.float32
    n, d = x.shape
    out = bytearray()
    for r in range(n):
        for b in range(0, d, 32):
            blk = x[r, b : b + 32]
            amax, mx = f32(0), f32(0)
            for v in blk:
                if amax < abs(v):
                    amax, mx = f32(abs(v)), v
            dd = f32(mx / f32(-8))
            idd = f32(f32(1) / dd) if dd != 0 else f32(0)
            out += np.float16(dd).tobytes()
            for j in range(16):
                x0 = f32(blk[j] * idd)
                x1 = f32(blk[j + 16] * idd)
                xi0 = min(15, int(np.trunc(f32(x0 + f32(8.5)))))
                xi1 = min(15, int(np.trunc(f32(x1 + f32(8.5)))))
                out.append(xi0 | (xi1 << 4))
    return np.frombuffer(bytes(out), np.uint8).reshape(n, d // 32 * 18)


def compressed_tensors_fp8(w: np.ndarray, per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """compressed-tensors symmetric FP8 (calculate_qparams + quantize): scale = amax / 448, a zero scale
    replaced by float32 eps, q = float8_e4m3fn(clamp(w / scale + zero_point, -448, 448)), zero_point 0."""
    amax = np.max(np.abs(w), axis=1, keepdims=True) if per_channel else np.max(np.abs(w)).reshape(1, 1)
    amax = np.maximum(amax, 0).astype(np.float32)  # min_vals/max_vals include 0
    scale = (amax / np.float32(448.0)).astype(np.float32)
    scale = np.where(scale == 0, np.finfo(np.float32).eps, scale).astype(np.float32)
    shifted = (w / scale).astype(np.float32) + np.float32(0.0)
    q = np.clip(shifted, -448.0, 448.0).astype(np.float32).astype(ml_dtypes.float8_e4m3fn)
    return q, scale if per_channel else scale.reshape(1)
