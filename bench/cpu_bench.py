"""CPU benchmark: gpuquant's numpy backend against the code users run today, side by side.

For each case, on the same float32 input (fresh random normal data, never zeros):
ours (``Quantizer(..., backend="numpy")``), the peer (the plain numpy row-wise int8 recipe for ``int8-row``;
sentence-transformers ``quantize_embeddings`` for ``st-int8`` (its formula, verbatim, when the
package is not installed); faiss-cpu ``ScalarQuantizer.compute_codes`` for ``faiss-sq8``), and the
memory roofline: a multi-threaded copy of the input measured in the same run, scaled to the case's
bytes (input read + codes written). Medians of ``--repeats`` runs after one warm-up. Writes JSON and
a markdown table to ``--out`` (default ``bench/results/``) and prints the table.

    python bench/cpu_bench.py                 # 1 GiB input, 5 repeats
    python bench/cpu_bench.py --quick         # 64 MiB, 1 repeat (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
from _common import git_commit

import gpuquant
from gpuquant.backends import numpy_backend


def rowwise_int8_recipe(x: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """The plain numpy row-wise int8 recipe: ``s = (max|x| + eps) / 127``, ``clip(round(x / s), -127, 127)``."""
    m = np.max(np.abs(x), axis=1, keepdims=True) + eps
    s = (m / 127.0).astype(np.float32)
    q = np.clip(np.round(x / s), -127, 127).astype(np.int8)
    return q, s[:, 0]


def st_quantize_int8(emb: np.ndarray, ranges: np.ndarray) -> tuple[Callable[[], object], str]:
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:
        def run() -> np.ndarray:  # sentence-transformers 6.2 quantize_embeddings, int8 branch
            r = ranges.astype(np.float32, copy=False)
            starts = r[0, :]
            steps = (r[1, :] - starts) / 255
            steps = np.where(steps == 0, 1, steps)
            q = np.clip(np.floor((emb - starts) / steps), 0, 255)
            return (q - 128).astype(np.int8)
        return run, "sentence-transformers formula (package not installed)"
    return (lambda: quantize_embeddings(emb, precision="int8", ranges=ranges)), "sentence-transformers"


def threaded_copy(src: np.ndarray, dst: np.ndarray) -> None:
    n, d = src.shape
    futures = [numpy_backend._pool().submit(np.copyto, dst[a:b], src[a:b])
               for a, b in numpy_backend.row_chunks(n, d, 1 << 22)]
    for f in futures:
        f.result()


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(size_mib: int, repeats: int, d: int) -> dict:
    rng = np.random.default_rng()
    n = size_mib * 2**20 // (4 * d)
    x = rng.standard_normal((n, d), dtype=np.float32)
    copy_dst = np.empty_like(x)
    copy_s = median_seconds(lambda: threaded_copy(x, copy_dst), repeats)
    copy_gbps = 2 * x.nbytes / copy_s / 1e9
    del copy_dst

    cases = []
    q_row = gpuquant.Quantizer("int8-row", backend="numpy")
    cases.append(("int8-row", lambda: q_row.transform(x), lambda: rowwise_int8_recipe(x), "plain numpy recipe", 1 + 4 / d))
    q_st = gpuquant.Quantizer("st-int8", backend="numpy").fit(x[: min(n, 100_000)])
    ranges = np.vstack([q_st.state["lo"], q_st.state["hi"]])
    st_fn, st_label = st_quantize_int8(x, ranges)
    cases.append(("st-int8", lambda: q_st.transform(x), st_fn, st_label, 1.0))
    try:
        import faiss

        sq = faiss.ScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit)
        sq.train(x[: min(n, 100_000)])
        q_fs = gpuquant.Quantizer("faiss-sq8", backend="numpy").fit(x[: min(n, 100_000)])
        cases.append(("faiss-sq8", lambda: q_fs.transform(x), lambda: sq.compute_codes(x),
                      f"faiss-cpu {faiss.__version__} ScalarQuantizer", 1.0))
    except ImportError:
        pass

    rows = []
    for scheme, ours, peer, peer_label, out_bytes_per_value in cases:
        ours_s = median_seconds(ours, repeats)
        peer_s = median_seconds(peer, repeats)
        moved = x.nbytes + x.size * out_bytes_per_value
        roof_s = moved / (copy_gbps * 1e9)
        rows.append({
            "scheme": scheme, "peer": peer_label, "bytes_moved": int(moved),
            "ours_seconds": ours_s, "peer_seconds": peer_s, "speedup_vs_peer": peer_s / ours_s,
            "roofline_seconds": roof_s, "fraction_of_roofline": roof_s / ours_s,
            "ours_gbps": moved / ours_s / 1e9,
        })
    return {
        "benchmark": "cpu", "input": {"rows": n, "dims": d, "dtype": "float32", "bytes": x.nbytes},
        "repeats": repeats, "threads": numpy_backend.worker_count(), "copy_gbps": copy_gbps,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "python": sys.version.split()[0], "numpy": np.__version__},
        "gpuquant": gpuquant.__version__, "git_commit": git_commit(), "results": rows,
    }


def table(report: dict) -> str:
    inp = report["input"]
    lines = [
        f"CPU, {report['threads']} threads, {inp['bytes'] / 2**30:.2f} GiB float32 ({inp['rows']} x {inp['dims']}), "
        f"median of {report['repeats']}; copy bandwidth {report['copy_gbps']:.1f} GB/s (read + write)",
        "",
        "| scheme | peer | ours (s) | peer (s) | speedup vs peer | ours GB/s | fraction of copy roofline |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(f"| {r['scheme']} | {r['peer']} | {r['ours_seconds']:.3f} | {r['peer_seconds']:.3f} | "
                     f"{r['speedup_vs_peer']:.2f}x | {r['ours_gbps']:.2f} | {r['fraction_of_roofline']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dims", type=int, default=1024)
    ap.add_argument("--quick", action="store_true", help="64 MiB, 1 repeat: a smoke test")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    size, repeats = (64, 1) if args.quick else (args.size_mib, args.repeats)
    report = run(size, repeats, args.dims)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "cpu_quick" if args.quick else "cpu"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(table(report) + "\n")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
