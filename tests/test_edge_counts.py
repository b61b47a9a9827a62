"""The convert report's edge counts: values that decode to NaN/±Inf and inputs clipped to the ends
of the codes' range, per family (``Scheme.edge_counts``), against a brute-force count made one
value at a time from each family's documented rule, on edge data for every preset."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import edge_values, finite_edge_values, fitted, matrix

from gpuquant import Quantizer
from gpuquant.schemes.presets import PRESETS

F32 = np.float32


def _clipped_scalar(q: Quantizer, X: np.ndarray) -> int:
    lo = np.broadcast_to(q.state["lo"], X.shape[1:])
    hi = np.broadcast_to(q.state["hi"], X.shape[1:])
    return sum(not (lo[j] <= X[i, j] <= hi[j]) for i in range(X.shape[0]) for j in range(X.shape[1]))


def _clipped_absmax(q: Quantizer, X: np.ndarray, side: dict) -> int:
    n, d = X.shape
    g = q.scheme.groups(d)
    s = np.broadcast_to(q.state["scales"], (n, g)) if "scales" in (q.state or {}) else side["scales"].reshape(n, g)
    qmax = q.scheme.qmax
    t = [float(F32(X[i, j] / (s[i, j // (d // g)] or F32(1)))) for i in range(n) for j in range(d)]
    return sum(math.isinf(v) or abs(round(v)) > qmax for v in t)  # round(): half to even, as rint


def _clipped_float(q: Quantizer, X: np.ndarray) -> int:
    if not q.scheme.config.saturate:
        return 0
    return int(sum(abs(float(v)) > q.scheme.max_finite for v in X.reshape(-1) if not math.isnan(v)))


def _clipped_scaled_fp8(q: Quantizer, X: np.ndarray, side: dict) -> int:
    s = side["weight_scale"].reshape(-1) if "weight_scale" in side else np.repeat(q.state["weight_scale"], len(X))
    n, d = X.shape
    return sum(abs(float(F32(X[i, j] / s[i]))) > q.scheme.max_finite for i in range(n) for j in range(d))


def _clipped_gguf(q: Quantizer, X: np.ndarray) -> int:
    if q.scheme.config.type == "q8_0":
        return 0
    total = 0
    for block in X.reshape(-1, 32):
        mx = block[int(np.argmax(np.abs(block)))]  # first of the largest magnitude
        d = F32(mx / F32(-8))
        inv = F32(0) if d == 0 else F32(F32(1) / d)
        if math.isinf(inv):  # too small a block for 1/d: every nibble is 0, as the gguf package writes
            continue
        total += sum(math.trunc(float(F32(F32(v * inv) + F32(8.5)))) > 15 for v in block)
    return total


def brute_force(q: Quantizer, X: np.ndarray, codes: np.ndarray, side: dict) -> tuple[int, int]:
    """(values decoding to NaN/±Inf, clipped inputs), one value at a time from the families' rules."""
    with np.errstate(all="ignore"):
        y = q.scheme.decode(codes, side, q.state, X.shape[1])
        nonfinite = sum(not math.isfinite(float(v)) for v in y.reshape(-1))
        clipped = {"scalar": lambda: _clipped_scalar(q, X), "absmax": lambda: _clipped_absmax(q, X, side),
                   "float": lambda: _clipped_float(q, X), "scaled_fp8": lambda: _clipped_scaled_fp8(q, X, side),
                   "gguf": lambda: _clipped_gguf(q, X), "binary": lambda: 0,
                   # codes of directions and codebooks: no range to clip to
                   "rabitq": lambda: 0, "pq": lambda: 0}[q.family]()
    return nonfinite, int(clipped)


def _edge_batch(q: Quantizer, rng: np.random.Generator, d: int) -> np.ndarray:
    """Random rows of several magnitudes with edge values scattered in (finite ones for the
    families that refuse NaN/±Inf rows), and one row far beyond the calibration data."""
    refuses = q.scheme.nonfinite_rows_refused is not None or q.family in ("gguf", "scaled_fp8") or \
        q.scheme.params.get("nonfinite") == "raise"
    edges = finite_edge_values() if refuses else edge_values()
    if q.family in ("rabitq", "pq"):  # rows whose squared norm overflows float32 are refused too
        edges = edges[np.abs(edges) < 1e15]
    X = matrix(rng, 40, d, edges=edges)
    X[3] = matrix(rng, 1, d)[0] * F32(1e4)
    if q.scheme.params.get("nonfinite") == "raise":
        X = np.clip(X, -6e4, 6e4)
    return X


@pytest.mark.parametrize("preset", list(PRESETS))
def test_edge_counts_equal_a_brute_force_count_for_every_preset(preset: str, rng: np.random.Generator) -> None:
    d = 64
    q = fitted(preset, matrix(rng, 200, d))
    X = _edge_batch(q, rng, d)
    codes, side = q.scheme.encode(X, q.state)
    got = q.scheme.edge_counts(X, codes, side, q.state)
    assert got == brute_force(q, X, codes, side)
    assert all(isinstance(v, int) for v in got)


@pytest.mark.parametrize(("preset", "params"), [
    ("fp8-e4m3", {"saturate": True}), ("fp16", {"saturate": True}), ("uint8-affine", {"granularity": "dimension"}),
    ("faiss-sq4", {"signed": True}), ("int4-block", {"granularity": "tensor"}),
    ("safetensors-fp8", {"granularity": "tensor"})])
def test_edge_counts_with_other_parameters(preset: str, params: dict, rng: np.random.Generator) -> None:
    d = 64
    q = fitted(preset, matrix(rng, 200, d), **params)
    X = _edge_batch(q, rng, d)
    codes, side = q.scheme.encode(X, q.state)
    assert q.scheme.edge_counts(X, codes, side, q.state) == brute_force(q, X, codes, side)


def test_scalar_ranges_whose_step_overflows_count_nonfinite_outputs() -> None:
    q = Quantizer("st-int8", backend="numpy").fit(np.array([[-3e38], [3e38]], F32))
    X = np.array([[-3e38], [0.0], [3e38], [1.0]], F32)
    codes, side = q.scheme.encode(X, q.state)
    got = q.scheme.edge_counts(X, codes, side, q.state)
    assert got == brute_force(q, X, codes, side) and got[0] > 0


def test_the_issue_example_every_fp8_value_overflows() -> None:
    X = np.full((5, 7), 1000.0, F32)
    q = Quantizer("fp8-e4m3", backend="numpy")
    codes, side = q.scheme.encode(X, None)
    assert q.scheme.edge_counts(X, codes, side, None) == (35, 0)


def test_empty_and_one_row_batches(rng: np.random.Generator) -> None:
    for preset in ("st-int8", "int8-row", "fp8-e4m3", "gguf-q4_0", "safetensors-fp8", "binary"):
        q = fitted(preset, matrix(rng, 20, 64))
        for n in (0, 1):
            X = matrix(rng, n, 64) * F32(50)
            codes, side = q.scheme.encode(X, q.state)
            assert q.scheme.edge_counts(X, codes, side, q.state) == brute_force(q, X, codes, side)
