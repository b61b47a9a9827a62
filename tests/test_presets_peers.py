"""Every preset against its peer, bit for bit, on fresh random data with edge values mixed in.

The peers' formulas live in tests/peers.py (written from the peers' sources, not from gpuquant);
where the real package is installed (faiss-cpu, ml_dtypes, sentence-transformers) it is used too.
NaN is excluded where the peer's result is an undefined C cast (sentence-transformers, FAISS,
the numpy recipes' astype of NaN); our NaN policy is tested separately in test_schemes.py.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import gpuquant
from helpers import edge_values, finite_edge_values, fit_codes, matrix
from peers import (
    affine_uint8_recipe,
    cuvs_binary,
    cuvs_inverse,
    cuvs_train,
    cuvs_transform,
    faiss_sq_encode,
    int4_groups_recipe,
    int8_rowwise_recipe,
    int8_rowwise_recipe_read,
    pack_low_first,
    st_quantize,
)

SHAPES = [(1, 1), (1, 7), (3, 13), (64, 384), (257, 37), (1000, 8)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("quantile", [0.99, 1.0, 0.5, 0.9])
def test_cuvs_sq8(rng, shape, quantile):
    x = matrix(rng, *shape, edges=finite_edge_values()[:8])
    q, codes = fit_codes("cuvs-sq8", x, quantile=quantile)
    lo, hi = cuvs_train(x, quantile)
    assert q.state["lo"].view(np.uint32)[0] == np.float32(lo).view(np.uint32) or (lo == 0 and q.state["lo"][0] == 0)
    assert q.state["hi"][0] == hi
    # transform over data with every edge value, NaN and Inf included (cuVS defines them)
    y = np.concatenate([x.reshape(-1), edge_values()]).reshape(1, -1)
    assert_array_equal(q_transform_any(q, y), cuvs_transform(y, lo, hi))
    recon = q.inverse_transform(codes)
    assert_array_equal(recon.view(np.uint32), cuvs_inverse(np.asarray(codes), lo, hi).view(np.uint32))


def q_transform_any(q: gpuquant.Quantizer, y: np.ndarray) -> np.ndarray:
    """Transform values of any count with a fitted per-tensor quantizer (dimension is irrelevant)."""
    other = gpuquant.Quantizer("scalar", backend="numpy", range="given", ranges=[q.state["lo"][0], q.state["hi"][0]],
                               rounding="half_away", signed=True)
    return np.asarray(other.transform(y))


def test_cuvs_sq8_ties_round_half_away():
    # lo=-128, hi=127 gives scale 1 and offset 0: v = x exactly, so .5 ties show the rounding
    q = gpuquant.Quantizer("scalar", backend="numpy", range="given", ranges=[-128.0, 127.0],
                           rounding="half_away", signed=True)
    x = np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 126.5, -127.5]], np.float32)
    assert_array_equal(np.asarray(q.transform(x)), [[-3, -2, -1, 1, 2, 3, 127, -128]])
    assert_array_equal(np.asarray(q.transform(x)), cuvs_transform(x, -128.0, 127.0))


def test_cuvs_sampling_rule(rng):
    from gpuquant.schemes.scalar import cuvs_sample_size
    assert cuvs_sample_size(10, 384) == 10
    assert cuvs_sample_size(10_000, 384) == 1_000_000 // 384
    x = matrix(rng, 3000, 384)  # 3000 > 2604 rows: a seeded sample
    a = gpuquant.Quantizer("cuvs-sq8", backend="numpy").fit(x).state
    b = gpuquant.Quantizer("cuvs-sq8", backend="numpy").fit(x).state
    assert a["lo"] == b["lo"] and a["hi"] == b["hi"]
    exact = gpuquant.Quantizer("cuvs-sq8", backend="numpy", quantile_method="exact").fit(x).state
    assert (exact["lo"], exact["hi"]) == cuvs_train(x, 0.99)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_st_scalar(rng, shape, precision):
    x = matrix(rng, *shape, edges=finite_edge_values()[:20])
    x[:, -1] = x[0, -1]  # a constant dimension: steps == 0 becomes 1
    q, codes = fit_codes(f"st-{precision}", x)
    assert_array_equal(np.asarray(codes), st_quantize(x, precision))
    # new data outside the fitted ranges (queries), Inf included
    y = np.vstack([matrix(rng, 5, shape[1], scale=10), np.full((1, shape[1]), np.inf, np.float32),
                   np.full((1, shape[1]), -np.inf, np.float32)])
    ranges = np.vstack([q.state["lo"], q.state["hi"]])
    assert_array_equal(np.asarray(q.transform(y)), st_quantize(y, precision, ranges))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_st_binary(rng, shape, precision):
    x = matrix(rng, *shape, edges=edge_values())
    codes = gpuquant.quantize(x, f"st-{precision}", backend="numpy")
    assert_array_equal(np.asarray(codes), st_quantize(x, precision))


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_st_scalar_empty_input_with_ranges(rng, precision):
    x = matrix(rng, 50, 6)
    q, _ = fit_codes(f"st-{precision}", x)
    empty = np.zeros((0, 6), np.float32)
    ranges = np.vstack([q.state["lo"], q.state["hi"]])
    assert_array_equal(np.asarray(q.transform(empty)), st_quantize(empty, precision, ranges))
    given = gpuquant.Quantizer(f"st-{precision}", backend="numpy", range="given", ranges=ranges.tolist())
    assert_array_equal(np.asarray(given.transform(empty)), st_quantize(empty, precision, ranges))


def test_real_sentence_transformers(rng):
    st = pytest.importorskip("sentence_transformers.util.quantization")
    x = matrix(rng, 300, 64)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        ours = gpuquant.quantize(x, f"st-{precision}", backend="numpy")
        assert_array_equal(np.asarray(ours), st.quantize_embeddings(x, precision=precision))


@pytest.mark.parametrize("shape", [(1, 9), (2, 5), (7, 13), (300, 37), (64, 128)])
@pytest.mark.parametrize("bits", [8, 4])
def test_faiss_formula(rng, shape, bits):
    x = matrix(rng, *shape, edges=finite_edge_values()[:10])
    y = np.vstack([x, matrix(rng, 4, shape[1], scale=5)])  # values beyond the ranges clamp
    q, _ = fit_codes(f"faiss-sq{bits}", x)
    assert_array_equal(np.asarray(q.transform(y)), faiss_sq_encode(y, x.min(0), x.max(0), bits))


@pytest.mark.parametrize("n", [500, 1])
@pytest.mark.parametrize("d", [1, 7, 37, 384])
@pytest.mark.parametrize("bits", [8, 4])
def test_real_faiss(rng, n, d, bits):
    faiss = pytest.importorskip("faiss")
    x = matrix(rng, n, d, edges=finite_edge_values()[:10])
    x[:, 0] = 1.5  # a constant dimension: vdiff == 0
    qt = faiss.ScalarQuantizer.QT_8bit if bits == 8 else faiss.ScalarQuantizer.QT_4bit
    sq = faiss.ScalarQuantizer(d, qt)
    sq.train(x)
    y = np.vstack([x, matrix(rng, 50, d, scale=4)])
    q, _ = fit_codes(f"faiss-sq{bits}", x)
    codes = q.transform(y)
    assert_array_equal(np.asarray(codes), sq.compute_codes(y))
    # decode: FAISS may use SIMD fused multiply-add, so equal within one float32 rounding
    ours, theirs = q.inverse_transform(codes), sq.decode(np.asarray(codes))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=float(np.abs(x).max()) * 2**-22)


@pytest.mark.parametrize("fmt,dtype", [("fp8-e4m3", ml_dtypes.float8_e4m3fn), ("fp8-e5m2", ml_dtypes.float8_e5m2),
                                       ("fp16", np.float16), ("bf16", ml_dtypes.bfloat16)])
def test_float_casts(rng, fmt, dtype):
    x = np.concatenate([matrix(rng, 200, 50, scale=100).reshape(-1), edge_values()]).reshape(1, -1)
    codes = np.asarray(gpuquant.quantize(x, fmt, backend="numpy"))
    with np.errstate(invalid="ignore", over="ignore"):
        peer = x.astype(dtype)
    assert codes.dtype == np.dtype(dtype)
    u = np.uint8 if np.dtype(dtype).itemsize == 1 else np.uint16
    finite = ~np.isnan(x)
    assert_array_equal(codes.view(u)[finite], peer.view(u)[finite])
    # NaN: canonical quiet NaN with the sign kept (ml_dtypes does the same; numpy's float16 keeps payloads)
    assert np.isnan(codes[~finite].astype(np.float32)).all()
    signs = np.signbit(x[~finite])
    assert_array_equal(np.signbit(codes[~finite].astype(np.float32)), signs)
    if fmt != "fp16":
        assert_array_equal(codes.view(u)[~finite], peer.view(u)[~finite])


@pytest.mark.parametrize("fmt", ["fp8-e4m3", "fp8-e5m2", "fp16", "bf16"])
def test_float_saturate(rng, fmt):
    x = np.concatenate([matrix(rng, 10, 30, scale=1e5).reshape(-1), edge_values()]).reshape(1, -1)
    q = gpuquant.Quantizer(fmt, backend="numpy", saturate=True)
    codes = np.asarray(q.transform(x)).astype(np.float32)
    mx = q.scheme.max_finite
    assert np.isfinite(codes[~np.isnan(x)]).all()
    assert np.abs(codes[~np.isnan(x)]).max() <= mx
    with np.errstate(invalid="ignore"):  # signalling NaNs among the edge values
        big = np.abs(x.astype(np.float64)) > 2 * mx
    assert_array_equal(codes[big], np.sign(x[big]) * mx)
    inside = np.abs(x) <= mx
    assert_array_equal(codes[inside], np.asarray(gpuquant.quantize(x, fmt, backend="numpy")).astype(np.float32)[inside])


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_row_recipe(rng, shape):
    x = matrix(rng, *shape, edges=finite_edge_values())
    codes = gpuquant.quantize(x, "int8-row", backend="numpy")
    q, s = int8_rowwise_recipe(x)
    assert_array_equal(np.asarray(codes), q)
    assert_array_equal(codes.side["scales"].view(np.uint32), s.view(np.uint32))
    recon = gpuquant.dequantize(codes, "int8-row", backend="numpy")
    assert_array_equal(recon.view(np.uint32), int8_rowwise_recipe_read(q, s).view(np.uint32))


def test_int8_row_zero_rows():
    x = np.zeros((3, 8), np.float32)
    x[1, 2] = -0.0
    codes = gpuquant.quantize(x, "int8-row", backend="numpy")
    assert_array_equal(np.asarray(codes), int8_rowwise_recipe(x)[0])


@pytest.mark.parametrize("shape,per", [((n, d), per) for n, d in [(1, 1), (5, 8), (300, 37), (2, 1000)]
                                       for per in ("tensor", "dimension") if n > 1 or per == "tensor"])
def test_uint8_affine_recipe(rng, shape, per):
    x = matrix(rng, *shape, edges=finite_edge_values()[:6])
    q, codes = fit_codes("uint8-affine", x, granularity=per)
    if per == "tensor":
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = affine_uint8_recipe(x) if x.max() > x.min() else None
        if ref is not None:
            assert_array_equal(np.asarray(codes), ref)
    else:
        cols = [affine_uint8_recipe(x[:, j:j + 1]) for j in range(shape[1]) if x[:, j].max() > x[:, j].min()]
        keep = [j for j in range(shape[1]) if x[:, j].max() > x[:, j].min()]
        if keep:
            assert_array_equal(np.asarray(codes)[:, keep], np.hstack(cols))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("n", [1, 3, 100])
def test_int4_block_recipe(rng, group, n):
    d = group * 3
    x = matrix(rng, n, d, edges=finite_edge_values())
    x[0, :group] = 0.0  # an all-zero block: scale 0, codes 0
    codes = gpuquant.quantize(x, "int4-block", backend="numpy", block_size=group)
    q, s = int4_groups_recipe(x, group)
    assert_array_equal(np.asarray(codes), pack_low_first(q & 0xF))
    assert_array_equal(codes.side["scales"].view(np.uint32), s.view(np.uint32))


@pytest.mark.parametrize("shape", SHAPES)
def test_cuvs_binary(rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    assert_array_equal(np.asarray(gpuquant.quantize(x, "binary", backend="numpy")), cuvs_binary(x))
    finite = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    if shape[0] > 1:  # cuVS's transform with a given threshold; the mean itself is ours, not cuVS's
        q = gpuquant.Quantizer("binary", backend="numpy", threshold="mean").fit(finite)
        thr = (finite.astype(np.float64).sum(0) / shape[0]).astype(np.float32)
        assert_array_equal(np.asarray(q.transform(finite)), cuvs_binary(finite, thr))


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_gguf_blocks_too_small_for_their_inverse_scale(rng, kind):
    # below |max| ~ 2.35e-38 (Q4_0) / 3.7e-37 (Q8_0) 1/d overflows: every x * id is ±inf or NaN
    gguf = pytest.importorskip("gguf")
    scales = np.float32(10.0) ** rng.uniform(-45, -35, size=(40, 1, 1)).astype(np.float32)
    x = (rng.standard_normal((40, 4, 32)).astype(np.float32) * scales).reshape(40, 128)
    x[0, :4] = [1e-40, -1e-40, 0.0, -0.0]
    x[1, :32] = 0.0
    x[2, 32:64] = np.float32(-2.35e-38)
    codes = np.asarray(gpuquant.quantize(x, f"gguf-{kind}", backend="numpy"))
    with np.errstate(all="ignore"):
        theirs = gguf.quants.quantize(x, getattr(gguf.GGMLQuantizationType, kind.upper()))
    assert_array_equal(codes, theirs)


def test_binary_preset_claims_cuvs_only_for_threshold_zero():
    # cuVS's mean sums in float32 and its median sorts a ~10% row sample: ours are exact, so not cuVS's
    preset = gpuquant.schemes.PRESETS["binary"]
    assert preset.params["threshold"] == "zero" and preset.peer.endswith("with threshold zero")
    assert "not cuVS's" in preset.summary


@pytest.mark.parametrize("name", ["fp8-e4m3", "st-int8", "cuvs-sq8", "int8-row", "gguf-q4_0"])
def test_float64_input_is_rounded_to_float32_first(rng, name):
    # the documented rule (presets module, README): one float32 rounding, then the float32 math
    x64 = rng.standard_normal((9, 64)) * 100
    x64[0, 0] = 464.00000000000006  # ml_dtypes from float64: e4m3 NaN; from float32 (464.0): 448
    x32 = x64.astype(np.float32)
    q64, codes64 = fit_codes(name, x64)
    q32, codes32 = fit_codes(name, x32)
    assert_array_equal(np.asarray(codes64).view(np.uint8), np.asarray(codes32).view(np.uint8))
    assert "float64 rounded to nearest even" in gpuquant.schemes.presets.__doc__
