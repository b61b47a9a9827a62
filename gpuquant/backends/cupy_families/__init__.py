"""The cupy backend's kernel launchers, one module per family; importing this package registers
them (:mod:`gpuquant.backends.cupy_launch`), and their scratch declarations, which
:func:`scratch_bytes` reads. A new family with GPU kernels adds its module here and one import line
below."""

from gpuquant.backends.cupy_families import (  # noqa: F401 - registration
    absmax,
    binary,
    floatcast,
    pq,
    rabitq,
    scalar,
    weights,
)
from gpuquant.backends.cupy_launch import scratch_bytes  # read once every family above registered

__all__ = ["scratch_bytes"]
