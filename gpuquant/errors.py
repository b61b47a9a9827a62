"""Every exception class gpuquant defines, so callers can tell bad input from a failed run.

The tree::

    GpuquantError                      every error gpuquant raises on purpose
    ├── InputError (ValueError)        bad shapes, dtypes, parameters, paths; NaN a scheme refuses
    │   └── StoreIncompleteError       a store read before its run finished
    ├── NotFittedError (ValueError)    a quantizer that needs fitted state used before ``fit``
    ├── BackendUnavailableError        a backend asked for by name cannot run here (says why)
    ├── KernelCompileError             NVRTC refused one of gpuquant's kernel files
    ├── ConvertError (RuntimeError)    a conversion stopped while streaming; the store is resumable
    ├── StoreBusyError (RuntimeError)  another run holds the output's lock
    ├── StoreCorruptError (RuntimeError)  a store's content differs from its recorded checksums
    ├── ChecksumsMissingError          a store (or rows of it) without checksums to verify against
    └── SourceReadError (OSError)      reading the source failed while converting
    UsageError (Exception)             a command-line usage error (exit code 2), the CLI's own
    Interrupted (KeyboardInterrupt)    a run stopped by Ctrl-C or SIGTERM; says what is kept
"""

from __future__ import annotations

from typing import Any


class GpuquantError(Exception):
    """Base class of every error gpuquant raises on purpose."""


class InputError(GpuquantError, ValueError):
    """Bad input or parameters: the message names the problem (shape, dtype, value, path)."""


class NotFittedError(GpuquantError, ValueError):
    """A quantizer that needs fitted state was used before ``fit``."""


class BackendUnavailableError(GpuquantError, RuntimeError):
    """An explicitly requested backend cannot run on this machine (the message says why)."""


class KernelCompileError(GpuquantError, RuntimeError):
    """NVRTC failed to compile one of gpuquant's kernel files."""


class ConvertError(GpuquantError, RuntimeError):
    """The stream stopped (write or read error); the store is left resumable."""


class StoreBusyError(GpuquantError, RuntimeError):
    """Another run holds the output's lock."""


class StoreCorruptError(GpuquantError, RuntimeError):
    """A store's bytes differ from the checksums recorded when they were written (names the rows)."""


class ChecksumsMissingError(GpuquantError):
    """A store, or some of its rows, has no recorded checksums to verify against (an older store)."""


class StoreIncompleteError(InputError):
    """The store is unfinished (its manifest's ``state.status`` is ``"in_progress"``)."""


class SourceReadError(GpuquantError, OSError):
    """Reading the source failed while converting (I/O error, file shrank)."""


class UsageError(Exception):
    """A command-line usage error (exit code 2); ``details`` (JSON-able) go into ``--format json``'s
    error document."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or, in the command line, SIGTERM (a ``KeyboardInterrupt``, so code that
    catches Ctrl-C catches both); the message says what is kept and how to continue. ``exit_code`` is
    the shell's for the signal: 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str = "interrupted", exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
