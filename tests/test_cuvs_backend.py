"""The cuvs backend: which schemes it takes (everywhere), and parity with gpuquant's own kernels
and reference where cuVS and a GPU are installed (marker ``cuvs``)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import gpuquant
from helpers import edge_values, finite_edge_values, matrix
from gpuquant.backends.cuvs_backend import CuvsBackend
from gpuquant.schemes import make_scheme


@pytest.mark.parametrize("name,params,ok", [
    ("cuvs-sq8", {}, True),
    ("cuvs-sq8", {"quantile": 0.9}, True),
    ("binary", {}, True),
    ("cuvs-sq8", {"quantile_method": "exact"}, False),
    ("binary", {"bitorder": "big"}, False),
    ("binary", {"threshold": "mean"}, False),
    ("st-binary", {}, False),
    ("int8-row", {}, False),
])
def test_supports_only_what_cuvs_implements(name, params, ok):
    assert CuvsBackend.supports(make_scheme(name, **params))[0] is ok


def test_unavailable_cuvs_is_a_clear_error():
    if CuvsBackend.is_available()[0]:
        pytest.skip("cuVS works here: the refusal cannot be observed")
    with pytest.raises(gpuquant.BackendUnavailableError, match="cuvs"):
        gpuquant.Quantizer("cuvs-sq8", backend="cuvs").fit(np.ones((4, 2), np.float32))


@pytest.fixture
def cp():
    ok, why = CuvsBackend.is_available()
    if not ok:
        pytest.skip(f"cuVS backend unavailable: {why}")
    import cupy

    return cupy


@pytest.mark.cuvs
@pytest.mark.parametrize("quantile", [0.99, 1.0, 0.9])
@pytest.mark.parametrize("shape", [(1, 7), (300, 37), (2000, 384)])
def test_cuvs_sq8_parity(cp, rng, quantile, shape):
    x = matrix(rng, *shape)  # n <= 1e6 // d: cuVS sorts every value, so its range is exact
    q_cuvs = gpuquant.Quantizer("cuvs-sq8", backend="cuvs", quantile=quantile).fit(x)
    q_ref = gpuquant.Quantizer("cuvs-sq8", backend="numpy", quantile=quantile).fit(x)
    assert_array_equal(q_cuvs.state["lo"], q_ref.state["lo"])
    assert_array_equal(q_cuvs.state["hi"], q_ref.state["hi"])
    y = np.concatenate([x.reshape(-1), finite_edge_values()])[: x.size].reshape(x.shape)
    q_gpu = gpuquant.Quantizer.from_dict(q_cuvs.to_dict(), backend="cupy")
    for arr in (y, cp.asarray(y)):
        codes = q_cuvs.transform(arr)
        assert isinstance(codes.data, type(arr))
        mine = q_gpu.transform(arr)
        assert_array_equal(cp.asnumpy(cp.asarray(codes.data)), cp.asnumpy(cp.asarray(mine.data)))
        assert_array_equal(cp.asnumpy(cp.asarray(codes.data)), np.asarray(q_ref.transform(y)))
        back = q_cuvs.inverse_transform(codes)
        ours = q_gpu.inverse_transform(mine)
        assert_array_equal(cp.asnumpy(cp.asarray(back)).view(np.uint32), cp.asnumpy(cp.asarray(ours)).view(np.uint32))


@pytest.mark.cuvs
@pytest.mark.parametrize("shape", [(1, 1), (3, 13), (500, 384)])
def test_cuvs_binary_parity(cp, rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    want = np.asarray(gpuquant.quantize(x, "binary", backend="numpy"))
    for arr in (x, cp.asarray(x)):
        codes = gpuquant.quantize(arr, "binary", backend="cuvs")
        assert_array_equal(cp.asnumpy(cp.asarray(codes.data)), want)


@pytest.mark.cuvs
def test_cuvs_refuses_a_range_it_did_not_train(cp, rng):
    x = matrix(rng, 100, 8)
    state = gpuquant.Quantizer("cuvs-sq8", backend="numpy").fit(x).to_dict()
    with pytest.raises(gpuquant.BackendUnavailableError, match="trained itself"):
        gpuquant.Quantizer.from_dict(state, backend="cuvs").transform(x)
