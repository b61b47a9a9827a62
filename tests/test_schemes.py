"""Scheme properties and policies: error bounds, monotone codes, NaN/Inf policy per family,
parameter validation, and save/load round trips."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import gpuquant
from helpers import bits, edge_values, fitted, matrix
from gpuquant import InputError, NotFittedError, Quantizer

PRESETS = [p.name for p in gpuquant.presets()]


# -- reconstruction error bounds ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["st-int8", "st-uint8", "faiss-sq8", "faiss-sq4", "uint8-affine"])
def test_scalar_error_within_one_step(rng, name):
    x = matrix(rng, 500, 24)
    q = fitted(name, x)
    step = (q.state["hi"] - q.state["lo"]) / (15 if name == "faiss-sq4" else 255)
    err = np.abs(q.inverse_transform(q.transform(x)) - x)
    # floor / truncate lose up to one step, rounding half a step; float32 slack on top
    assert (err <= step * 1.0001 + 1e-6).all()


def test_cuvs_error_inside_range(rng):
    x = matrix(rng, 800, 16)
    q = fitted("cuvs-sq8", x, quantile=1.0)
    step = (q.state["hi"][0] - q.state["lo"][0]) / 255
    err = np.abs(q.inverse_transform(q.transform(x)) - x)
    assert err.max() <= step * 0.5001 + 1e-6


@pytest.mark.parametrize("name,qmax", [("int8-row", 127), ("int4-block", 7)])
def test_absmax_error_half_step(rng, name, qmax):
    x = matrix(rng, 100, 128)
    codes = gpuquant.quantize(x, name, backend="numpy")
    recon = gpuquant.dequantize(codes, name, backend="numpy")
    scale = codes.side["scales"]
    per_value = np.repeat(scale.reshape(100, -1), 128 // scale.reshape(100, -1).shape[1], axis=1)
    assert (np.abs(recon - x) <= per_value * 0.5001).all()


@pytest.mark.parametrize("name,rel", [("fp16", 2**-11), ("bf16", 2**-8), ("fp8-e4m3", 2**-4), ("fp8-e5m2", 2**-3)])
def test_float_relative_error(rng, name, rel):
    x = matrix(rng, 50, 40)
    x = x[np.abs(x) > 0.1].reshape(1, -1)[:, :1000] if (np.abs(x) > 0.1).sum() >= 1000 else np.full((1, 4), 1.3, np.float32)
    recon = gpuquant.dequantize(gpuquant.quantize(x, name, backend="numpy"), name, backend="numpy")
    assert (np.abs(recon - x) <= np.abs(x) * rel).all()


# -- monotone codes -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cuvs-sq8", "st-uint8", "faiss-sq8", "uint8-affine", "fp8-e4m3", "fp16", "bf16"])
def test_codes_monotone_in_x(rng, name):
    x = matrix(rng, 300, 1)
    q = fitted(name, x)
    ramp = np.sort(np.concatenate([x[:, 0], np.linspace(x.min() * 2, x.max() * 2, 1000, dtype=np.float32)]))[:, None]
    decoded = q.inverse_transform(q.transform(ramp))[:, 0]
    assert (np.diff(decoded) >= 0).all()


# -- NaN / Inf policy ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,nan_code", [("cuvs-sq8", -128), ("st-int8", -128), ("st-uint8", 0),
                                           ("faiss-sq8", 0), ("uint8-affine", 0)])
def test_scalar_nan_is_level_zero_inf_clamps(rng, name, nan_code):
    x = matrix(rng, 100, 3)
    q = fitted(name, x)
    y = np.array([[np.nan, np.inf, -np.inf]], np.float32)
    lowest, highest = (-128, 127) if q.scheme.params["signed"] else (0, 255)
    assert_array_equal(np.asarray(q.transform(y)), [[nan_code, highest, lowest]])


def test_faiss_sq4_nan(rng):
    q = fitted("faiss-sq4", matrix(rng, 100, 3))
    assert_array_equal(np.asarray(q.transform(np.array([[np.nan, np.inf, -np.inf]], np.float32))), [[0xF0, 0x00]])


@pytest.mark.parametrize("name", ["int8-row", "int4-block"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_absmax_refuses_non_finite(rng, name, bad):
    x = matrix(rng, 10, 64)
    x[7, 5] = bad
    with pytest.raises(InputError, match="^row 7 of the input holds NaN or ±Inf"):
        gpuquant.quantize(x, name, backend="numpy")


@pytest.mark.parametrize("name,params", [("st-int8", {}), ("cuvs-sq8", {}), ("faiss-sq8", {}), ("uint8-affine", {}),
                                         ("es-byte", {}), ("binary", {"threshold": "median"}),
                                         ("cuvs-sq8", {"quantile_method": "exact"})])
def test_fit_refuses_nan_naming_the_row(rng, name, params):
    x = matrix(rng, 20, 4)
    x[3, 1] = np.nan
    x[9, 0] = np.nan
    with pytest.raises(InputError, match=r"^fit data contains NaN (or ±Inf )?\(row 3\)"):
        Quantizer(name, backend="numpy", **params).fit(x)


def test_row_errors_pickle_whole(rng):  # Dask workers send them back to the client
    import pickle
    x = matrix(rng, 5, 64)
    x[2, 0] = np.inf
    with pytest.raises(InputError) as info:
        gpuquant.quantize(x, "gguf-q8_0", backend="numpy")
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is type(info.value) and str(again) == str(info.value) and again.row == 2


def test_cuvs_fit_names_the_sampled_row_of_the_input(rng):
    from gpuquant.schemes.scalar import sample_rows
    x = matrix(rng, 300, 4000)  # 1e6 // 4000 = 250 of the 300 rows are sampled
    bad = int(sample_rows(300, 250)[200])
    x[bad, 17] = np.nan
    with pytest.raises(InputError, match=rf"^fit data contains NaN \(row {bad}\)"):
        Quantizer("cuvs-sq8", backend="numpy").fit(x)


def test_binary_nan_is_zero_bit_and_subnormals_compare_exactly():
    x = np.array([[np.nan, -np.nan, 1e-45, -1e-45, 0.0, -0.0, np.inf, -np.inf]], np.float32)
    assert_array_equal(np.asarray(gpuquant.quantize(x, "binary", backend="numpy")), [[0b01000100]])
    assert_array_equal(np.asarray(gpuquant.quantize(x, "st-ubinary", backend="numpy")), [[0b00100010]])


def test_binary_median_and_mean(rng):
    x = matrix(rng, 101, 9)
    med = fitted("binary", x, threshold="median").state["thresholds"]
    assert_array_equal(med, np.median(x, axis=0))
    x2 = x[:100]
    med2 = fitted("binary", x2, threshold="median").state["thresholds"]
    s = np.sort(x2, axis=0)
    assert_array_equal(med2, ((s[49].astype(np.float64) + s[50]) / 2).astype(np.float32))
    mean = fitted("binary", x, threshold="mean").state["thresholds"]
    assert_array_equal(mean, x.astype(np.float64).mean(0).astype(np.float32))


def test_binary_inverse_is_sign_pattern(rng):
    x = matrix(rng, 7, 13)
    for name in ("binary", "st-binary", "st-ubinary"):
        recon = gpuquant.dequantize(gpuquant.quantize(x, name, backend="numpy"), name, backend="numpy")
        assert_array_equal(recon, np.where(x > 0, 1.0, -1.0).astype(np.float32))


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad,match", [
    (np.zeros(5, np.float32), "2-D"),
    (np.zeros((2, 3, 4), np.float32), "2-D"),
    (np.zeros((3, 4), np.int32), "float16, float32 or float64"),
    (np.zeros((3, 0), np.float32), "0 dimensions"),
    ("text", "2-D"),
])
def test_bad_input_named(bad, match):
    with pytest.raises(InputError, match=match):
        gpuquant.quantize(bad, "int8-row", backend="numpy")


def test_fit_on_empty_and_single_row():
    with pytest.raises(InputError, match="0 rows"):
        Quantizer("st-int8", backend="numpy").fit(np.zeros((0, 4), np.float32))
    q = Quantizer("st-int8", backend="numpy").fit(np.ones((1, 4), np.float32))
    assert_array_equal(q.state["lo"], q.state["hi"])
    assert np.asarray(q.transform(np.zeros((0, 4), np.float32))).shape == (0, 4)


def test_reversed_given_ranges_refused_saying_what_sentence_transformers_does():
    with pytest.raises(InputError, match=r"lo > hi in dimension 1 \(lo=2, hi=1\).*sentence-transformers would"):
        Quantizer("st-int8", backend="numpy", range="given", ranges=[[0, 2, 1], [1, 1, 0.5]])


def test_transform_before_fit_and_wrong_dim(rng):
    x = matrix(rng, 10, 8)
    with pytest.raises(NotFittedError):
        Quantizer("cuvs-sq8", backend="numpy").transform(x)
    q = Quantizer("st-int8", backend="numpy").fit(x)
    with pytest.raises(InputError, match="7 dimensions but the quantizer was fitted on 8"):
        q.transform(x[:, :7])


@pytest.mark.parametrize("name,params,match", [
    ("cuvs-sq8", {"quantile": 0.0}, "quantile"),
    ("cuvs-sq8", {"quantile": 1.5}, "quantile"),
    ("int4-block", {"block_size": 48 + 1}, "block_size"),
    ("int4-block", {"block_size": 16}, "block_size"),
    ("binary", {"bitorder": "middle"}, "bitorder"),
    ("st-int8", {"colour": "red"}, "unknown parameter"),
    ("fp8-e4m3", {"saturate": "yes"}, "saturate"),
    ("nonsense", {}, "unknown scheme"),
    ("scalar", {"range": "given"}, "ranges"),
    ("scalar", {"range": "given", "ranges": [1.0, 0.0]}, "lo > hi"),
])
def test_bad_params(name, params, match):
    with pytest.raises(InputError, match=match):
        Quantizer(name, **params)


def test_block_size_must_divide(rng):
    with pytest.raises(InputError, match="does not divide"):
        gpuquant.quantize(matrix(rng, 2, 100), "int4-block", backend="numpy")


def test_codes_checked_on_inverse(rng):
    x = matrix(rng, 10, 8)
    q = Quantizer("int8-row", backend="numpy")
    with pytest.raises(InputError, match="side arrays"):
        q.inverse_transform(np.asarray(q.transform(x)))
    st = Quantizer("st-uint8", backend="numpy").fit(x)
    with pytest.raises(InputError, match="must be uint8"):
        st.inverse_transform(np.zeros((3, 8), np.int8))


class _DeviceCodes:
    """Stands in for a CuPy array of codes: the API only reads its dtype and shape before dispatch."""

    __cuda_array_interface__: dict = {}

    def __init__(self, dtype, shape):
        self.dtype, self.shape, self.ndim = np.dtype(dtype), shape, len(shape)

    def __len__(self):
        return self.shape[0]


@pytest.mark.parametrize("name, device_dtype", [("fp8-e4m3", np.uint8), ("fp8-e5m2", np.uint8),
                                                ("bf16", np.uint16), ("fp16", np.float16)])
def test_device_codes_as_raw_bits_accepted(name, device_dtype):
    """CuPy has no fp8/bf16 dtypes, so device codes of every such format (e5m2 included, whose numpy
    dtype has kind 'f') are their raw uint bits; a wrong width is still refused."""
    q = Quantizer(name, backend="numpy")
    q._check_codes(gpuquant.Codes(_DeviceCodes(device_dtype, (3, 8)), {}, name, 8))
    with pytest.raises(InputError, match="must be"):
        q._check_codes(gpuquant.Codes(_DeviceCodes(np.int32, (3, 8)), {}, name, 8))


# -- given ranges (calibration from elsewhere) --------------------------------------------------------
def test_given_ranges_match_fitted(rng):
    x = matrix(rng, 100, 6)
    fitted_q = fitted("st-int8", x)
    given = Quantizer("st-int8", backend="numpy", range="given",
                      ranges=[fitted_q.state["lo"].tolist(), fitted_q.state["hi"].tolist()])
    assert given.is_fitted and given.dim == 6
    assert_array_equal(np.asarray(given.transform(x)), np.asarray(fitted_q.transform(x)))


# -- save / load ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESETS)
def test_save_load_round_trip(rng, tmp_path, name):
    d = 128
    x = matrix(rng, 64, d)
    q = fitted(name, x)
    path = q.save(tmp_path / "q.json")
    doc = json.loads(path.read_text())
    assert doc["format"] == "gpuquant.quantizer" and doc["scheme"] == name
    loaded = Quantizer.load(path, backend="numpy")
    assert loaded.params == q.params and loaded.dim == q.dim and repr(loaded) == repr(q)
    a, b = q.transform(x), loaded.transform(x)
    assert_array_equal(bits(a), bits(b))
    for key in q.state or {}:
        assert_array_equal(q.state[key].view(np.uint32), loaded.state[key].view(np.uint32))


def test_load_rejects_bad_files(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        Quantizer.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="not a gpuquant quantizer"):
        Quantizer.load(tmp_path / "b.json")
    with pytest.raises(InputError, match="not found"):
        Quantizer.load(tmp_path / "missing.json")


def test_repr_says_what_and_whether_fitted(rng):
    q = Quantizer("cuvs-sq8", backend="numpy", quantile=0.95)
    assert "cuvs-sq8" in repr(q) and "quantile=0.95" in repr(q) and "not fitted" in repr(q)
    q.fit(matrix(rng, 10, 4))
    assert "fitted, dim=4" in repr(q)
    assert "no fit needed" in repr(Quantizer("fp16"))


def test_every_preset_edge_values_deterministic(rng):
    x = matrix(rng, 40, 64)
    y = matrix(rng, 3, 64, edges=edge_values()[:64])
    y[np.isnan(y)] = 0.5  # absmax refuses NaN rows: keep this check to the other families
    y[~np.isfinite(y)] = 2.0
    for name in PRESETS:
        q = fitted(name, x)
        try:
            first = bits(q.transform(y))
        except InputError as exc:  # presets that refuse out-of-range values (pgvector-halfvec) refuse twice
            with pytest.raises(InputError, match=re.escape(str(exc))):
                q.transform(y.copy())
            continue
        assert_array_equal(first, bits(q.transform(y.copy())))


@pytest.mark.parametrize("name,suggested", [("st-in8", "'st-int8'"), ("cuvs_sq8", "'cuvs-sq8'"), ("scalr", "'scalar'")])
def test_unknown_scheme_names_say_did_you_mean(name, suggested):
    with pytest.raises(InputError, match=rf"unknown scheme '{name}'; did you mean {suggested}"):
        Quantizer(name)


def test_unknown_backend_refused_at_construction():
    with pytest.raises(InputError, match=r"unknown backend 'tpu'; choose one of \['auto', 'numpy'"):
        Quantizer("int8-row", backend="tpu")


def test_inverse_transform_refuses_codes_of_another_scheme(rng):
    x = matrix(rng, 30, 8)
    codes = fitted("st-uint8", x).transform(x)  # the same dtype and shape as faiss-sq8's codes
    with pytest.raises(InputError, match="'st-uint8' codes; this quantizer decodes 'faiss-sq8'"):
        fitted("faiss-sq8", x).inverse_transform(codes)
    same_family = Quantizer("scalar", backend="numpy", range="given", ranges=[-3.0, 3.0])
    assert same_family.inverse_transform(same_family.transform(x)).shape == x.shape
