"""PNG plots of the committed benchmark results (matplotlib, from the ``bench`` extra).

    python bench/plots.py [--results bench/results]

* ``gpu_throughput.png``: every GPU transform/inverse of ``gpu_check_h100.json`` as a fraction of the
  device copy bandwidth measured in the same run, per input size;
* ``quality_recall_vs_bytes.png``: recall@k (plain and rescored) against bytes per vector for every
  preset of each ``quality_*.json``;
* ``cpu_speedup.png``: the CPU benchmark's time of ours against each peer (``cpu.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def gpu_throughput(report: dict, out: Path) -> None:
    rows = [r for r in report["results"] if "fraction_of_copy" in r and r["op"] in ("transform", "inverse")]
    sizes = sorted({r["size_bytes"] for r in rows})
    labels = list(dict.fromkeys(f"{r['scheme'][:28]} {r['op'][:3]}" for r in rows))
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(labels) + 1.5))
    height = 0.8 / len(sizes)
    for i, size in enumerate(sizes):
        frac = {f"{r['scheme'][:28]} {r['op'][:3]}": r["fraction_of_copy"] for r in rows if r["size_bytes"] == size}
        ys = [j + i * height for j in range(len(labels))]
        ax.barh(ys, [frac.get(lab, 0) for lab in labels], height=height, label=f"{size / 2**30:.2f} GiB")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"fraction of device copy bandwidth ({report['copy_gbps']:.0f} GB/s, read + write)")
    ax.set_title(f"gpuquant kernels on {report['environment']['device']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def quality(report: dict, out: Path) -> None:
    rows = [r for r in report["results"] if "recall_at_k" in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["bytes_per_vector"] for r in rows], [r["recall_at_k"] for r in rows], label="codes")
    if all("recall_at_k_rescored" in r for r in rows):
        ax.scatter([r["bytes_per_vector"] for r in rows], [r["recall_at_k_rescored"] for r in rows], marker="x",
                   label=f"rescored ({report['rescore']}x candidates)")
    seen: set[tuple[float, float]] = set()
    for r in rows:
        key = (round(r["bytes_per_vector"]), round(r["recall_at_k"], 3))
        if key not in seen:  # presets with identical codes share a point: label it once
            seen.add(key)
            ax.annotate(r["scheme"], (r["bytes_per_vector"], r["recall_at_k"]), fontsize=6, xytext=(3, -3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("bytes per vector (codes + side arrays)")
    ax.set_ylabel(f"recall@{report['k']} vs exact float32 search")
    ax.set_title(f"{report['data']} ({report['shape'][0]} x {report['shape'][1]})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def cpu(report: dict, out: Path) -> None:
    rows = report["results"]
    fig, ax = plt.subplots(figsize=(7, 3))
    ys = range(len(rows))
    ax.barh([y - 0.2 for y in ys], [r["ours_seconds"] for r in rows], height=0.4, label="gpuquant (numpy backend)")
    ax.barh([y + 0.2 for y in ys], [r["peer_seconds"] for r in rows], height=0.4, label="peer")
    ax.set_yticks(list(ys), [f"{r['scheme']}\nvs {r['peer'][:34]}" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds for {report['input']['bytes'] / 2**30:.2f} GiB float32 ({report['threads']} threads)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    made = []
    gpu = args.results / "gpu_check_h100.json"
    if gpu.exists():
        gpu_throughput(json.loads(gpu.read_text()), args.results / "gpu_throughput.png")
        made.append("gpu_throughput.png")
    for path in sorted(args.results.glob("quality_*.json")):
        quality(json.loads(path.read_text()), args.results / f"{path.stem}_recall_vs_bytes.png")
        made.append(f"{path.stem}_recall_vs_bytes.png")
    if (args.results / "cpu.json").exists():
        cpu(json.loads((args.results / "cpu.json").read_text()), args.results / "cpu_speedup.png")
        made.append("cpu_speedup.png")
    print("\n".join(made))
    return 0


if __name__ == "__main__":
    sys.exit(main())
