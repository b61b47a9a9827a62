"""``gpuquant export-info`` (how a consumer loads an export preset's codes), ``gpuquant inspect``
(a quantizer JSON, a store, a ``.npy`` file or another input source; stores are opened with the checks
of :func:`gpuquant.open`, a ``.npy`` file's length is checked against its header, inputs are read
through :func:`gpuquant.engine.sources.open_source`) and ``gpuquant verify`` (a store's content
against its checksums)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gpuquant import files as gfiles
from gpuquant import store as gstore
from gpuquant.cli import render
from gpuquant.cli.common import Report, add_source_args, array_summary, quantizer_info
from gpuquant.errors import GpuquantError, InputError


def cmd_export_info(args: argparse.Namespace) -> Report:
    """How to load an export preset's codes into its consumer (or the list of export presets)."""
    from dataclasses import asdict

    from gpuquant import export

    if not args.name:
        rows = [{"name": e.preset, "consumer": e.consumer, "encoding": e.encoding} for e in export.EXPORTS.values()]
        return {"exports": rows}, render.exports_text(rows)
    info = export.export_info(args.name)
    doc = {"export": export.loading_entry(args.name, args.dim) or asdict(info)}
    return doc, export.render(info, args.dim)


def _inspect_npy(p: Path) -> Report:
    header = gfiles.read_npy_header(p)
    gfiles.check_length(p, header)
    doc = {"kind": "npy", "path": str(p), "shape": list(header.shape), "dtype": header.dtype.name,
           "fortran_order": header.fortran_order, "bytes": header.data_bytes}
    return doc, render.npy_text(doc)


def _inspect_source(p: Path, args: argparse.Namespace) -> Report:
    from gpuquant.engine.sources import open_source

    src = open_source(p, column=args.column, dataset=args.dataset)
    try:
        doc = src.describe()
    finally:
        src.close()
    return doc, render.source_text(p, doc)


def _inspect_converted(p: Path) -> Report:
    store = gstore.open(p, allow_incomplete=True)  # the checks of gpuquant.open: a broken store is refused
    info = quantizer_info(store.quantizer)
    m = store.manifest
    side = {k: array_summary(v) if v.dtype.kind in "biuf" else {"shape": list(v.shape), "dtype": v.dtype.name}
            for k, v in store.side.items()}
    doc = {"kind": "converted", "path": str(p), "manifest": m, "side_summary": side, "quantizer": info}
    return doc, render.store_text(doc)


def _inspect_quantizer(p: Path) -> Report:
    from gpuquant import Quantizer

    try:
        q = Quantizer.load(p, backend="numpy")
    except GpuquantError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p} is not a gpuquant quantizer JSON ({type(exc).__name__}: {exc})") from exc
    doc = {"kind": "quantizer", "path": str(p), "quantizer": quantizer_info(q)}
    return doc, render.quantizer_file_text(doc)


def cmd_inspect(args: argparse.Namespace) -> Report:
    """Describe a quantizer JSON, a converted directory, a ``.npy`` file or a Parquet / HDF5 / big-ann input."""
    p = Path(args.path)
    if not p.exists():
        raise InputError(f"path not found: {p}")
    from gpuquant.engine.readers import kind_of

    if kind_of(p) or args.column or args.dataset:
        return _inspect_source(p, args)
    if p.is_dir():
        return _inspect_converted(p)
    if p.name == gstore.MANIFEST and gstore.is_converted_dir(p.parent):
        return _inspect_converted(p.parent)
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        return _inspect_npy(p)
    return _inspect_quantizer(p)


def cmd_verify(args: argparse.Namespace) -> Report:
    """Re-read a store and check it against the checksums recorded when it was written."""
    v = gstore.verify(args.store)
    return {"path": str(args.store), "verify": v}, (
        f"{args.store}: intact: {v['rows_checked']} rows in {v['ranges']} ranges match their {v['method']} "
        f"checksums ({v['bytes_read'] / 1e6:.3f} MB read)")


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``export-info`` and ``inspect``."""
    p = sub.add_parser("export-info", parents=parents,
                       help="how to load an export preset's codes into its consumer (Qdrant, pgvector, GGUF, ...)")
    p.add_argument("name", metavar="NAME", nargs="?", help="an export preset; none: list them")
    p.add_argument("--dim", type=int, help="fill the number of dimensions into the snippet")
    p.set_defaults(func=cmd_export_info)

    p = sub.add_parser("inspect", parents=parents, help="describe a quantizer JSON, an output directory or a .npy")
    p.add_argument("path", metavar="PATH", help="a quantizer JSON, a store directory (or its manifest.json) or a .npy")
    add_source_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", parents=parents,
                       help="re-read a store and check every row against the checksums recorded when it was "
                            "written (exit 0 intact, 1 damaged, 2 not a store, 3 no checksums to check)")
    p.add_argument("store", metavar="STORE", help="the store directory to check")
    p.set_defaults(func=cmd_verify)
