"""The CPU fast path equals the reference bit for bit: chunks and threads, every input layout
(C, Fortran, strided, memmap, float16, float64), ``out=``, empty and one-row inputs."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import gpuquant
from helpers import bits, fitted, matrix
from gpuquant.backends import numpy_backend
from gpuquant.schemes import make_scheme

PRESETS = [p.name for p in gpuquant.presets()]


def reference(name: str, x32: np.ndarray, state):
    scheme = make_scheme(name)
    return scheme.encode(x32, state)


@pytest.fixture(params=[1 << 10, numpy_backend.CHUNK_VALUES], ids=["small-chunks", "default-chunks"])
def chunk_values(request, monkeypatch):
    monkeypatch.setattr(numpy_backend, "CHUNK_VALUES", request.param)
    monkeypatch.setattr(numpy_backend.row_chunks, "__defaults__", (request.param,))
    return request.param


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("shape", [(0, 64), (1, 64), (3, 128), (513, 64), (40, 320)])
def test_chunked_equals_reference(rng, chunk_values, name, shape):
    x = matrix(rng, *shape)
    q = gpuquant.Quantizer(name, backend="numpy")
    if q.scheme.needs_fit:
        q.fit(matrix(rng, 50, shape[1]))
    codes = q.transform(x)
    ref_codes, ref_side = reference(name, x, q.state)
    assert_array_equal(bits(codes.data), bits(ref_codes))
    for key, values in ref_side.items():
        assert_array_equal(bits(codes.side[key]), bits(values))
    recon = q.inverse_transform(codes)
    ref_recon = make_scheme(name).decode(ref_codes, ref_side, q.state, shape[1])
    assert recon.dtype == np.float32 and recon.shape == shape
    assert_array_equal(bits(recon), bits(ref_recon))


@pytest.mark.parametrize("layout", ["fortran", "strided", "float16", "float64", "memmap", "list"])
@pytest.mark.parametrize("name", ["int8-row", "st-int8", "fp8-e4m3", "binary", "cuvs-sq8"])
def test_layouts(rng, tmp_path, chunk_values, layout, name):
    base = matrix(rng, 301, 96)
    if layout == "fortran":
        x, x32 = np.asfortranarray(base), base
    elif layout == "strided":
        big = matrix(rng, 602, 192)
        x = big[::2, ::2]
        x32 = np.ascontiguousarray(x)
    elif layout == "float16":
        x = base.astype(np.float16)
        x32 = x.astype(np.float32)
    elif layout == "float64":
        x = base.astype(np.float64) * (1 + 1e-9)  # not exactly float32: rounding happens
        x32 = x.astype(np.float32)
    elif layout == "memmap":
        np.save(tmp_path / "x.npy", base)
        x, x32 = np.load(tmp_path / "x.npy", mmap_mode="r"), base
    else:
        x, x32 = base.tolist(), base
    q = fitted(name, x32)
    ref_codes, _ = reference(name, x32, q.state)
    assert_array_equal(bits(q.transform(x).data), bits(ref_codes))


def test_out_arrays(rng):
    x = matrix(rng, 100, 64)
    q = gpuquant.Quantizer("int8-row", backend="numpy")
    out = gpuquant.Codes(np.empty((100, 64), np.int8), {"scales": np.empty(100, np.float32)})
    codes = q.transform(x, out=out)
    assert codes.data is out.data and codes.side["scales"] is out.side["scales"]
    assert_array_equal(codes.data, reference("int8-row", x, None)[0])
    recon = np.empty((100, 64), np.float32)
    assert q.inverse_transform(codes, out=recon) is recon
    with pytest.raises(gpuquant.InputError, match="shape"):
        q.transform(x, out=np.empty((99, 64), np.int8))
    with pytest.raises(gpuquant.InputError, match="dtype"):
        gpuquant.Quantizer("fp16", backend="numpy").transform(x, out=np.empty((100, 64), np.float32))


@pytest.mark.parametrize("name", ["int8-row", "gguf-q8_0", "safetensors-fp8", "pgvector-halfvec"])
def test_errors_name_the_global_row(rng, chunk_values, name):
    x = matrix(rng, 400, 64)
    x[333, 3] = np.nan
    with pytest.raises(gpuquant.InputError, match=r"^row 333 of the input holds NaN"):
        gpuquant.quantize(x, name, backend="numpy")


def test_worker_count_positive():
    assert numpy_backend.worker_count() >= 1
