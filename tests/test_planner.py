"""The N_max planner (``gpuquant.plan``, ``gpuquant plan``): every case below is computed by hand
from the cuVS memory-footprint formula (docs/memory.md), written out in the comments, then compared with the
planner's numbers. No GPU is needed: ``gpu_memory=`` / ``--gpu-memory`` gives M_free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import cli_run

import gpuquant
from gpuquant.errors import InputError
from gpuquant.planner import format_bytes, parse_bytes

GiB = 2**30


def test_transform_int8_row_768_dims_on_80_gib() -> None:
    # M_usable = (80 GiB - 0) * (1 - 0.10) = 85899345920 * 0.9 = 77309411328
    # B_per_row = D*B_x + codes + side = 768*4 + 768*1 + 4 (one float32 scale) = 3844; B_fixed = 0
    # N_max = floor(77309411328 / 3844) = 20111709
    p = gpuquant.plan("int8-row", dim=768, op="transform", gpu_memory="80GiB")
    assert (p.usable_bytes, p.bytes_per_row, p.fixed_bytes, p.n_max) == (77309411328, 3844, 0, 20111709)
    assert p.fits and p.peak_bytes == 20111709 * 3844


def test_transform_cuvs_sq8_with_other_and_headroom() -> None:
    # M_usable = (16 GiB - 1 GiB) * (1 - 0.2) = 16106127360 * 0.8 = 12884901888
    # B_per_row = 384*4 + 384 = 1920; B_fixed = lo + hi = 2 float32 = 8
    # N_max = floor((12884901888 - 8) / 1920) = 6710886
    p = gpuquant.plan("cuvs-sq8", dim=384, op="transform", gpu_memory="16GiB", other="1GiB", headroom=0.2)
    assert (p.usable_bytes, p.bytes_per_row, p.fixed_bytes, p.n_max) == (12884901888, 1920, 8, 6710886)


def test_inverse_st_int8_replaces_codes_with_the_reconstruction() -> None:
    # inverse: input = codes (128 B) + side (0), output = float32 reconstruction 128*4 = 512 -> 640 per row
    # B_fixed = per-dimension lo and hi: 2 * 128 * 4 = 1024
    # M_usable = 8 GiB * 0.9 = 7730941132 (floor); N_max = floor((7730941132 - 1024) / 640) = 12079593
    p = gpuquant.plan("st-int8", dim=128, op="inverse", gpu_memory=8 * GiB)
    assert (p.usable_bytes, p.bytes_per_row, p.fixed_bytes, p.n_max) == (7730941132, 640, 1024, 12079593)


def test_convert_multiplies_by_batches_in_flight_and_reports_pinned_memory() -> None:
    # int4-block, D = 4096, float16 input: input 4096*2 = 8192, codes 4096/2 = 2048, scales 64 blocks * 4 = 256
    # one batch = 10496 B/row; k = 2 in flight -> B_per_row = 20992; B_fixed = 0
    # M_usable = 40 GiB * 0.9 = 38654705664; N_max = floor(38654705664 / 20992) = 1841401
    # batch rows = min(N_max, rows, 256 MiB / 8192 B = 32768) = 32768; batches = ceil(100000 / 32768) = 4
    # pinned = (k + 1) * 32768 * 10496 = 1031798784
    p = gpuquant.plan("int4-block", dim=4096, rows=100_000, dtype="float16", op="convert", gpu_memory="40GiB")
    assert (p.bytes_per_row, p.fixed_bytes, p.n_max) == (20992, 0, 1841401)
    assert (p.batch_rows, p.batches, p.pinned_host_bytes) == (32768, 4, 1031798784)
    assert p.peak_bytes == 32768 * 20992
    assert p.output_bytes == 100_000 * (2048 + 256)
    assert p.estimated_seconds is not None and p.bound_by in ("disk read", "host-to-device", "device-to-host", "disk write")


def test_fit_quantile_sample_is_fixed_memory() -> None:
    # fit, cuvs quantile, D = 384: rows on the device 384*4 = 1536 per row;
    # fixed = state 8 + the sorted sample: (1e6 // 384 = 2604 rows) * 384 values * 4 B * 2 (copy + sort) = 7999488
    # M_usable = 24e9 * 0.9 = 21600000000; N_max = floor((21600000000 - 7999496) / 1536) = 14057291
    p = gpuquant.plan("cuvs-sq8", dim=384, rows=10**8, op="fit", gpu_memory="24GB")
    assert (p.bytes_per_row, p.fixed_bytes, p.n_max) == (1536, 7999496, 14057291)


def test_refusal_says_needed_and_available() -> None:
    p = gpuquant.plan("fp16", dim=4096, op="transform", gpu_memory="16KiB")
    # 4096*4 + 4096*2 = 24576 B per row > 16384 * 0.9
    assert not p.fits and p.n_max == 0
    with pytest.raises(InputError, match=r"one row needs 24576 B per row \+ 0 B fixed = 24576 B, but only 14745 B"):
        p.require()


@pytest.mark.parametrize(("text", "value"), [("80GiB", 80 * GiB), ("80 GB", 80 * 10**9), ("512M", 512 * 2**20),
                                             ("1.5TiB", int(1.5 * 2**40)), ("1024", 1024), (4096, 4096)])
def test_parse_bytes(text: Any, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text", ["eighty", "80 GiBs", "-1GB", ""])
def test_parse_bytes_refuses_nonsense(text: str) -> None:
    with pytest.raises(InputError, match="size"):
        parse_bytes(text)


def test_format_bytes() -> None:
    assert format_bytes(80 * GiB) == "80.0 GiB" and format_bytes(12) == "12 B"


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="op must be"):
        gpuquant.plan("fp16", dim=8, op="sort", gpu_memory="1GiB")
    with pytest.raises(InputError, match="headroom"):
        gpuquant.plan("fp16", dim=8, headroom=1.0, gpu_memory="1GiB")
    with pytest.raises(InputError, match="block_size"):
        gpuquant.plan("int4-block", dim=100, gpu_memory="1GiB")


# ------------------------------------------------------------------------------------------------
# the command


def test_cli_plan_json_from_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1000, 768), np.float32))
    code, out, _ = cli_run(capsys, "plan", tmp_path / "x.npy", "--scheme", "int8-row", "--op", "transform",
                           "--gpu-memory", "80GiB", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"]
    assert (doc["n_max"], doc["bytes_per_row"], doc["fixed_bytes"], doc["usable_bytes"]) == (20111709, 3844, 0, 77309411328)
    assert doc["rows"] == 1000 and doc["batch_rows"] == 1000 and doc["batches"] == 1


def test_cli_plan_human_table_and_disk_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = cli_run(capsys, "plan", "--scheme", "cuvs-sq8", "--dim", "384", "--rows", "1000000",
                           "--gpu-memory", "16GiB", "--output", tmp_path / "codes", "--read-gbs", "3")
    assert code == 0
    for word in ("N_max", "bytes per row", "usable", "batch rows", "pinned host", "output on disk", "fits",
                 "estimated time"):
        assert word in out, word


def test_cli_plan_refusal_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli_run(capsys, "plan", "--dim", "4096", "--gpu-memory", "1KiB", "--format", "json")
    doc = json.loads(out)
    assert code == 2 and "nothing fits" in doc["error"]["message"] and "usable" in doc["error"]["message"]


def test_cli_plan_needs_a_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli_run(capsys, "plan", "--gpu-memory", "1GiB")
    assert code == 2 and "--dim" in err


def test_cli_plan_measure_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    if {n: ok for n, ok, _ in gpuquant.available_backends()}.get("cupy"):
        pytest.skip("a GPU works here: --measure runs (tests/test_engine_gpu.py)")
    code, out, _ = cli_run(capsys, "plan", "--dim", "384", "--gpu-memory", "8GiB", "--measure", "--format", "json")
    doc = json.loads(out)
    assert code == 1 and "cupy" in doc["error"]["message"]


def test_plan_without_gpu_memory_and_without_a_gpu_says_how() -> None:
    if {n: ok for n, ok, _ in gpuquant.available_backends()}.get("cupy"):
        pytest.skip("a GPU works here")
    with pytest.raises(gpuquant.GpuquantError, match="--gpu-memory"):
        gpuquant.plan("fp16", dim=8)


@pytest.mark.parametrize(("params", "seen"), [({"truncate_dim": 192}, 192), ({"rotate": "hadamard"}, 512),
                                              ({"truncate_dim": 200, "rotate": "hadamard"}, 256)])
def test_row_bytes_follow_truncation_and_hadamard_padding_as_measured(params: dict[str, Any], seen: int) -> None:
    # float16 rows of 300 dims read whole; int4-block codes and block scales at the dims the scheme sees
    x = np.random.default_rng(3).standard_normal((40, 300)).astype(np.float16)
    q = gpuquant.Quantizer("int4-block", backend="numpy", **params).fit(x)
    codes = q.transform(x)
    assert codes.dim == seen
    measured = {"input": x.nbytes // len(x), "codes": codes.data.nbytes // len(x),
                "side": sum(a.nbytes for a in codes.side.values()) // len(x), "float32": seen * 4}
    p = gpuquant.plan("int4-block", dim=300, dtype="float16", op="transform", gpu_memory="1GiB", params=params)
    assert p.row_bytes == measured
    assert p.bytes_per_row == measured["input"] + measured["codes"] + measured["side"]
    run = gpuquant.planner.cpu_run("int4-block", dim=300, rows=40, dtype="float16", params=params)
    assert run["output_bytes"] == codes.data.nbytes + sum(a.nbytes for a in codes.side.values())


def _launcher_scratch(scheme: Any, state: dict[str, Any], rows: int, d: int) -> int:
    """Bytes of the device arrays the encode launcher allocates for its extra launches (recorded on the
    host): every array of a later launch that the first one (the caller's arrays, constants, flag) lacks."""
    from gpuquant.backends import device_code_dtype
    from gpuquant.backends.cupy_launch import planned_launches

    x = np.zeros((rows, d), np.float32)
    codes = np.zeros(scheme.code_shape(rows, d), device_code_dtype(scheme))
    first, *later = planned_launches(scheme, "encode", state, x, codes, {})
    known = {id(a) for a in first.args}
    return sum(a.nbytes for launch in later for a in launch.args if isinstance(a, np.ndarray) and id(a) not in known)


@pytest.mark.parametrize(("d", "rows", "launched"), [(16, 300, 300), (768, None, 85 * 128 + 7), (70000, 5, 5)])
@pytest.mark.parametrize("op", ["transform", "convert"])
def test_the_planned_fixed_bytes_hold_the_scratch_the_launcher_allocates(d: int, rows: int | None, launched: int,
                                                                        op: str) -> None:
    # rabitq bits=4: the extra-bit encode's heap scratch (10 B a key, d keys a thread, capped at 2^23 keys
    # or one block), once per encode call in flight; unknown rows: the most a call allocates
    q = gpuquant.Quantizer("rabitq", bits=4, center="zero")
    p = gpuquant.plan(q, dim=d, rows=rows, op=op, gpu_memory="80GiB", in_flight=3)
    allocated = _launcher_scratch(q.scheme, {}, launched, d)
    assert allocated > 0 and p.fixed_bytes == gpuquant.planner.state_bytes(q.scheme, d) + p.in_flight * allocated
    assert p.note == f"+ {p.in_flight} x {allocated} B encode scratch" and p.note in p.text()
    assert gpuquant.plan(q, dim=d, rows=rows, op="inverse", gpu_memory="80GiB").note == ""


@pytest.mark.parametrize("name", [p.name for p in gpuquant.presets()])
def test_no_presets_launcher_allocates_scratch(name: str) -> None:
    # so their transform and convert plans fix the same bytes as their inverse (the fitted state)
    ops = ("transform", "convert", "inverse")
    plans = {op: gpuquant.plan(name, dim=256, rows=1000, op=op, gpu_memory="8GiB") for op in ops}
    assert {p.fixed_bytes for p in plans.values()} == {plans["inverse"].fixed_bytes}
    assert plans["transform"].note == plans["convert"].note == ""
