"""gpuquant.evaluate: metrics computed as documented, on cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

import gpuquant
from helpers import matrix
from gpuquant.evaluate import evaluate


def test_exact_codes_give_perfect_scores(rng):
    x = matrix(rng, 300, 16).astype(np.float16).astype(np.float32)  # fp16 reproduces these exactly
    r = evaluate(x, "fp16", k=5, n_queries=20, rescore=2, backend="numpy")
    assert r["mse"] == 0 and r["relative_error"] == 0 and r["mean_cosine"] == pytest.approx(1.0)
    assert r["recall_at_k"] == 1.0 and r["recall_at_k_rescored"] == 1.0
    assert r["bytes_per_vector"] == 32 and r["rows"] == 280 and r["queries"] == 20


def test_metrics_match_their_definitions(rng):
    x = matrix(rng, 200, 24)
    q = gpuquant.Quantizer("faiss-sq4", backend="numpy").fit(x[10:])
    r = evaluate(x, q, k=3, n_queries=10, backend="numpy")
    corpus = x[10:]
    recon = q.inverse_transform(q.transform(corpus))
    assert r["mse"] == pytest.approx(float(((recon - corpus) ** 2).mean()), rel=1e-6)
    cos = (recon * corpus).sum(1) / np.linalg.norm(recon, axis=1) / np.linalg.norm(corpus, axis=1)
    assert r["mean_cosine"] == pytest.approx(float(cos.mean()), rel=1e-6)
    truth = np.argsort(-(x[:10] @ corpus.T), axis=1)[:, :3]
    found = np.argsort(-(x[:10] @ recon.T), axis=1)[:, :3]
    expected = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(truth, found)])
    assert r["recall_at_k"] == pytest.approx(expected)
    assert r["bytes_per_vector"] == 12


def test_binary_search_is_hamming(rng):
    x = matrix(rng, 400, 64)
    r = evaluate(x, "binary", k=1, n_queries=50, backend="numpy")
    codes = np.asarray(gpuquant.quantize(x, "binary", backend="numpy"))
    hamming = np.bitwise_count(codes[:50, None, :] ^ codes[None, 50:, :]).sum(axis=2)
    nearest = hamming.min(axis=1, keepdims=True)
    truth = np.argmax(x[:50] @ x[50:].T, axis=1)
    # recall@1 counts a hit when the exact neighbour is the Hamming-nearest row (ties broken arbitrarily,
    # so bound the result by the tie-free and tie-inclusive counts)
    at_min = hamming[np.arange(50), truth] == nearest[:, 0]
    unique = (hamming == nearest).sum(axis=1) == 1
    assert (at_min & unique).mean() <= r["recall_at_k"] <= at_min.mean()


def test_rescore_with_all_candidates_is_exact(rng):
    x = matrix(rng, 120, 8)
    r = evaluate(x, "faiss-sq4", k=4, n_queries=20, rescore=100, backend="numpy")
    assert r["recall_at_k_rescored"] == 1.0


def test_truncate_dim_errors_in_the_quantized_space_recall_against_full_rows(rng):
    x = matrix(rng, 200, 32)
    q = gpuquant.Quantizer("faiss-sq8", truncate_dim=12, backend="numpy").fit(x[10:])
    r = evaluate(x, q, k=3, n_queries=10, rescore=2, backend="numpy")
    corpus, queries = x[10:], x[:10]
    seen = gpuquant.matryoshka.truncate_renormalize(corpus, 12)
    recon = q.inverse_transform(q.transform(corpus))
    assert recon.shape == (190, 12) and r["dims"] == 32
    assert r["mse"] == pytest.approx(float(((recon - seen) ** 2).mean()), rel=1e-6)
    assert r["relative_error"] == pytest.approx(float(np.linalg.norm(recon - seen) / np.linalg.norm(seen)), rel=1e-6)
    truth = np.argsort(-(queries @ corpus.T), axis=1)[:, :3]
    found = np.argsort(-(gpuquant.matryoshka.truncate_renormalize(queries, 12) @ recon.T), axis=1)[:, :3]
    assert r["recall_at_k"] == pytest.approx(np.mean([len(set(a) & set(b)) / 3 for a, b in zip(truth, found)]))
    assert 0 <= r["recall_at_k_rescored"] <= 1


def test_explicit_queries_and_errors(rng):
    x = matrix(rng, 100, 8)
    r = evaluate(x, "st-int8", queries=matrix(rng, 7, 8), k=3, backend="numpy")
    assert r["queries"] == 7 and r["rows"] == 100
    with pytest.raises(gpuquant.InputError, match="dimensions"):
        evaluate(x, "st-int8", queries=matrix(rng, 7, 9), backend="numpy")
    with pytest.raises(gpuquant.InputError, match="n_queries"):
        evaluate(x, "st-int8", n_queries=100, backend="numpy")
    with pytest.raises(gpuquant.InputError, match="exceeds"):
        evaluate(x, "st-int8", k=200, n_queries=10, backend="numpy")
    with pytest.raises(gpuquant.InputError, match="rescore"):
        evaluate(x, "st-int8", rescore=0, backend="numpy")
    with pytest.raises(gpuquant.InputError, match="needs rescore"):
        evaluate(x, "st-int8", rescore_with="reconstructed", backend="numpy")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["st-int8", "binary", "int8-row"])
def test_evaluate_on_the_gpu_matches_the_cpu(gpu, rng, name):
    import cupy

    x = matrix(rng, 600, 48)
    cpu = evaluate(x, name, k=5, n_queries=40, rescore=3, backend="numpy")
    gpu = evaluate(cupy.asarray(x), name, k=5, n_queries=40, rescore=3, backend="cupy")
    # identical codes on both backends; the float32 search may break score ties differently
    assert gpu["bytes_per_vector"] == cpu["bytes_per_vector"]
    assert abs(gpu["recall_at_k"] - cpu["recall_at_k"]) <= 0.02
    assert abs(gpu["recall_at_k_rescored"] - cpu["recall_at_k_rescored"]) <= 0.02
    assert gpu["mse"] == pytest.approx(cpu["mse"], rel=1e-4)
    assert gpu["mean_cosine"] == pytest.approx(cpu["mean_cosine"], rel=1e-5)
