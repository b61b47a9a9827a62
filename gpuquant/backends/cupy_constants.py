"""Device copies of the constants kernels read (scalar ranges, thresholds, scales, centroids), made once.

A launcher asks for a constant with ``constant(kind, value, dtype)`` (see
:mod:`gpuquant.backends.cupy_launch`). ``value`` is one of

* a zero-argument callable that builds the host value (``lambda: scalar_params(...)``), or an array
  of the fitted state itself (``state["thresholds"]``): the device copy is cached on the identity of
  the call's scheme, its state dict and every array in that dict, and ``kind``, so a second call on
  the same fitted quantizer builds, hashes and uploads nothing. A refit makes a new state (``fit``
  never changes one in place), and an entry of the state replaced by another array
  (``state["lo"] = ...``) changes the key too, so their constants are built anew. Values written
  into a state array in place (``state["lo"][:] = ...``) are not seen: the backend reads a fitted
  state as immutable;
* any other host array (derived per call): cached on its exact bytes, so equal values share one copy;
* a device array: used as it is (``cupy.asarray``), not cached.

Every key also holds the dtype, the device and the current stream: a copy is made and used on one
stream only, so its upload is ordered before every kernel that reads it, and its memory goes back
to that stream's pool. :attr:`ConstantCache.size` entries are kept, least recently used dropped; an
identity entry keeps the objects of its key alive (so their ids cannot be reused while it is
cached) and is used only when each of them is the very object of the call.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from gpuquant.backends import is_device_array
from gpuquant.backends.cupy_device import cupy_module

Constant = Callable[[str, Any, Any], Any]


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
        held: tuple[Any, ...] = ()  # the objects whose identity the key holds
        if callable(value) or any(value is v for v in owner[1].values()):
            held = (owner[0], owner[1], *owner[1].values())
            key: tuple[Any, ...] = ("state", *map(id, held), *where)
            host = None
        else:
            host = np.ascontiguousarray(value, dtype=dtype)
            key = ("bytes", *where, host.tobytes())
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and all(map(operator.is_, entry[0], held)):
                self._entries.move_to_end(key)
                return entry[1]
        if host is None:
            host = np.ascontiguousarray(value() if callable(value) else value, dtype=dtype)
        arr = cp.asarray(host)
        with self._lock:
            self._entries[key] = (held, arr)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return arr
