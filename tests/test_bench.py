"""Benchmark smoke tests (marker ``bench``): CI-sized runs of the CPU benchmark and the quality table
as their users run them (``python bench/<script>.py``), writing into ``tmp_path``; the other
scripts at least start. They check that the scripts run, not how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.bench

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(BENCH / name), *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}:\n{proc.stderr}"
    return proc


def test_cpu_bench_quick(tmp_path: Path) -> None:
    run_script("cpu_bench.py", "--quick", "--out", tmp_path)
    report = json.loads((tmp_path / "cpu_quick.json").read_text())
    assert report["benchmark"] == "cpu" and report["results"]
    assert (tmp_path / "cpu_quick.md").exists()


def test_quality_on_the_demo_data(tmp_path: Path) -> None:
    run_script("quality.py", "--n-queries", "100", "--out", tmp_path)
    assert len(list(tmp_path.glob("quality_*.json"))) == 1 and len(list(tmp_path.glob("quality_*.md"))) == 1


@pytest.mark.parametrize("name", ["convert_bench.py", "gpu_check.py"])
def test_script_starts(name: str) -> None:
    assert "usage:" in run_script(name, "--help").stdout


# -- bench/gpu_check.py without a GPU: arguments, interleaved timing, statistics and tables ---------
@pytest.fixture(scope="module")
def gpu_check() -> Any:
    sys.path.insert(0, str(BENCH))
    try:
        import gpu_check as module
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_gpu_check_arguments(gpu_check: Any) -> None:
    args = gpu_check.parse_args([])
    assert args.dim_list == [384, 768, 1024, 4096]
    assert args.sizes == [64 * 2**20, 2**30, 4 * 2**30] and args.rounds == 5
    quick = gpu_check.parse_args(["--quick", "--repeats", "2"])
    assert quick.sizes == [256 * 2**20] and quick.dim_list == [384] and quick.rounds == 5
    assert gpu_check.parse_args(["--dims", "768", "--sizes-gib", "0.5", "--rounds", "9"]).dim_list == [768]


def test_gpu_check_interleaves_rounds_and_times_kernels_alone(gpu_check: Any) -> None:
    calls: list[tuple[str, int]] = []

    def once(fn: Any, batch: int = 1) -> float:
        fn()
        return {1: 2.0, gpu_check.KERNEL_BATCH: 1.0}[batch] + len(calls) / 1000

    def named(tag: str) -> Any:
        return lambda: calls.append((tag, 0))

    with_kernels = gpu_check.Case({}, named("a"), 10, launches=[(lambda g, b, a: calls.append(("ka", 0)), 1, 2, ())])
    cases = [with_kernels, gpu_check.Case({}, named("b"), 10)]
    times = gpu_check.interleaved(cases, 3, once)
    assert [c[0] for c in calls] == ["a", "ka", "b"] * 3
    assert len(times[0][0]) == len(times[0][1]) == 3 and times[1][1] == []
    assert all(t < 1.1 for t in times[0][1]) and all(t > 2 for t in times[0][0])


def test_gpu_check_fills_spread_and_rooflines(gpu_check: Any) -> None:
    row: dict[str, Any] = {}
    gpu_check.fill_times(row, [3.0, 1.0, 2.0], [0.5, 1.0, 0.25], 4_000_000_000, 4.0, 2.0)
    assert (row["seconds_min"], row["seconds"], row["seconds_max"]) == (1.0, 2.0, 3.0)
    assert (row["kernel_seconds_min"], row["kernel_seconds"], row["kernel_seconds_max"]) == (0.25, 0.5, 1.0)
    assert row["gbps"] == 2.0 and row["fraction_of_copy"] == 0.5 and row["fraction_of_read"] == 1.0
    assert row["kernel_gbps"] == 8.0 and row["kernel_fraction_of_copy"] == 2.0 and row["kernel_fraction_of_read"] == 4.0
    plain: dict[str, Any] = {}
    gpu_check.fill_times(plain, [1.0] * 5, [], 10**9, 2.0, None)
    assert "kernel_seconds" not in plain and "fraction_of_read" not in plain


def test_gpu_check_captures_launches(gpu_check: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuquant.backends import cuda_loader, cupy_launch

    ran: list[Any] = []
    monkeypatch.setattr(cuda_loader, "get_kernel", lambda f, n, names: lambda g, b, a: ran.append((n, a)))
    with gpu_check.captured_launches() as launches:
        cupy_launch.kernel("quantize.cu", "binary_decode", ())((1,), (256,), (7,))
    assert ran == [("binary_decode", (7,))] and [(g, b, a) for _, g, b, a in launches] == [((1,), (256,), (7,))]


def _row(gpu_check: Any, scheme: str, dim: int, size: int, seconds: float) -> dict[str, Any]:
    row = {"scheme": scheme, "op": "transform", "dim": dim, "size_bytes": size}
    gpu_check.fill_times(row, [seconds, 2 * seconds], [seconds / 2], size, 100.0, 150.0)
    return row


def test_gpu_check_tables(gpu_check: Any) -> None:
    report = {"copy_gbps": 100.0, "read_gbps": 150.0, "rounds": 5, "results": [
        _row(gpu_check, "small", 384, 2**26, 1.0), _row(gpu_check, "big", 384, 2**30, 1.0),
        _row(gpu_check, "wide", 4096, 2**26, 1.0),
        {"scheme": "broken", "op": "inverse", "dim": 768, "size_bytes": 2**30, "error": "RuntimeError: boom"}]}
    md = gpu_check.markdown(report)
    assert md.count("\n| ") == 5 and "FAILED: RuntimeError: boom" in md and "1500.000 (1000.000-2000.000)" in md
    short = gpu_check.short_table(report).splitlines()
    assert short[0].startswith("== gpu_check") and "copy: 100 GB/s, read-only: 150 GB/s" in short[2]
    body = [ln.split()[0] for ln in short[4:]]
    assert body == ["big", "wide", "FAILED"]  # only the largest size of each d, failures last


def test_gpu_check_radix_passes(gpu_check: Any) -> None:
    """Bytes of each radix-select pass (candidates kept or not), the replays up to each pass's end,
    each pass's own time from them, and the select's speed-up over cupy.quantile."""
    from gpuquant.backends.cupy_train import RadixSelect

    kept = RadixSelect(None, 0, 10, 100)
    assert kept.input_reads == 2 and gpu_check._radix.pass_bytes(4000, kept) == [4000, 4040, 40]
    spilled = RadixSelect(None, 0, 101, 100)
    assert spilled.input_reads == 3 and gpu_check._radix.pass_bytes(4000, spilled) == [4000, 4400, 4000]
    radix = gpu_check._radix
    replays = radix.pass_rows(list("abcdef"), [10, 20, 30])
    assert [(r["radix_pass"], r["pass_bytes"], launches, moved) for r, launches, moved in replays] == [
        (1, 10, list("ab"), 10), (2, 20, list("abcd"), 30), (3, 30, list("abcdef"), 60)]
    assert not any(launches for _, launches, _ in radix.pass_rows(list("abc"), [10, 20, 30]))  # not all seen
    rows = [{"scheme": radix.RADIX_ROW, "seconds": 2.0}, {"scheme": radix.CUPY_QUANTILE_ROW, "seconds": 9.0}]
    rows += [{"scheme": "pass", "radix_pass": p, "pass_bytes": b, "kernel_seconds": t}
             for p, b, t in [(2, 4e9, 2.5), (1, 4e9, 1.0)]]
    radix.pass_figures(rows, 8.0)
    assert rows[0]["speedup_vs_cupy_quantile"] == 4.5
    assert [rows[3]["pass_kernel_seconds"], rows[2]["pass_kernel_seconds"]] == [1.0, 1.5]
    assert rows[3]["pass_fraction_of_read"] == 0.5 and rows[2]["pass_gbps"] == pytest.approx(4 / 1.5)


# -- the 64 MiB point: CUDA graph and queued calls beside the plain call ------------------------------
class _Graph:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def upload(self, stream: Any) -> None:
        self.log.append("upload")

    def launch(self, stream: Any = None) -> None:
        self.log.append("replay")


class _CaptureStream:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __enter__(self) -> _CaptureStream:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def synchronize(self) -> None:
        self.log.append("sync")

    def begin_capture(self) -> None:
        self.log.append("begin")

    def end_capture(self) -> _Graph:
        self.log.append("end")
        return _Graph(self.log)


def test_gpu_check_adds_graph_and_queued_rows_to_each_transform(gpu_check: Any) -> None:
    import types

    graphs = sys.modules["_graphs"]
    log: list[str] = []
    cp = types.SimpleNamespace(cuda=types.SimpleNamespace(Stream=lambda non_blocking: _CaptureStream(log)))

    def failing() -> None:
        if "begin" in log:  # synchronises inside: cannot be captured
            raise RuntimeError("operation not permitted when stream is capturing")

    cases = [gpu_check.Case({"scheme": "a", "op": "transform"}, lambda: log.append("call a"), 7, read_only=True),
             gpu_check.Case({"scheme": "a", "op": "inverse"}, lambda: None, 7),
             gpu_check.Case({"scheme": "b", "op": "transform", "error": "x"}, lambda: None, 0),
             gpu_check.Case({"scheme": "c", "op": "transform"}, failing, 5)]
    extra = graphs.companions(cp, cases, gpu_check.Case, gpu_check._failed)
    assert [(c.row["scheme"], c.row["op"]) for c in extra] == [
        ("a", graphs.GRAPH_OP), ("a", graphs.QUEUED_OP), ("c", graphs.GRAPH_OP), ("c", graphs.QUEUED_OP)]
    assert log[:6] == ["call a", "sync", "begin", "call a", "end", "upload"]  # warm-up, then one captured call
    graph_a, queued_a, graph_c, _ = extra
    assert graph_a.moved == 7 and graph_a.read_only and graph_a.queue == 1 and queued_a.queue == graphs.QUEUE
    assert queued_a.call is cases[0].call and "operation not permitted" in graph_c.row["error"]
    log.clear()
    graph_a.call()
    assert log == ["replay"]
    batches: list[int] = []
    gpu_check.interleaved([queued_a], 2, lambda fn, batch=1: batches.append(batch) or 1.0)
    assert batches == [graphs.QUEUE] * 2


def test_gpu_check_short_table_compares_graphs_at_64_mib(gpu_check: Any) -> None:
    graphs = sys.modules["_graphs"]
    rows = []
    for op, size, seconds in (("transform", 2**26 - 512, 1.0), (graphs.GRAPH_OP, 2**26 - 512, 0.5),
                              (graphs.QUEUED_OP, 2**26 - 512, 0.25), ("transform", 2**30, 1.0)):
        row = {"scheme": "s", "op": op, "dim": 384, "size_bytes": size}
        gpu_check.fill_times(row, [seconds], [], size, 0.1, None)
        rows.append(row)
    lines = gpu_check.short_table({"results": rows}).splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("64 MiB: fraction of copy"))
    plain = (2**26 - 512) / 1e9 / 0.1  # bytes moved in 1 s at a 0.1 GB/s copy
    assert lines[head + 1].split() == ["s", "384", f"{plain:.2f}", f"{2 * plain:.2f}", f"{4 * plain:.2f}"]
    assert graphs.graph_lines([r for r in rows if r["op"] == "transform"]) == []
