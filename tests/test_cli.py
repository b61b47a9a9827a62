"""The ``gpuquant`` command line: every subcommand, its JSON output, exit codes and output safety.

Commands run in-process through ``gpuquant.cli.main(argv)`` (stdout/stderr captured), plus one run
through ``python -m gpuquant`` in a subprocess. Inputs are small random matrices written to
``tmp_path``; the demo dataset is converted once end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import cli_run

import gpuquant
from gpuquant import cli
from gpuquant import files as gfiles
from gpuquant import store as gstore

PRESETS = [p.name for p in gpuquant.presets()]


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = cli_run(capsys, *argv, "--format", "json")
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected exactly one JSON document on stdout, got:\n{out}"
    return code, json.loads(lines[0])


def test_every_command_lives_in_the_cli_package_and_no_library_imports_it() -> None:
    import ast

    from gpuquant.cli.app import COMMANDS

    assert all(m.__name__.startswith("gpuquant.cli.") for m in COMMANDS)
    package = Path(gpuquant.__file__).parent
    for path in package.rglob("*.py"):
        if path.parent.name == "cli" or path.name == "__main__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n == "gpuquant.cli" or n.startswith("gpuquant.cli.")], path


@pytest.fixture()
def matrix(tmp_path: Path) -> tuple[Path, np.ndarray]:
    X = np.random.default_rng(7).standard_normal((203, 128)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, X)
    return path, X


# ------------------------------------------------------------------------------------------------
# schemes


def test_schemes_human_lists_every_preset_with_its_peer(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli_run(capsys, "schemes")
    assert code == 0
    for p in gpuquant.presets():
        line = next(row for row in out.splitlines() if row.split()[0] == p.name)
        assert p.family in line and p.peer in line


def test_schemes_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "schemes")
    assert code == 0 and doc["ok"] and doc["command"] == "schemes"
    rows = {r["name"]: r for r in doc["presets"]}
    assert list(rows) == PRESETS
    assert rows["int8-row"]["code_dtype"] == "int8" and rows["int8-row"]["side"] == ["scales"]
    assert rows["fp8-e4m3"]["code_dtype"] == "float8_e4m3fn"
    assert rows["binary"]["bytes_per_value"] == 0.125
    assert rows["faiss-sq4"]["bytes_per_value"] == 0.5


def test_quiet_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli_run(capsys, "schemes", "--format", "quiet")
    assert code == 0 and out == ""


def test_format_before_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli_run(capsys, "--format", "json", "schemes")
    assert code == 0 and json.loads(out)["command"] == "schemes"


# ------------------------------------------------------------------------------------------------
# fit and inspect


def test_fit_saves_a_loadable_quantizer(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        matrix: tuple[Path, np.ndarray]) -> None:
    path, X = matrix
    qpath = tmp_path / "q.json"
    code, doc = run_json(capsys, "fit", path, "--scheme", "cuvs-sq8", "--param", "quantile=0.95",
                         "-o", qpath, "--backend", "numpy")
    assert code == 0 and doc["quantizer"]["params"]["quantile"] == 0.95
    assert doc["quantizer"]["is_fitted"] and doc["quantizer"]["dim"] == 128
    q = gpuquant.Quantizer.load(qpath, backend="numpy")
    ref = gpuquant.Quantizer("cuvs-sq8", backend="numpy", quantile=0.95).fit(X)
    np.testing.assert_array_equal(np.asarray(q.transform(X)), np.asarray(ref.transform(X)))

    code, doc = run_json(capsys, "inspect", qpath)
    assert code == 0 and doc["kind"] == "quantizer"
    assert set(doc["quantizer"]["state"]) == set(ref.state)
    code, out, _ = cli_run(capsys, "inspect", qpath)
    assert code == 0 and "cuvs-sq8" in out and "state" in out


def test_fit_refuses_an_existing_output(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        matrix: tuple[Path, np.ndarray]) -> None:
    qpath = tmp_path / "q.json"
    qpath.write_text("keep me")
    code, doc = run_json(capsys, "fit", matrix[0], "--scheme", "st-int8", "-o", qpath)
    assert code == 2 and not doc["ok"] and "already exists" in doc["error"]["message"]
    assert qpath.read_text() == "keep me"
    code, _, _ = cli_run(capsys, "fit", matrix[0], "--scheme", "st-int8", "-o", qpath, "--overwrite")
    assert code == 0 and gpuquant.Quantizer.load(qpath).is_fitted


def test_inspect_npy_and_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                      matrix: tuple[Path, np.ndarray]) -> None:
    code, doc = run_json(capsys, "inspect", matrix[0])
    assert code == 0 and doc["kind"] == "npy" and doc["shape"] == [203, 128]
    code, doc = run_json(capsys, "inspect", tmp_path / "nope.json")
    assert code == 2 and "not found" in doc["error"]["message"]


def test_inspect_rejects_a_foreign_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "other.json"
    bad.write_text('{"hello": 1}')
    code, doc = run_json(capsys, "inspect", bad)
    assert code == 2 and doc["error"]["type"] == "InputError"


# ------------------------------------------------------------------------------------------------
# convert


@pytest.mark.parametrize("preset", PRESETS)
def test_convert_every_preset_writes_what_transform_returns(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, matrix: tuple[Path, np.ndarray], preset: str
) -> None:
    path, X = matrix
    out = tmp_path / "out"
    code, doc = run_json(capsys, "convert", path, out, "--scheme", preset, "--backend", "numpy")
    assert code == 0, doc
    q = gpuquant.Quantizer(preset, backend="numpy").fit(X)
    ref = q.transform(X)

    codes = np.load(out / "codes.npy", mmap_mode="r")  # plain numpy, no gpuquant needed
    view, logical, stored = gfiles.storage_view(np.asarray(ref))
    assert codes.dtype == view.dtype and codes.shape == view.shape
    np.testing.assert_array_equal(codes, view)
    assert doc["codes"] == {"file": "codes.npy", "shape": list(view.shape), "dtype": logical, "stored_dtype": stored}
    for name, arr in ref.side.items():
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), arr)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["codes.npy", "manifest.json", "quantizer.json"] + [f"{n}.npy" for n in ref.side])

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scheme"] == preset and manifest["gpuquant_version"] == gpuquant.__version__
    assert manifest["source"]["shape"] == [203, 128] and manifest["source"]["dtype"] == "float32"
    assert doc["compression_ratio"] == pytest.approx(X.nbytes / ref.nbytes, rel=1e-3)

    conv = gstore.read_converted(out)
    assert conv.codes.dtype == np.asarray(ref).dtype
    back = gpuquant.Quantizer.load(conv.quantizer_path, backend="numpy")
    codes_back = gpuquant.Codes(np.asarray(conv.codes), {k: np.asarray(v) for k, v in conv.side.items()},
                                preset, 128)
    np.testing.assert_array_equal(back.inverse_transform(codes_back), q.inverse_transform(ref))


def test_convert_demo_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "demo-codes"
    code, doc = run_json(capsys, "convert", "demo", out, "--scheme", "int8-row")
    assert code == 0
    assert doc["source"]["demo"] and doc["source"]["shape"] == [2000, 384]
    assert doc["codes"]["shape"] == [2000, 384] and doc["side"]["scales"]["shape"] == [2000]
    assert doc["mb_in"] == pytest.approx(3.072)
    assert doc["compression_ratio"] == pytest.approx(4 * 384 / (384 + 4), rel=1e-3)
    assert 0 < doc["reconstruction"]["rel_error"] < 0.02
    assert doc["seconds"]["total"] > 0
    code, out_text, err = cli_run(capsys, "inspect", out)
    assert code == 0 and "int8-row" in out_text


def test_convert_human_report_and_logs(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       matrix: tuple[Path, np.ndarray]) -> None:
    code, out, err = cli_run(capsys, "convert", matrix[0], tmp_path / "o", "--scheme", "st-uint8")
    assert code == 0
    for word in ("203 rows x 128 dims", "MB in", "compression", "relative reconstruction error"):
        assert word in out
    assert "reading" in err and "writing" in err  # progress goes to stderr


def test_convert_with_a_fitted_quantizer(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         matrix: tuple[Path, np.ndarray]) -> None:
    path, X = matrix
    qpath = tmp_path / "q.json"
    gpuquant.Quantizer("st-int8", backend="numpy").fit(X[:50]).save(qpath)
    code, doc = run_json(capsys, "convert", path, tmp_path / "o", "--quantizer", qpath)
    assert code == 0 and doc["seconds"]["fit"] == 0
    expected = gpuquant.Quantizer.load(qpath).transform(X)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "codes.npy"), np.asarray(expected))


@pytest.mark.parametrize(
    "extra",
    [
        [],  # neither --scheme nor --quantizer
        ["--scheme", "st-int8", "--quantizer", "q.json"],
        ["--scheme", "no-such-scheme"],
        ["--scheme", "cuvs-sq8", "--param", "quantile=2"],
        ["--scheme", "cuvs-sq8", "--param", "quantile"],
        ["--scheme", "cuvs-sq8", "--param", "bogus=1"],
        ["--quantizer", "missing.json"],
        ["--scheme", "st-int8", "--backend", "tpu"],
        ["--scheme", "st-int8", "--format", "xml"],
    ],
)
def test_convert_bad_usage_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   matrix: tuple[Path, np.ndarray], extra: list[str]) -> None:
    code, _, err = cli_run(capsys, "convert", matrix[0], tmp_path / "o", *extra)
    assert code == 2 and "error" in err
    assert not (tmp_path / "o").exists()


def test_param_with_a_quantizer_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           matrix: tuple[Path, np.ndarray]) -> None:
    qpath = tmp_path / "q.json"
    gpuquant.Quantizer("st-int8").fit(matrix[1]).save(qpath)
    code, doc = run_json(capsys, "convert", matrix[0], tmp_path / "o", "--quantizer", qpath, "--param", "a=1")
    assert code == 2 and "--param" in doc["error"]["message"]


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases: dict[str, tuple[Path, str]] = {}

    def save(name: str, arr: np.ndarray, word: str) -> None:
        np.save(tmp / f"{name}.npy", arr)
        cases[name] = (tmp / f"{name}.npy", word)

    save("one_d", np.zeros(8, np.float32), "2-D")
    save("three_d", np.zeros((2, 3, 4), np.float32), "2-D")
    save("ints", np.zeros((4, 8), np.int64), "dtype int64")
    save("empty", np.zeros((0, 8), np.float32), "empty")
    np.save(tmp / "full.npy", np.ones((100, 16), np.float32))
    raw = (tmp / "full.npy").read_bytes()
    (tmp / "truncated.npy").write_bytes(raw[: len(raw) - 100])
    cases["truncated"] = (tmp / "truncated.npy", "truncated")
    (tmp / "text.npy").write_text("not an array")
    cases["text"] = (tmp / "text.npy", "not a readable .npy")
    cases["missing"] = (tmp / "missing.npy", "not found")
    (tmp / "adir.npy").mkdir()
    cases["directory"] = (tmp / "adir.npy", "not a regular file")
    return cases


@pytest.mark.parametrize("case", ["one_d", "three_d", "ints", "empty", "truncated", "text", "missing", "directory"])
def test_bad_input_files_exit_2_with_a_clear_message(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     case: str) -> None:
    path, word = _bad_inputs(tmp_path)[case]
    for argv in (["convert", path, tmp_path / "o", "--scheme", "st-int8"],
                 ["fit", path, "--scheme", "st-int8", "-o", tmp_path / "q.json"]):
        code, doc = run_json(capsys, *argv)
        assert code == 2 and doc["error"]["type"] == "InputError"
        assert word in doc["error"]["message"] and str(path) in doc["error"]["message"]
    assert not (tmp_path / "o").exists() and not (tmp_path / "q.json").exists()


@pytest.mark.parametrize("preset", ["st-int8", "int8-row"])
def test_nan_input_that_a_scheme_refuses_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 preset: str) -> None:
    X = np.random.default_rng(2).standard_normal((30, 16)).astype(np.float32)
    X[3, 4] = np.nan
    np.save(tmp_path / "nan.npy", X)
    code, doc = run_json(capsys, "convert", tmp_path / "nan.npy", tmp_path / "o", "--scheme", preset)
    assert code == 2 and "NaN" in doc["error"]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.npy"]


def test_float64_and_fortran_inputs_convert(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    X = np.asfortranarray(np.random.default_rng(1).standard_normal((40, 24)))
    np.save(tmp_path / "f64.npy", X)
    code, doc = run_json(capsys, "convert", tmp_path / "f64.npy", tmp_path / "o", "--scheme", "int8-row")
    assert code == 0 and doc["source"]["dtype"] == "float64"
    expected = gpuquant.Quantizer("int8-row").fit(X).transform(X)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "codes.npy"), np.asarray(expected))


def test_unusable_explicit_backend_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           matrix: tuple[Path, np.ndarray]) -> None:
    usable = {name: ok for name, ok, _ in gpuquant.available_backends()}
    if usable.get("cupy"):
        pytest.skip("the cupy backend works here")
    code, doc = run_json(capsys, "convert", matrix[0], tmp_path / "o", "--scheme", "st-int8", "--backend", "cupy")
    assert code == 1 and "cupy" in doc["error"]["message"]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# output safety: overwrite and atomic writes


def _convert(capsys: pytest.CaptureFixture[str], src: Path, out: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    return run_json(capsys, "convert", src, out, "--scheme", "st-int8", *extra)


def test_existing_output_is_refused_unless_overwrite(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     matrix: tuple[Path, np.ndarray]) -> None:
    out = tmp_path / "o"
    assert _convert(capsys, matrix[0], out)[0] == 0
    before = (out / "manifest.json").read_text()
    code, doc = run_json(capsys, "convert", matrix[0], out, "--scheme", "fp16")
    assert code == 2 and "already exists" in doc["error"]["message"]
    assert (out / "manifest.json").read_text() == before
    code, doc = run_json(capsys, "convert", matrix[0], out, "--scheme", "fp16", "--overwrite")
    assert code == 0 and json.loads((out / "manifest.json").read_text())["scheme"] == "fp16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "x.npy"]  # no leftovers


@pytest.mark.parametrize("kind", ["file", "foreign_dir"])
def test_overwrite_never_replaces_foreign_things(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 matrix: tuple[Path, np.ndarray], kind: str) -> None:
    out = tmp_path / "o"
    if kind == "file":
        out.write_text("precious")
    else:
        out.mkdir()
        (out / "precious.txt").write_text("precious")
    code, doc = _convert(capsys, matrix[0], out, "--overwrite")
    assert code == 2 and "refusing" in doc["error"]["message"]
    assert (out if kind == "file" else out / "precious.txt").read_text() == "precious"


def test_overwrite_accepts_an_empty_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              matrix: tuple[Path, np.ndarray]) -> None:
    (tmp_path / "o").mkdir()
    assert _convert(capsys, matrix[0], tmp_path / "o", "--overwrite")[0] == 0
    assert (tmp_path / "o" / "codes.npy").is_file()


def test_missing_output_parent_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       matrix: tuple[Path, np.ndarray]) -> None:
    code, doc = _convert(capsys, matrix[0], tmp_path / "no" / "o")
    assert code == 2 and "parent" in doc["error"]["message"]


def _fail_on_quantizer_save(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Any, path: Any) -> None:
        Path(path).write_text("half")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(gpuquant.Quantizer, "save", boom)


def test_failed_write_leaves_no_partial_output(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               matrix: tuple[Path, np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_on_quantizer_save(monkeypatch)
    code, doc = _convert(capsys, matrix[0], tmp_path / "o")
    assert code == 1 and "disk full" in doc["error"]["message"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_failed_overwrite_keeps_the_old_output(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               matrix: tuple[Path, np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "o"
    assert _convert(capsys, matrix[0], out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fail_on_quantizer_save(monkeypatch)
    code, _ = _convert(capsys, matrix[0], out, "--overwrite")
    assert code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "x.npy"]


# ------------------------------------------------------------------------------------------------
# doctor, usage, entry points


def test_doctor_reports_without_crashing(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "doctor")
    assert code == 0 and set(doc["probes"]) == {"host", "nvml", "cupy", "cuvs", "kernels", "backends"}
    for name, probe in doc["probes"].items():
        assert isinstance(probe["ok"], bool) and (probe["ok"] or probe.get("reason")), name
    assert doc["probes"]["host"]["ok"]
    kernels = doc["probes"]["kernels"]
    if kernels["ok"]:  # installed (pip install -e . maps kernels/ to gpuquant.kernels)
        assert all(f.endswith((".cu", ".cuh")) for f in kernels["files"])
    names = {b["name"]: b for b in doc["probes"]["backends"]["backends"]}
    assert names["numpy"]["usable"]
    code, out, _ = cli_run(capsys, "doctor")
    assert code == 0 and "numpy" in out


def test_doctor_survives_a_probe_that_raises(capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("driver exploded")

    monkeypatch.setitem(cli.PROBES, "cupy", broken)
    code, doc = run_json(capsys, "doctor")
    assert code == 0 and doc["probes"]["cupy"] == {"ok": False, "reason": "RuntimeError: driver exploded"}


@pytest.mark.parametrize("argv", [[], ["bogus"], ["fit"], ["convert", "x.npy"], ["schemes", "--format", "xml"]])
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = cli_run(capsys, *argv)
    assert code == 2 and out == "" and "error" in err


def test_usage_error_in_json_mode_is_one_json_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "bogus")
    assert code == 2 and doc["ok"] is False and doc["error"]["exit_code"] == 2


def test_python_dash_m_gpuquant(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "gpuquant", "schemes", "--format", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [r["name"] for r in json.loads(proc.stdout)["presets"]] == PRESETS
    proc = subprocess.run([sys.executable, "-m", "gpuquant", "convert", "missing.npy", "o", "--scheme", "fp16"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not found" in proc.stderr and proc.stdout == ""


# ------------------------------------------------------------------------------------------------
# eval


def test_eval_json_has_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = run_json(capsys, "eval", "demo", "--scheme", "st-int8", "--n-queries", "50", "--rescore", "3")
    assert code == 0 and doc["ok"]
    for key in ("recall_at_k", "recall_at_k_rescored", "mse", "relative_error", "mean_cosine", "bytes_per_vector"):
        assert key in doc
    assert doc["queries"] == 50 and doc["bytes_per_vector"] == 384 and 0.9 < doc["recall_at_k"] <= 1.0


def test_eval_with_query_file_and_saved_quantizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpuquant.data import load_demo

    np.save(tmp_path / "q.npy", load_demo()[:20])
    assert cli_run(capsys, "fit", "demo", "--scheme", "faiss-sq8", "-o", str(tmp_path / "f.json"))[0] == 0
    code, doc = run_json(capsys, "eval", "demo", "--quantizer", str(tmp_path / "f.json"),
                         "--queries", str(tmp_path / "q.npy"), "--k", "5")
    assert code == 0 and doc["queries"] == 20 and doc["k"] == 5 and "recall_at_k_rescored" not in doc


def test_eval_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_run(capsys, "eval", "demo", "--k", "0")[0] == 2
    assert cli_run(capsys, "eval", "demo", "--n-queries", "5000")[0] == 2
    assert cli_run(capsys, "eval", "missing.npy")[0] == 2


def test_eval_rescore_with_without_rescore_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for how in ("original", "reconstructed"):
        code, doc = run_json(capsys, "eval", "demo", "--rescore-with", how)
        assert code == 2 and doc["error"]["type"] == "UsageError"
        assert "--rescore-with needs --rescore" in doc["error"]["message"]
