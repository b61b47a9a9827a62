"""Out-of-core conversion benchmark: ``gpuquant.convert`` end to end against its rooflines, and
random row reads from a multi-GB store.

In one run, on one fresh float32 ``.npy`` input (random normal, ``--size-mb``):

1. **I/O roofline**: reading the file alone, the way the engine reads it (``preadv`` into a reused
   8 MiB buffer), from the page cache (``warm``) and after evicting the file's pages with
   ``posix_fadvise(DONTNEED)`` (``cold``: the disk). GB/s of input.
2. **CPU convert** (``device="cpu"``), per scheme, warm and cold: GB/s of input for the whole call
   (fit pass + stream + fsync + check + report) and for the stream alone, and the ratio of the
   stream's rate to the read roofline of the same cache state.
3. **GPU convert** (only where the cupy backend works): the same per scheme with ``device="gpu"``,
   against pinned host-to-device bandwidth measured in the same run (``ndarray.set`` from pinned
   memory, 5 repeats after a warm-up).
4. **Random rows**: a store of ``--store-gb`` GB of int8-row codes (filled with random codes, not
   converted: this measures reading), fully in the page cache; ``get_rows`` of 1,000 random ids,
   median of ``--repeats`` draws, on a fresh mapping (first touch: page faults) and warm.

Writes ``convert_<device>.json`` (device, CPU count, versions, git sha, every figure) and
``convert_<device>.md`` (a table) to ``--out`` and prints the table.

    python bench/convert_bench.py                          # 2 GiB input, 3 GB store
    python bench/convert_bench.py --size-mb 256 --store-gb 1 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import git_commit

import gpuquant
from gpuquant import store as gstore
from gpuquant.engine.sources import open_source

CHUNK = 8 * 2**20


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (this file only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd) if os.access(path, os.W_OK) else None
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make_input(path: Path, size_mb: int, dim: int) -> tuple[int, int]:
    rows = max(1, size_mb * 2**20 // (dim * 4))
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    rng = np.random.default_rng(0)
    step = max(1, CHUNK // (dim * 4))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        mm[a:b] = rng.standard_normal((b - a, dim), dtype=np.float32)
    mm.flush()
    del mm
    return rows, dim


def read_roofline(path: Path) -> float:
    src = open_source(path)
    rows = max(1, CHUNK // src.row_bytes)
    buf = np.empty((rows, src.dim), src.dtype)
    t0 = time.perf_counter()
    for a in range(0, src.rows, rows):
        src.read_into(a, min(src.rows, a + rows), buf)
    dt = time.perf_counter() - t0
    src.close()
    return src.nbytes / dt / 1e9


def write_roofline(dirpath: Path, nbytes: int = 256 * 2**20) -> float:
    """Writing ``nbytes`` with ``pwrite`` in 8 MiB pieces, then fsync: the disk's durable write rate."""
    path = dirpath / "write-roofline.bin"
    buf = np.random.default_rng(3).integers(0, 255, CHUNK, dtype=np.uint8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    try:
        for off in range(0, nbytes, CHUNK):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    path.unlink()
    return nbytes / dt / 1e9


def run_convert(path: Path, out: Path, scheme: str, device: str) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    rep = gpuquant.convert(path, out, scheme, device=device, progress=False)
    wall = time.perf_counter() - t0
    nbytes = rep["bytes_in"]
    stream_s = rep["seconds"]["transform"]
    flush_s = rep["seconds"]["flush"]
    return {"scheme": scheme, "device": device, "wall_s": round(wall, 3), "fit_s": rep["seconds"]["fit"],
            "stream_s": stream_s, "flush_s": flush_s, "bytes_out": rep["bytes_out"],
            "gbps_total": round(nbytes / wall / 1e9, 3),
            "gbps_stream": round(nbytes / stream_s / 1e9, 3),
            "gbps_pipeline": round(nbytes / max(stream_s - flush_s, 1e-9) / 1e9, 3), "batch_rows": rep["batch_rows"],
            "read_s": rep["seconds"]["read"], "compute_s": rep["seconds"]["compute"], "write_s": rep["seconds"]["write"],
            "compression_ratio": rep["compression_ratio"], "rel_error": rep["reconstruction"]["rel_error"]}


def pinned_h2d() -> float | None:
    try:
        from gpuquant.backends.cupy_backend import CupyBackend

        if not CupyBackend.is_available()[0]:
            return None
        from gpuquant.planner import _pinned_bandwidths

        return _pinned_bandwidths(512 * 2**20)["h2d"] / 1e9
    except Exception:  # noqa: BLE001 - no GPU: no GPU figures
        return None


def build_store(path: Path, gb: float, dim: int) -> gstore.Store:
    q = gpuquant.Quantizer("int8-row", backend="numpy")
    rows = int(gb * 1e9 // dim)
    w = gstore.create(path, quantizer=q, rows=rows, dim=dim,
                      manifest={"scheme": "int8-row", "family": "absmax", "params": q.scheme.params,
                                "source": {"kind": "synthetic", "shape": [rows, dim], "dtype": "float32"}})
    rng = np.random.default_rng(1)
    step = max(1, 64 * 2**20 // dim)
    codes = rng.integers(-127, 128, (step, dim), dtype=np.int8)
    scales = rng.uniform(0.001, 0.01, step).astype(np.float32)
    for a in range(0, rows, step):
        m = min(rows, a + step) - a
        w.write_rows(a, {"codes": codes[:m], "scales": scales[:m]})
    w.complete()
    w.close()
    return gpuquant.open(path)


def warm_file(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 * 2**20):
            pass


def prepare_cache(path: Path, cache: str) -> None:
    """``cold``: evict ``path`` from the page cache; ``warm``: read it all into it."""
    if cache == "cold":
        evict(path)
    else:
        warm_file(path)


def time_get_rows(path: Path, rows: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    first = []
    for _ in range(min(repeats, 5)):  # fresh mappings: page faults on first touch
        st = gpuquant.open(path)
        ids = rng.integers(0, rows, 1000)
        t0 = time.perf_counter()
        st.get_rows(ids)
        first.append(time.perf_counter() - t0)
    st = gpuquant.open(path)
    warm = []
    for _ in range(repeats):
        ids = rng.integers(0, rows, 1000)
        st.get_rows(ids)  # warm-up of these pages
        t0 = time.perf_counter()
        st.get_rows(ids)
        warm.append(time.perf_counter() - t0)
    fresh_ids = []
    for _ in range(repeats):  # new ids, same mapping
        ids = rng.integers(0, rows, 1000)
        t0 = time.perf_counter()
        st.get_rows(ids)
        fresh_ids.append(time.perf_counter() - t0)
    ms = lambda xs: round(1e3 * statistics.median(xs), 3)  # noqa: E731
    return {"first_touch_ms": ms(first), "new_ids_ms": ms(fresh_ids), "repeat_ids_ms": ms(warm)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--schemes", default="int8-row,cuvs-sq8,st-int8,fp16,binary")
    ap.add_argument("--store-gb", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--workdir", default=None, help="where the input and outputs go (default: a temp dir)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--quick", action="store_true", help="warm cache only, no cold runs")
    args = ap.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gq-convert-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "input.npy"
    rows, dim = make_input(src, args.size_mb, args.dim)
    size_gb = src.stat().st_size / 1e9
    h2d = pinned_h2d()
    devices = ["cpu"] + (["gpu"] if h2d else [])
    results: dict[str, Any] = {
        "input": {"rows": rows, "dim": dim, "gb": round(size_gb, 3)},
        "host": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                 "python": platform.python_version(), "numpy": np.__version__, "gpuquant": gpuquant.__version__,
                 "git": git_commit()},
        "pinned_h2d_gbps": round(h2d, 2) if h2d else None,
        "roofline": {}, "convert": [], "get_rows": None,
    }
    caches = ["warm"] if args.quick else ["warm", "cold"]
    for cache in caches:
        prepare_cache(src, cache)
        results["roofline"][cache] = round(read_roofline(src), 3)
    results["write_roofline_gbps"] = round(write_roofline(work), 3)
    for device in devices:
        for scheme in args.schemes.split(","):
            for cache in caches:
                prepare_cache(src, cache)
                r = run_convert(src, work / "out", scheme, device)
                r["cache"] = cache
                r["vs_read"] = round(r["gbps_stream"] / results["roofline"][cache], 3)
                # the I/O bound of a durable conversion: read the input and write + fsync the output
                io_s = (r["stream_s"] * r["gbps_stream"]) / results["roofline"][cache] + \
                    r["bytes_out"] / 1e9 / results["write_roofline_gbps"]
                r["io_bound_s"] = round(io_s, 3)
                r["vs_io"] = round(io_s / r["stream_s"], 3)
                if device == "gpu" and h2d:
                    r["vs_pinned_h2d"] = round(r["gbps_stream"] / h2d, 3)
                results["convert"].append(r)
                print(f"{device} {scheme:<10} {cache:<5} {r['gbps_stream']:.3f} GB/s stream, "
                      f"{r['gbps_total']:.3f} GB/s total", file=sys.stderr)
    shutil.rmtree(work / "out", ignore_errors=True)
    src.unlink()

    store_path = work / "store"
    shutil.rmtree(store_path, ignore_errors=True)
    t0 = time.perf_counter()
    st = build_store(store_path, args.store_gb, args.dim)
    build_s = time.perf_counter() - t0
    warm_file(store_path / "codes.npy")
    warm_file(store_path / "scales.npy")
    results["get_rows"] = {"store_gb": round((store_path / "codes.npy").stat().st_size / 1e9, 3), "rows": st.rows,
                           "ids": 1000, "build_s": round(build_s, 2), **time_get_rows(store_path, st.rows, args.repeats)}
    del st
    shutil.rmtree(store_path, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if h2d else "cpu"
    (out / f"convert_{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    table = render(results)
    (out / f"convert_{tag}.md").write_text(table + "\n")
    print(table)


def render(r: dict[str, Any]) -> str:
    h = r["host"]
    lines = [f"# convert benchmark ({h['cpus']} CPUs, {h['platform']}, gpuquant {h['gpuquant']} @ {h['git']})", "",
             f"Input: {r['input']['rows']:,} x {r['input']['dim']} float32 = {r['input']['gb']} GB (.npy). "
             "GB/s count input bytes. `stream` = the streaming phase; `total` = the whole call (fit pass, "
             "stream, fsync, check, report).", "",
             "| read alone (roofline) | GB/s |", "|---|---|"]
    lines += [f"| {cache} (page cache{'' if cache == 'warm' else ' evicted: disk'}) | {v:.3f} |"
              for cache, v in r["roofline"].items()]
    lines += [f"| write + fsync (durable output) | {r['write_roofline_gbps']:.3f} |"]
    if r.get("pinned_h2d_gbps"):
        lines += [f"| pinned host-to-device | {r['pinned_h2d_gbps']:.2f} |"]
    lines += ["", "`stream` includes the final fsync of the output (`flush`); `pipeline` excludes it. `I/O bound` = "
                  "input / read roofline + output / write roofline; `vs I/O` = I/O bound / stream time (1.0 = at the "
                  "I/O roofline). `vs read` = stream GB/s / read-alone GB/s.", "",
              "| device | scheme | cache | stream GB/s | pipeline GB/s | vs read | I/O bound s | stream s | vs I/O | flush s "
              "| total GB/s | fit s | batch rows | compression |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in r["convert"]:
        lines.append(f"| {c['device']} | {c['scheme']} | {c['cache']} | {c['gbps_stream']:.3f} | {c['gbps_pipeline']:.3f} "
                     f"| {c['vs_read']:.2f} | {c['io_bound_s']:.3f} | {c['stream_s']:.3f} | {c['vs_io']:.2f} "
                     f"| {c['flush_s']:.3f} | {c['gbps_total']:.3f} | {c['fit_s']:.3f} | {c['batch_rows']:,} "
                     f"| {c['compression_ratio']:.2f}x |")
        if "vs_pinned_h2d" in c:
            lines[-1] += f" (vs pinned H2D {c['vs_pinned_h2d']:.2f})"
    g = r["get_rows"]
    if g:
        lines += ["", f"Random rows: `get_rows` of 1,000 random ids from a {g['store_gb']} GB int8-row store "
                      f"({g['rows']:,} rows) in the page cache, median of draws:", "",
                  "| fresh mapping (first touch) | same mapping, new ids | same ids again |", "|---|---|---|",
                  f"| {g['first_touch_ms']:.3f} ms | {g['new_ids_ms']:.3f} ms | {g['repeat_ids_ms']:.3f} ms |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
