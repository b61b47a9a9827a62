"""The peers' formulas, written independently of gpuquant from their public sources (see
docs/peers.md for the links), so the tests can compare our codes with theirs bit for bit. Each
function mirrors the peer's own code path; the ``*_recipe`` functions are the plain numpy recipes
people write by hand (row-wise int8, affine uint8, symmetric int4 per group)."""

from __future__ import annotations

import math

import numpy as np


def cuvs_train(x: np.ndarray, quantile: float) -> tuple[np.float32, np.float32]:
    """cuVS quantile_min_max when every row is sampled: full sort, positions from the float quantile."""
    s = np.sort(x.reshape(-1), kind="stable")
    q = float(np.float32(quantile))
    pos_max = int(math.ceil((0.5 + 0.5 * q) * s.size)) - 1
    pos_min = s.size - pos_max - 1
    return s[pos_min], s[pos_max]


def cuvs_transform(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """cuVS quantize_op<float, int8_t, double>: double scale/offset, lroundf of the float result."""
    lo64, hi64 = float(lo), float(hi)
    scalar = 255.0 / (hi64 - lo64) if hi64 > lo64 else 1.0
    offset = -128.0 - lo64 * scalar
    with np.errstate(all="ignore"):
        v = (scalar * x.astype(np.float64) + offset).astype(np.float32).astype(np.float64)
        r = np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5))  # lroundf: half away from zero
    out = np.where(~(np.float32(lo) < x), -128, np.where(~(x < np.float32(hi)), 127, r))
    return out.astype(np.int8)


def cuvs_inverse(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lo64, hi64 = float(lo), float(hi)
    scalar = 255.0 / (hi64 - lo64) if hi64 > lo64 else 1.0
    offset = -128.0 - lo64 * scalar
    return ((q.astype(np.float64) - offset) / scalar).astype(np.float32)


def st_quantize(emb: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """sentence-transformers 6.x quantize_embeddings for a float32 matrix."""
    if precision in ("binary", "ubinary"):
        packed = np.packbits(emb > 0, axis=-1)
        return (packed - 128).astype(np.int8) if precision == "binary" else packed
    if ranges is None:
        ranges = np.vstack((np.min(emb, axis=0), np.max(emb, axis=0)))
    ranges = ranges.astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    with np.errstate(all="ignore"):
        q = np.clip(np.floor((emb - starts) / steps), 0, 255)
    return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)


def faiss_sq_encode(x: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, bits: int) -> np.ndarray:
    """FAISS ScalarQuantizer non-uniform QT_8bit / QT_4bit encode_vector, element by element."""
    with np.errstate(all="ignore"):
        return _faiss_sq_encode(x, vmin, vmax, bits)


def _faiss_sq_encode(x: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, bits: int) -> np.ndarray:
    vdiff = (vmax - vmin).astype(np.float32)
    n, d = x.shape
    out = np.zeros((n, d if bits == 8 else (d + 1) // 2), np.uint8)
    for i in range(n):
        for j in range(d):
            xi = np.float32(0)
            if vdiff[j] != 0:
                xi = np.float32((x[i, j] - vmin[j]) / vdiff[j])
                xi = np.float32(0) if xi < 0 else xi
                xi = np.float32(1) if xi > 1.0 else xi
            if bits == 8:
                out[i, j] = 0 if np.isnan(xi) else int(np.float32(255) * xi)
            else:
                out[i, j // 2] |= (0 if np.isnan(xi) else int(float(xi) * 15.0)) << ((j & 1) * 4)
    return out


def int8_rowwise_recipe(x: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """The row-wise int8 recipe: ``s = (max|x| + eps) / 127`` per row, ``clip(round(x / s), -127, 127)``."""
    m = np.max(np.abs(x), axis=1, keepdims=True) + eps
    s = (m / 127.0).astype(np.float32)
    q = np.clip(np.round(x / s), -127, 127).astype(np.int8)
    return q, s[:, 0]


def int8_rowwise_recipe_read(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return q.astype(np.float32, copy=False) * s.astype(np.float32, copy=False)[:, None]


def affine_uint8_recipe(embedding: np.ndarray, num_bits: int = 8) -> np.ndarray:
    """The affine uint8 recipe, min/max over the whole tensor: ``round(x / scale + zero_point)``, clipped."""
    qmin, qmax = 0, 2**num_bits - 1
    min_val, max_val = np.min(embedding), np.max(embedding)
    scale = (max_val - min_val) / (qmax - qmin)
    zero_point = qmin - min_val / scale
    return np.clip(np.round(embedding / scale + zero_point), qmin, qmax).astype(np.uint8)


def int4_groups_recipe(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The symmetric int4 recipe (``scale = max|w| / 7``, ``round(w / scale)``) on each group of a row."""
    n, d = w.shape
    g = w.reshape(n, d // group, group)
    max_val = np.max(np.abs(g), axis=2, keepdims=True)
    scale = (max_val / (2 ** (4 - 1) - 1)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        q = np.round(g / scale)
    q = np.where(scale == 0, 0, q).astype(np.int8)
    return q.reshape(n, d), scale[:, :, 0]


def pack_low_first(nibbles: np.ndarray) -> np.ndarray:
    n, d = nibbles.shape
    out = np.zeros((n, (d + 1) // 2), np.uint8)
    for j in range(d):
        out[:, j // 2] |= (nibbles[:, j].astype(np.uint8) & 0xF) << (4 * (j % 2))
    return out


def cuvs_binary(x: np.ndarray, thr: np.ndarray | None = None) -> np.ndarray:
    """cuVS binary quantizer: bit = (x - thr) > 0, LSB first."""
    t = np.zeros(x.shape[1], np.float32) if thr is None else thr
    with np.errstate(invalid="ignore", over="ignore"):  # 3.4e38 - (-3.4e38) overflows to inf: still > 0
        return np.packbits((x - t) > 0, axis=-1, bitorder="little")
