"""gpuquant: quantize large float matrices into compact codes, on the GPU or the CPU.

>>> import gpuquant
>>> q = gpuquant.Quantizer("cuvs-sq8")          # a preset, or a family plus parameters
>>> # codes = q.fit(X).transform(X); X_hat = q.inverse_transform(codes)
>>> # gpuquant.convert("big.npy", "big-codes", "int8-row")   # out of core, resumable
>>> # gpuquant.open("big-codes").get_rows([5, 42, 7])         # random rows, dequantized
>>> # gpuquant.plan("int8-row", dim=768, rows=10**9, gpu_memory="80GiB")

Layers: ``gpuquant.schemes`` (the math and its numpy reference), ``gpuquant.backends`` (numpy,
cupy), ``gpuquant.engine`` and ``gpuquant.store`` (streaming conversion into code stores), the
public API (re-exported here; this file holds no implementation), and the ``gpuquant`` command
line. ``import gpuquant`` needs only numpy and ml_dtypes; CUDA libraries load when a GPU backend is
first used.
"""

from gpuquant._version import __version__
from gpuquant.api import Quantizer, dequantize, presets, quantize
from gpuquant.backends import available_backends
from gpuquant.codes import Codes
from gpuquant.engine import convert
from gpuquant.errors import BackendUnavailableError, GpuquantError, InputError, NotFittedError
from gpuquant.estimate import estimate
from gpuquant.planner import Plan, plan
from gpuquant.schemes import Preset, get_preset
from gpuquant.store import Store
from gpuquant.store import open as open  # noqa: A004 - gpuquant.open(path) opens a code store

__all__ = [
    "BackendUnavailableError",
    "Codes",
    "GpuquantError",
    "InputError",
    "NotFittedError",
    "Plan",
    "Preset",
    "Quantizer",
    "Store",
    "__version__",
    "available_backends",
    "convert",
    "dequantize",
    "estimate",
    "get_preset",
    "plan",
    "presets",
    "quantize",
]
# ``gpuquant.open`` (a code store) is public but stays out of ``__all__``: ``from gpuquant import *``
# must not shadow the builtin ``open``.
