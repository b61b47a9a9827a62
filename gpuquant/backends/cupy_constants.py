"""Device copies of the constants kernels read (scalar ranges, thresholds, scales, centroids), made once.

A launcher asks for a constant with ``constant(kind, value, dtype)`` (see
:mod:`gpuquant.backends.cupy_launch`). ``value`` is one of

* a zero-argument callable that builds the host value (``lambda: scalar_params(...)``), or an array
  of the fitted state itself (``state["thresholds"]``): the device copy is cached on the identity of
  the call's (scheme, state) objects and ``kind``, so a second call on the same fitted quantizer
  builds, hashes and uploads nothing. A refit makes a new state (``fit`` never changes one in place),
  so its constants are built anew;
* any other host array (derived per call): cached on its exact bytes, so equal values share one copy;
* a device array: used as it is (``cupy.asarray``), not cached.

Every key also holds the dtype, the device and the current stream: a copy is made and used on one
stream only, so its upload is ordered before every kernel that reads it, and its memory goes back
to that stream's pool. :attr:`ConstantCache.size` entries are kept, least recently used dropped; an
identity entry keeps its scheme and state alive (so their ids cannot be reused while it is cached).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from gpuquant.backends import is_device_array
from gpuquant.backends.cupy_device import cupy_module

Constant = Callable[[str, Any, Any], Any]
#: The owner of the constants cached on their bytes (shared by every call).
_ANYONE: tuple[Any, Any] = (None, None)


class ConstantCache:
    """The cache of one backend (see the module docstring)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def bound(self, scheme: Any, state: dict[str, Any]) -> Constant:
        """The ``constant`` a launcher gets for one call on ``(scheme, state)``."""
        def constant(kind: str, value: Any, dtype: Any) -> Any:
            return self.get((scheme, state), kind, value, dtype)

        return constant

    def get(self, owner: tuple[Any, dict[str, Any]], kind: str, value: Any, dtype: Any) -> Any:
        """The device copy of ``value`` as ``dtype`` (C-contiguous) for a call on ``owner``."""
        cp = cupy_module()
        if not callable(value) and not isinstance(value, np.ndarray) and is_device_array(value):
            return cp.asarray(value, dtype=dtype)
        where = (kind, np.dtype(dtype).str, cp.cuda.runtime.getDevice(), cp.cuda.get_current_stream().ptr)
        if callable(value) or any(value is v for v in owner[1].values()):
            key: tuple[Any, ...] = ("state", id(owner[0]), id(owner[1]), *where)
            host = None
        else:
            host = np.ascontiguousarray(value, dtype=dtype)
            key, owner = ("bytes", *where, host.tobytes()), _ANYONE
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0][0] is owner[0] and entry[0][1] is owner[1]:
                self._entries.move_to_end(key)
                return entry[1]
        if host is None:
            host = np.ascontiguousarray(value() if callable(value) else value, dtype=dtype)
        arr = cp.asarray(host)
        with self._lock:
            self._entries[key] = (owner, arr)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return arr
