"""The ``pq`` family against FAISS's ``ProductQuantizer``: codes equal given the same centroids (where
two centroids are equally near within float32 rounding FAISS may pick the other: those rows are
counted and must be such ties), ``decode`` bit for bit, 4-bit packing, and the k-means fit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import bits, matrix
from numpy.testing import assert_array_equal

from gpuquant import InputError, Quantizer
from gpuquant.schemes.kmeans import kmeans, nearest
from gpuquant.schemes.pq import pq_decode, pq_encode

faiss = pytest.importorskip("faiss")


def faiss_pq(centroids: np.ndarray):
    m, k, dsub = centroids.shape
    pq = faiss.ProductQuantizer(m * dsub, m, k.bit_length() - 1)
    faiss.copy_array_to_vector(np.ascontiguousarray(centroids, np.float32).ravel(), pq.centroids)
    return pq


def sub_codes(codes: np.ndarray, m: int, nbits: int) -> np.ndarray:
    if nbits == 8:
        return codes.astype(np.intp)
    return np.stack([(codes >> 4 if j % 2 else codes & 15)[:, j // 2] for j in range(m)], axis=1).astype(np.intp)


def assert_codes_match_up_to_ties(x: np.ndarray, centroids: np.ndarray, nbits: int) -> int:
    """Our codes equal FAISS's except in sub-spaces where its pick is as near as ours within float32
    rounding of the distances; returns how many (row, sub-space) codes differ that way."""
    m, _, dsub = centroids.shape
    ours, theirs = pq_encode(x, centroids, nbits), faiss_pq(centroids).compute_codes(x)
    a, b = sub_codes(ours, m, nbits), sub_codes(theirs, m, nbits)
    sub = x.reshape(len(x), m, dsub).astype(np.float64)
    c = centroids.astype(np.float64)
    ties = 0
    for j in range(m):
        rows = np.flatnonzero(a[:, j] != b[:, j])
        d_ours = ((sub[rows, j] - c[j, a[rows, j]]) ** 2).sum(axis=1)
        d_theirs = ((sub[rows, j] - c[j, b[rows, j]]) ** 2).sum(axis=1)
        scale = (sub[rows, j] ** 2).sum(axis=1) + (c[j, b[rows, j]] ** 2).sum(axis=1)
        assert (d_ours <= d_theirs).all()  # ours is never the farther one
        assert (d_theirs - d_ours <= 4 * dsub * 2.0**-24 * scale).all(), (d_ours, d_theirs)
        ties += rows.size
    return ties


@pytest.mark.parametrize("d,m,nbits", [(32, 8, 8), (33, 11, 4), (48, 3, 8), (40, 5, 4), (64, 64, 8), (16, 1, 4)])
def test_codes_are_faiss_on_given_centroids(rng, d, m, nbits):
    x = matrix(rng, 700, d)
    q = Quantizer("pq", m=m, nbits=nbits, iterations=4, backend="numpy").fit(x)
    centroids = q.state["centroids"]
    assert centroids.dtype == np.float32 and centroids.shape == (m, 1 << nbits, d // m)
    assert assert_codes_match_up_to_ties(x, centroids, nbits) <= 2  # random data: ties are rare
    codes = q.transform(x)
    assert np.asarray(codes).shape == (700, m if nbits == 8 else (m + 1) // 2)
    assert_array_equal(bits(q.inverse_transform(codes)), bits(faiss_pq(centroids).decode(np.asarray(codes))))


@pytest.mark.parametrize("nbits", [4, 8])
def test_exact_ties_go_to_the_lowest_index_and_are_counted(rng, nbits):
    """Integer centroids and rows half way between two of them: every such code is a tie."""
    k = 1 << nbits
    centroids = np.arange(k, dtype=np.float32).reshape(1, k, 1).repeat(3, axis=0) * 2
    x = (rng.integers(0, k - 1, (200, 3)) * 2 + 1).astype(np.float32)  # odd: equally near 2i and 2i + 2
    assert_codes_match_up_to_ties(x, centroids, nbits)  # FAISS's pick among equals is its own
    assert_array_equal(sub_codes(pq_encode(x, centroids, nbits), 3, nbits), (x.astype(np.intp) - 1) // 2)


def test_duplicate_centroid_is_never_picked_twice(rng):
    c = matrix(rng, 16, 4).reshape(1, 16, 4)
    c[0, 9] = c[0, 3]
    codes = pq_encode(matrix(rng, 300, 4), c, 4)
    assert not (sub_codes(codes, 1, 4) == 9).any()


def test_decode_is_faiss_for_every_code(rng):
    centroids = matrix(rng, 5 * 16, 3).reshape(5, 16, 3)
    codes = np.stack([rng.integers(0, 256, 3).astype(np.uint8) for _ in range(40)])
    assert_array_equal(bits(pq_decode(codes, centroids, 4)), bits(faiss_pq(centroids).decode(codes)))


def test_kmeans_deterministic_and_never_worse(rng):
    x = np.concatenate([rng.standard_normal((300, 6)) * 0.1 + i * 3 for i in range(8)]).astype(np.float32)
    assert_array_equal(bits(kmeans(x, 8, 10, seed=5)), bits(kmeans(x, 8, 10, seed=5)))
    errors = [nearest(x, kmeans(x, 8, iters, seed=5))[1].mean() for iters in (0, 1, 3, 10)]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(errors)), errors  # Lloyd never increases it
    assert errors[-1] < errors[0]


def test_kmeans_refills_empty_clusters():
    x = np.repeat(np.array([[0.0], [10.0]], np.float32), 50, axis=0)
    x = np.concatenate([x, [[5.0]]]).astype(np.float32)
    c = kmeans(x, 3, 5, seed=0)
    assert len(np.unique(c)) == 3 and set(np.unique(nearest(x, c)[0])) == {0, 1, 2}


def test_fit_is_deterministic_and_samples(rng):
    x = matrix(rng, 500, 8)
    a = Quantizer("pq", m=2, nbits=4, max_train_rows=100, iterations=3, backend="numpy").fit(x)
    b = Quantizer("pq", m=2, nbits=4, max_train_rows=100, iterations=3, backend="numpy").fit(x)
    assert_array_equal(bits(a.state["centroids"]), bits(b.state["centroids"]))


@pytest.mark.parametrize("params,message", [({"m": 5}, "divides"), ({"nbits": 6}, "nbits"), ({"m": 0}, "m must"),
                                            ({"iterations": -1}, "iterations"), ({"seed": 1.5}, "seed")])
def test_bad_parameters(rng, params, message):
    with pytest.raises(InputError, match=message):
        Quantizer("pq", backend="numpy", **{"m": 4, **params}).fit(matrix(rng, 300, 16))


def test_too_few_rows_and_non_finite_refused(rng):
    with pytest.raises(InputError, match="at least 256"):
        Quantizer("pq", m=2, backend="numpy").fit(matrix(rng, 100, 4))
    x = matrix(rng, 40, 4)
    q = Quantizer("pq", m=2, nbits=4, backend="numpy").fit(x)
    x[7, 1] = np.nan
    with pytest.raises(InputError, match="row 7"):
        q.transform(x)


def test_one_row_empty_and_save_load(rng, tmp_path):
    x = matrix(rng, 64, 6)
    q = Quantizer("pq", m=3, nbits=4, backend="numpy").fit(x)
    assert np.asarray(q.transform(x[:0])).shape == (0, 2)
    assert_array_equal(np.asarray(q.transform(x[:1])), np.asarray(q.transform(x))[:1])
    loaded = Quantizer.load(q.save(tmp_path / "pq.json"), backend="numpy")
    assert_array_equal(np.asarray(loaded.transform(x)), np.asarray(q.transform(x)))


@pytest.mark.parametrize("nbits", [4, 8])
def test_adc_estimate(rng, nbits):
    import gpuquant

    x, queries = matrix(rng, 300, 12), matrix(rng, 7, 12)
    q = Quantizer("pq", m=4, nbits=nbits, iterations=3, backend="numpy").fit(x)
    codes = q.transform(x)
    recon = q.inverse_transform(codes)
    assert_array_equal(bits(gpuquant.estimate(q, queries, codes)), bits(queries @ recon.T))
    l2 = gpuquant.estimate(q, queries, codes, metric="l2")
    want = ((queries[:, None, :].astype(np.float64) - recon[None]) ** 2).sum(axis=2)
    assert np.allclose(l2, want, rtol=1e-4, atol=1e-4 * want.max())


def test_loaded_state_of_the_wrong_shape_refused(rng):
    q = Quantizer("pq", m=3, nbits=4, backend="numpy").fit(matrix(rng, 40, 6))
    q.state["centroids"] = q.state["centroids"][:, :8]
    with pytest.raises(InputError, match="state array 'centroids'"):
        Quantizer.from_dict(q.to_dict(), backend="numpy")


def test_a_streamed_fit_needs_only_the_training_rows(rng):
    from gpuquant.engine.fit import fit_stream
    from gpuquant.engine.sources import ArraySource
    from gpuquant.schemes.statistics import train_rows

    x = matrix(rng, 900, 8)
    rows = train_rows(900, 300, seed=9)
    assert rows.size == 300 and (np.diff(rows) > 0).all()
    assert_array_equal(train_rows(200, 300, seed=9), np.arange(200))
    q = Quantizer("pq", m=2, nbits=4, iterations=3, seed=9, max_train_rows=300, backend="numpy")
    streamed = fit_stream(q.scheme, ArraySource(x), gather_bytes=0)
    assert_array_equal(bits(streamed["centroids"]), bits(q.fit(x).state["centroids"]))
    assert_array_equal(bits(streamed["centroids"]), bits(q.scheme.fit(x[rows])["centroids"]))


@pytest.mark.parametrize("nbits", [4, 8])
def test_the_gpu_implements_pq_so_auto_picks_it(monkeypatch, nbits):
    from gpuquant import backends
    from gpuquant.schemes import make_scheme

    scheme = make_scheme("pq", nbits=nbits)
    assert backends.supports("cupy", scheme) == (True, "implemented by the GPU kernels")
    monkeypatch.setattr(backends.registry, "availability", lambda name: (True, "pretend"))
    assert backends.pick_auto(scheme)[0] == "cupy"


def test_planner_counts_the_codebooks_as_fixed_bytes():
    import gpuquant

    p = gpuquant.plan("pq", dim=384, rows=1000, gpu_memory="1GiB", params={"m": 48, "nbits": 4})
    assert p.fixed_bytes == 48 * 16 * 8 * 4
