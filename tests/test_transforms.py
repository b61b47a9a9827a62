"""Pre-transforms: PCA against FAISS's ``PCAMatrix`` up to sign, the seeded rotations, and both wired
into every scheme (``pca_dim``, ``rotate``): round trips, quantizer files, convert, CLI, planner."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import bits, cli_json
from numpy.testing import assert_array_equal

import gpuquant
from gpuquant import InputError, Quantizer
from gpuquant.schemes import statistics as st
from gpuquant.transforms import (
    hadamard_inverse,
    hadamard_rotate,
    orthogonal_matrix,
    pca_apply,
    pca_components,
    pca_inverse,
)


def pca_fit(batches: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA from the Covariance statistic's moments merged over ``batches`` (as a streamed fit does)."""
    if not batches:
        raise InputError("cannot fit PCA on 0 rows")
    moments = st.moments(batches[0])
    for b in batches[1:]:
        moments = st.merge_moments(moments, st.moments(b))
    return pca_components(*st.covariance_of(moments), k)


def correlated(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """Rows with well separated variances (distinct eigenvalues), off the origin."""
    mix = rng.standard_normal((d, d))
    return ((rng.standard_normal((n, d)) * np.geomspace(4, 0.05, d)) @ mix + 1.5).astype(np.float32)


@pytest.mark.parametrize("d,k", [(12, 5), (31, 31), (8, 1)])
def test_pca_is_faiss_up_to_sign(rng, d, k):
    faiss = pytest.importorskip("faiss")
    x = correlated(rng, 2000, d)
    mean, comps = pca_fit([x[:700], x[700:]], k)
    ref = faiss.PCAMatrix(d, k)
    ref.train(x)
    theirs, ours = ref.apply(x), pca_apply(x, mean, comps)
    sign = np.sign((theirs.astype(np.float64) * ours).sum(axis=0))
    # FAISS forms the covariance in float32: a component whose eigenvalue gap is small next to the
    # largest eigenvalue moves by about 2**-24 * largest / gap (measured: up to 2e-5 of the largest value)
    assert (np.abs(theirs - ours * sign) <= 1e-4 * np.abs(theirs).max()).all()
    assert np.allclose(faiss.vector_to_array(ref.mean), mean, rtol=1e-5)  # FAISS sums in float32


def test_pca_signs_batches_and_inverse(rng):
    x = correlated(rng, 600, 9)
    mean, comps = pca_fit([x], 9)
    peak = comps[np.arange(9), np.argmax(np.abs(comps), axis=1)]
    assert (peak > 0).all()
    assert np.allclose(comps @ comps.T, np.eye(9), atol=1e-5)
    m2, c2 = pca_fit([x[:1], x[1:300], x[300:]], 9)
    assert np.allclose(m2, mean, atol=1e-6) and np.allclose(c2, comps, atol=1e-4)
    back = pca_inverse(pca_apply(x, mean, comps), mean, comps)
    assert np.abs(back - x).max() <= 1e-4 * np.abs(x).max()


@pytest.mark.parametrize("k", [0, 10])
def test_pca_refuses_bad_dims(rng, k):
    with pytest.raises(InputError, match="pca_dim"):
        pca_fit([correlated(rng, 50, 9)], k)


def test_pca_refuses_non_finite_and_empty(rng):
    x = correlated(rng, 50, 4)
    x[3, 2] = np.inf
    with pytest.raises(InputError, match="NaN or ±Inf"):
        pca_fit([x], 2)
    with pytest.raises(InputError, match="0 rows"):
        pca_fit([], 2)


def test_orthogonal_matrix_seeded(rng):
    q = orthogonal_matrix(13, 7)
    assert q.dtype == np.float32 and np.allclose(q @ q.T, np.eye(13), atol=1e-6)
    assert_array_equal(bits(q), bits(orthogonal_matrix(13, 7)))
    assert not np.array_equal(q, orthogonal_matrix(13, 8))


@pytest.mark.parametrize("d", [1, 5, 8, 13, 64])
def test_hadamard_is_the_matrix_and_inverts(rng, d):
    x = rng.standard_normal((20, d)).astype(np.float32)
    y = hadamard_rotate(x, seed=3)
    p = y.shape[1]
    assert p == 1 << max(0, (d - 1).bit_length())
    h = np.ones((1, 1))
    while h.shape[0] < p:
        h = np.block([[h, h], [h, -h]])
    full = hadamard_rotate(np.eye(p, dtype=np.float32), seed=3)  # the unit rows give D H / sqrt(p)
    assert np.allclose(full * np.sqrt(p), np.sign(full[:, :1]) * h, atol=1e-6)
    padded = np.zeros((20, p), np.float32)
    padded[:, :d] = x
    assert np.allclose(y, padded @ full, atol=1e-5)
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1), rtol=1e-5)
    assert np.abs(hadamard_inverse(y, d, seed=3) - x).max() <= 1e-5 * max(1.0, float(np.abs(x).max()))
    assert_array_equal(bits(y), bits(hadamard_rotate(x, seed=3)))


# -- wired into every scheme ---------------------------------------------------------------------
NAMES = [p.name for p in gpuquant.presets()] + ["pq", "rabitq"]
PARAMS = {"pq": {"m": 4, "nbits": 4, "iterations": 3}, "rabitq": {"bits": 2}}
PRE = [{"pca_dim": 64}, {"rotate": "orthogonal", "rotate_seed": 5}, {"rotate": "hadamard", "rotate_seed": 5},
       {"pca_dim": 48, "rotate": "hadamard"}, {"pca_dim": 64, "rotate": "orthogonal"}]


def quantizer(name: str, x: np.ndarray, **pre) -> Quantizer:
    return Quantizer(name, backend="numpy", **PARAMS.get(name, {}), **pre).fit(x)


@pytest.mark.parametrize("pre", PRE, ids=repr)
@pytest.mark.parametrize("name", NAMES)
def test_every_scheme_takes_the_pre_transforms_and_round_trips_through_a_file(rng, tmp_path, name, pre):
    x = correlated(rng, 300, 128) / np.float32(10)
    q = quantizer(name, x, **pre)
    codes = q.transform(x)
    want = q.pre.apply(x)
    assert codes.dim == want.shape[1] == (64 if "pca_dim" in pre else 128)  # Hadamard pads 48 to 64
    assert_array_equal(bits(codes.data), bits(q.scheme.encode(want, q.state)[0]))  # truncate, PCA, rotate, quantize
    assert_array_equal(bits(q.transform(x[7:8]).data), bits(codes.data[7:8]))  # a row alone: the same codes
    recon = q.inverse_transform(codes)
    assert recon.shape == x.shape and recon.dtype == np.float32
    assert_array_equal(bits(recon), bits(q.pre.inverse(q.scheme.decode(codes.data, codes.side, q.state, codes.dim))))
    out = np.empty_like(x)
    assert q.inverse_transform(codes, out=out) is out and np.array_equal(bits(out), bits(recon))
    loaded = Quantizer.load(q.save(tmp_path / "q.json"), backend="numpy")
    assert loaded.pre.params() == q.pre.params()
    for key, value in q.pre.state.items():
        assert_array_equal(bits(loaded.pre.state[key]), bits(value))
    again = loaded.transform(x)
    assert_array_equal(bits(again.data), bits(codes.data))
    assert_array_equal(bits(loaded.inverse_transform(again)), bits(recon))


@pytest.mark.parametrize("rotate", ["orthogonal", "hadamard"])
def test_rotation_alone_keeps_a_lossless_code_lossless(rng, rotate):
    x = correlated(rng, 50, 13)
    q = Quantizer("fp16", backend="numpy", rotate=rotate, rotate_seed=2).fit(x)
    assert np.abs(q.inverse_transform(q.transform(x)) - x).max() <= 2e-3 * np.abs(x).max()


def test_pca_dim_is_faiss_pca_matrix_up_to_sign(rng):
    faiss = pytest.importorskip("faiss")
    x = correlated(rng, 1500, 24)
    q = Quantizer("fp8-e4m3", backend="numpy", pca_dim=10).fit(x)
    ref = faiss.PCAMatrix(24, 10)
    ref.train(x)
    theirs, ours = ref.apply(x), q.pre.apply(x)
    sign = np.sign((theirs.astype(np.float64) * ours).sum(axis=0))
    assert (np.abs(theirs - ours * sign) <= 1e-5 * np.abs(theirs).max()).all()


def test_matryoshka_truncation_comes_first(rng):
    x = correlated(rng, 200, 20)
    q = Quantizer("fp16", backend="numpy", truncate_dim=12, pca_dim=6).fit(x)
    assert q.pre.input_dim == 12 and q.inverse_transform(q.transform(x)).shape == (200, 12)
    from gpuquant.matryoshka import truncate_renormalize

    assert_array_equal(bits(q.transform(x).data), bits(q.scheme.encode(q.pre.apply(truncate_renormalize(x, 12)),
                                                                       None)[0]))


@pytest.mark.parametrize(("pre", "message"), [({"pca_dim": 0}, "pca_dim must be a positive integer"),
                                              ({"pca_dim": True}, "pca_dim must be a positive integer"),
                                              ({"rotate": "random"}, "rotate='random' is not supported"),
                                              ({"rotate": "hadamard", "rotate_seed": -1}, "rotate_seed")])
def test_bad_pre_transform_parameters(pre, message):
    with pytest.raises(InputError, match=message):
        Quantizer("fp16", **pre)


def test_pca_dim_larger_than_the_input_refused(rng):
    with pytest.raises(InputError, match="pca_dim must be from 1 to the dimension 8"):
        Quantizer("fp16", backend="numpy", pca_dim=9).fit(correlated(rng, 30, 8))


def test_not_fitted_until_the_pre_transform_is(rng):
    q = Quantizer("fp8-e4m3", backend="numpy", pca_dim=4)
    assert not q.is_fitted
    with pytest.raises(gpuquant.NotFittedError):
        q.transform(correlated(rng, 5, 8))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda pre: pre["state"].pop("rotation"), "pre_transform state"),
    (lambda pre: pre.update(pca_dim=5), "gives 5 dimensions, but the scheme was fitted on 6"),
    (lambda pre: pre.update(input_dim=7), "array .pca_mean. in the quantizer file must be finite float32"),
    (lambda pre: pre.update(input_dim="x"), "input_dim"),
])
def test_a_bad_saved_pre_transform_is_refused_on_load(rng, edit, message):
    doc = Quantizer("faiss-sq8", backend="numpy", pca_dim=6, rotate="orthogonal").fit(correlated(rng, 80, 9)).to_dict()
    edit(doc["pre_transform"])
    with pytest.raises(InputError, match=message):
        Quantizer.from_dict(doc, backend="numpy")


@pytest.mark.parametrize("pre", PRE, ids=repr)
def test_rows_of_other_dimensions_than_the_pre_transform_was_fitted_on_are_refused(rng, tmp_path, pre):
    """Not a broadcast error, nor (orthogonal) codes from the first columns only; convert refuses
    before it writes anything."""
    q = Quantizer("faiss-sq8", backend="numpy", **pre).fit(correlated(rng, 200, 96))
    x = correlated(rng, 20, 128)
    with pytest.raises(InputError, match="128 dimensions but pca_dim/rotate were fitted on 96"):
        q.transform(x)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="128 dimensions but pca_dim/rotate were fitted on 96"):
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "out", q, device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda doc: doc.update(truncate_dim=8), "truncate_dim 8 .* fitted on 9"),
    (lambda doc: doc.update(pre_transform=[]), "field 'pre_transform' .* must be an object"),
    (lambda doc: doc.update(pre_transform=5), "field 'pre_transform' .* must be an object"),
    (lambda doc: doc["pre_transform"].update(scale=2), r"unknown field\(s\) \['scale'\] in the quantizer file's pre"),
])
def test_a_saved_pre_transform_at_odds_with_the_file_is_refused(rng, edit, message):
    doc = Quantizer("faiss-sq8", backend="numpy", pca_dim=6, truncate_dim=9).fit(correlated(rng, 80, 12)).to_dict()
    edit(doc)
    with pytest.raises(InputError, match=message):
        Quantizer.from_dict(doc, backend="numpy")


def test_a_saved_array_of_the_wrong_shape_is_refused(rng):
    q = Quantizer("faiss-sq8", backend="numpy", pca_dim=6).fit(correlated(rng, 80, 9))
    q.pre.state["pca_components"] = q.pre.state["pca_components"][:, :8]
    with pytest.raises(InputError, match="pre_transform array 'pca_components'"):
        Quantizer.from_dict(q.to_dict(), backend="numpy")


def test_files_without_a_pre_transform_are_unchanged(rng):
    doc = Quantizer("faiss-sq8", backend="numpy").fit(correlated(rng, 80, 9)).to_dict()
    assert "pre_transform" not in doc


@pytest.mark.parametrize("pre", PRE, ids=repr)
def test_convert_streams_the_pre_transforms(rng, tmp_path, pre):
    from gpuquant.engine import fit as efit

    x = correlated(rng, 900, 128)
    np.save(tmp_path / "x.npy", x)
    efit.FIT_BATCH_VALUES, saved = 300 * 128, efit.FIT_BATCH_VALUES  # three fit batches
    try:
        gpuquant.convert(tmp_path / "x.npy", tmp_path / "out", "faiss-sq8", params=pre, device="cpu")
    finally:
        efit.FIT_BATCH_VALUES = saved
    store = gpuquant.open(tmp_path / "out")
    q = store.quantizer
    assert q.pre.params() == {"pca_dim": None, "rotate": None, "rotate_seed": 0, **pre}
    assert_array_equal(bits(store.read_rows(np.arange(900)).data), bits(q.transform(x).data))
    ref = Quantizer("faiss-sq8", backend="numpy", **pre).fit(x)
    for key, value in ref.pre.state.items():  # the streamed moments: equal up to float64 summation order
        assert np.allclose(q.pre.state[key], value, rtol=1e-5, atol=1e-6)
    gpuquant.convert(tmp_path / "x.npy", tmp_path / "again", ref, device="cpu")
    assert_array_equal(bits(gpuquant.open(tmp_path / "again").read_rows(np.arange(900)).data),
                       bits(ref.transform(x).data))


def test_cli_param_pca_dim(capsys, tmp_path, rng):
    np.save(tmp_path / "x.npy", correlated(rng, 400, 24))
    code, doc = cli_json(capsys, "eval", tmp_path / "x.npy", "--scheme", "fp8-e4m3", "--param", "pca_dim=12",
                         "--n-queries", "50")
    assert code == 0 and doc["bytes_per_vector"] == 12.0


def test_planner_counts_the_matrices_as_fixed_bytes():
    base = gpuquant.plan("fp8-e4m3", dim=384, rows=1000, gpu_memory="1GiB")
    pca = gpuquant.plan("fp8-e4m3", dim=384, rows=1000, gpu_memory="1GiB", params={"pca_dim": 192})
    assert pca.fixed_bytes - base.fixed_bytes == 384 * 4 + 192 * 384 * 4
    rot = gpuquant.plan("fp8-e4m3", dim=384, rows=1000, gpu_memory="1GiB", params={"rotate": "orthogonal"})
    assert rot.fixed_bytes - base.fixed_bytes == 384 * 384 * 4
    pq = gpuquant.plan("pq", dim=384, rows=1000, gpu_memory="1GiB", params={"m": 48})
    assert pq.fixed_bytes == 256 * 384 * 4


def test_planner_sizes_the_pre_transform_on_the_truncated_rows(rng):
    base = gpuquant.plan("fp8-e4m3", dim=48, rows=1000, gpu_memory="1GiB")
    fitted_q = Quantizer("fp8-e4m3", backend="numpy", truncate_dim=32, pca_dim=16).fit(correlated(rng, 100, 48))
    for q in ("fp8-e4m3", fitted_q):
        params = {"truncate_dim": 32, "pca_dim": 16} if isinstance(q, str) else None
        p = gpuquant.plan(q, dim=48, rows=1000, gpu_memory="1GiB", params=params)
        assert p.fixed_bytes - base.fixed_bytes == 32 * 4 + 16 * 32 * 4


def test_dask_fit_and_transform_with_pre_transforms(rng):
    da = pytest.importorskip("dask.array")
    from gpuquant import cluster

    x = correlated(rng, 700, 64)
    dx = da.from_array(x, chunks=(100, 64))
    q = cluster.fit(Quantizer("faiss-sq8", backend="numpy", pca_dim=32, rotate="hadamard"), dx, gather_bytes=0)
    ref = Quantizer("faiss-sq8", backend="numpy", pca_dim=32, rotate="hadamard").fit(x)
    assert np.allclose(q.pre.state["pca_components"], ref.pre.state["pca_components"], atol=1e-5)
    assert_array_equal(bits(np.asarray(cluster.transform(q, dx).data.compute())), bits(q.transform(x).data))


def test_cli_convert_and_inspect_show_the_pre_transform(capsys, tmp_path, rng):
    from helpers import cli_run

    np.save(tmp_path / "x.npy", correlated(rng, 300, 24))
    code, _, err = cli_run(capsys, "convert", tmp_path / "x.npy", tmp_path / "o", "--scheme", "faiss-sq8",
                           "--param", "pca_dim=12", "--param", 'rotate="orthogonal"')
    assert code == 0, err
    code, out, _ = cli_run(capsys, "inspect", tmp_path / "o")
    assert code == 0 and 'pre      pca_dim=12, rotate="orthogonal", rotate_seed=0, fitted on 24 dims' in out
    code, doc = cli_json(capsys, "inspect", tmp_path / "o")
    assert doc["quantizer"]["pre_transform"]["state"]["rotation"]["shape"] == [12, 12]


def test_inspect_names_no_rotate_seed_without_a_rotation(capsys, tmp_path, rng):
    from helpers import cli_run

    Quantizer("faiss-sq8", backend="numpy", pca_dim=12).fit(correlated(rng, 100, 24)).save(tmp_path / "q.json")
    code, out, _ = cli_run(capsys, "inspect", tmp_path / "q.json")
    assert code == 0 and "pre      pca_dim=12, fitted on 24 dims" in out


@pytest.mark.parametrize("pre", PRE, ids=repr)
def test_a_store_decodes_through_the_pre_transform_as_the_quantizer(rng, tmp_path, pre):
    """get_rows, iter_batches and decode give what inverse_transform gives: rows of the input's
    dimensions, not of the space the scheme encodes in."""
    x = correlated(rng, 300, 96)
    report = gpuquant.convert(x, tmp_path / "o", "faiss-sq8", params=pre, device="cpu", progress=False)
    store = gpuquant.open(tmp_path / "o")
    want = store.quantizer.inverse_transform(store.quantizer.transform(x))
    assert want.shape == x.shape
    assert_array_equal(bits(store.get_rows(np.arange(300))), bits(want))
    assert_array_equal(bits(np.concatenate([r for _, r in store.iter_batches(128)])), bits(want))
    assert_array_equal(bits(store.decode(store.read_rows(np.arange(7, 9)))), bits(want[7:9]))
    assert report["reconstruction"]["rel_error"] < 0.05  # convert's figure: the scheme's own error


@pytest.mark.parametrize("pre", PRE, ids=repr)
def test_empty_and_one_row_inputs_through_the_pre_transforms(rng, pre):
    q = Quantizer("fp16", backend="numpy", **pre).fit(correlated(rng, 100, 96))
    for n in (0, 1):
        x = correlated(rng, 5, 96)[:n]
        codes = q.transform(x)
        assert codes.data.shape[0] == n and q.inverse_transform(codes).shape == (n, 96)
