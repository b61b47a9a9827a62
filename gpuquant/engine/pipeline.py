"""The stream: read batch -> (host staging -> device -> kernel -> host) -> write, overlapped.

Three stages run at once, connected by bounded queues of reused buffers, so memory is bounded by
the rings whatever the input size:

* a **reader** thread fills input buffers with consecutive batches (``Source.read_into``: ``preadv``
  straight into the buffer; on the GPU path the buffers are pinned host memory);
* the **compute** stage (the calling thread) encodes. CPU: the numpy backend, chunked over every
  core, into a ring of host output buffers. GPU: ``k`` CUDA streams (non-blocking) take batches
  round robin; on each, the pinned input is uploaded (``ndarray.set``, asynchronous from pinned
  memory), the kernel runs into that stream's device buffers, and the codes and side arrays are
  downloaded into a pinned output buffer (``ndarray.get(blocking=False)``) followed by an event, so
  batch i+1's upload overlaps batch i's kernel and batch i-1's download. A batch is handed to the
  writer when its event completes (in order), after the rows its kernels refused are read
  (``CupyBackend.take_refusals``: the transform itself does not wait for them);
* a **writer** thread writes finished batches into the store's files (``pwrite`` at the rows'
  offsets of ``codes.npy`` and each side ``.npy``), in row order; beside it a **checkpoint** thread
  every ``checkpoint_s`` seconds notes the rows written, fsyncs the files and records that count in
  the manifest (:meth:`gpuquant.store.StoreWriter.checkpoint`), so a fsync never stalls the stream.

The compute stage also counts each batch's edges for the report (the scheme's
:meth:`~gpuquant.schemes.base.Scheme.edge_counter`: values stored as NaN/±Inf, inputs clipped to
the range ends): on the CPU with numpy; on the GPU with cupy on the batch's stream (in chunks of
:data:`EDGE_CHUNK_VALUES`, so its temporaries stay small), into one device counter per stream that
is read once at the end of the pass (no synchronisation per batch).

Rings: ``k + 1`` input and ``k + 1`` output buffers (CPU: k = 2). Every error stops the stream:
batches already computed are still written and checkpointed, then the error is raised; a rerun with
``resume`` continues from the checkpoint. On the GPU an out-of-memory error halves the batch size
(logged) and the stream goes on from the first row not yet written.

The writes go through ``pwrite`` rather than a writable memmap: a full disk then raises ``ENOSPC``
(a memmap would kill the process with SIGBUS), written pages do not count against the process's
resident memory, and no page faults are taken on the output.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from gpuquant.codes import Codes
from gpuquant.engine.progress import Progress
from gpuquant.engine.sources import Source
from gpuquant.errors import InputError
from gpuquant.schemes.statistics import RowError
from gpuquant.store import StoreWriter

log = logging.getLogger("gpuquant.engine")

CHECKPOINT_S = float(os.environ.get("GPUQUANT_CHECKPOINT_SECONDS", "2.0"))
#: Testing aid: seconds the writer sleeps after each batch (so a test can kill a run mid-way).
DEBUG_BATCH_SLEEP = "GPUQUANT_DEBUG_BATCH_SLEEP"
#: Values per chunk when the GPU stream counts a batch's edges (bounds the counter's temporaries).
EDGE_CHUNK_VALUES = 1 << 22
_END = object()


class _Stopped(Exception):
    pass


def _batches(reader: Any, free_out: queue.Queue, stop: threading.Event,
             writer: Any) -> Iterator[tuple[int, int, Any, Any]]:
    """The reader's batches as (start, stop, host buffer, a free output set), until its end; a
    reader error is raised here, and the writer's own error surfaces while waiting."""
    while True:
        item = _get(reader.ready, stop, writer.check)
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        a, b, buf = item
        yield a, b, buf, _get(free_out, stop, writer.check)


def _get(q: queue.Queue, stop: threading.Event, check: Callable[[], None] | None = None) -> Any:
    """``q.get()`` that gives up when ``stop`` is set (and runs ``check`` while waiting)."""
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if check is not None:
                check()
            if stop.is_set():
                raise _Stopped from None


def row_error(exc: InputError, scheme: Any, x: np.ndarray, start: int, stop: int) -> InputError:
    """An encoding error of batch ``[start, stop)`` restated with absolute row numbers."""
    why = scheme.nonfinite_rows_refused
    if why is not None:
        bad = ~np.isfinite(np.asarray(x, dtype=np.float32)).all(axis=1)
        if bad.any():
            return InputError(f"row {start + int(np.argmax(bad))} of the input holds NaN or ±Inf; scheme "
                              f"{scheme.family!r} ({why}) needs finite values")
    if isinstance(exc, RowError):
        return exc.shifted(start)
    return InputError(f"in rows {start}..{stop - 1} of the input: {exc}")


class Checkpointer(threading.Thread):
    """Every ``interval`` seconds: note the writer's rows done, fsync the files, record them.

    The rows-done value is read *before* the fsync, so every row it counts was written before the
    fsync started and is durable when the manifest says so. Running apart from the writer, the
    fsync never stalls the stream.
    """

    def __init__(self, writer: Writer, interval: float) -> None:
        super().__init__(name="gpuquant-checkpoint", daemon=True)
        self.writer, self.interval = writer, interval
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.recorded = writer.done

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            done = self.writer.done
            if done == self.recorded:
                continue
            try:
                self.writer.store.checkpoint(done, **self.writer.meta)
                self.recorded = done
            except BaseException as exc:  # noqa: BLE001 - handed to the compute thread
                self.error = exc
                return

    def finish(self) -> None:
        self.stop.set()
        self.join()


class Writer(threading.Thread):
    """Writes finished batches in order (a :class:`Checkpointer` records progress meanwhile)."""

    def __init__(self, store: StoreWriter, start: int, progress: Progress, checkpoint_s: float = CHECKPOINT_S,
                 meta: Mapping[str, Any] | None = None) -> None:
        super().__init__(name="gpuquant-writer", daemon=True)
        self.store, self.done, self.progress = store, start, progress
        self.meta = dict(meta or {})
        self.q: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.sleep = float(os.environ.get(DEBUG_BATCH_SLEEP, "0") or 0)
        self.seconds = 0.0
        self.checkpointer = Checkpointer(self, checkpoint_s)

    def start(self) -> None:
        super().start()
        self.checkpointer.start()

    def submit(self, start: int, stop: int, arrays: Mapping[str, np.ndarray], release: Callable[[], None]) -> None:
        self.q.put((start, stop, arrays, release))

    def check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.checkpointer.error is not None:
            raise self.checkpointer.error

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                break
            start, stop, arrays, release = item
            try:
                if self.error is None:
                    if start != self.done:
                        raise RuntimeError(f"internal error: batch at row {start} written after row {self.done}")
                    t0 = time.perf_counter()
                    self.store.write_rows(start, arrays)
                    self.done = stop
                    self.seconds += time.perf_counter() - t0
                    self.progress.update(self.done)
                    if self.sleep:
                        time.sleep(self.sleep)
            except BaseException as exc:  # noqa: BLE001 - handed to the compute thread, which raises it
                self.error = exc
            finally:
                release()

    def finish(self) -> None:
        """Write what was submitted, then checkpoint the rows written (also after a write error: the
        rows before the failed batch are complete, and the manifest needs far less room than a batch)."""
        self.q.put(None)
        self.join()
        self.checkpointer.finish()
        try:
            self.store.checkpoint(self.done, **self.meta)
        except OSError as exc:
            if self.error is None:
                self.error = exc


class Reader(threading.Thread):
    """Reads batches ``[a, b)`` into free buffers, in order."""

    def __init__(self, source: Source, ranges: list[tuple[int, int]], free: queue.Queue, stop: threading.Event) -> None:
        super().__init__(name="gpuquant-reader", daemon=True)
        self.source, self.ranges, self.free, self.stop = source, ranges, free, stop
        self.ready: queue.Queue = queue.Queue()
        self.seconds = 0.0

    def run(self) -> None:
        try:
            for a, b in self.ranges:
                buf = _get(self.free, self.stop)
                t0 = time.perf_counter()
                self.source.read_into(a, b, buf)
                self.seconds += time.perf_counter() - t0
                self.ready.put((a, b, buf))
            self.ready.put(_END)
        except _Stopped:
            self.ready.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the compute thread
            self.ready.put(exc)


def _ranges(start: int, n: int, batch_rows: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + batch_rows)) for a in range(start, n, batch_rows)]


def _clamp(batch_rows: int, start: int, n: int) -> int:
    """``batch_rows``, at most the rows left (and at least 1)."""
    return max(1, min(batch_rows, n - start)) if n > start else 1


class _Pass:
    """One pass over rows ``[start, n)``: the rings of free input and output buffers, the reader and
    the writer (started by :meth:`start`; :meth:`close` stops them)."""

    def __init__(self, source: Source, store: StoreWriter, start: int, batch_rows: int, progress: Progress,
                 meta: Mapping[str, Any] | None, in_bufs: list[Any], out_sets: list[dict[str, Any]]) -> None:
        self.free_in: queue.Queue = queue.Queue()
        self.free_out: queue.Queue = queue.Queue()
        for b in in_bufs:
            self.free_in.put(b)
        for o in out_sets:
            self.free_out.put(o)
        self.stop = threading.Event()
        self.reader = Reader(source, _ranges(start, source.rows, batch_rows), self.free_in, self.stop)
        self.writer = Writer(store, start, progress, meta=meta)

    def start(self) -> None:
        self.reader.start()
        self.writer.start()

    def batches(self) -> Iterator[tuple[int, int, Any, Any]]:
        return _batches(self.reader, self.free_out, self.stop, self.writer)

    def close(self) -> float:
        """Stop the reader, then write and checkpoint what was submitted; returns the seconds of that flush."""
        self.stop.set()
        self.reader.join()
        t_flush = time.perf_counter()
        self.writer.finish()
        return time.perf_counter() - t_flush


def _out_set(scheme: Any, rows: int, d: int, alloc: Callable[[tuple[int, ...], Any], np.ndarray],
             code_dtype: Any = None) -> dict[str, np.ndarray]:
    outs = {"codes": alloc(scheme.code_shape(rows, d), code_dtype or scheme.code_dtype)}
    for name, (shape, dtype) in scheme.side_shapes(rows, d).items():
        outs[name] = alloc(shape, dtype)
    return outs


def _slices(outs: Mapping[str, np.ndarray], m: int) -> dict[str, np.ndarray]:
    return {k: v[:m] for k, v in outs.items()}


def _codes_view(outs: Mapping[str, Any], m: int) -> Codes:
    """The first ``m`` rows of an output set, as the ``out=`` of a backend's transform."""
    return Codes(outs["codes"][:m], {k: v[:m] for k, v in outs.items() if k != "codes"})


# --------------------------------------------------------------------------------------------
# CPU


def run_cpu(source: Source, scheme: Any, state: Any, store: StoreWriter, *, start: int, batch_rows: int,
            progress: Progress, ring: int = 3, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Stream rows ``[start, n)`` through the numpy backend into ``store``; returns timings."""
    from gpuquant.backends.numpy_backend import NumpyBackend

    backend = NumpyBackend()
    n, d = source.shape
    batch_rows = _clamp(batch_rows, start, n)
    p = _Pass(source, store, start, batch_rows, progress, meta,
              [np.empty((batch_rows, d), source.dtype) for _ in range(ring)],
              [_out_set(scheme, batch_rows, d, np.empty) for _ in range(ring)])
    free_in, free_out, writer = p.free_in, p.free_out, p.writer
    counter = scheme.edge_counter(state, np)
    edges = np.zeros(2, np.int64)
    p.start()
    compute_s = 0.0
    try:
        for a, b, buf, outs in p.batches():
            m = b - a
            t0 = time.perf_counter()
            x = buf[:m]
            try:
                codes = backend.transform(scheme, state, x, out=_codes_view(outs, m))
            except InputError as exc:
                free_out.put(outs)
                raise row_error(exc, scheme, x, a, b) from None
            edges += _cpu_edges(counter, x, codes)
            compute_s += time.perf_counter() - t0
            free_in.put(buf)
            writer.submit(a, b, _slices(outs, m), lambda outs=outs: free_out.put(outs))
            writer.check()
    finally:
        flush_s = p.close()
    writer.check()
    return {"rows_done": writer.done, "batch_rows": batch_rows, "read_s": p.reader.seconds,
            "compute_s": compute_s, "write_s": writer.seconds, "flush_s": flush_s, **_edge_stats(edges)}


def _edge_stats(edges: Any) -> dict[str, int]:
    """The stream's edge counts (:meth:`gpuquant.schemes.base.Scheme.edge_counter`) for the report."""
    return {"nonfinite_outputs": int(edges[0]), "clipped_inputs": int(edges[1])}


# --------------------------------------------------------------------------------------------
# GPU


def run_gpu(source: Source, scheme: Any, state: Any, store: StoreWriter, *, start: int, batch_rows: int,
            progress: Progress, streams: int = 2, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Stream rows ``[start, n)`` through the CuPy backend with ``streams`` CUDA streams into ``store``.

    An out-of-memory error on the device halves ``batch_rows`` and continues from the first row
    not yet written (logged as a warning).
    """
    import cupy
    import cupyx

    from gpuquant.backends import device_code_dtype
    from gpuquant.backends.cupy_backend import CupyBackend

    backend = CupyBackend()
    n, d = source.shape
    k = max(1, streams)
    batch_rows = _clamp(batch_rows, start, n)
    dev_dtype = device_code_dtype(scheme)
    pinned_rows = batch_rows
    in_bufs = [cupyx.empty_pinned((pinned_rows, d), source.dtype) for _ in range(k + 1)]
    out_sets = [_out_set(scheme, pinned_rows, d, cupyx.empty_pinned, dev_dtype) for _ in range(k + 1)]
    done = start
    totals = {"read_s": 0.0, "write_s": 0.0, "oom_halvings": 0, "nonfinite_outputs": 0, "clipped_inputs": 0}
    counter = scheme.edge_counter(state, cupy)  # its constants uploaded once, not per batch
    while True:
        try:
            result = _gpu_pass(cupy, backend, source, scheme, state, store, done, batch_rows, k, in_bufs, out_sets,
                               dev_dtype, progress, meta, totals, counter)
            return {**totals, **result, "batch_rows": batch_rows, "streams": k}
        except _Refused as refused:
            raise refused.error from None
        except _OutOfMemory as oom:
            done = oom.rows_done
            cupy.get_default_memory_pool().free_all_blocks()
            if batch_rows == 1:
                raise RuntimeError("the GPU ran out of memory even with 1 row per batch") from oom.__cause__
            log.warning("GPU out of memory with %d rows per batch; halving to %d and going on from row %d",
                        batch_rows, batch_rows // 2, done)
            batch_rows //= 2
            totals["oom_halvings"] += 1


class _Refused(Exception):
    """A batch's rows refused when it completed: ``error`` (absolute rows) is raised by the pass."""

    def __init__(self, error: InputError) -> None:
        super().__init__(error)
        self.error = error


class _OutOfMemory(Exception):
    def __init__(self, rows_done: int) -> None:
        super().__init__(rows_done)
        self.rows_done = rows_done


def _gpu_pass(cupy: Any, backend: Any, source: Source, scheme: Any, state: Any, store: StoreWriter, start: int,
              batch_rows: int, k: int, in_bufs: list[np.ndarray], out_sets: list[dict[str, np.ndarray]],
              dev_dtype: Any, progress: Progress, meta: Mapping[str, Any] | None,
              totals: dict[str, Any], counter: Any) -> dict[str, Any]:
    d = source.dim
    OOM = cupy.cuda.memory.OutOfMemoryError
    p = _Pass(source, store, start, batch_rows, progress, meta, in_bufs, out_sets)
    free_in, free_out, writer = p.free_in, p.free_out, p.writer
    inflight: deque = deque()
    slots: list[dict[str, Any]] = []

    def retire() -> None:
        ev, buf, outs, a, b, refusals = inflight.popleft()
        ev.synchronize()
        try:  # rows the kernels refused, read now that the batch is complete
            refusals.raise_first()
        except InputError as exc:
            free_out.put(outs)
            raise _Refused(row_error(exc, scheme, buf[:b - a], a, b)) from None
        free_in.put(buf)
        writer.submit(a, b, _slices(outs, b - a), lambda outs=outs: free_out.put(outs))

    oom: BaseException | None = None
    p.start()
    i = 0
    try:
        try:
            for _ in range(k):
                slots.append({"stream": cupy.cuda.Stream(non_blocking=True),
                              "x": cupy.empty((batch_rows, d), source.dtype),
                              "outs": _out_set(scheme, batch_rows, d, cupy.empty, dev_dtype),
                              "edges": cupy.zeros(2, np.int64)})
            for a, b, buf, outs in p.batches():
                m = b - a
                slot = slots[i % k]
                s = slot["stream"]
                dev = slot["outs"]
                with s:
                    x = slot["x"][:m]
                    x.set(buf[:m], stream=s)
                    try:
                        codes = backend.transform(scheme, state, x, out=_codes_view(dev, m))
                    except InputError as exc:
                        free_out.put(outs)
                        raise row_error(exc, scheme, buf[:m], a, b) from None
                    _count_edges(counter, x, codes, slot["edges"])
                    for name, arr in dev.items():
                        arr[:m].get(stream=s, out=outs[name][:m], blocking=False)
                    ev = cupy.cuda.Event(disable_timing=True)
                    ev.record(s)
                inflight.append((ev, buf, outs, a, b, backend.take_refusals()))
                i += 1
                while len(inflight) >= k:
                    retire()
                writer.check()
            while inflight:
                retire()
            _tally(slots, totals)
        except _Refused:  # the batches after the refused one are not written (run_gpu raises its error)
            raise
        except OOM as exc:
            oom = exc
            while inflight:  # batches launched before the failure are complete and correct
                retire()
            _tally(slots, totals)
        except BaseException:
            try:  # keep what was launched before the failure (a device error may fail this too)
                while inflight:
                    retire()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                inflight.clear()
            raise
    finally:
        totals["flush_s"] = totals.get("flush_s", 0.0) + p.close()
        for ev, *_ in inflight:
            ev.synchronize()
        slots.clear()
    totals["read_s"] += p.reader.seconds
    totals["write_s"] += writer.seconds
    writer.check()
    if oom is not None:
        raise _OutOfMemory(writer.done) from oom
    return {"rows_done": writer.done}


def _edge_parts(counter: Any, x: Any, codes: Codes, values: int) -> list[Callable[[], tuple[Any, Any]]]:
    """One call of the edge ``counter`` per row chunk of about ``values`` values of the batch ``x``
    (the chunk converted to float32 there), so its temporaries stay chunk-sized."""
    m, d = x.shape
    step = max(1, values // max(1, d))

    def part(a: int) -> tuple[Any, Any]:
        xa = x[a:a + step]
        return counter(xa if xa.dtype == np.float32 else xa.astype(np.float32), codes.data[a:a + step],
                       {k: v[a:a + step] for k, v in codes.side.items()})

    return [functools.partial(part, a) for a in range(0, m, step)]


def _cpu_edges(counter: Any, x: np.ndarray, codes: Codes) -> np.ndarray:
    """One host batch's edge counts, its chunks counted on the numpy backend's threads."""
    from gpuquant.backends.numpy_backend import CHUNK_VALUES, _pool

    def run(part: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
        with np.errstate(all="ignore"):  # overflow and NaN are what is counted
            return part()

    futures = [_pool().submit(run, part) for part in _edge_parts(counter, x, codes, CHUNK_VALUES)]
    return np.array([f.result() for f in futures], np.int64).reshape(-1, 2).sum(axis=0)


def _count_edges(counter: Any, x: Any, codes: Codes, acc: Any) -> None:
    """Add one device batch's edge counts to the device counter ``acc``, on the current stream (no
    sync), in chunks of :data:`EDGE_CHUNK_VALUES` values: small temporaries beside the batch buffers
    the planner counts."""
    for part in _edge_parts(counter, x, codes, EDGE_CHUNK_VALUES):
        nonfinite, clipped = part()
        acc[0] += nonfinite
        acc[1] += clipped


def _tally(slots: list[dict[str, Any]], totals: dict[str, Any]) -> None:
    """Add the streams' device edge counts to ``totals`` (one device-to-host copy per stream and pass)."""
    for slot in slots:
        nonfinite, clipped = (int(v) for v in slot["edges"].get())
        totals["nonfinite_outputs"] += nonfinite
        totals["clipped_inputs"] += clipped
