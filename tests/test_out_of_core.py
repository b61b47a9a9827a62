"""``gpuquant fit`` and ``gpuquant eval`` read their input in batches (the inputs ``convert`` takes:
``.npy``, raw float32 with ``--shape``, a directory of shards): the fitted state is the in-memory
fit's, bit for bit, and eval's figures are the in-memory evaluation's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, matrix

import gpuquant


def _inputs(tmp_path: Path, X: np.ndarray) -> dict[str, list[str]]:
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "shards").mkdir()
    for i, part in enumerate(np.array_split(X, 3)):
        np.save(tmp_path / "shards" / f"part{i}.npy", part)
    X.astype(np.float32).tofile(tmp_path / "x.f32")
    return {"npy": [str(tmp_path / "x.npy")], "shards": [str(tmp_path / "shards")],
            "raw": [str(tmp_path / "x.f32"), "--shape", f"auto,{X.shape[1]}"]}


@pytest.mark.parametrize("kind", ["npy", "shards", "raw"])
@pytest.mark.parametrize(("preset", "params"), [("cuvs-sq8", ["--param", 'quantile_method="exact"']),
                                                ("st-int8", []), ("es-byte", []), ("int8-row", []),
                                                ("binary", ["--param", 'threshold="median"'])])
def test_fit_streams_every_input_kind_to_the_in_memory_state(tmp_path: Path, rng: np.random.Generator,
                                                             capsys: pytest.CaptureFixture[str], kind: str,
                                                             preset: str, params: list[str]) -> None:
    X = matrix(rng, 3001, 24)
    argv = _inputs(tmp_path, X)[kind]
    code, doc = cli_json(capsys, "fit", *argv, "--scheme", preset, *params, "-o", str(tmp_path / "q.json"),
                         "--backend", "numpy", "--format", "json")
    assert code == 0 and doc["source"]["shape"] == [3001, 24]
    got = gpuquant.Quantizer.load(tmp_path / "q.json")
    extra = {k: v for k, v in (p.split("=", 1) for p in params[1::2])}
    ref = gpuquant.Quantizer(preset, backend="numpy", **{k: v.strip('"') for k, v in extra.items()}).fit(X)
    assert got.dim == ref.dim and set(got.state or {}) == set(ref.state or {})
    for k in ref.state or {}:
        np.testing.assert_array_equal(got.state[k].view(np.uint32), ref.state[k].view(np.uint32))


def test_fit_refuses_an_empty_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((0, 8), np.float32))
    code, doc = cli_json(capsys, "fit", str(tmp_path / "x.npy"), "--scheme", "st-int8", "-o",
                         str(tmp_path / "q.json"), "--format", "json")
    assert code == 2 and not (tmp_path / "q.json").exists()


@pytest.mark.parametrize(("preset", "rescore", "rescore_with"), [("st-int8", None, "original"),
                                                                 ("int4-block", 4, "original"),
                                                                 ("binary", 3, "reconstructed"),
                                                                 ("fp8-e4m3", 2, "reconstructed")])
def test_streamed_eval_gives_the_in_memory_figures(tmp_path: Path, rng: np.random.Generator, preset: str,
                                                   rescore: int | None, rescore_with: str) -> None:
    from gpuquant.engine.evaluation import evaluate_input
    from gpuquant.evaluate import evaluate

    X = matrix(rng, 2500, 64)
    np.save(tmp_path / "x.npy", X)
    want = evaluate(X, preset, k=7, n_queries=200, rescore=rescore, rescore_with=rescore_with, backend="numpy")
    got = evaluate_input(tmp_path / "x.npy", preset, k=7, n_queries=200, rescore=rescore, rescore_with=rescore_with,
                         backend="numpy", batch_rows=333)
    assert set(got) == set(want)
    for key in ("scheme", "rows", "queries", "dims", "k", "bytes_per_vector", "rescore", "rescore_with"):
        assert got.get(key) == want.get(key), key
    # Hamming scores tie in bulk, and which of the tied rows a top-k keeps is unspecified either way
    tol = 0.02 if preset == "binary" else 0.0
    for key in ("recall_at_k", "recall_at_k_rescored"):
        assert got.get(key) == pytest.approx(want.get(key), abs=tol), key
    for key in ("mse", "relative_error", "mean_cosine"):
        assert got[key] == pytest.approx(want[key], rel=1e-5), key


def test_eval_of_shards_a_raw_file_and_a_seeded_sample(tmp_path: Path, rng: np.random.Generator,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from gpuquant.evaluate import evaluate

    X = matrix(rng, 3000, 32)
    inputs = _inputs(tmp_path, X)
    docs = []
    for kind in ("npy", "shards", "raw"):
        code, doc = cli_json(capsys, "eval", *inputs[kind], "--scheme", "st-int8", "--n-queries", "100",
                             "--backend", "numpy", "--format", "json")
        assert code == 0 and doc["rows"] == 2900
        docs.append(doc)
    assert docs[0]["recall_at_k"] == docs[1]["recall_at_k"] == docs[2]["recall_at_k"]
    code, doc = cli_json(capsys, "eval", *inputs["npy"], "--scheme", "st-int8", "--n-queries", "100",
                         "--sample-rows", "1000", "--seed", "5", "--backend", "numpy", "--format", "json")
    idx = np.sort(np.random.default_rng(5).choice(3000, size=1000, replace=False))
    want = evaluate(X[idx], "st-int8", n_queries=100, backend="numpy")
    assert code == 0 and doc["sample_rows"] == 1000 and doc["rows"] == 900
    assert doc["recall_at_k"] == want["recall_at_k"] and doc["mse"] == want["mse"]


@pytest.mark.parametrize(("preset", "params"), [
    ("fp8-e4m3", {"pca_dim": 16}),  # a scheme without a fit: only the pre-transform reads the data
    ("st-int8", {"pca_dim": 16, "rotate": "hadamard"}),
    ("int8-row", {"rotate": "orthogonal", "truncate_dim": 24}),
])
def test_streaming_fit_fits_the_pre_transform_as_the_in_memory_fit(preset: str, params: dict, tmp_path: Path,
                                                                   rng: np.random.Generator) -> None:
    from gpuquant.engine.local import fit_input

    X = matrix(rng, 500, 32)
    np.save(tmp_path / "x.npy", X)
    in_memory = gpuquant.Quantizer(preset, backend="numpy", **params).fit(X)
    streamed, _ = fit_input(tmp_path / "x.npy", gpuquant.Quantizer(preset, backend="numpy", **params))
    assert streamed.is_fitted
    np.testing.assert_array_equal(np.asarray(streamed.transform(X)).view(np.uint8),
                                  np.asarray(in_memory.transform(X)).view(np.uint8))
