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
