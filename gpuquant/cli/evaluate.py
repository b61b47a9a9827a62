"""``gpuquant eval``: recall@k and reconstruction error of a scheme on DATA."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import files as gfiles
from gpuquant.cli import render
from gpuquant.cli.common import BACKENDS, Report, add_source_args, get_quantizer, positive_int, resolve_input
from gpuquant.errors import UsageError


def cmd_eval(args: argparse.Namespace) -> Report:
    """Reconstruction error and recall@k of a scheme on DATA (see gpuquant.evaluate)."""
    from gpuquant.engine.evaluation import evaluate_input

    if args.rescore_with is not None and args.rescore is None:
        raise UsageError("gpuquant eval: error: --rescore-with needs --rescore (the candidates to re-rank)")
    path, _ = resolve_input(args.data, args.shape)
    q = get_quantizer(args)
    queries = np.asarray(gfiles.load_matrix(Path(args.queries))) if args.queries else None
    start = time.perf_counter()
    r = evaluate_input(path, q, queries, k=args.k, n_queries=args.n_queries, rescore=args.rescore,
                       rescore_with=args.rescore_with or "original", backend=args.backend, shape=args.shape,
                       sample_rows=args.sample_rows, seed=args.seed, progress=args.format == "human",
                       column=args.column, dataset=args.dataset)
    r["seconds"] = time.perf_counter() - start
    return r, render.eval_text(r)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``eval``."""
    p = sub.add_parser("eval", parents=parents, help="recall@k and reconstruction error of a scheme on DATA")
    p.add_argument("data", metavar="DATA",
                   help="the corpus: a .npy matrix, a raw float32 file with --shape, a directory of .npy shards, "
                        "Parquet (--column), HDF5 (--dataset), a big-ann file, or 'demo' (read in batches: "
                        "memory stays bounded)")
    p.add_argument("--shape", metavar="ROWS,DIM", help="DATA is raw float32 of this shape (ROWS may be auto)")
    p.add_argument("--sample-rows", type=positive_int, metavar="N",
                   help="evaluate on N rows drawn at random (seeded by --seed) instead of the whole corpus")
    p.add_argument("--seed", type=int, default=0, help="random seed of --sample-rows (default 0)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--scheme", default="int8-row", help="a preset or family (default int8-row)")
    how.add_argument("--quantizer", metavar="Q.json", help="a saved, fitted quantizer")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a scheme parameter (repeatable)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--queries", metavar="Q.npy", help="query vectors (default: the first --n-queries rows)")
    held.add_argument("--n-queries", type=positive_int, default=1000, help="rows held out as queries (1000)")
    p.add_argument("--k", type=positive_int, default=10, help="neighbours (default 10)")
    p.add_argument("--rescore", type=positive_int, metavar="M", help="re-rank k*M candidates with the float query")
    p.add_argument("--rescore-with", choices=("original", "reconstructed"),
                   help="with --rescore: rank the candidates by the original vectors (default) or the decoded ones")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (GPU when one works, else numpy), numpy, cupy or cuvs")
    add_source_args(p)
    p.set_defaults(func=cmd_eval)
