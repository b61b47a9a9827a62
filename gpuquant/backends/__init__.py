"""The backends layer: the same verbs (fit, transform, inverse_transform) on different hardware.

* ``numpy``: the CPU path, always available; the reference math in row chunks on every core.
* ``cupy``: our CUDA kernels (``kernels/*.cu``) through CuPy, when a GPU works.
* ``cuvs``: NVIDIA cuVS's own scalar and binary quantizers, for side-by-side comparison (never
  picked by ``auto``).

``auto`` is decided in one place, :func:`pick_auto`: the first backend of :data:`AUTO_ORDER`
(``cupy``, then ``numpy``) that works here and, given a scheme, implements it (its ``supports``),
with the reason each one before it was skipped. An explicitly named backend never falls back: if
it cannot run, ``resolve`` raises ``BackendUnavailableError`` with the reason, and
``resolve_for(name, scheme)`` raises it too when the backend does not implement the scheme. GPU
libraries are imported only inside the GPU backends' modules, which are imported only when that
backend is asked for.
"""

from gpuquant.backends.arrays import array_module, device_code_dtype, dlpack_on_cuda, is_device_array
from gpuquant.backends.registry import (
    AUTO_ORDER,
    Backend,
    availability,
    available_backends,
    check_name,
    pick_auto,
    resolve,
    resolve_for,
    supports,
)

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "array_module",
    "availability",
    "available_backends",
    "check_name",
    "device_code_dtype",
    "dlpack_on_cuda",
    "is_device_array",
    "pick_auto",
    "resolve",
    "resolve_for",
    "supports",
]
