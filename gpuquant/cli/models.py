"""``gpuquant convert-model MODEL_DIR OUTPUT_DIR --scheme fp8 | w8a16 | w4a16``: quantize a Hugging
Face checkpoint with :func:`gpuquant.checkpoint.convert_model` (the library; the human text is
:func:`gpuquant.cli.render.convert_model_text`)."""

from __future__ import annotations

import argparse
from typing import Any

from gpuquant.checkpoint.quant import SCHEMES
from gpuquant.cli import render
from gpuquant.cli.common import Report


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``convert-model``."""
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
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                   help="auto (the GPU when it works and has the scheme's kernels: fp8), gpu (never falls back) "
                        "or cpu; the bytes written are the same")
    p.set_defaults(func=cmd_convert_model)


def cmd_convert_model(args: argparse.Namespace) -> Report:
    """Run :func:`gpuquant.checkpoint.convert_model` and describe the result."""
    from gpuquant.checkpoint.run import convert_model

    doc = convert_model(args.model, args.output, args.scheme, targets=args.targets,
                        ignore=args.ignore, resume=args.resume, device=args.device)
    return doc, render.convert_model_text(doc)
