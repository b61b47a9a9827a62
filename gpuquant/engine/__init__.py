"""The out-of-core engine: ``convert`` streams a matrix of any size into a code store.

This package only re-exports. Its modules: :mod:`~gpuquant.engine.run` (the convert run, written
once: lock, resume check, fit, create, stream, check, report, for any :class:`Runner`),
:mod:`~gpuquant.engine.local` (this machine's runner, :func:`convert` and the streaming
:func:`fit_input`),
:mod:`~gpuquant.engine.sources` (the inputs), :mod:`~gpuquant.engine.fit` (the streaming fit),
:mod:`~gpuquant.engine.pipeline` (the CPU and GPU batch loops) and
:mod:`~gpuquant.engine.progress` (the progress bar). :mod:`gpuquant.cluster` runs the same
sequence on a Dask cluster with its own runner.
"""

from gpuquant.engine.local import LocalRunner, convert, fit_input
from gpuquant.engine.run import Runner, run, sample_error, verify_sample
from gpuquant.errors import BackendUnavailableError, ConvertError

__all__ = ["BackendUnavailableError", "ConvertError", "LocalRunner", "Runner", "convert", "fit_input", "run",
           "sample_error", "verify_sample"]
