"""Rows a kernel refuses, checked where the host waits for the device anyway.

A kernel that refuses rows (an ``absmax`` segment holding NaN or ±Inf) lowers a uint64 device flag to
the first such row (``atomicMin``; :data:`~gpuquant.backends.cupy_device.NO_ROW` while none). Reading
that flag right after the launch is a device-to-host copy, which makes the host wait for the stream on
every call. Instead the launcher files the flag with the error it stands for
(:func:`refuse_later`), and the flag is read later, once the host has waited for the stream for its
own reasons:

* the cupy backend, before every download of a result (numpy input: within ``transform`` itself,
  before any output array is written) and before ``fit``;
* the engine's GPU pipeline, when a batch's event has completed and before the batch goes to the
  writer (:meth:`Refusals.raise_first` on what :meth:`RefusalLog.take` handed it);
* a caller that keeps codes on the device: ``CupyBackend.check_refusals()`` (it waits for the streams
  of the pending flags).

So the error is the same :class:`~gpuquant.errors.InputError`, naming the same row, raised before any
output is finalised; only its moment moves to the next synchronisation. Refusals are pending per
thread, in call order; the first refused one is raised, and every pending flag is read and released
either way. A thread that files :data:`MAX_PENDING` refusals without a check has them checked on
the next one (one wait per :data:`MAX_PENDING` calls), so neither the list nor the buffers grow.

Flags live in a persistent buffer per (device, stream) of :data:`MAX_PENDING` slots, set to
``NO_ROW`` once when the buffer is made. A check reads each buffer once (one copy after its stream)
and sets the slots it read back to ``NO_ROW`` on that stream (ordered before any later use of a
slot), then gives them back. A stream whose slots are all pending gets a fresh one-flag array
instead. Outside a backend's log (tools that call a launcher directly, planned launches on the
host) :func:`refusal_flag` makes a fresh flag and :func:`refuse_later` reads it at once.

A CUDA graph that captured a transform records its replays' refusals in the captured call's slot:
they surface at the first check after the replay, which gives the slot back; later replays are not
checked (capture again).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from gpuquant.backends.cupy_device import NO_ROW, cupy_module, row_flags
from gpuquant.errors import InputError

#: Slots of a stream's flag buffer, and refusals a thread may leave unchecked.
MAX_PENDING = 1024


@dataclass
class Refusal:
    """A filed flag: ``flag`` (a one-element device array), ``error`` (the error for a refused row),
    ``stream`` (the one its kernel ran on; None: the current one) and, for a flag of a buffer,
    ``buffer`` and ``slot``."""

    flag: Any
    error: Callable[[int], InputError]
    stream: Any = None
    buffer: _FlagBuffer | None = None
    slot: int = -1


class Refusals:
    """Filed refusals handed to a caller, checked once it has waited for their streams."""

    def __init__(self, pending: list[Refusal]) -> None:
        self.pending = pending

    def raise_first(self) -> None:
        """Read every flag (one copy per buffer) and give the slots back, then raise the first refused
        one's error."""
        pending, self.pending = self.pending, []
        rows: dict[int, int] = {}
        buffers = {id(r.buffer): r.buffer for r in pending if r.buffer is not None}
        for buffer in buffers.values():
            slots = [r.slot for r in pending if r.buffer is buffer]
            values = buffer.read_and_release(slots)
            rows.update({id(r): int(values[r.slot]) for r in pending if r.buffer is buffer})
        for refusal in pending:
            row = rows[id(refusal)] if refusal.buffer is not None else int(refusal.flag.get(stream=refusal.stream)[0])
            if row != NO_ROW:
                raise refusal.error(row)


class _FlagBuffer:
    """:data:`MAX_PENDING` flags of one (device, stream), made once; free slots hold ``NO_ROW``."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.flags = row_flags(MAX_PENDING)
        self.free = list(range(MAX_PENDING - 1, -1, -1))
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            return self.free.pop() if self.free else None

    def read_and_release(self, slots: list[int]) -> Any:
        """The host values of every flag (after the buffer's stream); ``slots`` set back to ``NO_ROW``
        on that stream and given back."""
        values = self.flags.get(stream=self.stream)
        with self.flags.device, self.stream:
            if len(slots) == 1:
                self.flags[slots[0]:slots[0] + 1].fill(NO_ROW)
            else:
                self.flags[cupy_module().asarray(slots)] = NO_ROW
        with self.lock:
            self.free.extend(slots)
        return values


class RefusalLog:
    """One backend's pending refusals (per thread) and flag buffers (per device and stream)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], _FlagBuffer] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    def _thread(self) -> Any:
        """This thread's ``pending`` refusals and ``handed`` flags (id -> (flag, stream, buffer, slot), until filed)."""
        if not hasattr(self._local, "pending"):
            self._local.pending, self._local.handed = [], {}
        return self._local

    def flag(self) -> Any:
        """A ``NO_ROW`` flag on the current device and stream, from that stream's buffer."""
        cp = cupy_module()
        stream = cp.cuda.get_current_stream()
        key = (cp.cuda.runtime.getDevice(), int(stream.ptr))
        with self._lock:
            buffer = self._buffers.get(key)
            if buffer is None:
                buffer = self._buffers[key] = _FlagBuffer(stream)
        slot = buffer.take()
        flag = row_flags(1) if slot is None else buffer.flags[slot:slot + 1]
        self._thread().handed[id(flag)] = (flag, stream, None if slot is None else buffer, slot)
        return flag

    def file(self, flag: Any, error: Callable[[int], InputError]) -> None:
        """Leave ``flag`` (handed out by :meth:`flag`) to the next check."""
        local = self._thread()
        _, stream, buffer, slot = local.handed.pop(id(flag))
        overdue = self.take() if len(local.pending) >= MAX_PENDING else None
        local.pending.append(Refusal(flag, error, stream, buffer, slot))
        if overdue is not None:
            overdue.raise_first()

    def take(self) -> Refusals:
        """This thread's pending refusals, handed over (the log forgets them)."""
        local = self._thread()
        pending, local.pending = local.pending, []
        return Refusals(pending)

    @contextmanager
    def filing(self) -> Iterator[None]:
        """Inside the block, :func:`refusal_flag` and :func:`refuse_later` use this log."""
        token = _LOG.set(self)
        try:
            yield
        finally:
            _LOG.reset(token)
            handed = self._thread().handed
            for _, _, buffer, slot in handed.values():  # a launch failed before its flag was filed
                if buffer is not None:
                    buffer.read_and_release([slot])
            handed.clear()


_LOG: ContextVar[RefusalLog | None] = ContextVar("gpuquant_refusal_log", default=None)


def refusal_flag() -> Any:
    """A one-element uint64 device flag set to ``NO_ROW``, in which a kernel records its first refused row."""
    log = _LOG.get()
    return row_flags(1) if log is None else log.flag()


def refuse_later(flag: Any, error: Callable[[int], InputError]) -> None:
    """File ``flag`` (from :func:`refusal_flag`, after the launch that writes it): ``error(row)`` is
    raised at the next check if a row was recorded; outside a backend's log the flag is read at once."""
    log = _LOG.get()
    if log is None:
        Refusals([Refusal(flag, error)]).raise_first()
    else:
        log.file(flag, error)
