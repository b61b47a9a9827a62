"""``gpuquant doctor``: what GPU support works here, and why not (:mod:`gpuquant.diagnostics`)."""

from __future__ import annotations

import argparse
from typing import Any

from gpuquant import diagnostics
from gpuquant.cli import render
from gpuquant.cli.common import Report


def cmd_doctor(args: argparse.Namespace) -> Report:
    """Probe the machine: never raises, each probe says what works and why not."""
    doc = diagnostics.run_probes()
    return doc, render.doctor_text(doc)


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``doctor``."""
    p = sub.add_parser("doctor", parents=parents, help="what GPU support works here, and why not")
    p.set_defaults(func=cmd_doctor)
