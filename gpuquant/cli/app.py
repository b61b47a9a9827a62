"""The ``gpuquant`` parser and ``main``: every command module registers its subcommands, ``main``
runs one and turns its :data:`~gpuquant.cli.common.Report` or its error into output and an exit
code (see :mod:`gpuquant.cli`).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from gpuquant import files as gfiles
from gpuquant._version import __version__
from gpuquant.cli import convert, describe, doctor, evaluate, models, quantizers
from gpuquant.cli.common import FORMATS, Parser, common_parser
from gpuquant.errors import ChecksumsMissingError, InputError, Interrupted, UsageError

log = logging.getLogger("gpuquant.cli")

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: ``verify``: the store (or some of its rows) has no checksums to check against.
EXIT_UNVERIFIED = 3
#: The shell's exit codes for a run stopped by SIGINT (Ctrl-C) and SIGTERM: 128 + the signal number.
EXIT_SIGINT, EXIT_SIGTERM = 128 + signal.SIGINT, 128 + signal.SIGTERM

#: The command modules, in the order their subcommands appear in ``gpuquant --help``; each has
#: ``register(subparsers, parents)``, which adds its subparsers (with ``parents``: ``--format``) and
#: ``set_defaults(func=...)``.
COMMANDS = (quantizers, convert, evaluate, describe, doctor, models)


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


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While the block runs, SIGTERM stops the command as Ctrl-C does (the run checkpoints, says what
    it keeps, and the one JSON document is printed); a second SIGTERM while it stops is ignored, so
    the checkpoint completes. Only in the main thread (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted("terminated (SIGTERM)", EXIT_SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    pairs = itertools.pairwise(args)
    return "--format=json" in args or any(a == "--format" and b == "json" for a, b in pairs)


def _emit(fmt: str, doc: dict[str, Any]) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(gfiles.to_jsonable(doc), allow_nan=False) + "\n")


def _fail(fmt: str, command: str | None, exc: BaseException, code: int) -> int:
    message = str(exc) or type(exc).__name__
    sys.stderr.write(f"{message}\n" if isinstance(exc, UsageError) else f"gpuquant: error: {message}\n")
    _emit(fmt, {"ok": False, "command": command,
                "error": {"type": type(exc).__name__, "message": message, "exit_code": code,
                          **(getattr(exc, "details", None) or {})}})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad usage or input, 1 failure, 3 nothing to
    verify, 130 Ctrl-C, 143 SIGTERM)."""
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
        with _sigterm_interrupts():
            doc, text = args.func(args)
    except (InputError, UsageError, FileNotFoundError) as exc:
        return _fail(args.format, args.command, exc, EXIT_USAGE)
    except ChecksumsMissingError as exc:
        return _fail(args.format, args.command, exc, EXIT_UNVERIFIED)
    except KeyboardInterrupt as exc:
        return _fail(args.format, args.command, exc if str(exc) else RuntimeError("interrupted"),
                     getattr(exc, "exit_code", EXIT_SIGINT))
    except Exception as exc:  # the CLI reports every failure as exit 1 (logged with its traceback)
        log.debug("failure", exc_info=True)
        return _fail(args.format, args.command, exc, EXIT_FAILURE)
    if args.format == "json":
        _emit("json", {"ok": True, "command": args.command, **doc})
    elif args.format == "human":
        sys.stdout.write(text + "\n")
    return EXIT_OK
