"""gpuquant: quantize large float matrices into compact codes, on the GPU or the CPU.

>>> import gpuquant
>>> q = gpuquant.Quantizer("cuvs-sq8")          # a preset, or a family plus parameters
>>> # codes = q.fit(X).transform(X); X_hat = q.inverse_transform(codes)

Layers: ``gpuquant.schemes`` (the math and its numpy reference), ``gpuquant.backends`` (numpy,
cupy), the public API here, and the ``gpuquant`` command line. ``import gpuquant`` needs only numpy
and ml_dtypes; CUDA libraries load when a GPU backend is first used.
"""

from gpuquant._version import __version__
from gpuquant.api import Quantizer, dequantize, quantize
from gpuquant.backends import available_backends
from gpuquant.codes import Codes
from gpuquant.errors import BackendUnavailableError, GpuquantError, InputError, NotFittedError
from gpuquant.schemes import PRESETS, Preset, get_preset


def presets() -> list[Preset]:
    """Every named preset, in display order."""
    return list(PRESETS.values())


__all__ = [
    "BackendUnavailableError",
    "Codes",
    "GpuquantError",
    "InputError",
    "NotFittedError",
    "Preset",
    "Quantizer",
    "__version__",
    "available_backends",
    "dequantize",
    "get_preset",
    "presets",
    "quantize",
]
