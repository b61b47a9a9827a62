"""What the ``gpuquant`` subcommands share: the parser class (usage errors raise instead of
exiting), ``--format`` and the scheme options, reading INPUT, building or loading the quantizer
before any data is read, and the JSON summaries of arrays and quantizers.

A command module (see :mod:`gpuquant.cli`) returns a :data:`Report`: the JSON document that
``--format json`` prints and the text that ``--format human`` prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from gpuquant import files as gfiles
from gpuquant.errors import InputError, UsageError

log = logging.getLogger("gpuquant.cli")

FORMATS = ("human", "json", "quiet")
BACKENDS = ("auto", "numpy", "cupy", "cuvs")
DEMO = "demo"

Report = tuple[dict[str, Any], str]  # (JSON document, human text)


class Parser(argparse.ArgumentParser):
    """ArgumentParser that raises :class:`UsageError` instead of exiting, so ``main`` decides. A value
    that starts with a minus and a digit (``--gpu-memory -5GiB``) is a value, not an unknown option,
    so its own check says what is wrong with it (newer Pythons' argparse reads it so too)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


def common_parser() -> Parser:
    """The parent parser of every subcommand: ``--format``."""
    common = Parser(add_help=False)
    common.add_argument("--format", choices=FORMATS, default=argparse.SUPPRESS,
                        help="human (default): a report; json: one JSON document on stdout; quiet: nothing")
    return common


def add_scheme_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a scheme parameter (repeatable); the value is parsed as JSON when it parses")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (GPU when one works, else numpy), numpy, or cupy (never falls back)")


def add_source_args(p: argparse.ArgumentParser) -> None:
    """``--column`` (Parquet) and ``--dataset`` (HDF5): which part of INPUT holds the rows."""
    p.add_argument("--column", metavar="NAME", help="Parquet input: the list<float> column (default: the only one)")
    p.add_argument("--dataset", metavar="NAME",
                   help="HDF5 input: the 2-D dataset (default: train, else the only one)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--param expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def scheme_params(items: Sequence[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or ():
        key, value = _parse_param(item)
        if key in params:
            raise InputError(f"--param {key} given twice")
        params[key] = value
    return params


def resolve_input(name: str, shape: Any = None) -> tuple[Path, bool]:
    """Return ``(path, is_demo)`` for an INPUT argument; ``shape`` (``--shape``, for raw float32
    files) is refused with the demo dataset."""
    if name == DEMO:
        if shape:
            raise InputError("--shape is for raw float32 files, not the demo dataset")
        from gpuquant.data import demo_path

        return Path(demo_path()), True
    return Path(name), False


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # CuPy
        return a.get()
    return np.asarray(a)


def array_summary(a: Any) -> dict[str, Any]:
    arr = _to_numpy(a)
    out: dict[str, Any] = {"shape": list(arr.shape), "dtype": arr.dtype.name}
    if arr.size and arr.dtype.kind in "biuf":
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        if finite.size:
            out["min"] = float(finite.min())
            out["max"] = float(finite.max())
            out["mean"] = float(finite.astype(np.float64).mean())
        out["non_finite"] = int(arr.size - finite.size)
    return out


def make_quantizer(scheme: str, params: dict[str, Any], backend: str) -> Any:
    from gpuquant import Quantizer

    return Quantizer(scheme, backend=backend, **params)


def quantizer_info(q: Any) -> dict[str, Any]:
    state = q.state if q.is_fitted else {}
    return {
        "scheme": getattr(q, "name", None) or q.scheme.family,
        "preset": getattr(q, "preset", None),
        "family": q.scheme.family,
        "params": gfiles.to_jsonable(q.scheme.params),
        "dim": q.dim,
        "is_fitted": bool(q.is_fitted),
        "code_dtype": np.dtype(q.scheme.code_dtype).name,
        "bytes_per_value": float(q.scheme.bytes_per_value),
        "state": {k: array_summary(v) for k, v in (state or {}).items()},
        **({"pre_transform": {**q.pre.params(), "input_dim": q.pre.input_dim,
                              "state": {k: array_summary(v) for k, v in q.pre.state.items()}}}
           if q.pre.active else {}),
    }


def _load_quantizer(path: str, backend: str) -> Any:
    from gpuquant import Quantizer

    p = Path(path)
    if not p.is_file():
        raise InputError(f"quantizer file not found: {p}")
    q = Quantizer.load(p, backend=backend)
    if not q.is_fitted:
        raise InputError(f"{p} holds a quantizer that was never fitted")
    return q


def backend_used(q: Any, strict: bool = False) -> str:
    """The backend that runs (``auto`` resolved), e.g. ``numpy`` or ``cupy``.

    ``strict`` lets the error of a backend that cannot run here propagate (checked before reading
    any data); otherwise this is only a label for the report.
    """
    try:
        return str(q.backend.name)
    except Exception:  # re-raised when strict, else only the label suffers
        if strict:
            raise
        return str(getattr(q, "backend_name", "?"))


def quantizer_args(args: argparse.Namespace, backend: str) -> tuple[Any, dict[str, Any] | None]:
    """``(the --quantizer file, loaded on backend, None)`` or ``(--scheme, the --param values)``."""
    if args.quantizer:
        if args.param:
            raise InputError("--param goes with --scheme; a --quantizer file already has its parameters")
        return _load_quantizer(args.quantizer, backend), None
    return args.scheme, scheme_params(args.param)


def get_quantizer(args: argparse.Namespace) -> Any:
    """The quantizer to use, built (or loaded) before any data is read, so bad options fail fast."""
    q, params = quantizer_args(args, args.backend)
    return q if params is None else make_quantizer(q, params, args.backend)
