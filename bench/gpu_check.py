"""GPU check: the GPU test suite and the GPU benchmarks in one command, a short table printed last.

    python bench/gpu_check.py --out $OUT      # tests + 1 GiB and 4 GiB benchmarks (about 5-8 min on an H100)
    python bench/gpu_check.py --quick         # tests + 256 MiB benchmarks (a smoke run)
    python bench/gpu_check.py --no-tests      # benchmarks only

1. ``pytest -m gpu tests`` in a subprocess; its output is saved next to the results.
2. Device copy bandwidth (a large device-to-device copy; bytes read + written), then for every
   preset and a few family variants the cupy backend's transform throughput on fresh random
   float32 inputs (never zeros) of each size: warm-up, CUDA events, median of ``--repeats`` (>= 5),
   bytes moved = input read + codes and side arrays written; the same formula as a plain CuPy
   expression for comparison; inverse_transform for a few schemes; training: exact quantile (radix
   select over all values) vs cuVS-compatible (sample and sort) vs ``cupy.quantile``, and min/max.
3. JSON and a markdown table under ``bench/results/`` (and copies in ``--out``): device, driver,
   CUDA runtime, CuPy, git commit; per row ``scheme``, ``bytes_moved``, ``seconds``, ``gbps``,
   ``copy_gbps``, ``fraction_of_copy``, ``cupy_expr_seconds``, ``speedup_vs_cupy_expr``.
4. The short table, last. A failing benchmark is reported in its row and the others go on.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import git_commit

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DIMS = 384


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
    """Median device time of a callable: one warm-up, then ``repeats`` runs timed with CUDA events."""

    def __init__(self, cp: Any, repeats: int) -> None:
        self.cp, self.repeats = cp, repeats

    def __call__(self, fn: Callable[[], Any]) -> float:
        cp = self.cp
        fn()
        cp.cuda.Device().synchronize()
        times = []
        for _ in range(self.repeats):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)


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


# -- plain CuPy expressions of the same formulas (for comparison; not bit-exact) ------------------
def cupy_expressions(cp: Any) -> dict[str, Callable[[Any, dict], Any]]:
    def affine(x: Any, s: dict) -> Any:
        scale = (s["hi"] - s["lo"]) / 255
        return cp.clip(cp.rint(x / scale + (0 - s["lo"] / scale)), 0, 255).astype(cp.uint8)

    def st_int8(x: Any, s: dict) -> Any:
        steps = (s["hi"] - s["lo"]) / 255
        return (cp.clip(cp.floor((x - s["lo"]) / steps), 0, 255) - 128).astype(cp.int8)

    def faiss8(x: Any, s: dict) -> Any:
        return (255 * cp.clip((x - s["lo"]) / (s["hi"] - s["lo"]), 0, 1)).astype(cp.uint8)

    def faiss4(x: Any, s: dict) -> Any:
        u = (15 * cp.clip((x - s["lo"]) / (s["hi"] - s["lo"]), 0, 1)).astype(cp.uint8)
        return u[:, 0::2] | (u[:, 1::2] << 4)

    def cuvs(x: Any, s: dict) -> Any:
        scale = 255 / (s["hi"] - s["lo"])
        return cp.clip(cp.around(x * scale + (-128 - s["lo"] * scale)), -128, 127).astype(cp.int8)

    def int8_row(x: Any, s: dict) -> Any:
        scale = (cp.abs(x).max(axis=1, keepdims=True) + 1e-8) / 127
        return cp.clip(cp.rint(x / scale), -127, 127).astype(cp.int8), scale

    def int4_block(x: Any, s: dict) -> Any:
        b = x.reshape(x.shape[0], -1, 64)
        scale = cp.abs(b).max(axis=2, keepdims=True) / 7
        q = (cp.clip(cp.rint(b / scale), -7, 7).astype(cp.int8).reshape(x.shape).view(cp.uint8)) & 15
        return q[:, 0::2] | (q[:, 1::2] << 4), scale

    def bf16(x: Any, s: dict) -> Any:
        u = x.view(cp.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cp.uint16)

    return {
        "cuvs-sq8": cuvs, "st-int8": st_int8, "st-uint8": lambda x, s: (st_int8(x, s).view(cp.uint8) ^ 0x80),
        "faiss-sq8": faiss8, "faiss-sq4": faiss4, "uint8-affine": affine, "int8-row": int8_row,
        "int4-block": int4_block, "fp16": lambda x, s: x.astype(cp.float16), "bf16": bf16,
        # cupy.packbits has no axis argument; rows of DIMS (a multiple of 8) values pack the same flat
        "binary": lambda x, s: cp.packbits((x > 0).ravel(), bitorder="little").reshape(x.shape[0], -1),
        "st-ubinary": lambda x, s: cp.packbits((x > 0).ravel()).reshape(x.shape[0], -1),
        "st-binary": lambda x, s: (cp.packbits((x > 0).ravel()) ^ 0x80).view(cp.int8).reshape(x.shape[0], -1),
    }


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


def bench_size(cp: Any, timer: Timer, size_bytes: int, copy_gbps: float) -> list[dict[str, Any]]:
    from gpuquant.backends.cupy_backend import CupyBackend
    from gpuquant.codes import Codes
    from gpuquant.schemes import make_scheme

    backend = CupyBackend()
    exprs = cupy_expressions(cp)
    n = size_bytes // (4 * DIMS)
    x = cp.random.standard_normal((n, DIMS), dtype=cp.float32)
    x *= cp.float32(3)
    x += cp.float32(0.25)  # fresh, never zero, not centred
    rows: list[dict[str, Any]] = []
    for name, params in BENCH_SCHEMES:
        row: dict[str, Any] = {"scheme": label(name, params), "op": "transform", "size_bytes": int(x.nbytes),
                               "copy_gbps": copy_gbps}
        rows.append(row)
        try:
            scheme = make_scheme(name, **params)
            state = backend.fit(scheme, x[: min(n, 200_000)]) if scheme.needs_fit else (scheme.initial_state() or {})
            codes = backend.transform(scheme, state, x)
            out = Codes(codes.data, codes.side)
            seconds = timer(lambda: backend.transform(scheme, state, x, out=out))
            code_bytes = codes.data.nbytes + sum(v.nbytes for v in codes.side.values())
            record(row, seconds, x.nbytes + code_bytes, copy_gbps)
            expr = exprs.get(name) if not params else None
            if expr is not None:
                dev_state = {k: cp.asarray(v) for k, v in state.items()}
                row["cupy_expr_seconds"] = timer(lambda: expr(x, dev_state))
                row["speedup_vs_cupy_expr"] = row["cupy_expr_seconds"] / seconds
            if name in INVERSE_SCHEMES and not params:
                inv = {"scheme": row["scheme"], "op": "inverse", "size_bytes": int(x.nbytes), "copy_gbps": copy_gbps}
                rows.append(inv)
                y = cp.empty(x.shape, cp.float32)
                inv_seconds = timer(lambda: backend.inverse_transform(scheme, state, codes, out=y))
                record(inv, inv_seconds, code_bytes + y.nbytes, copy_gbps)
                del y
            del codes, out
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not stop the others
            failed = rows[-1] if "seconds" not in rows[-1] else row
            failed["error"] = error_text(exc)
            failed["traceback"] = traceback.format_exc()[-2000:]
        cp.get_default_memory_pool().free_all_blocks()
    rows.extend(bench_training(cp, timer, x, copy_gbps))
    rows.extend(bench_cuvs(cp, timer, x, copy_gbps))
    del x
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def bench_training(cp: Any, timer: Timer, x: Any, copy_gbps: float) -> list[dict[str, Any]]:
    from gpuquant.backends import cupy_train
    from gpuquant.schemes.scalar import quantile_positions

    lo_pos, hi_pos = quantile_positions(int(x.size), 0.99)
    cases: list[tuple[str, Callable[[], Any], int]] = [
        ("train: exact quantile (radix select, all values)", lambda: cupy_train.select_values(x, lo_pos, hi_pos), 3),
        ("train: cuVS-compatible quantile (1e6-value sample, sort)",
         lambda: cupy_train.quantile_range(x, 0.99, "cuvs", per_dim=False), 0),
        ("train: cupy.quantile (sort of a copy)", lambda: cp.quantile(x.reshape(-1), cp.array([0.005, 0.995])), 1),
        ("train: min/max (one pass)", lambda: cupy_train.minmax(x, per_dim=False), 1),
        ("train: per-dimension min/max (one pass)", lambda: cupy_train.minmax(x, per_dim=True), 1),
    ]
    rows = []
    for name, fn, passes in cases:
        row: dict[str, Any] = {"scheme": name, "op": "train", "size_bytes": int(x.nbytes), "copy_gbps": copy_gbps}
        try:
            record(row, timer(fn), x.nbytes * max(passes, 1), copy_gbps, seconds_first=True)
        except Exception as exc:  # noqa: BLE001 - report and go on
            row["error"] = error_text(exc)
        rows.append(row)
        cp.get_default_memory_pool().free_all_blocks()
    return rows


def markdown(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    lines = [
        f"GPU check: {env.get('device', '?')} (driver {env.get('driver', '?')}, CUDA runtime "
        f"{env.get('cuda_runtime', '?')}, CuPy {env.get('cupy', '?')}, commit {env.get('git_commit', '?')[:10]})",
        f"tests: {report.get('tests', {}).get('summary', 'not run')}",
        f"device copy bandwidth: {report.get('copy_gbps', float('nan')):.0f} GB/s (read + write)",
        "",
        "| scheme | op | input | seconds | GB/s | of copy | CuPy expr (s) | speedup vs CuPy expr |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.get("results", []):
        size = f"{r['size_bytes'] / 2**30:.2f} GiB"
        if "error" in r:
            lines.append(f"| {r['scheme']} | {r['op']} | {size} | FAILED: {r['error'][:80]} | | | | |")
            continue
        expr = f"{r['cupy_expr_seconds'] * 1e3:.2f} ms" if "cupy_expr_seconds" in r else "-"
        speed = f"{r['speedup_vs_cupy_expr']:.1f}x" if "speedup_vs_cupy_expr" in r else "-"
        lines.append(f"| {r['scheme']} | {r['op']} | {size} | {r['seconds'] * 1e3:.3f} ms | {r['gbps']:.0f} | "
                     f"{r['fraction_of_copy']:.2f} | {expr} | {speed} |")
    return "\n".join(lines)


def short_table(report: dict[str, Any]) -> str:
    """The last thing printed: tests, copy bandwidth, and the largest size's transform throughput."""
    results = [r for r in report.get("results", []) if "error" not in r]
    largest = max((r["size_bytes"] for r in results), default=0)
    lines = [
        f"== gpu_check: {report.get('environment', {}).get('device', '?')}",
        f"tests: {report.get('tests', {}).get('summary', 'not run')}",
        f"copy: {report.get('copy_gbps', float('nan')):.0f} GB/s; inputs of {largest / 2**30:.2f} GiB:",
        f"{'scheme':<34} {'op':<9} {'ms':>8} {'GB/s':>7} {'of copy':>8} {'vs CuPy':>8}",
    ]
    for r in results:
        if r["size_bytes"] != largest:
            continue
        vs = f"{r['speedup_vs_cupy_expr']:.1f}x" if "speedup_vs_cupy_expr" in r else "-"
        lines.append(f"{r['scheme'][:34]:<34} {r['op']:<9} {r['seconds'] * 1e3:>8.3f} {r['gbps']:>7.0f} "
                     f"{r['fraction_of_copy']:>8.2f} {vs:>8}")
    failed = [r for r in report.get("results", []) if "error" in r]
    for r in failed:
        lines.append(f"FAILED {r['scheme']} {r['op']} ({r['size_bytes'] / 2**30:.2f} GiB): {r['error'][:100]}")
    if report.get("error"):
        lines.append(f"FAILED: {report['error']}")
    return "\n".join(lines)


def bench_cuvs(cp: Any, timer: Timer, x: Any, copy_gbps: float) -> list[dict[str, Any]]:
    """cuVS's own scalar and binary quantizers on the same input, where cuVS is installed."""
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
    cases: list[tuple[str, str, Callable[[], Any], int]] = [
        ("cuVS: cuvs-sq8", "transform", synced(lambda: scalar.transform(trained, x, output=codes, resources=res)),
         x.nbytes + codes.nbytes),
        ("cuVS: cuvs-sq8", "inverse", synced(lambda: scalar.inverse_transform(trained, codes, resources=res)),
         codes.nbytes + x.nbytes),
        ("cuVS: binary", "transform", synced(lambda: binary.transform(x, output=bits, resources=res)),
         x.nbytes + bits.nbytes),
        ("cuVS: train (quantile 0.99, 1e6-value sample)", "train",
         synced(lambda: scalar.train(scalar.QuantizerParams(quantile=0.99), x, resources=res)), 0),
    ]
    rows = []
    for name, op, fn, moved in cases:
        row: dict[str, Any] = {"scheme": name, "op": op, "size_bytes": int(x.nbytes), "copy_gbps": copy_gbps}
        try:
            record(row, timer(fn), moved or x.nbytes, copy_gbps, seconds_first=True)
        except Exception as exc:  # noqa: BLE001 - report and go on
            row["error"] = error_text(exc)
        rows.append(row)
    del codes, bits
    cp.get_default_memory_pool().free_all_blocks()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="also copy the results into this directory")
    ap.add_argument("--quick", action="store_true", help="256 MiB inputs only (a smoke run)")
    ap.add_argument("--no-tests", action="store_true", help="skip the pytest run")
    ap.add_argument("--sizes-gib", default="1,4", help="input sizes in GiB, comma-separated (default 1,4)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--test-timeout", type=int, default=420, help="seconds allowed for the test run")
    args = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: dict[str, Any] = {"benchmark": "gpu_check", "time": stamp, "quick": args.quick, "repeats": max(5, args.repeats)}
    if not args.no_tests:
        report["tests"] = run_tests(RESULTS / f"gpu_tests_{stamp}.txt", args.test_timeout)
    try:
        import cupy as cp

        report["environment"] = environment(cp)
        timer = Timer(cp, max(5, args.repeats))
        sizes = [256 * 2**20] if args.quick else [int(float(s) * 2**30) for s in args.sizes_gib.split(",")]
        report["copy_gbps"] = copy_bandwidth(cp, timer, max(sizes))
        report["results"] = []
        for size in sizes:
            report["results"].extend(bench_size(cp, timer, size, report["copy_gbps"]))
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
