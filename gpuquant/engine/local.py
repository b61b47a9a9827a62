"""The single-machine convert: ``convert(src, dst, quantizer_or_preset)`` streams a matrix of any
size into a code store, on the GPU or the CPU.

The run is :func:`gpuquant.engine.run.run` (lock, resume check, fit, create, stream, check,
report); :class:`LocalRunner` supplies this machine's steps:

- the source (:mod:`gpuquant.engine.sources`): a ``.npy`` file, raw float32, a directory of
  ``.npy`` shards, an array, or a Parquet, HDF5 or big-ann file (:mod:`gpuquant.engine.readers`),
  opened once the output is locked and checked, and read as the scheme sees it: after the
  Matryoshka step and the quantizer's pre-transforms (:func:`prepared_rows`);
- the device: ``"gpu"`` (CuPy, pinned staging, CUDA streams, the batch size from the planner's
  N_max), ``"cpu"`` (the numpy backend, reader and writer threads, :data:`CPU_BATCH_BYTES` of
  input per batch) or ``"auto"`` (the GPU when the cupy backend works and implements the scheme);
- the fit: streaming (:mod:`gpuquant.engine.fit`: the same state as the in-memory fit; the
  pre-transforms first, on the truncated rows, then the scheme on the transformed ones), on the
  CPU whichever device converts;
- the stream (:mod:`gpuquant.engine.pipeline`) with a progress bar (:mod:`gpuquant.engine.progress`);
- on a failure: a store this run created and never wrote a row into is removed; otherwise it is left
  unfinished with every batch written so far recorded, and ``resume=True`` (``--resume``) continues it.

The output is bit-identical whatever the device, batch size or number of interruptions: every
scheme encodes each row from that row alone and the fitted state, which the store keeps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import store as gstore
from gpuquant.api import as_quantizer
from gpuquant.engine.fit import Rows, StreamRows, fit_pre_transform, fit_stream
from gpuquant.engine.progress import Progress
from gpuquant.engine.run import check_and_fit, check_batch_rows, check_device, create_store, report, run
from gpuquant.engine.sources import PreparedSource, Source, open_source
from gpuquant.errors import ConvertError, InputError, SourceReadError

log = logging.getLogger("gpuquant.engine")

#: Input bytes per batch on the CPU path (three input and three output buffers in the ring).
CPU_BATCH_BYTES = 8 * 2**20
GPU_STREAMS = 2


def pick_device(device: str, scheme: Any) -> tuple[str, Any]:
    """(``"gpu"`` | ``"cpu"``, backend) for ``device``; an explicit ``"gpu"`` never falls back."""
    from gpuquant.backends import pick_auto, resolve, resolve_for

    check_device(device)
    if device == "cpu":
        return "cpu", resolve("numpy")
    if device == "gpu":
        return "gpu", resolve_for("cupy", scheme)
    name, skipped = pick_auto(scheme)
    if name == "cupy":
        return "gpu", resolve("cupy")
    log.info("device auto: CPU (%s)", skipped.get("cupy", ""))
    return "cpu", resolve("numpy")


class LocalRunner:
    """The steps of :func:`gpuquant.engine.run.run` on this machine (see the module docstring)."""

    def __init__(self, src: Any, *, shape: Any, device: str, batch_rows: int | None, progress: bool,
                 source_info: dict[str, Any] | None, streams: int, column: str | None = None,
                 dataset: str | None = None) -> None:
        self.src, self.requested = src, device
        self.source_options = {"shape": shape, "column": column, "dataset": dataset}
        self.batch_rows, self.show, self.source_info, self.streams = batch_rows, progress, source_info, streams
        self.device = "cpu"
        self.backend: Any = None
        self.source: Source | None = None
        self.rows_per_batch = 1
        self.plan_doc: dict[str, Any] | None = None

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        self.source = open_source(self.src, **self.source_options)
        try:
            yield
        finally:
            self.source.close()

    def describe(self) -> dict[str, Any]:
        assert self.source is not None
        return {**self.source.describe(), **(self.source_info or {})}

    def resuming(self, manifest: dict[str, Any]) -> None:
        pass

    def prepare(self, q: Any) -> Rows:
        assert self.source is not None
        rows: Any = prepared_rows(q, self.source)  # a Source: the runner protocol's rows
        self.device, self.backend = pick_device(self.requested, q.scheme)
        return rows

    def fit(self, q: Any, rows: Any) -> None:
        assert self.source is not None
        fit_streaming(q, self.source)

    def _settle_batch(self, q: Any, rows: Any) -> None:
        """The batch size, settled (and a GPU plan that fits nothing refused) before writing."""
        n, d = rows.shape
        if self.device == "gpu":
            from gpuquant.planner import gpu_free_memory, plan

            free, _, mem_source = gpu_free_memory()
            p = plan(q, dim=d, rows=n, dtype=rows.dtype, op="convert", gpu_memory=free, in_flight=self.streams,
                     batch_rows=self.batch_rows)
            p.memory_source = mem_source
            p.require()
            per_batch = int(p.batch_rows or 1)
            self.plan_doc = {k: getattr(p, k) for k in ("n_max", "bytes_per_row", "fixed_bytes", "usable_bytes",
                                                         "batch_rows", "peak_bytes", "pinned_host_bytes")}
        else:
            per_batch = int(self.batch_rows or max(1, CPU_BATCH_BYTES // rows.row_bytes))
        self.rows_per_batch = max(1, min(per_batch, n))

    def open_writer(self, dst: Path, q: Any, rows: Any, desc: dict[str, Any], mode: str) -> gstore.StoreWriter:
        self._settle_batch(q, rows)
        n, d = rows.shape
        if mode == "resume":
            writer = gstore.reopen(dst)
            log.info("resuming %s at row %d of %d", dst, writer.rows_done, n)
            return writer
        log.info("writing %s (%d rows)", dst, n)
        return create_store(dst, q, n, d, desc, self.backend.name, self.device)

    def stream(self, writer: gstore.StoreWriter, q: Any, rows: Any) -> dict[str, Any]:
        n, start = rows.shape[0], writer.rows_done
        bar = Progress(n, rows.row_bytes, start=start, enabled=self.show)
        meta = {"device": self.device, "batch_rows": self.rows_per_batch}
        log.info("streaming rows %d..%d on %s in batches of %d rows", start, n - 1, self.device, self.rows_per_batch)
        t0 = time.perf_counter()
        try:
            if start < n:
                from gpuquant.engine import pipeline

                run_batches = pipeline.run_gpu if self.device == "gpu" else pipeline.run_cpu
                kwargs = {"streams": self.streams} if self.device == "gpu" else {}
                stats = run_batches(rows, q.scheme, q.state, writer, start=start, batch_rows=self.rows_per_batch,
                                    progress=bar, meta=meta, **kwargs)
            else:
                stats = {"rows_done": n}
        finally:
            bar.close()
        stats = {**stats, "stream_s": time.perf_counter() - t0, "uncounted": [(0, start)]}
        log.info("checking and closing %s", writer.path)
        return stats

    def failed(self, exc: BaseException, dst: Path, *, fresh: bool, done: int, rows: int) -> None:
        if fresh and done == 0 and not isinstance(exc, ConvertError):
            gstore.discard(dst)
            return
        where_msg = f"{dst} keeps {done} of {rows} rows (unfinished)"
        if isinstance(exc, SourceReadError):
            raise ConvertError(f"{exc}. {where_msg}: make the input readable and run again with --resume") from exc
        if isinstance(exc, OSError):
            raise ConvertError(f"writing {dst} failed: {exc}. {where_msg}: free some space (or fix the "
                               "problem) and run the same command again with --resume") from exc
        if isinstance(exc, InputError):
            raise InputError(f"{exc}. {where_msg}: fix the input and convert again with --overwrite") from None

    def report(self, store: gstore.Store, rows: Any, stats: dict[str, Any], *, resumed: bool, start: int,
               fit_s: float, total_s: float) -> dict[str, Any]:
        n, stream_s = rows.shape[0], stats["stream_s"]
        doc = report(store, rows, device=self.device, batch_rows=int(stats.get("batch_rows", self.rows_per_batch)),
                     resumed_from=start if resumed else None, extra={"plan": self.plan_doc}, bytes_in=rows.nbytes,
                     row_bytes=rows.row_bytes, rows_run=n - start, stream_s=stream_s,
                     seconds={"fit": fit_s, "transform": stream_s, "read": stats.get("read_s", 0.0),
                              "compute": stats.get("compute_s", 0.0), "write": stats.get("write_s", 0.0),
                              "flush": stats.get("flush_s", 0.0), "total": total_s}, stats=stats)
        if stats.get("streams"):
            doc["streams"] = stats["streams"]
        if stats.get("oom_halvings"):
            doc["oom_halvings"] = stats["oom_halvings"]
        return doc


def prepared_rows(q: Any, source: Source, *, with_pre: bool = True) -> Source:
    """The rows of ``source`` as ``q``'s scheme sees them: after the Matryoshka step and (with
    ``with_pre``) the pre-transform, which is applied as each batch is read."""
    pre = q.pre if with_pre and q.pre.active else None
    if q.truncate_dim is None and pre is None:
        return source
    return PreparedSource(source, q.truncate_dim, pre)


def needs_streaming_fit(q: Any) -> bool:
    """Whether fitting ``q`` reads the data: its pre-transform or its scheme is still to be fitted."""
    return bool(q.scheme.needs_fit or not q.pre.is_fitted)


def fit_streaming(q: Any, source: Source) -> None:
    """Fit ``q`` (in place) on every row of ``source`` (the input as read) with the streaming fit,
    the in-memory fit's state: the pre-transform first, on the rows after the Matryoshka step, then
    the scheme on the rows it sees."""
    if not q.pre.is_fitted:
        fit_pre_transform(q.pre, StreamRows(prepared_rows(q, source, with_pre=False)))
    rows = prepared_rows(q, source)
    n, d = rows.shape
    log.info("fitting %s on %d x %d %s (streaming)", q.name, n, d, rows.dtype)
    if q.scheme.needs_fit:
        q.state = {k: np.asarray(v) for k, v in fit_stream(q.scheme, rows).items()}
    q.dim = d


def fit_input(src: Any, quantizer_or_preset: Any = "int8-row", *, shape: Any = None,
              params: dict[str, Any] | None = None, column: str | None = None,
              dataset: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Fit a quantizer on every row of ``src`` (whatever :func:`convert` reads: a ``.npy``, raw
    float32 with ``shape``, a directory of shards, Parquet with ``column``, HDF5 with ``dataset``,
    big-ann files, an array), streaming, so memory stays bounded whatever the input's size; the
    state is the one :func:`convert` fits. Returns ``(the fitted quantizer, the source's
    description)``. A scheme without a fit reads one row (its dimension)."""
    q = as_quantizer(quantizer_or_preset, params)
    source = open_source(src, shape=shape, column=column, dataset=dataset)
    try:
        n, d = prepared_rows(q, source).shape
        if n == 0:
            raise InputError("cannot fit on 0 rows")
        if needs_streaming_fit(q):
            check_and_fit(q, d, lambda: fit_streaming(q, source))
        else:
            q.fit(source.take(np.arange(1)))
        return q, {**source.describe(), "bytes": int(source.nbytes)}
    finally:
        source.close()


def convert(
    src: Any,
    dst: str | os.PathLike[str],
    quantizer_or_preset: Any = "int8-row",
    *,
    device: str = "auto",
    batch_rows: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    shape: Any = None,
    column: str | None = None,
    dataset: str | None = None,
    params: dict[str, Any] | None = None,
    source_info: dict[str, Any] | None = None,
    streams: int = GPU_STREAMS,
) -> dict[str, Any]:
    """Quantize ``src`` into the store ``dst``, streaming; returns the report (a JSON-able dict).

    Args:
        src: a ``.npy`` path, a raw float32 file (with ``shape=(rows, dim)``, rows may be -1), a
            directory of ``.npy`` shards (natural name order), Parquet (``column``), HDF5 (``dataset``),
            a big-ann ``.fbin`` / ``.u8bin`` / ``.i8bin`` file, or a numpy array / memmap.
        dst: the output directory (see :mod:`gpuquant.store`).
        quantizer_or_preset: a :class:`gpuquant.Quantizer` (fitted, or fitted here, in place) or a
            preset / family name (with ``params``).
        device: ``"auto"`` (the GPU when the cupy backend works), ``"gpu"`` (never falls back), ``"cpu"``.
        batch_rows: rows per batch; default: the planner's N_max on the GPU (capped), 8 MiB of input on the CPU.
        resume: continue the unfinished store ``dst`` (refused if the source or parameters changed).
        overwrite: replace an existing gpuquant output (never anything else).
        progress: draw the progress bar on stderr when it is a terminal (progress is logged regardless).
        column: Parquet input: the list column (default: the only list of floats).
        dataset: HDF5 input: the 2-D dataset (default: ``train``, else the only 2-D float one).
        source_info: extra fields recorded under the manifest's ``source``.
        streams: CUDA streams (batches in flight) on the GPU path.

    Raises:
        InputError: bad input, parameters or output (nothing written); ``StoreBusyError``: another
        run holds ``dst``; ``ConvertError``: the stream stopped (the store is resumable);
        ``BackendUnavailableError``: ``device="gpu"`` without a usable GPU.
    """
    check_batch_rows(batch_rows)
    runner = LocalRunner(src, shape=shape, device=device, batch_rows=batch_rows, progress=progress,
                         source_info=source_info, streams=streams, column=column, dataset=dataset)
    return run(Path(dst), quantizer_or_preset, params, runner, resume=resume, overwrite=overwrite)
