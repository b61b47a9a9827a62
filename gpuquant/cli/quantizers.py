"""``gpuquant schemes`` (the presets) and ``gpuquant fit`` (fit a quantizer, save it as JSON)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import files as gfiles
from gpuquant.cli import render
from gpuquant.cli.common import (
    Report,
    add_scheme_args,
    add_source_args,
    backend_used,
    make_quantizer,
    quantizer_info,
    resolve_input,
    scheme_params,
)
from gpuquant.errors import InputError

log = logging.getLogger("gpuquant.cli")


def _preset_row(preset: Any) -> dict[str, Any]:
    from gpuquant import Quantizer

    scheme = Quantizer(preset.name).scheme
    side = sorted(scheme.side_shapes(1, 1024)) if hasattr(scheme, "side_shapes") else []
    return {
        "name": preset.name,
        "family": preset.family,
        "code_dtype": np.dtype(scheme.code_dtype).name,
        "bytes_per_value": float(scheme.bytes_per_value),
        "side": side,
        "peer": preset.peer,
        "params": gfiles.to_jsonable(preset.params),
        "summary": preset.summary,
        "consumer": getattr(preset, "consumer", ""),
    }


def cmd_schemes(args: argparse.Namespace) -> Report:
    """List every preset, one line each."""
    import gpuquant

    rows = [_preset_row(p) for p in gpuquant.presets()]
    return {"presets": rows}, render.schemes_text(rows)


def _check_new_file(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise InputError(f"output's parent directory does not exist: {path.parent}")
    if path.exists() and not overwrite:
        raise InputError(f"output already exists: {path} (pass --overwrite to replace it)")
    if path.is_dir():
        raise InputError(f"output is a directory: {path}")


def cmd_fit(args: argparse.Namespace) -> Report:
    """Fit a quantizer on INPUT and save it as JSON."""
    out = Path(args.output)
    _check_new_file(out, args.overwrite)
    from gpuquant.engine import fit_input

    q = make_quantizer(args.scheme, scheme_params(args.param), args.backend)
    backend_used(q, strict=True)
    path, demo = resolve_input(args.input, args.shape)
    log.info("reading %s", "the demo dataset" if demo else path)
    t0 = time.perf_counter()
    # streaming: memory bounded whatever INPUT's size
    q, desc = fit_input(path, q, shape=args.shape, column=args.column, dataset=args.dataset)
    fit_s = time.perf_counter() - t0
    q.save(out)  # atomic: Quantizer.save writes a temporary file and renames it
    info = quantizer_info(q)
    source = {"path": desc["path"], "demo": demo, "shape": desc["shape"], "dtype": desc["dtype"],
              "bytes": desc["bytes"], "kind": desc["kind"]}
    doc = {"output": str(out), "source": source, "fit_s": round(fit_s, 4), "quantizer": info}
    return doc, render.fit_text(info, tuple(desc["shape"]), fit_s, out)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``schemes`` and ``fit``."""
    p = sub.add_parser("schemes", parents=parents, help="list the presets and the peers they match")
    p.set_defaults(func=cmd_schemes)

    p = sub.add_parser("fit", parents=parents, help="fit a quantizer and save it as JSON")
    p.add_argument("input", metavar="INPUT",
                   help="a .npy file (2-D float), a raw float32 file with --shape, a directory of .npy shards, "
                        "Parquet (--column), HDF5 (--dataset), a big-ann .fbin/.u8bin/.i8bin file, or 'demo' "
                        "(read in batches: memory stays bounded)")
    p.add_argument("--scheme", required=True, help="a preset name (see `gpuquant schemes`) or a family")
    add_scheme_args(p)
    p.add_argument("--shape", metavar="ROWS,DIM",
                   help="INPUT is raw float32 of this shape (ROWS may be auto: from the file size)")
    p.add_argument("-o", "--output", required=True, metavar="QUANTIZER.json",
                   help="where to write the fitted quantizer")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_source_args(p)
    p.set_defaults(func=cmd_fit)
