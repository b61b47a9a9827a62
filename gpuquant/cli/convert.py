"""``gpuquant convert`` (stream INPUT into a store, here or on Dask) and ``gpuquant plan`` (N_max)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from gpuquant.cli import render
from gpuquant.cli.common import (
    Report,
    add_scheme_args,
    add_source_args,
    backend_used,
    get_quantizer,
    positive_int,
    quantizer_args,
    resolve_input,
)
from gpuquant.errors import BackendUnavailableError, UsageError

log = logging.getLogger("gpuquant.cli")


def _convert_device(args: argparse.Namespace) -> str:
    """--device, reconciled with the older --backend (numpy = cpu, cupy = gpu)."""
    implied = {"numpy": "cpu", "cupy": "gpu"}.get(args.backend)
    if implied and args.device not in ("auto", implied):
        raise UsageError(f"gpuquant convert: error: --backend {args.backend} and --device {args.device} disagree")
    return implied or args.device


def _convert_dask(args: argparse.Namespace, path: Any, q: Any, device: str, demo: bool) -> dict[str, Any]:
    """``convert`` on a Dask cluster (``--scheduler ADDRESS`` or ``--workers N``): gpuquant.cluster."""
    if args.scheduler and args.workers:
        raise UsageError("gpuquant convert: error: --scheduler (an existing cluster) and --workers (a local one) "
                         "exclude each other")
    from gpuquant import cluster as gcluster

    with gcluster.cluster_client(args.scheduler, args.workers, device) as client:
        log.info("Dask cluster: %s", client)
        return gcluster.convert(path, args.output, q, client=client, device=device, batch_rows=args.batch_rows,
                             resume=args.resume, overwrite=args.overwrite, shape=args.shape,
                             column=args.column, dataset=args.dataset, source_info={"demo": demo},
                             progress=args.format == "human")


def cmd_convert(args: argparse.Namespace) -> Report:
    """Stream INPUT through the quantizer into the OUTPUT store (fit first if needed); resumable."""
    from gpuquant.engine import convert

    if not (args.scheme or args.quantizer or args.resume):
        raise UsageError("gpuquant convert: error: one of the arguments --scheme --quantizer is required "
                         "(or --resume, which takes them from OUTPUT)")
    device = _convert_device(args)
    q = get_quantizer(args) if (args.scheme or args.quantizer) else None
    if q is not None and args.backend != "auto":
        backend_used(q, strict=True)
    path, demo = resolve_input(args.input, args.shape)
    log.info("reading %s", "the demo dataset" if demo else path)
    if args.scheduler or args.workers:
        doc = _convert_dask(args, path, q, device, demo)
    else:
        doc = convert(path, args.output, q, device=device, batch_rows=args.batch_rows, resume=args.resume,
                      overwrite=args.overwrite, progress=args.format == "human", shape=args.shape,
                      column=args.column, dataset=args.dataset, source_info={"demo": demo})
    warning = render.quality_warning(doc)
    if warning:
        log.warning("%s", warning)
    return doc, render.convert_text(doc)


def cmd_plan(args: argparse.Namespace) -> Report:
    """The N_max planner: what fits on the GPU for an operation (see gpuquant.planner)."""
    from gpuquant.engine.sources import open_source
    from gpuquant.planner import plan

    rows, dim, dtype = args.rows, args.dim, args.dtype
    if args.input:
        path, _ = resolve_input(args.input)
        src = open_source(path, shape=args.shape, column=args.column, dataset=args.dataset)
        rows, dim, dtype = rows or src.rows, dim or src.dim, src.dtype.name if args.dtype is None else dtype
        src.close()
    if dim is None:
        raise UsageError("gpuquant plan: error: give INPUT, or --dim (and --rows) to plan without a file")
    scheme, params = quantizer_args(args, "numpy")
    bandwidths = {k: v * 1e9 for k, v in (("read", args.read_gbs), ("write", args.write_gbs),
                                          ("h2d", args.h2d_gbs), ("d2h", args.d2h_gbs)) if v is not None}
    try:
        p = plan(scheme, params=params, dim=dim, rows=rows, dtype=dtype or "float32", op=args.op,
                 gpu_memory=args.gpu_memory, other=args.other, headroom=args.headroom, in_flight=args.in_flight,
                 batch_rows=args.batch_rows, output=args.output, bandwidths=bandwidths or None, measure=args.measure)
    except BackendUnavailableError as exc:
        if args.gpu_memory is not None or args.measure:
            raise
        raise _no_gpu(exc, scheme, params, dim, rows, dtype or "float32", args.output, bandwidths) from None
    p.require()
    return p.to_dict(), p.text()


def _no_gpu(exc: Exception, scheme: Any, params: dict[str, Any] | None, dim: int, rows: int | None, dtype: str,
            output: str | None, bandwidths: dict[str, float]) -> UsageError:
    """``plan`` with no GPU here and no ``--gpu-memory``: a usage error that says what a CPU run of
    the same input writes and how long its disk traffic takes (when the rows are known)."""
    from gpuquant.planner import cpu_run, format_bytes

    text = f"gpuquant plan: error: {exc}"
    if rows is None:
        return UsageError(text)
    cpu = cpu_run(scheme, dim=dim, rows=rows, dtype=dtype, params=params, output=output, bandwidths=bandwidths)
    room = "" if cpu["disk_fits"] is None else (
        f" ({format_bytes(cpu['disk_free_bytes'])} free: {'fits' if cpu['disk_fits'] else 'DOES NOT FIT'})")
    bw = ", ".join(f"{k} {v / 1e9:g} GB/s" for k, v in cpu["bandwidths"].items())
    return UsageError(f"{text}. A CPU run (convert --device cpu) of {rows:,} rows writes "
                      f"{format_bytes(cpu['output_bytes'])}{room} and takes at least {cpu['estimated_seconds']:.1f} s "
                      f"(bound by {cpu['bound_by']}; {'given' if bandwidths else 'assumed'} {bw}; the CPU's "
                      "encoding speed is not modelled)", details={"cpu_run": cpu})


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``convert`` and ``plan``."""
    p = sub.add_parser("convert", parents=parents, help="stream INPUT through a quantizer into the OUTPUT store")
    p.add_argument("input", metavar="INPUT",
                   help="a .npy file (2-D float), a raw float32 file with --shape, a directory of .npy shards, "
                        "Parquet (a file or directory), HDF5, .fbin/.u8bin/.i8bin, or 'demo'")
    p.add_argument("output", metavar="OUTPUT", help="the store to write (new, unless --resume or --overwrite)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--scheme", help="fit this preset or family on INPUT")
    how.add_argument("--quantizer", metavar="Q.json", help="use this fitted quantizer")
    add_scheme_args(p)
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                   help="auto (the GPU when one works and implements the scheme), gpu (never falls back), cpu")
    p.add_argument("--batch-rows", type=positive_int, metavar="N",
                   help="rows per batch (default: the planner's N_max on the GPU, 8 MiB of input on the CPU)")
    p.add_argument("--shape", metavar="ROWS,DIM",
                   help="INPUT is raw float32 of this shape (ROWS may be auto: from the file size)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished store OUTPUT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gpuquant output directory")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on this Dask cluster (e.g. tcp://host:8786; needs gpuquant[dask]); OUTPUT must be "
                        "visible to every worker at the same path")
    p.add_argument("--workers", type=positive_int, metavar="N",
                   help="run on a local Dask cluster of N workers (one per GPU with dask-cuda, else processes); "
                        "--batch-rows is then the rows per task")
    add_source_args(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("plan", parents=parents, help="N_max: the batch that fits on the GPU, peak, time, disk")
    p.add_argument("input", metavar="INPUT", nargs="?", help="a .npy, raw (with --shape), shard directory or 'demo'")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--scheme", default="int8-row", help="a preset or family (default int8-row)")
    how.add_argument("--quantizer", metavar="Q.json", help="a saved quantizer")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a scheme parameter (repeatable)")
    p.add_argument("--op", choices=("fit", "transform", "inverse", "convert"), default="convert",
                   help="the operation to plan (default convert: read, encode and write in batches)")
    p.add_argument("--rows", type=positive_int, help="rows (default: INPUT's)")
    p.add_argument("--dim", type=positive_int, help="dimensions (default: INPUT's)")
    p.add_argument("--dtype", choices=("float16", "float32", "float64"), default=None, help="input dtype (float32)")
    p.add_argument("--shape", metavar="ROWS,DIM", help="INPUT is raw float32 of this shape")
    p.add_argument("--gpu-memory", metavar="SIZE", help="free GPU memory to plan with, e.g. 80GiB (no GPU needed)")
    p.add_argument("--other", metavar="SIZE", default="0", help="M_other: memory used by other things (default 0)")
    p.add_argument("--headroom", type=float, default=0.10, help="H, the scratch headroom fraction (default 0.10)")
    p.add_argument("--in-flight", type=positive_int, default=2, help="convert: batches in flight (default 2)")
    p.add_argument("--batch-rows", type=positive_int, metavar="N", help="convert: plan this batch size instead")
    p.add_argument("--output", metavar="DIR", help="convert: where the output goes (checks the free disk space)")
    for name in ("read", "write", "h2d", "d2h"):
        p.add_argument(f"--{name}-gbs", type=float, metavar="GB/S", help=f"{name} bandwidth for the time estimate")
    p.add_argument("--measure", action="store_true", help="run one batch on the GPU: real peak and H_measured")
    add_source_args(p)
    p.set_defaults(func=cmd_plan)
