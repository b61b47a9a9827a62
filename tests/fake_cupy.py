"""A numpy-backed stand-in for CuPy that runs the cupy backend's own host code without a GPU and
logs every transfer: ``upload`` (host -> device: ``asarray`` of a host array, ``ndarray.set``),
``download`` (device -> host: ``ndarray.get``, and ``bool`` / ``int`` / ``item`` of a device value,
which copy it as CuPy does; each waits for the device) and ``launch``.

Kernels are replaced by :meth:`FakeCupy.kernel`: each launch is logged and handed to the test's
emulator for that kernel (``emulators[name_prefix](args)``), which may write the outputs with the
numpy reference. Device arrays are :class:`DeviceArray` (a numpy subclass exposing
``__cuda_array_interface__``, so gpuquant sees them as device arrays). Install with
:func:`install` (a ``monkeypatch`` fixture undoes it).
"""

from __future__ import annotations

import functools
import sys
import types
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest

SMS = 132


class DeviceArray(np.ndarray):
    """A device array of the fake: numpy memory, CuPy's transfer methods (logged)."""

    log: ClassVar[list[tuple[str, Any]]] = []

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ctypes.data, False), "version": 3}

    @property
    def device(self) -> Any:
        return _Device()

    def get(self, stream: Any = None, out: np.ndarray | None = None, blocking: bool = True) -> np.ndarray:
        DeviceArray.log.append(("download", self.nbytes))
        if out is None:
            return np.array(self)
        np.copyto(out, self)
        return out

    def __bool__(self) -> bool:
        DeviceArray.log.append(("download", self.nbytes))
        return bool(np.asarray(self))

    def __int__(self) -> int:
        DeviceArray.log.append(("download", self.nbytes))
        return int(np.asarray(self))

    def item(self, *args: Any) -> Any:
        DeviceArray.log.append(("download", self.nbytes))
        return np.asarray(self).item(*args)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        DeviceArray.log.append(("upload", arr.nbytes))
        np.copyto(self, arr)


class _Device:
    def __init__(self, device_id: int | None = None) -> None:
        self.id = 0
        self.attributes = {"MultiProcessorCount": SMS}

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Stream:
    current: _Stream

    def __init__(self, non_blocking: bool = False, ptr: int | None = None) -> None:
        self.ptr = id(self) if ptr is None else ptr  # the default stream's is 0, as CuPy's
        self.outer: list[_Stream] = []
        self.capturing = False  # between a test's begin and end of a CUDA graph capture

    def is_capturing(self) -> bool:
        return self.capturing

    def __enter__(self) -> _Stream:
        self.outer.append(_Stream.current)
        _Stream.current = self
        return self

    def __exit__(self, *exc: object) -> None:
        _Stream.current = self.outer.pop()


class _Event:
    """An event: ``synchronize`` (the host waits) is logged, and must follow a ``record``."""

    def __init__(self, disable_timing: bool = False) -> None:
        self.stream: Any = None

    def record(self, stream: Any = None) -> None:
        self.stream = stream or _Stream.current

    def synchronize(self) -> None:
        assert self.stream is not None, "an event waited on before it was recorded"
        DeviceArray.log.append(("synchronize", self.stream.ptr))


def _device(a: Any) -> DeviceArray:
    return a.view(DeviceArray)


class FakeCupy:
    """The fake ``cupy`` and ``cupyx`` modules, their log, and the kernels' emulators."""

    def __init__(self, blocks_per_sm: int = 3) -> None:
        self.log: list[tuple[str, Any]] = []
        DeviceArray.log = self.log
        self.emulators: dict[str, Callable[[tuple[Any, ...]], None]] = {}
        self.blocks_per_sm = blocks_per_sm
        _Stream.current = _Stream(ptr=0)
        cupy = types.ModuleType("cupy")
        cupy.__getattr__ = lambda name: getattr(np, name)  # type: ignore[attr-defined] # dtypes, array functions
        cupy.ndarray = DeviceArray  # type: ignore[attr-defined]
        cupy.asarray = self.asarray  # type: ignore[attr-defined]
        cupy.ascontiguousarray = lambda a: _device(np.ascontiguousarray(a))  # type: ignore[attr-defined]
        cupy.empty = lambda shape, dtype=np.float32: _device(np.empty(shape, dtype))  # type: ignore[attr-defined]
        cupy.zeros = lambda shape, dtype=np.float32: _device(np.zeros(shape, dtype))  # type: ignore[attr-defined]
        cupy.full = lambda shape, value, dtype=None: _device(np.full(shape, value, dtype))  # type: ignore[attr-defined]
        cupy.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)  # type: ignore[attr-defined]
        cupy.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
            Device=_Device, Stream=_Stream, Event=_Event, get_current_stream=lambda: _Stream.current,
            runtime=types.SimpleNamespace(getDevice=lambda: 0),
            driver=types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=self.occupancy),
            memory=types.SimpleNamespace(OutOfMemoryError=type("OutOfMemoryError", (MemoryError,), {})),
        )
        self.cupy = cupy
        self.cupyx = types.ModuleType("cupyx")
        self.cupyx.empty_pinned = lambda shape, dtype=np.float32: np.empty(shape, dtype)  # type: ignore[attr-defined]

    def asarray(self, a: Any, dtype: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else _device(a.astype(dtype))
        host = np.array(a, dtype)
        self.log.append(("upload", host.nbytes))
        return _device(host)

    def occupancy(self, func: int, block: int, shared: int) -> int:
        self.log.append(("occupancy", (func, block, shared)))
        return self.blocks_per_sm

    def kernel(self, filename: str, name: str, names: Any) -> Any:
        """A stand-in for ``cuda_loader.get_kernel``: logs each launch and runs the name's emulator."""
        def launch(grid: Any, block: Any, args: Any, **kw: Any) -> None:
            self.log.append(("launch", (name, grid, block)))
            for prefix, emulate in self.emulators.items():
                if name.startswith(prefix):
                    emulate(tuple(args))

        launch.kernel = types.SimpleNamespace(ptr=hash(name))  # type: ignore[attr-defined]
        return launch

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.log if k == kind)


def install(monkeypatch: pytest.MonkeyPatch, blocks_per_sm: int = 3) -> FakeCupy:
    """The fake as ``cupy`` / ``cupyx``, its kernels as the loader's (undone by ``monkeypatch``)."""
    from gpuquant.backends import cuda_loader, cupy_device, cupy_launch

    fake = FakeCupy(blocks_per_sm)
    monkeypatch.setitem(sys.modules, "cupy", fake.cupy)
    monkeypatch.setitem(sys.modules, "cupyx", fake.cupyx)
    monkeypatch.setattr(cuda_loader, "get_kernel", fake.kernel)
    for module, cached in ((cupy_device, "_sm_count"), (cupy_launch, "occupancy")):  # caches of the fake's values
        monkeypatch.setattr(module, cached, functools.cache(getattr(module, cached).__wrapped__))
    return fake


def emulate_absmax(fake: FakeCupy, scheme: Any) -> None:
    """The absmax encode kernels on the host: the reference's codes and scales for the finite rows,
    the first non-finite row recorded in the flag (``atomicMin``)."""
    def run(args: tuple[Any, ...]) -> None:
        x, codes, scales, bad, n = args[0], args[1], args[2], args[3], int(args[4])
        x32 = np.asarray(x[:n], np.float32)
        finite = np.isfinite(x32).all(axis=1)
        want, side = scheme.encode(np.where(finite[:, None], x32, 0), {})
        codes[:n] = want.view(codes.dtype)
        scales[:n] = side["scales"]
        if not finite.all():
            bad[0] = min(int(bad[0]), int(np.argmin(finite)))

    fake.emulators["absmax_encode"] = run


def emulate_float(fake: FakeCupy, scheme: Any) -> None:
    """``float_encode`` on the host: ``scheme``'s reference codes (a ``nonfinite="keep"`` scheme: NaN,
    ±Inf and overflow written as codes, as the kernel writes them), in the device code dtype."""
    def run(args: tuple[Any, ...]) -> None:
        x, codes, n = args[0], args[1], int(args[2])
        codes[:n] = scheme.encode(np.asarray(x[:n], np.float32), {})[0].view(codes.dtype)

    fake.emulators["float_encode"] = run


def emulate_row_refusals(fake: FakeCupy, prefix: str) -> None:
    """Kernels named ``prefix...`` on the host, as far as refusals go: the first row of their input
    (``args[0]``, ``n = args[2]``) holding NaN or ±Inf is recorded in their one-element uint64 flag."""
    def run(args: tuple[Any, ...]) -> None:
        x, n = args[0], int(args[2])
        (flag,) = (a for a in args if isinstance(a, DeviceArray) and a.dtype == np.uint64 and a.size == 1)
        finite = np.isfinite(np.asarray(x[:n], np.float32)).all(axis=1)
        if not finite.all():
            flag[0] = min(int(flag[0]), int(np.argmin(finite)))

    fake.emulators[prefix] = run


def emulate_rabitq(fake: FakeCupy, scheme: Any) -> None:
    """The rabitq encode on the host: the reference's codes (every ``bits``) for the rows it accepts,
    and in the flag (``args[3]``) the first row holding NaN or ±Inf, else ``n`` + the first row whose
    squared norms overflow float32, as ``rabitq_encode1`` records them."""
    def run(args: tuple[Any, ...]) -> None:
        x, center, codes, flag, n = *args[:4], int(args[4])
        x32 = np.asarray(x[:n], np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            finite = np.isfinite(x32).all(axis=1)
            r = x32 - np.asarray(center)  # host values: the emulated kernel reads nothing back
            ok = finite & np.isfinite((r * r).sum(axis=1)) & np.isfinite((x32 * x32).sum(axis=1))
        codes[:n][ok] = scheme.encode(x32[ok], {"center": np.asarray(center)})[0]
        if not ok.all():
            flag[0] = min(int(flag[0]), int(np.argmin(finite)) if not finite.all() else n + int(np.argmin(ok)))

    fake.emulators["rabitq_encode1"] = run
