"""``gpuquant convert-model MODEL_DIR OUTPUT_DIR --scheme fp8 | w8a16 | w4a16``: the parser and the
handler, added to the ``gpuquant`` command line by :func:`register`. The handler returns the report
(a JSON-able dict) and its human text, as every ``gpuquant`` command does."""

from __future__ import annotations

import argparse
from typing import Any

from gpuquant.checkpoint.quant import SCHEMES


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add ``convert-model`` to ``subparsers`` (with the common ``parents``, e.g. ``--format``)."""
    p = subparsers.add_parser("convert-model", parents=parents,
                              help="quantize a Hugging Face checkpoint's Linear weights (compressed-tensors format)")
    p.add_argument("model", metavar="MODEL_DIR", help="a checkpoint directory: config.json and *.safetensors")
    p.add_argument("output", metavar="OUTPUT_DIR", help="the directory to write (must not exist)")
    p.add_argument("--scheme", required=True, choices=tuple(SCHEMES),
                   help="fp8: E4M3 per output channel; w8a16: int8 per channel; w4a16: int4, groups of 128")
    p.add_argument("--ignore", action="append", default=[], metavar="REGEX",
                   help="also leave modules whose name matches (repeatable; lm_head, embeddings and norms always are)")
    p.add_argument("--targets", action="append", default=[], metavar="REGEX",
                   help="quantize only modules whose name matches (repeatable; default: every Linear weight)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted conversion into OUTPUT_DIR")
    p.set_defaults(func=cmd_convert_model)


def cmd_convert_model(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Run :func:`gpuquant.checkpoint.convert_model` and describe the result."""
    from gpuquant.checkpoint.run import convert_model

    doc = convert_model(args.model, args.output, args.scheme, targets=args.targets,
                        ignore=args.ignore, resume=args.resume)
    return doc, human(doc)


def human(doc: dict[str, Any]) -> str:
    """The report as ``gpuquant convert-model`` prints it."""
    mb = 1e6
    lines = [f"converted {doc['model']} -> {doc['output']} ({doc['scheme']}, compressed-tensors {doc['format']}) "
             f"in {doc['seconds']:.1f} s",
             f"weights    {doc['bytes_before'] / mb:.1f} MB -> {doc['bytes_after'] / mb:.1f} MB"
             + (f" ({doc['ratio']:.2f}x smaller)" if doc["ratio"] else ""),
             f"tensors    {doc['quantized']} quantized, {doc['copied']} copied as they were"]
    if doc["worst"]:
        w = doc["worst"]
        lines.append(f"error      largest relative weight error {_num(w['rel_error'])} in {w['name']}")
    lines += [f"  {r['name']:<48} rel {_num(r['rel_error'])}  max abs {r['max_abs_error']:.3e}" for r in doc["layers"]]
    lines += [f"  kept {s['name']}: {s['reason']}" for s in doc["skipped"]]
    lines.append(f"serve it:  vllm serve {doc['output']}")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3e}"
