"""GPU check: the GPU test suite and the GPU benchmarks in one command, a short table printed last.

    python bench/gpu_check.py --out $OUT      # tests + 64 MiB, 1 GiB and 4 GiB at d = 384, 768, 1024, 4096
    python bench/gpu_check.py --quick         # tests + 256 MiB at d = 384 (a smoke run)
    python bench/gpu_check.py --no-tests --dims 768 --sizes-gib 1

1. ``pytest -m gpu tests`` in a subprocess; its output is saved next to the results.
2. Rooflines: device copy bandwidth (a large device-to-device copy; bytes read + written) and
   read-only bandwidth (a kernel that reads every float4 of a large array and writes nothing).
3. For every (d, size): every preset and a few family variants, the cupy backend's transform on
   fresh random float32 input (never zeros), inverse_transform for a few schemes, and the training
   passes (exact quantile by radix select vs cuVS-compatible sample-and-sort vs ``cupy.quantile``,
   min/max; the radix select's passes one by one, by replays of its launches up to each pass's end).
   Each case is timed two ways with CUDA events: the whole call (``seconds``: Python, launch set-up
   and kernels) and its kernels alone (``kernel_seconds``: the launches one call made,
   captured from the backend, replayed back to back ``KERNEL_BATCH`` times so that launch overhead
   hides behind the queue). Cases are interleaved: every round times each case once, ``--rounds``
   (>= 5) rounds, so drift over the run shows as a spread; each time is reported as min / median /
   max. Bytes moved = input read + codes and side arrays written; ``fraction_of_copy`` of the copy
   roofline, and for read-only passes (training, binary codes) ``fraction_of_read`` of the
   read-only roofline too. The same formula as a plain CuPy expression for comparison. At the 64 MiB
   point each transform is also timed replayed from a CUDA graph and as queued calls (``_graphs.py``).
4. JSON and a markdown table under ``bench/results/`` (and copies in ``--out``): device, driver,
   CUDA runtime, CuPy, git commit; per row ``scheme``, ``op``, ``dim``, ``size_bytes``,
   ``bytes_moved``, ``seconds`` (median) with ``seconds_min``/``seconds_max``, ``gbps``,
   ``fraction_of_copy``, ``kernel_seconds`` (median, min, max), ``kernel_gbps``,
   ``kernel_fraction_of_copy``, ``fraction_of_read`` / ``kernel_fraction_of_read`` (read-only
   passes), ``cupy_expr_seconds``, ``speedup_vs_cupy_expr``; the radix select's row
   ``speedup_vs_cupy_quantile``, its pass rows ``radix_pass``, ``pass_bytes``, ``pass_kernel_seconds``,
   ``pass_gbps`` and ``pass_fraction_of_read`` (the short table's "of read" for those rows).
5. The short table, last. A failing benchmark is reported in its row and the others go on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _exprs
import _graphs
import _radix
from _common import git_commit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DIMS = (384, 768, 1024, 4096)
SIZES_GIB = (1 / 16, 1, 4)  # the 64 MiB point shows the fixed cost per call
KERNEL_BATCH = 10  # back-to-back replays of a call's kernels per timing


def error_text(exc: BaseException) -> str:
    """A failed benchmark's one-line reason, as its row reports it."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def record(row: dict[str, Any], seconds: float, moved: int, copy_gbps: float, *, seconds_first: bool = False) -> None:
    """Fills a timed row: ``bytes_moved``, ``seconds``, ``gbps`` and ``fraction_of_copy`` (the train
    and cuVS rows, ``seconds_first``, have always written ``seconds`` before ``bytes_moved``)."""
    if seconds_first:
        row.update(seconds=seconds, bytes_moved=int(moved))
        row["gbps"] = row["bytes_moved"] / seconds / 1e9
    else:
        row.update(bytes_moved=int(moved), seconds=seconds, gbps=moved / seconds / 1e9)
    row["fraction_of_copy"] = row["gbps"] / copy_gbps


def spread(times: list[float]) -> tuple[float, float, float]:
    """(min, median, max) of a list of timings."""
    return min(times), statistics.median(times), max(times)


def fill_times(row: dict[str, Any], call: list[float], kernel: list[float], moved: int, copy_gbps: float,
               read_gbps: float | None, *, seconds_first: bool = False) -> None:
    """A timed row from its interleaved timings: whole call and kernels alone, min/median/max, the
    copy fraction of both, and the read-only fraction of both when ``read_gbps`` is given."""
    lo, med, hi = spread(call)
    record(row, med, moved, copy_gbps, seconds_first=seconds_first)
    row.update(seconds_min=lo, seconds_max=hi)
    if kernel:
        klo, kmed, khi = spread(kernel)
        row.update(kernel_seconds=kmed, kernel_seconds_min=klo, kernel_seconds_max=khi,
                   kernel_gbps=row["bytes_moved"] / kmed / 1e9)
        row["kernel_fraction_of_copy"] = row["kernel_gbps"] / copy_gbps
    if read_gbps:
        row["read_gbps"] = read_gbps
        row["fraction_of_read"] = row["gbps"] / read_gbps
        if kernel:
            row["kernel_fraction_of_read"] = row["kernel_gbps"] / read_gbps


def run_tests(log: Path, timeout_s: int) -> dict[str, Any]:
    """``pytest -m gpu tests``, output kept in ``log``; returns the summary line and exit code."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu or cuvs", "tests", "-q", "-p", "no:cacheprovider", "-rfE"]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        output, code = output + f"\n[timed out after {timeout_s} s]", -1
    log.write_text(output)
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    summary = next((ln for ln in reversed(lines) if " in " in ln and ("passed" in ln or "failed" in ln
                                                                        or "skipped" in ln or "error" in ln)),
                   lines[-1] if lines else "no output")
    return {"command": " ".join(["python", *cmd[1:]]), "exit_code": code, "summary": summary.strip("= "),
            "seconds": time.perf_counter() - start, "log": log.name}


class Timer:
    """Device time of a callable with CUDA events: ``once`` times one round (``batch`` calls back to
    back, per call); ``__call__`` is the median of ``repeats`` rounds after a warm-up."""

    def __init__(self, cp: Any, repeats: int) -> None:
        self.cp, self.repeats = cp, repeats

    def once(self, fn: Callable[[], Any], batch: int = 1) -> float:
        cp = self.cp
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(batch):
            fn()
        stop.record()
        stop.synchronize()
        return cp.cuda.get_elapsed_time(start, stop) / 1e3 / batch

    def __call__(self, fn: Callable[[], Any]) -> float:
        fn()
        self.cp.cuda.Device().synchronize()
        return statistics.median(self.once(fn) for _ in range(self.repeats))


@dataclass
class Case:
    """One benchmark row to time: the whole ``call``, and ``launches`` (kernel, grid, block, args)
    that one call made, replayed alone. ``moved``: bytes read + written by one call."""

    row: dict[str, Any]
    call: Callable[[], Any]
    moved: int
    read_only: bool = False
    launches: list[tuple[Any, Any, Any, Any]] = field(default_factory=list)
    seconds_first: bool = False
    expr: tuple[str, dict] | None = None  # (preset, state) of the plain CuPy expression to compare
    queue: int = 1  # calls back to back per timing (the time is per call)

    def kernels(self) -> None:
        for kernel, grid, block, args in self.launches:
            kernel(grid, block, args)


@contextmanager
def captured_launches() -> Iterator[list[tuple[Any, Any, Any, Any]]]:
    """Every launch of gpuquant's kernels inside the block: (kernel, grid, block, args); they still run.

    Seen through the backend's launch observers (``cupy_launch.observe_launches``)."""
    from gpuquant.backends import cuda_loader, cupy_launch

    launches: list[tuple[Any, Any, Any, Any]] = []
    with cupy_launch.observe_launches() as seen:
        yield launches
    for s in seen:
        launches.append((cuda_loader.get_kernel(s.filename, s.name, s.names), s.grid, s.block, s.args))


def prepared(row: dict[str, Any], call: Callable[[], Any], moved: int, **kw: Any) -> Case:
    """A case whose call ran once (warm-up) with its kernel launches captured."""
    with captured_launches() as launches:
        call()
    return Case(row, call, moved, launches=list(launches), **kw)


def interleaved(cases: list[Case], rounds: int, once: Callable[..., float]) -> dict[int, tuple[list, list]]:
    """Per case index: (call times, kernel times), each case timed once per round, rounds in turn."""
    times: dict[int, tuple[list, list]] = {i: ([], []) for i in range(len(cases))}
    for _ in range(rounds):
        for i, case in enumerate(cases):
            times[i][0].append(once(case.call, case.queue))
            if case.launches:
                times[i][1].append(once(case.kernels, KERNEL_BATCH))
    return times


def time_cases(cases: list[Case], timer: Timer, rounds: int, copy_gbps: float, read_gbps: float) -> None:
    """Times every case (interleaved) and fills its row; a case whose timing fails reports its error."""
    live = [c for c in cases if "error" not in c.row]
    try:
        times = interleaved(live, rounds, timer.once)
    except Exception as exc:  # noqa: BLE001 - one failure stops the rounds; every row says so
        for case in live:
            case.row["error"] = error_text(exc)
        return
    for i, case in enumerate(live):
        call, kernel = times[i]
        fill_times(case.row, call, kernel, case.moved, copy_gbps, read_gbps if case.read_only else None,
                   seconds_first=case.seconds_first)


def environment(cp: Any) -> dict[str, Any]:
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]

    def version(v: int) -> str:
        return f"{v // 1000}.{(v % 1000) // 10}"

    return {
        "device": name, "compute_capability": dev.compute_capability, "sms": props["multiProcessorCount"],
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "driver": version(cp.cuda.runtime.driverGetVersion()), "cuda_runtime": version(cp.cuda.runtime.runtimeGetVersion()),
        "cupy": cp.__version__, "python": sys.version.split()[0], "git_commit": git_commit(short=False),
    }


def copy_bandwidth(cp: Any, timer: Timer, nbytes: int) -> float:
    src = cp.random.standard_normal(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    seconds = timer(lambda: cp.copyto(dst, src))
    return 2 * src.nbytes / seconds / 1e9


READ_ONLY_KERNEL = r"""
extern "C" __global__ void read_only(const float4* __restrict__ x, long long n, float* sink) {
    float acc = 0.0f;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += step) {
        const float4 v = x[i];
        acc += v.x + v.y + v.z + v.w;
    }
    if (acc == 1234.5f) sink[0] = acc;  // keeps the loads; never true for the normal data used
}
"""


def read_bandwidth(cp: Any, timer: Timer, nbytes: int) -> float:
    """Read-only roofline: every float4 of a large array read once, nothing written (bytes read / s)."""
    x = cp.random.standard_normal(nbytes // 4, dtype=cp.float32)
    sink = cp.zeros(1, cp.float32)
    kernel = cp.RawKernel(READ_ONLY_KERNEL, "read_only")
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    seconds = timer(lambda: kernel((sms * 8,), (256,), (x, cp.int64(x.size // 4), sink)))
    return x.nbytes / seconds / 1e9


BENCH_SCHEMES: list[tuple[str, dict]] = [
    (name, {}) for name in (
        "cuvs-sq8", "st-int8", "st-uint8", "st-binary", "st-ubinary", "faiss-sq8", "faiss-sq4", "fp8-e4m3",
        "fp8-e5m2", "fp16", "bf16", "int8-row", "uint8-affine", "int4-block", "binary")
] + [
    ("scalar", dict(granularity="tensor", range="minmax", rounding="half_away", bits=4, signed=True)),
    ("absmax", dict(granularity="block", bits=8, block_size=128)),
    ("float", dict(format="e4m3", saturate=True)),
    ("binary", dict(threshold="mean", bitorder="big")),
]
INVERSE_SCHEMES = ("cuvs-sq8", "st-int8", "int8-row", "int4-block", "fp8-e4m3", "fp16", "binary")


def label(name: str, params: dict) -> str:
    return name if not params else name + "(" + ",".join(f"{k}={v}" for k, v in params.items()) + ")"


def bench_size(cp: Any, timer: Timer, size_bytes: int, dim: int, rounds: int, roofs: dict[str, float]
               ) -> list[dict[str, Any]]:
    """Every case of one (size, d), timed interleaved; the rows in order."""
    n = size_bytes // (4 * dim)
    x = cp.random.standard_normal((n, dim), dtype=cp.float32)
    x *= cp.float32(3)
    x += cp.float32(0.25)  # fresh, never zero, not centred
    cases = scheme_cases(cp, x)  # at 64 MiB with graph and queued companions (not cuVS's: its calls synchronise)
    cases += _graphs.companions(cp, cases, Case, _failed) if size_bytes <= _graphs.POINT_BYTES else []
    cases += training_cases(cp, x) + cuvs_cases(cp, x)
    for case in cases:
        case.row.update(dim=dim, size_bytes=int(x.nbytes), copy_gbps=roofs["copy"])
    time_cases(cases, timer, rounds, roofs["copy"], roofs["read"])
    expr_times(cp, timer, x, cases)
    rows = [c.row for c in cases]
    _radix.pass_figures(rows, roofs["read"])
    del cases, x
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def _failed(row: dict[str, Any], exc: BaseException) -> Case:
    row["error"] = error_text(exc)
    row["traceback"] = traceback.format_exc()[-2000:]
    return Case(row, lambda: None, 0)


def scheme_cases(cp: Any, x: Any) -> list[Case]:
    """Transform of every benchmarked scheme (and inverse of ``INVERSE_SCHEMES``), into ``out=`` arrays.

    Every case's codes stay on the device until the rounds end (about 5x the input for all schemes)."""
    from gpuquant.backends.cupy_backend import CupyBackend
    from gpuquant.codes import Codes
    from gpuquant.schemes import make_scheme

    backend = CupyBackend()
    cases: list[Case] = []
    y = cp.empty(x.shape, cp.float32)  # one reconstruction buffer for every inverse (timed one at a time)
    for name, params in BENCH_SCHEMES:
        row: dict[str, Any] = {"scheme": label(name, params), "op": "transform"}
        try:
            scheme = make_scheme(name, **params)
            fit_rows = x[: min(int(x.shape[0]), 200_000)]
            state = backend.fit(scheme, fit_rows) if scheme.needs_fit else (scheme.initial_state() or {})
            codes = backend.transform(scheme, state, x)
            out = Codes(codes.data, codes.side)
            code_bytes = codes.data.nbytes + sum(v.nbytes for v in codes.side.values())
            read_only = scheme.family == "binary"
            case = prepared(row, lambda s=scheme, st=state, o=out: backend.transform(s, st, x, out=o),
                            x.nbytes + code_bytes, read_only=read_only)
            case.expr = (name, state) if not params else None
            cases.append(case)
            if name in INVERSE_SCHEMES and not params:
                inv = {"scheme": row["scheme"], "op": "inverse"}
                cases.append(prepared(inv, lambda s=scheme, st=state, c=codes, o=y: backend.inverse_transform(
                    s, st, c, out=o), code_bytes + y.nbytes))
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not stop the others
            cases.append(_failed(row, exc))
    return cases


def expr_times(cp: Any, timer: Timer, x: Any, cases: list[Case]) -> None:
    """The same formula as a plain CuPy expression (median whole call), next to each transform."""
    exprs = _exprs.cupy_expressions(cp)
    for case in cases:
        name, state = case.expr or (None, {})
        expr = exprs.get(name) if name else None
        if expr is None or "seconds" not in case.row:
            continue
        try:
            dev_state = {k: cp.asarray(v) for k, v in state.items()}
            case.row["cupy_expr_seconds"] = timer(lambda: expr(x, dev_state))
            case.row["speedup_vs_cupy_expr"] = case.row["cupy_expr_seconds"] / case.row["seconds"]
        except Exception as exc:  # noqa: BLE001 - the comparison is optional
            case.row["cupy_expr_error"] = error_text(exc)
        cp.get_default_memory_pool().free_all_blocks()


def training_cases(cp: Any, x: Any) -> list[Case]:
    """The training passes (read-only; bytes moved = what each reads, and the radix select's candidates
    written and read), then the radix select's passes as kernels alone (``_radix``)."""
    from gpuquant.backends import cupy_train
    from gpuquant.schemes.scalar import quantile_positions

    lo_pos, hi_pos = quantile_positions(int(x.size), 0.99)
    try:
        per_pass = _radix.pass_bytes(x.nbytes, cupy_train.radix_select(x, lo_pos, hi_pos))
    except Exception:  # noqa: BLE001 - the select's own row reports it
        per_pass = [x.nbytes] * cupy_train.RADIX_PASSES
    specs: list[tuple[str, Callable[[], Any], int]] = [
        (_radix.RADIX_ROW, lambda: cupy_train.select_values(x, lo_pos, hi_pos), sum(per_pass)),
        ("train: cuVS-compatible quantile (1e6-value sample, sort)",
         lambda: cupy_train.quantile_range(x, 0.99, "cuvs", per_dim=False), x.nbytes),
        (_radix.CUPY_QUANTILE_ROW, lambda: cp.quantile(x.reshape(-1), cp.array([0.005, 0.995])), x.nbytes),
        ("train: min/max (one pass)", lambda: cupy_train.minmax(x, per_dim=False), x.nbytes),
        ("train: per-dimension min/max (one pass)", lambda: cupy_train.minmax(x, per_dim=True), x.nbytes),
    ]
    cases = []
    for name, fn, moved in specs:
        row: dict[str, Any] = {"scheme": name, "op": "train"}
        try:
            cases.append(prepared(row, fn, moved, read_only=True, seconds_first=True))
        except Exception as exc:  # noqa: BLE001 - report and go on
            cases.append(_failed(row, exc))
    for row, launches, moved in _radix.pass_rows(cases[0].launches, per_pass):
        replay = Case(row, lambda: None, moved, True, launches, seconds_first=True)
        replay.call = replay.kernels
        cases.append(replay if launches else _failed(row, RuntimeError("the select's launches were not seen")))
    return cases


def _ms(row: dict[str, Any], key: str) -> str:
    """``median (min-max)`` of a timing in ms, or ``-``."""
    if key not in row:
        return "-"
    return f"{row[key] * 1e3:.3f} ({row[key + '_min'] * 1e3:.3f}-{row[key + '_max'] * 1e3:.3f})"


def _frac(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.2f}" if key in row else "-"


def markdown(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    lines = [
        f"GPU check: {env.get('device', '?')} (driver {env.get('driver', '?')}, CUDA runtime "
        f"{env.get('cuda_runtime', '?')}, CuPy {env.get('cupy', '?')}, commit {env.get('git_commit', '?')[:10]})",
        f"tests: {report.get('tests', {}).get('summary', 'not run')}",
        f"device copy bandwidth: {report.get('copy_gbps', float('nan')):.0f} GB/s (read + write); read-only: "
        f"{report.get('read_gbps', float('nan')):.0f} GB/s; {report.get('rounds', '?')} interleaved rounds; "
        "times: median (min-max)",
        "",
        "| scheme | op | d | input | call ms | GB/s | of copy | kernel ms | kernel of copy | of read (call / kernel) "
        "| CuPy expr (s) | speedup vs CuPy expr |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.get("results", []):
        size = f"{r['size_bytes'] / 2**30:.3f} GiB"
        head = f"| {r['scheme']} | {r['op']} | {r.get('dim', '-')} | {size} |"
        if "error" in r:
            lines.append(f"{head} FAILED: {r['error'][:80]} | | | | | | | |")
            continue
        expr = f"{r['cupy_expr_seconds'] * 1e3:.2f} ms" if "cupy_expr_seconds" in r else "-"
        speed = f"{r['speedup_vs_cupy_expr']:.1f}x" if "speedup_vs_cupy_expr" in r else "-"
        read = f"{_frac(r, 'fraction_of_read')} / {_frac(r, 'kernel_fraction_of_read')}" if "read_gbps" in r else "-"
        lines.append(f"{head} {_ms(r, 'seconds')} | {r['gbps']:.0f} | {r['fraction_of_copy']:.2f} | "
                     f"{_ms(r, 'kernel_seconds')} | {_frac(r, 'kernel_fraction_of_copy')} | {read} | {expr} | "
                     f"{speed} |")
    return "\n".join(lines)


def short_table(report: dict[str, Any]) -> str:
    """The last thing printed: tests, rooflines, and each d's largest-size rows (median; spread in %)."""
    results = [r for r in report.get("results", []) if "error" not in r]
    largest = {r.get("dim"): r["size_bytes"] for r in sorted(results, key=lambda r: r["size_bytes"])}
    lines = [
        f"== gpu_check: {report.get('environment', {}).get('device', '?')}",
        f"tests: {report.get('tests', {}).get('summary', 'not run')}",
        f"copy: {report.get('copy_gbps', float('nan')):.0f} GB/s, read-only: "
        f"{report.get('read_gbps', float('nan')):.0f} GB/s; largest input per d: "
        + ", ".join(f"d={d}: {s / 2**30:.2f} GiB" for d, s in largest.items()),
        f"{'scheme':<34} {'op':<9} {'d':>5} {'call ms':>8} {'kern ms':>8} {'of copy':>8} {'kernel':>7} "
        f"{'of read':>8} {'spread':>7} {'vs CuPy':>8}",
    ]
    for r in results:
        if r["size_bytes"] != largest[r.get("dim")]:
            continue
        vs = next((f"{r[k]:.1f}x" for k in ("speedup_vs_cupy_expr", "speedup_vs_cupy_quantile") if k in r), "-")
        kern = f"{r['kernel_seconds'] * 1e3:.3f}" if "kernel_seconds" in r else "-"
        spread_pct = f"{(r['seconds_max'] - r['seconds_min']) / r['seconds'] * 100:.0f}%" if "seconds_max" in r else "-"
        read = _frac(r, next((k for k in ("pass_fraction_of_read", "kernel_fraction_of_read") if k in r),
                             "fraction_of_read"))
        lines.append(f"{r['scheme'][:34]:<34} {r['op']:<9} {r.get('dim', '-'):>5} {r['seconds'] * 1e3:>8.3f} "
                     f"{kern:>8} {r['fraction_of_copy']:>8.2f} {_frac(r, 'kernel_fraction_of_copy'):>7} "
                     f"{read:>8} {spread_pct:>7} {vs:>8}")
    lines += _graphs.graph_lines(results)
    for r in report.get("results", []):
        if "error" in r:
            lines.append(f"FAILED {r['scheme']} {r['op']} d={r.get('dim')} ({r['size_bytes'] / 2**30:.2f} GiB): "
                         f"{r['error'][:100]}")
    if report.get("error"):
        lines.append(f"FAILED: {report['error']}")
    return "\n".join(lines)


def cuvs_cases(cp: Any, x: Any) -> list[Case]:
    """cuVS's own scalar and binary quantizers on the same input, where cuVS is installed (whole call only)."""
    try:
        from cuvs.preprocessing.quantize import binary, scalar
    except Exception:  # noqa: BLE001 - no cuVS here: nothing to compare
        return []
    from cuvs.common import Resources

    res = Resources()  # one handle, reused: its creation stays out of the timings

    def synced(call: Callable[[], Any]) -> Callable[[], None]:
        return lambda: (call(), res.sync())[-1]

    trained = scalar.train(scalar.QuantizerParams(quantile=0.99), x, resources=res)
    res.sync()
    codes = cp.empty(x.shape, cp.int8)
    bits = cp.empty((x.shape[0], -(-x.shape[1] // 8)), cp.uint8)
    specs: list[tuple[str, str, Callable[[], Any], int, bool]] = [
        ("cuVS: cuvs-sq8", "transform", synced(lambda: scalar.transform(trained, x, output=codes, resources=res)),
         x.nbytes + codes.nbytes, False),
        ("cuVS: cuvs-sq8", "inverse", synced(lambda: scalar.inverse_transform(trained, codes, resources=res)),
         codes.nbytes + x.nbytes, False),
        ("cuVS: binary", "transform", synced(lambda: binary.transform(x, output=bits, resources=res)),
         x.nbytes + bits.nbytes, True),
        ("cuVS: train (quantile 0.99, 1e6-value sample)", "train",
         synced(lambda: scalar.train(scalar.QuantizerParams(quantile=0.99), x, resources=res)), x.nbytes, True),
    ]
    cases = []
    for name, op, fn, moved, read_only in specs:
        row: dict[str, Any] = {"scheme": name, "op": op}
        try:
            fn()
            cases.append(Case(row, fn, moved, read_only=read_only, seconds_first=True))
        except Exception as exc:  # noqa: BLE001 - report and go on
            cases.append(_failed(row, exc))
    return cases


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also copy the results into this directory")
    ap.add_argument("--quick", action="store_true", help="256 MiB inputs at d = 384 only (a smoke run)")
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    ap.add_argument("--sizes-gib", default=",".join(f"{s:g}" for s in SIZES_GIB),
                    help="input sizes in GiB, comma-separated (default %(default)s)")
    ap.add_argument("--dims", default=",".join(map(str, DIMS)),
                    help="row lengths d, comma-separated (default %(default)s)")
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=5,
                    help="interleaved timing rounds, at least 5 (default 5)")
    ap.add_argument("--test-timeout", type=int, default=420, help="seconds allowed for the test run")
    args = ap.parse_args(argv)
    args.rounds = max(5, args.rounds)
    args.sizes = [256 * 2**20] if args.quick else [int(float(s) * 2**30) for s in args.sizes_gib.split(",")]
    args.dim_list = [384] if args.quick else [int(d) for d in args.dims.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {"benchmark": "gpu_check", "time": stamp, "quick": args.quick, "rounds": args.rounds,
                              "kernel_batch": KERNEL_BATCH}
    if not args.no_tests:
        report["tests"] = run_tests(RESULTS / f"gpu_tests_{stamp}.txt", args.test_timeout)
    try:
        import cupy as cp

        report["environment"] = environment(cp)
        timer = Timer(cp, args.rounds)
        report["copy_gbps"] = copy_bandwidth(cp, timer, max(args.sizes))
        report["read_gbps"] = read_bandwidth(cp, timer, max(args.sizes))
        roofs = {"copy": report["copy_gbps"], "read": report["read_gbps"]}
        report["results"] = []
        for dim in args.dim_list:
            for size in args.sizes:
                report["results"].extend(bench_size(cp, timer, size, dim, args.rounds, roofs))
    except Exception as exc:  # noqa: BLE001 - whatever happened, write what we have
        report["error"] = error_text(exc)
        report["traceback"] = traceback.format_exc()[-3000:]
    stem = f"gpu_check{'_quick' if args.quick else ''}_{stamp}"
    json_path, md_path = RESULTS / f"{stem}.json", RESULTS / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown(report) + "\n")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in (json_path, md_path, RESULTS / f"gpu_tests_{stamp}.txt"):
            if path.exists():
                shutil.copy2(path, args.out / path.name)
    print(markdown(report))
    print()
    print(short_table(report))
    tests_ok = report.get("tests", {}).get("exit_code", 0) in (0, 5)
    return 0 if tests_ok and "error" not in report else 1


if __name__ == "__main__":
    sys.exit(main())
