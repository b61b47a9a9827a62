"""The exceptions gpuquant raises, so callers can tell bad input from a failed run.

``InputError`` subclasses ``ValueError`` (bad shapes, dtypes, parameters, NaN where a scheme refuses
NaN); ``NotFittedError`` is raised when a quantizer that needs a range is used before ``fit``;
``BackendUnavailableError`` when a backend that was asked for by name cannot run here.
"""

from __future__ import annotations


class GpuquantError(Exception):
    """Base class of every error gpuquant raises on purpose."""


class InputError(GpuquantError, ValueError):
    """Bad input or parameters: the message names the problem (shape, dtype, value, path)."""


class NotFittedError(GpuquantError, ValueError):
    """A quantizer that needs fitted state was used before ``fit``."""


class BackendUnavailableError(GpuquantError, RuntimeError):
    """An explicitly requested backend cannot run on this machine (the message says why)."""
