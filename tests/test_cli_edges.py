"""Input and command-line edges: malformed ``.npy`` headers, big-endian input, empty shards, raw files
without ``--shape``, ``inspect`` as strict as ``open``, sizes and ``plan`` without a GPU, and help
text on every option."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, cli_run, fit_codes, matrix

import gpuquant
from gpuquant.cli.app import build_parser


def _negative_dim_npy(path: Path) -> None:
    np.save(path, np.ones((3, 4), np.float32))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"(3, 4)", b"(-3, 4)", 1))


def test_a_negative_dimension_in_a_npy_header_is_an_input_error(capsys: pytest.CaptureFixture[str],
                                                                tmp_path: Path) -> None:
    _negative_dim_npy(tmp_path / "neg.npy")
    for argv in (("convert", tmp_path / "neg.npy", tmp_path / "o", "--scheme", "fp16"),
                 ("inspect", tmp_path / "neg.npy")):
        code, doc = cli_json(capsys, *argv)
        assert code == 2 and "negative dimension" in doc["error"]["message"], doc
    assert not (tmp_path / "o").exists()
    with pytest.raises(gpuquant.InputError, match="negative dimension"):
        gpuquant.convert(tmp_path / "neg.npy", tmp_path / "o", "fp16", device="cpu", progress=False)


def test_inspect_refuses_what_open_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           rng: np.random.Generator) -> None:
    X = matrix(rng, 100, 8)
    np.save(tmp_path / "x.npy", X)
    (tmp_path / "t.npy").write_bytes((tmp_path / "x.npy").read_bytes()[:-40])  # truncated
    code, doc = cli_json(capsys, "inspect", tmp_path / "t.npy")
    assert code == 2 and "truncated" in doc["error"]["message"]
    gpuquant.convert(X, tmp_path / "o", "fp16", device="cpu", progress=False)
    assert cli_json(capsys, "inspect", tmp_path / "o")[0] == 0
    np.save(tmp_path / "o" / "codes.npy", np.zeros((100, 8), np.int16))  # same bytes per row, wrong dtype
    with pytest.raises(gpuquant.InputError):
        gpuquant.open(tmp_path / "o")
    code, doc = cli_json(capsys, "inspect", tmp_path / "o")
    assert code == 2 and "int16" in doc["error"]["message"]


def test_big_endian_input_is_converted(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 300, 16)
    np.save(tmp_path / "be.npy", X.astype(">f4"))
    np.save(tmp_path / "be64.npy", X.astype(np.float64).astype(">f8"), allow_pickle=False)
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "a.npy", X[:100].astype(">f4"))
    np.save(shards / "b.npy", X[100:])
    for src in (tmp_path / "be.npy", shards, np.asfortranarray(X).astype(">f4")):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        gpuquant.convert(src, out, "int8-row", device="cpu", batch_rows=64, progress=False)
        assert np.asarray(gpuquant.open(out).codes).tobytes() == np.asarray(fit_codes("int8-row", X)[1].data).tobytes()
    gpuquant.convert(tmp_path / "be64.npy", tmp_path / "o64", "fp16", device="cpu", progress=False)
    want = fit_codes("fp16", X.astype(np.float64))[1]
    assert np.asarray(gpuquant.open(tmp_path / "o64").codes).tobytes() == np.asarray(want.data).tobytes()


def test_an_empty_shard_is_skipped(tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 50, 8)
    np.save(tmp_path / "part-1.npy", X[:20])
    np.save(tmp_path / "part-2.npy", np.zeros((0, 8), np.float32))
    np.save(tmp_path / "part-3.npy", X[20:])
    rep = gpuquant.convert(tmp_path, tmp_path.parent / f"{tmp_path.name}-o", "fp16", device="cpu", progress=False)
    assert rep["rows"] == 50 and [f["rows"] for f in rep["source"]["files"]] == [20, 30]
    empty = tmp_path / "empty"
    empty.mkdir()
    np.save(empty / "a.npy", np.zeros((0, 8), np.float32))
    with pytest.raises(gpuquant.InputError, match="empty"):
        gpuquant.convert(empty, tmp_path / "o2", "fp16", device="cpu", progress=False)


def test_a_raw_file_without_shape_gets_a_hint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.ones((5, 4), np.float32).tofile(tmp_path / "raw.f32")
    code, doc = cli_json(capsys, "convert", tmp_path / "raw.f32", tmp_path / "o", "--scheme", "fp16")
    assert code == 2 and "--shape ROWS,DIM" in doc["error"]["message"]


def test_negative_and_bad_sizes_are_clear_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for size in ("-5GiB", "-1"):
        code, _, err = cli_run(capsys, "plan", "--dim", "64", "--rows", "1000", "--gpu-memory", size)
        assert code == 2 and "a size must be a finite number >= 0" in err and size in err, err


def test_plan_without_a_gpu_is_a_usage_error_with_the_cpu_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuquant import planner
    from gpuquant.errors import BackendUnavailableError

    def no_gpu() -> None:
        raise BackendUnavailableError("no GPU memory to plan with (NVML: not installed); pass gpu_memory= / "
                                      "--gpu-memory 80GiB to plan for a GPU that is not here")

    monkeypatch.setattr(planner, "gpu_free_memory", no_gpu)
    code, doc = cli_json(capsys, "plan", "--dim", "64", "--rows", "1000000", "--scheme", "int8-row",
                         "--output", tmp_path / "o")
    assert code == 2
    cpu = doc["error"]["cpu_run"]
    assert cpu["output_bytes"] == 1_000_000 * (64 + 4) and cpu["disk_fits"] is True
    assert cpu["estimated_seconds"] > 0 and cpu["bound_by"] in ("disk read", "disk write")
    assert "--gpu-memory" in doc["error"]["message"] and "--device cpu" in doc["error"]["message"]
    code, out, err = cli_run(capsys, "plan", "--dim", "64", "--rows", "1000000")
    assert code == 2 and out == "" and f"writes {planner.format_bytes(68_000_000)}" in err, err


def _options(parser: argparse.ArgumentParser, path: str = "gpuquant") -> list[tuple[str, argparse.Action]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _options(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            out.append((path, action))
    return out


def test_every_option_has_help_text() -> None:
    missing = [f"{path}: {'/'.join(a.option_strings) or a.dest}" for path, a in _options(build_parser())
               if not a.help or (a.help == argparse.SUPPRESS and a.option_strings != ["--format"])]
    assert not missing, missing
