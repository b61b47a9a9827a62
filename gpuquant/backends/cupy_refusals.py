"""Rows a kernel refuses, checked where the host waits for the device anyway.

A kernel that refuses rows (an ``absmax`` segment holding NaN or ±Inf) lowers a uint64 device flag to
the first such row (``atomicMin``; :data:`~gpuquant.backends.cupy_device.NO_ROW` while none); a
launcher whose refusal is an array expression (``float`` codes holding NaN or ±Inf) reduces it into
such a flag on the device (:func:`refuse_rows_later`). Reading
that flag right after the launch is a device-to-host copy, which makes the host wait for the stream on
every call. Instead the launcher files the flag with the error it stands for
(:func:`refuse_later`), and the flag is read later, once the host has waited for the stream for its
own reasons:

* the cupy backend, before every download of a result (numpy input: within ``transform`` itself,
  before any output array is written) and before ``fit``;
* the engine's GPU pipeline, when a batch's event has completed and before the batch goes to the
  writer (:meth:`Refusals.raise_first` on what :meth:`RefusalLog.take` handed it);
* ``gpuquant.quantize``, ``gpuquant.evaluate`` and the Dask tasks, before codes leave them;
* a caller that keeps codes on the device: ``Quantizer.check_refusals()`` (``CupyBackend.check_refusals``;
  it waits for the streams of the pending flags).

So the error is the same :class:`~gpuquant.errors.InputError`, naming the same row, raised before any
output is finalised; only its moment moves to the next synchronisation. Refusals are pending per
thread, in call order. A check reads every pending flag and gives its slot back, raises the first
refused call's error and keeps the later refused calls pending (already read), so each refused call
raises exactly once, at successive checks, and none is dropped; only a call that raises itself (its
codes never returned) drops the refusals it filed. A thread that files
:data:`MAX_PENDING` refusals without a check has them checked on the next one (one wait per
:data:`MAX_PENDING` calls), so neither the list nor the buffers grow.

Flags live in persistent buffers of :data:`MAX_PENDING` slots, one per (thread, device, stream),
set to ``NO_ROW`` once when made. A check reads each buffer once (one copy after its stream) and
sets the slots it read back to ``NO_ROW`` on that stream, then gives them back. Only the thread that
owns a buffer takes its slots, so the reset is ordered before the slot's next use even where two
threads' streams share a handle (CuPy's per-thread default stream). A thread keeps at most
:data:`MAX_BUFFERS` buffers (a buffer with nothing pending is dropped to make room for another
stream's); a stream that finds no room, or all its slots pending, gets a fresh one-flag array
instead. Outside a backend's log (tools that call a launcher directly, planned launches on the
host) :func:`refusal_flag` makes a fresh flag and :func:`refuse_later` reads it at once.

A transform captured into a CUDA graph (its stream capturing) takes a slot that is never given
back, as every replay of the graph writes into it: a replay's refusal surfaces at the first check
after it, later replays are not checked (capture again). No buffer is made while capturing.
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
from gpuquant.schemes.statistics import RowError

#: Slots of a stream's flag buffer, and refusals a thread may leave unchecked.
MAX_PENDING = 1024
#: Flag buffers (streams) a thread keeps.
MAX_BUFFERS = 8


@dataclass
class Refusal:
    """A filed flag: ``flag`` (a one-element device array; None once read into ``row``), ``error``
    (the error for a refused row), ``stream`` (the one its kernel ran on; None: the current one) and,
    for a flag of a buffer that takes it back, ``buffer`` and ``slot``; ``call``: the thread's call
    that filed it."""

    flag: Any
    error: Callable[[int], InputError]
    stream: Any = None
    buffer: _FlagBuffer | None = None
    slot: int = -1
    row: int = NO_ROW
    call: int = 0


class Refusals:
    """Filed refusals handed to a caller, checked once it has waited for their streams."""

    def __init__(self, pending: list[Refusal]) -> None:
        self.pending = pending

    def raise_first(self) -> None:
        """Read every flag (one copy per buffer) and give the slots back, then raise the first refused
        one's error; the later refused ones stay in ``pending``, read, for the next call."""
        pending, self.pending = self.pending, []
        for refusal, row in zip(pending, _rows(pending), strict=True):
            refusal.flag, refusal.buffer, refusal.row = None, None, row
        refused = [r for r in pending if r.row != NO_ROW]
        if refused:
            self.pending = refused[1:]
            raise refused[0].error(refused[0].row)


def _rows(pending: list[Refusal]) -> list[int]:
    """The row each refusal's flag holds, in order (``NO_ROW``: none); buffer slots given back."""
    rows: dict[int, int] = {}
    for buffer in {id(r.buffer): r.buffer for r in pending if r.buffer is not None}.values():
        mine = [r for r in pending if r.buffer is buffer]
        values = buffer.read_and_release([r.slot for r in mine])
        rows.update({id(r): int(values[r.slot]) for r in mine})
    return [r.row if r.flag is None else rows[id(r)] if id(r) in rows else int(r.flag.get(stream=r.stream)[0])
            for r in pending]


class _FlagBuffer:
    """:data:`MAX_PENDING` flags of one (thread, device, stream), made once; free slots hold ``NO_ROW``."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.flags = row_flags(MAX_PENDING)
        self.free = list(range(MAX_PENDING - 1, -1, -1))
        self.lock = threading.Lock()

    @property
    def idle(self) -> bool:
        """Nothing pending in it (every slot free)."""
        return len(self.free) == MAX_PENDING

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
    """One backend's pending refusals and flag buffers, per thread (buffers also per device and stream)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _thread(self) -> Any:
        """This thread's ``pending`` refusals, ``handed`` flags (id -> (flag, stream, buffer, slot),
        until filed), flag ``buffers`` ((device, stream) -> buffer) and ``calls`` (the last call's
        number; ``call``: the one filing now)."""
        if not hasattr(self._local, "pending"):
            self._local.pending, self._local.handed, self._local.buffers = [], {}, {}
            self._local.calls = self._local.call = 0
        return self._local

    def flag(self) -> Any:
        """A ``NO_ROW`` flag on the current device and stream, from this thread's buffer for them."""
        cp = cupy_module()
        stream = cp.cuda.get_current_stream()
        local = self._thread()
        capturing = bool(stream.is_capturing())
        key = (cp.cuda.runtime.getDevice(), int(stream.ptr))
        buffer = local.buffers.get(key)
        if buffer is None and not capturing:
            buffer = _new_buffer(local.buffers, key, stream)
        slot = None if buffer is None else buffer.take()
        flag = row_flags(1) if slot is None else buffer.flags[slot:slot + 1]
        kept = None if slot is None or capturing else buffer  # a captured slot is the graph's for good
        local.handed[id(flag)] = (flag, stream, kept, slot)
        return flag

    def file(self, flag: Any, error: Callable[[int], InputError]) -> None:
        """Leave ``flag`` (handed out by :meth:`flag`) to the next check."""
        local = self._thread()
        _, stream, buffer, slot = local.handed.pop(id(flag))
        overdue = self.take() if len(local.pending) >= MAX_PENDING else None
        local.pending.append(Refusal(flag, error, stream, buffer, slot, call=local.call))
        if overdue is not None:
            self._raise(overdue)

    def take(self) -> Refusals:
        """This thread's pending refusals, handed over (the log forgets them)."""
        local = self._thread()
        pending, local.pending = local.pending, []
        return Refusals(pending)

    def check(self) -> None:
        """Raise the first refused of this thread's pending refusals (the later ones stay pending)."""
        self._raise(self.take())

    def _raise(self, taken: Refusals) -> None:
        try:
            taken.raise_first()
        finally:  # refused calls after the raised one: pending again, ahead of any filed since
            self._thread().pending[:0] = taken.pending

    @contextmanager
    def filing(self) -> Iterator[None]:
        """One call: inside the block, :func:`refusal_flag` and :func:`refuse_later` use this log. A
        call that raises returns nothing, so the refusals it filed are dropped (slots given back)."""
        local = self._thread()
        local.calls += 1
        outer, local.call = local.call, local.calls
        token = _LOG.set(self)
        try:
            yield
        except BaseException:
            mine = [r for r in local.pending if r.call == local.call]
            local.pending = [r for r in local.pending if r.call != local.call]
            _rows(mine)
            raise
        finally:
            _LOG.reset(token)
            local.call = outer
            handed = local.handed
            for _, _, buffer, slot in handed.values():  # a launch failed before its flag was filed
                if buffer is not None:
                    buffer.read_and_release([slot])
            handed.clear()


def _new_buffer(buffers: dict[tuple[int, int], _FlagBuffer], key: tuple[int, int], stream: Any) -> _FlagBuffer | None:
    """A new buffer for ``key`` in ``buffers`` (idle ones dropped when :data:`MAX_BUFFERS` are
    there), or None when every one of them has refusals pending."""
    if len(buffers) >= MAX_BUFFERS:
        for idle in [k for k, b in buffers.items() if b.idle]:
            del buffers[idle]
        if len(buffers) >= MAX_BUFFERS:
            return None
    buffer = buffers[key] = _FlagBuffer(stream)
    return buffer


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


def refuse_rows_later(rows: Any, error: Callable[[int], InputError]) -> None:
    """:func:`refuse_later` for a refusal computed on the device rather than in a kernel: ``rows`` is a
    device bool vector (row ``i`` refused where ``rows[i]``), and the flag gets the first refused row
    (``NO_ROW``: none) by a reduction on the current stream, so nothing is read back here."""
    flag = refusal_flag()
    if rows.size:
        cp = cupy_module()
        first = cp.where(rows, cp.arange(rows.size, dtype=cp.uint64), cp.uint64(NO_ROW)).min(keepdims=True)
        cp.minimum(flag, first, out=flag)
    refuse_later(flag, error)


def refuse_nonfinite_later(flag: Any, why: str) -> None:
    """:func:`refuse_later` with the reference's error for a row holding NaN or ±Inf: a
    :class:`~gpuquant.schemes.statistics.RowError` (``"{row} holds NaN or ±Inf; " + why``), so that a
    caller encoding part of an input (a Dask task, a pipeline batch) can name the row of the input."""
    refuse_later(flag, lambda row: RowError(row, "{row} holds NaN or ±Inf; " + why))
