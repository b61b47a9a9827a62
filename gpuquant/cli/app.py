"""The ``gpuquant`` parser and ``main``: every command module registers its subcommands, ``main``
runs one and turns its :data:`~gpuquant.cli.common.Report` or its error into output and an exit
code (see :mod:`gpuquant.cli`).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gpuquant import files as gio
from gpuquant._version import __version__
from gpuquant.checkpoint import cli as convert_model
from gpuquant.cli import convert, describe, doctor, evaluate, quantizers
from gpuquant.cli.common import FORMATS, Parser, common_parser
from gpuquant.errors import InputError, UsageError

log = logging.getLogger("gpuquant.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: The command modules, in the order their subcommands appear in ``gpuquant --help``; each has
#: ``register(subparsers, parents)``, which adds its subparsers (with ``parents``: ``--format``) and
#: ``set_defaults(func=...)``.
COMMANDS = (quantizers, convert, evaluate, describe, doctor, convert_model)


def build_parser() -> argparse.ArgumentParser:
    """The ``gpuquant`` argument parser."""
    common = common_parser()
    parser = Parser(prog="gpuquant", description="Quantize float32 matrices into compact codes (CPU or GPU).",
                    epilog="INPUT may be 'demo': the embedded 2000 x 384 MiniLM dataset.")
    parser.add_argument("--format", choices=FORMATS, default="human", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"gpuquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(sub, [common])
    return parser


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the one at setup)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(fmt: str) -> None:
    logger = logging.getLogger("gpuquant")
    for h in [h for h in logger.handlers if getattr(h, "_gpuquant_cli", False)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("gpuquant: %(message)s"))
    handler._gpuquant_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if fmt == "quiet" else logging.INFO)


def _wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    pairs = itertools.pairwise(args)
    return "--format=json" in args or any(a == "--format" and b == "json" for a, b in pairs)


def _emit(fmt: str, doc: dict[str, Any]) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(gio.to_jsonable(doc), allow_nan=False) + "\n")


def _fail(fmt: str, command: str | None, exc: BaseException, code: int) -> int:
    message = str(exc) or type(exc).__name__
    sys.stderr.write(f"{message}\n" if isinstance(exc, UsageError) else f"gpuquant: error: {message}\n")
    _emit(fmt, {"ok": False, "command": command,
                "error": {"type": type(exc).__name__, "message": message, "exit_code": code}})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad usage or input, 1 failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(parser.format_usage())
        return _fail("json" if _wants_json(argv) else "human", None, exc, EXIT_USAGE)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return _fail(args.format, None, UsageError("gpuquant: error: a COMMAND is required"), EXIT_USAGE)
    _setup_logging(args.format)
    try:
        doc, text = args.func(args)
    except (InputError, UsageError, FileNotFoundError) as exc:
        return _fail(args.format, args.command, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args.format, args.command, RuntimeError("interrupted"), 130)
    except Exception as exc:  # the CLI reports every failure as exit 1 (logged with its traceback)
        log.debug("failure", exc_info=True)
        return _fail(args.format, args.command, exc, EXIT_FAILURE)
    if args.format == "json":
        _emit("json", {"ok": True, "command": args.command, **doc})
    elif args.format == "human":
        sys.stdout.write(text + "\n")
    return EXIT_OK
