"""gpuquant.cluster: distributed fit / transform / store writing, checked bit for bit against the
single-machine path, on a real ``distributed.LocalCluster`` of two worker processes (CPU), with a
worker killed mid-run (the run completes; with no retries allowed it stops and ``resume`` finishes it)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import dask.array as da
from helpers import assert_means_agree, fitted, matrix

import gpuquant
import gpuquant.cluster as gd
from gpuquant import store as gstore
from gpuquant.engine import ConvertError

PRESETS: list[tuple[str, dict[str, Any]]] = [
    ("st-int8", {}),
    ("cuvs-sq8", {}),
    ("cuvs-sq8", {"quantile_method": "exact"}),
    ("int8-row", {}),
    ("faiss-sq4", {}),
    ("binary", {"threshold": "median"}),
    ("uint8-affine", {"granularity": "dimension"}),
    ("int4-block", {}),
    ("fp8-e4m3", {}),
    ("vespa-int8", {}),
]


DASHBOARD_PORT = 8787  # distributed's default dashboard port


@pytest.fixture(scope="module", autouse=True)
def dashboard_port_taken() -> Any:
    """Port 8787 held for the whole module: no cluster here (nor the CLI's) may need it."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", DASHBOARD_PORT))
        sock.listen()
    except OSError:
        pass  # someone else holds it already: taken either way
    try:
        yield
    finally:
        sock.close()


@pytest.fixture(scope="module")
def client() -> Any:
    """The local cluster ``convert --workers`` starts: two worker processes of one thread."""
    with gd.cluster_client(workers=2, device="cpu") as c:
        yield c


def test_local_cluster_binds_no_fixed_port_and_serves_no_dashboard(client: Any) -> None:
    import urllib.error
    import urllib.request

    http = client.cluster.scheduler.http_server
    assert http.port not in (0, DASHBOARD_PORT)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{http.port}/status", timeout=10)
    err.value.close()
    assert err.value.code == 404


@pytest.fixture
def shards(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray]:
    """A directory of three .npy shards (uneven sizes, natural order) and the matrix they make."""
    X = matrix(rng, 1300, 96)
    d = tmp_path / "shards"
    d.mkdir()
    for name, (a, b) in zip(["part-2.npy", "part-10.npy", "part-11.npy"], [(0, 400), (400, 1050), (1050, 1300)],
                            strict=True):
        np.save(d / name, X[a:b])
    return d, X


def _files(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob("*.npy"))}


def _same_store(a: Path, b: Path) -> None:
    sa, sb = gstore.open(a), gstore.open(b)
    assert _files(a) == _files(b)
    assert sa.quantizer.to_dict()["state"] == sb.quantizer.to_dict()["state"]
    assert not (b / gd.PARTS).exists()


# ---------------------------------------------------------------------------------------------
# no cluster (Dask's threads): fit and transform equal the in-memory reference


@pytest.mark.parametrize(("preset", "params"), PRESETS + [("binary", {"threshold": "zero"}), ("bf16", {})])
def test_fit_and_transform_equal_the_reference(preset: str, params: dict[str, Any], rng: np.random.Generator) -> None:
    X = matrix(rng, 900, 64)
    D = da.from_array(X, chunks=(128, 32))  # uneven row chunks, columns split too
    ref = gpuquant.Quantizer(preset, backend="numpy", **params).fit(X)
    q = gd.fit(gpuquant.Quantizer(preset, backend="numpy", **params), D, gather_bytes=0)  # per-chunk statistics
    for k, v in (ref.state or {}).items():
        assert np.asarray(q.state[k]).tobytes() == np.asarray(v).tobytes(), k
    codes, want = gd.transform(q, D), ref.transform(X)
    assert codes.data.chunks[0] == D.chunks[0]
    assert np.asarray(codes.data.compute()).tobytes() == np.asarray(want.data).tobytes()
    assert set(codes.side) == set(want.side)
    for k in want.side:
        assert codes.side[k].compute().tobytes() == np.asarray(want.side[k]).tobytes()


def test_mean_threshold_within_the_documented_bound(rng: np.random.Generator) -> None:
    X = matrix(rng, 1000, 40)
    ref = gpuquant.Quantizer("binary", backend="numpy", threshold="mean").fit(X)
    q = gd.fit("binary", da.from_array(X, chunks=(77, 40)), gather_bytes=0, threshold="mean")
    assert_means_agree(q.state["thresholds"], ref.state["thresholds"], X)


def test_truncate_dim_fit_matches(rng: np.random.Generator) -> None:
    X = matrix(rng, 500, 64)
    ref = gpuquant.Quantizer("st-int8", backend="numpy", truncate_dim=32).fit(X)
    q = gd.fit(gpuquant.Quantizer("st-int8", backend="numpy", truncate_dim=32), da.from_array(X, chunks=(100, 64)),
               gather_bytes=0)
    for k, v in ref.state.items():
        assert np.array_equal(q.state[k], v), k
    assert np.asarray(gd.transform(q, da.from_array(X, chunks=(100, 64))).data.compute()).tobytes() == \
        np.asarray(ref.transform(X).data).tobytes()


def test_nan_refused_like_the_reference(rng: np.random.Generator) -> None:
    X = matrix(rng, 300, 16)
    X[123, 5] = np.nan
    with pytest.raises(gpuquant.InputError, match="NaN"):
        gd.fit("cuvs-sq8", da.from_array(X, chunks=(50, 16)), gather_bytes=0, quantile_method="exact")


# ---------------------------------------------------------------------------------------------
# a real cluster: two worker processes


@pytest.mark.parametrize(("preset", "params"), [p for p in PRESETS if p[0] in
                                                ("st-int8", "cuvs-sq8", "int8-row", "binary", "faiss-sq4")])
def test_cluster_convert_of_shards_is_bit_identical(client: Any, shards: tuple[Path, np.ndarray], tmp_path: Path,
                                                    preset: str, params: dict[str, Any]) -> None:
    src, _ = shards
    single = tmp_path / "single"
    local = gpuquant.convert(src, single, preset, params=params, device="cpu", progress=False)
    out = tmp_path / "dask"
    report = gd.convert(src, out, preset, params=params, client=client, batch_rows=170, gather_bytes=0)
    assert report["dask"]["tasks_run"] == 8 and report["dask"]["scheduler"] == "Client"
    assert report["quality"] == local["quality"]  # counted by the tasks
    assert gstore.open(out).complete
    _same_store(single, out)
    assert gstore.verify(out)["rows_checked"] == 1300  # the tasks' checksums, merged at completion


@pytest.mark.parametrize("params", [{"rotate": "orthogonal"}, {"truncate_dim": 8, "pca_dim": 6}])
def test_cluster_edge_counts_see_the_pre_transform(client: Any, shards: tuple[Path, np.ndarray], tmp_path: Path,
                                                   params: dict[str, Any]) -> None:
    """The tasks count clipping on the rows the scheme encodes (after the pre-transform), as convert."""
    src, _ = shards
    local = gpuquant.convert(src, tmp_path / "single", "cuvs-sq8", params=params, device="cpu", progress=False)
    report = gd.convert(src, tmp_path / "dask", "cuvs-sq8", params=params, client=client, batch_rows=170)
    _same_store(tmp_path / "single", tmp_path / "dask")
    assert local["quality"]["clipped_inputs"] > 0
    assert report["quality"] == local["quality"]


def _killer(arm: str, parts: str | None = None) -> Any:
    """A block function that kills its own worker process (SIGKILL) the first time it runs on the
    block starting at row 510 while the file ``arm`` exists (claimed by renaming it); with ``parts``,
    only once (up to 20 s) the other worker has recorded at least two finished chunks there."""

    def kill_once(x: np.ndarray, block_info: Any = None) -> np.ndarray:
        import time

        start = block_info[0]["array-location"][0][0]
        if start == 510 and os.path.exists(arm):
            end = time.monotonic() + 20
            while parts is not None and time.monotonic() < end and (
                    not os.path.isdir(parts) or len(os.listdir(parts)) < 2):
                time.sleep(0.05)
            try:
                os.rename(arm, arm + ".fired")
            except FileNotFoundError:
                return x
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    return kill_once


def test_a_nan_row_is_named_by_its_row_of_the_input(client: Any, tmp_path: Path, rng: np.random.Generator) -> None:
    X = matrix(rng, 600, 64)
    X[437, 3] = np.nan
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(ConvertError, match=r"\(RowError: row 437 of the input holds NaN or ±Inf; GGUF"):
        gd.convert(tmp_path / "x.npy", tmp_path / "o", "gguf-q8_0", client=client, batch_rows=100, device="cpu")


def test_killed_worker_is_retried_and_the_store_is_bit_identical(client: Any, shards: tuple[Path, np.ndarray],
                                                                 tmp_path: Path) -> None:
    src, _ = shards
    q = gpuquant.Quantizer("int8-row", backend="numpy")
    single = tmp_path / "single"
    gpuquant.convert(src, single, "int8-row", device="cpu", progress=False)
    arm = tmp_path / "arm"
    arm.write_text("1")
    X, desc = gd.from_source(src, chunk_rows=170)
    X = X.map_blocks(_killer(str(arm)), dtype=X.dtype)
    out = tmp_path / "dask"
    gd.to_store(X, out, q, client=client, source_desc=desc)
    assert not arm.exists() and Path(str(arm) + ".fired").exists()  # the worker was killed
    _same_store(single, out)


@pytest.mark.parametrize("resume_with", ["dask", "engine"])
def test_killed_worker_without_retries_leaves_a_resumable_store(client: Any, shards: tuple[Path, np.ndarray],
                                                                tmp_path: Path, resume_with: str) -> None:
    src, _ = shards
    single = tmp_path / "single"
    single_doc = gpuquant.convert(src, single, "st-int8", device="cpu", progress=False)
    arm = tmp_path / "arm"
    arm.write_text("1")
    X, desc = gd.from_source(src, chunk_rows=170)
    out = tmp_path / "dask"
    sched = client.cluster.scheduler
    old = sched.allowed_failures
    sched.allowed_failures = 0
    q = gd.fit("st-int8", X, client=client, gather_bytes=0)  # fitted first: the kill hits the writing
    try:
        with pytest.raises(ConvertError, match="resume"):
            gd.to_store(X.map_blocks(_killer(str(arm), str(out / gd.PARTS)), dtype=X.dtype), out, q, client=client,
                        source_desc=desc)
    finally:
        sched.allowed_failures = old
    with pytest.raises(gstore.StoreIncompleteError):
        gstore.open(out)
    state = gstore.read_manifest(out)["state"]
    assert state["status"] == "in_progress" and state["rows_done"] < 1300
    recorded = gd._parts_done(out)
    assert len(recorded) >= 2 and (510, 680) not in recorded
    if resume_with == "dask":  # reruns the chunks not recorded, with the recorded chunking
        X2, desc2 = gd.from_source(src, chunk_rows=999)
        report = gd.to_store(X2, out, None, client=client, source_desc=desc2, resume=True)
        assert report["dask"]["skipped_chunks"] >= len(recorded)
        assert report["dask"]["tasks_run"] == 8 - report["dask"]["skipped_chunks"]
    else:  # the single-machine engine continues from the manifest's finished prefix
        report = gpuquant.convert(src, out, None, resume=True, device="cpu", progress=False)
        assert report["resumed_from"] == state["rows_done"]
    _same_store(single, out)
    assert gstore.verify(out)["rows_checked"] == 1300
    assert report["quality"] == single_doc["quality"]  # the rows written before the kill counted too


def test_dask_resumes_a_store_the_engine_started(client: Any, shards: tuple[Path, np.ndarray], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine run stopped mid-stream (a write error after 3 batches) is finished by the Dask resume."""
    src, _ = shards
    single = tmp_path / "single"
    gpuquant.convert(src, single, "int8-row", device="cpu", progress=False)
    out = tmp_path / "out"
    real = gstore.StoreWriter.write_rows
    calls = {"n": 0}

    def failing(self: Any, start: int, arrays: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(28, "No space left on device")
        real(self, start, arrays)

    monkeypatch.setattr(gstore.StoreWriter, "write_rows", failing)
    with pytest.raises(ConvertError):
        gpuquant.convert(src, out, "int8-row", device="cpu", progress=False, batch_rows=100)
    monkeypatch.setattr(gstore.StoreWriter, "write_rows", real)
    done = gstore.read_manifest(out)["state"]["rows_done"]
    assert 0 < done < 1300
    X, desc = gd.from_source(src, chunk_rows=170)
    report = gd.to_store(X, out, None, client=client, source_desc=desc, resume=True)
    assert report["dask"]["skipped_chunks"] == done // 170
    _same_store(single, out)


def test_cli_convert_with_workers(shards: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    src, _ = shards
    single = tmp_path / "single"
    gpuquant.convert(src, single, "st-uint8", device="cpu", progress=False)
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "gpuquant", "convert", str(src), str(out), "--scheme", "st-uint8",
                        "--workers", "2", "--device", "cpu", "--batch-rows", "300", "--format", "json"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "already in use" not in r.stderr  # no dashboard, so no fight over its port
    doc = json.loads(r.stdout)
    assert doc["dask"]["tasks_run"] == 5
    _same_store(single, out)


# ---------------------------------------------------------------------------------------------
# GPU: dask-cuda, CuPy chunks (skipped without a GPU or without dask-cuda)


@pytest.fixture(scope="module")
def cuda_client(request: pytest.FixtureRequest) -> Any:
    """One ``dask_cuda.LocalCUDACluster`` and its client for the module's GPU tests (skips without
    CuPy, dask-cuda or a usable GPU)."""
    pytest.importorskip("cupy")
    dask_cuda = pytest.importorskip("dask_cuda")
    request.getfixturevalue("gpu")
    with dask_cuda.LocalCUDACluster(**gd.NO_DASHBOARD) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["st-int8", "cuvs-sq8", "int8-row", "binary", "fp8-e4m3"])
def test_dask_cuda_cupy_chunks_equal_the_reference(cuda_client: Any, preset: str, rng: np.random.Generator,
                                                   tmp_path: Path) -> None:
    import cupy as cp

    c = cuda_client
    X = matrix(rng, 4000, 128)
    ref = fitted(preset, X)
    D = da.from_array(X, chunks=(700, 128)).map_blocks(cp.asarray, meta=cp.empty((0, 0), cp.float32))
    q = gd.fit(gpuquant.Quantizer(preset, backend="numpy"), D, client=c, gather_bytes=0)
    codes = gd.transform(q, D)
    want = ref.transform(X)
    got = c.compute(codes.data).result()
    assert np.asarray(got).tobytes() == np.asarray(want.data).tobytes()
    for k in want.side:
        assert c.compute(codes.side[k]).result().tobytes() == np.asarray(want.side[k]).tobytes()
    np.save(tmp_path / "x.npy", X)
    gpuquant.convert(tmp_path / "x.npy", tmp_path / "single", preset, device="cpu", progress=False)
    gd.convert(tmp_path / "x.npy", tmp_path / "gpu", preset, client=c, device="gpu", batch_rows=900)
    _same_store(tmp_path / "single", tmp_path / "gpu")


def test_cli_convert_on_a_running_scheduler_and_resume_refusals(client: Any, shards: tuple[Path, np.ndarray],
                                                                tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    src, _ = shards
    single = tmp_path / "single"
    gpuquant.convert(src, single, "cuvs-sq8", device="cpu", progress=False)
    out = tmp_path / "cli"
    base = [sys.executable, "-m", "gpuquant", "convert", str(src), str(out), "--format", "json", "--device", "cpu"]
    r = subprocess.run([*base, "--scheme", "cuvs-sq8", "--scheduler", client.scheduler.address, "--batch-rows", "400"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dask"]["tasks_run"] == 4
    _same_store(single, out)
    r = subprocess.run([*base, "--resume", "--scheduler", client.scheduler.address],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already complete" in json.loads(r.stdout)["error"]["message"]
    r = subprocess.run([*base, "--resume", "--scheduler", "tcp://x:1", "--workers", "2"],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "exclude each other" in r.stdout + r.stderr
