"""Dask: fit, transform and convert with a Quantizer on a Dask cluster (numpy or CuPy chunks).

Install with ``pip install "gpuquant[dask]"`` (``dask[array]`` and ``distributed``; add ``dask-cuda``
for one worker per GPU). Every call runs on the active Dask scheduler: a ``distributed.Client``
(passed as ``client=`` or the default one), else Dask's local threads.

* :func:`fit` fits on a Dask array by merging per-chunk partials of the statistics the scheme
  declares (``scheme.fit_spec()``), with the same code as the single-machine streaming fit
  (:func:`gpuquant.engine.fit.fit_rows`: this module only supplies the row access,
  :class:`DaskRows`). What equals the single-machine fit:

  - inputs of at most ``gather_bytes`` as float32: gathered and fitted by the reference: identical.
  - ``MinMax`` and ``AbsMax``: per-chunk column min/max merged by min/max: exact.
  - ``Quantile`` with ``method="cuvs"``: the rows :func:`gpuquant.schemes.statistics.sample_rows`
    picks are gathered (``X[rows]``) and given to the reference: identical at any size.
  - ``Quantile`` with ``method="exact"`` and ``ColumnMedian``: the three-pass radix select, each
    pass a per-chunk histogram summed over the cluster: exact order statistics, identical.
  - ``ColumnMean``: per-chunk float64 column sums (each chunk summed row by row),
    added on the client in chunk order. The single-machine path adds every row in order, so the
    float64 sums may differ in their last bits: both are recursive float64 sums of the same n
    values, each within ``(n - 1) * 2**-53 * sum(|x|)`` of the exact sum per column. After the
    division by n and the rounding to float32 (a relative step of ``2**-24``, 2**29 times coarser)
    the thresholds agree unless the exact mean lies within that bound of a float32 rounding
    boundary; for ``n < 2**20`` rows of values of one sign the bound is below ``2**-33`` relative.
  - ``ColumnMeanF32``: a chain of tasks over the chunks in row order carrying the float32 running
    sum: the single-machine loop, identical.
  - ``KMeans``: the training rows gathered (``X[rows]``), then the reference: identical.
  - ``Covariance``: per-chunk float64 moments merged by addition (last bits may differ from one
    pass in order, as for ``ColumnMean``).

  CuPy chunks are copied to the host for the statistics (the statistics are small; the copy is
  the chunk).

* :func:`transform` encodes through ``map_blocks``: one task per row chunk runs the Quantizer's
  transform (the numpy backend on numpy chunks, the cupy backend on CuPy chunks) and returns the
  codes and side arrays packed in one uint8 row block; ``codes`` and each side array are views of
  it (one encode per chunk however many arrays are computed). Codes come back as numpy chunks.

* :func:`to_store` / :func:`convert` write the codes into a gpuquant store
  (:mod:`gpuquant.store`) by the engine's convert run (:func:`gpuquant.engine.run.run` with a
  :class:`DaskRunner`): the client takes the store's lock, fits, creates the store (files
  preallocated); each task encodes its row chunk and writes it with ``pwrite`` at its own rows,
  fsyncs, and then records its range in ``OUTPUT/.parts/`` (a file per range, written atomically).
  The client advances the manifest's ``rows_done`` over the finished prefix as tasks finish (so the
  single-machine ``--resume`` works on the store too) and marks the store complete, after the
  usual check, only when every range is done. A task that dies (worker killed) is rerun by the
  scheduler; rewriting a range writes the same bytes. A run that stops (``KilledWorker``, an error,
  Ctrl-C) leaves the store unfinished: ``resume=True`` reruns only the ranges not recorded, with the
  chunking recorded in the manifest (a store the single-machine engine started is continued from
  its finished prefix, and the other way round). Each run records a run id in the manifest; a task
  of an earlier run still executing on some worker writes nothing once it is not current, and on a
  failure the client waits (up to a minute) for running write tasks before it releases the lock.
  All workers must see the output directory at the same path (one machine, or a shared file system).

* :func:`from_source` and :func:`cluster_client` come from :mod:`gpuquant.cluster_setup`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import store as gstore
from gpuquant.api import as_quantizer
from gpuquant.cluster_setup import NO_DASHBOARD, cluster_client, from_source
from gpuquant.cluster_setup import import_dask as _dask
from gpuquant.engine.fit import GATHER_BYTES, Rows, add_rows, fit_pre_transform, fit_rows
from gpuquant.engine.run import check_batch_rows, check_device, create_store, report, run
from gpuquant.errors import ConvertError, InputError
from gpuquant.schemes.statistics import RowError

log = logging.getLogger("gpuquant.cluster")

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
PARTS = gstore.PARTS


def _scheduler(client: Any) -> Any:
    """``client`` or the default distributed client, else ``None`` (Dask's default scheduler)."""
    if client is not None:
        return client
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _compute(objs: list[Any], client: Any) -> list[Any]:
    import dask

    c = _scheduler(client)
    return list(dask.compute(*objs, scheduler=c) if c is not None else dask.compute(*objs))


def _host(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (CuPy arrays copied to the host)."""
    if hasattr(x, "get") and not isinstance(x, np.ndarray):
        return np.asarray(x.get())
    return np.asarray(x)


def _prepared(block: Any, k: int | None, pre: Any = None) -> np.ndarray:
    """The float32 rows the fit sees: the Matryoshka step first when ``k`` is set, then the fitted
    pre-transform ``pre`` if given (as the engine's ``PreparedSource``), else a float32 conversion
    (as the engine's batches)."""
    x = _host(block)
    if k is not None:
        from gpuquant.matryoshka import truncate_renormalize

        x = _host(truncate_renormalize(x, k))
    x = np.asarray(x, dtype=F32)
    return x if pre is None else pre.apply(x)


def _rows_only(X: Any) -> Any:
    da = _dask()
    if not isinstance(X, da.Array):
        X = da.asarray(X)
    if X.ndim != 2:
        raise InputError(f"expected a 2-D Dask array (rows x dims), got {X.ndim}-D")
    if any(np.isnan(c) for c in X.shape):
        raise InputError("the Dask array has unknown chunk sizes: call X.compute_chunk_sizes() first")
    if X.shape[0] == 0:
        raise InputError("cannot fit on 0 rows")
    if X.dtype.kind != "f":
        raise InputError(f"expected a float Dask array, got dtype {X.dtype}")
    return X.rechunk({1: -1}) if X.numblocks[1] > 1 else X


# --------------------------------------------------------------------------------------------
# fit


def _apply(fn: Any, block: Any, k: int | None, pre: Any) -> Any:
    return fn(_prepared(block, k, pre))


def _block_sum(block: Any, k: int | None, pre: Any) -> np.ndarray:
    x = _prepared(block, k, pre)
    return add_rows(np.zeros(x.shape[1], F64), x)


def _fold_block(fn: Any, acc: Any, block: Any, k: int | None, pre: Any) -> Any:
    return fn(np.copy(acc), _prepared(block, k, pre))


class DaskRows(Rows):
    """:class:`gpuquant.engine.fit.Rows` of a Dask array: per-chunk partials on the workers, merged in
    a binary tree of tasks, the root on the client."""

    def __init__(self, X: Any, truncate_dim: int | None = None, client: Any = None, pre: Any = None) -> None:
        self.X = _rows_only(X)
        self.k = truncate_dim
        if truncate_dim is not None and truncate_dim > self.X.shape[1]:
            raise InputError(f"truncate_dim={truncate_dim} is larger than the input's {self.X.shape[1]} dimensions")
        dim = int(truncate_dim or self.X.shape[1])
        self.shape = (int(self.X.shape[0]), dim if pre is None else pre.out_dim(dim))
        self.client, self.pre = client, pre

    def _blocks(self) -> list[Any]:
        return list(self.X.to_delayed().ravel())

    def read_all(self) -> np.ndarray:
        return _prepared(_compute([self.X], self.client)[0], self.k, self.pre)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return _prepared(_compute([self.X[np.asarray(rows, np.int64)]], self.client)[0], self.k, self.pre)

    def reduce(self, fn: Any, merge: Any) -> Any:
        from dask import delayed

        level = [delayed(_apply, pure=True)(fn, b, self.k, self.pre) for b in self._blocks()]
        while len(level) > 1:
            nxt = [delayed(merge, pure=True)(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        return _compute(level, self.client)[0]

    def column_sum(self) -> np.ndarray:
        from dask import delayed

        parts = _compute([delayed(_block_sum, pure=True)(b, self.k, self.pre) for b in self._blocks()], self.client)
        acc = np.zeros(self.shape[1], F64)
        for p in parts:  # chunk order: deterministic for a given chunking
            acc = acc + p
        return acc

    def fold(self, fn: Any, init: Any) -> Any:
        """A chain of tasks, one per chunk in row order, each carrying the accumulator on."""
        from dask import delayed

        acc = init
        for b in self._blocks():
            acc = delayed(_fold_block, pure=True)(fn, acc, b, self.k, self.pre)
        return _compute([acc], self.client)[0]


def fit(quantizer_or_preset: Any, X: Any, *, client: Any = None, gather_bytes: int = GATHER_BYTES,
        **params: Any) -> Any:
    """Fit a :class:`gpuquant.Quantizer` (or a new one for a preset name and ``params``) on the Dask
    array ``X`` by merging per-chunk statistics (see the module docstring); returns the quantizer."""
    q = as_quantizer(quantizer_or_preset, params)
    rows = DaskRows(X, q.truncate_dim, client)
    if q.pre.active:
        if not q.pre.is_fitted:
            fit_pre_transform(q.pre, rows)
        rows = DaskRows(X, q.truncate_dim, client, q.pre)
    q.scheme.check_dim(rows.shape[1])
    if q.scheme.needs_fit:  # a scheme without state (absmax per row, casts, zero thresholds) has nothing to fit
        q.state = {k: np.asarray(v) for k, v in fit_rows(q.scheme, rows, gather_bytes=gather_bytes).items()}
        q.dim = rows.shape[1]
    return q


# --------------------------------------------------------------------------------------------
# transform


def layout(scheme: Any, dim: int) -> list[tuple[str, tuple[int, ...], np.dtype, int]]:
    """``(name, shape per row, dtype, bytes per row)`` of the codes and each side array, in packing order."""
    out = []
    shape = tuple(scheme.code_shape(1, dim))[1:]
    nbytes = int(np.prod(shape, dtype=np.int64)) * scheme.code_dtype.itemsize
    out.append(("codes", shape, np.dtype(scheme.code_dtype), nbytes))
    for name, (sh, dt) in scheme.side_shapes(1, dim).items():
        tail = tuple(sh)[1:]
        out.append((name, tail, np.dtype(dt), int(np.prod(tail, dtype=np.int64)) * np.dtype(dt).itemsize))
    return out


_QCACHE: dict[str, Any] = {}


def _worker_quantizer(qjson: str, backend: str) -> Any:
    key = f"{backend}:{qjson}"
    q = _QCACHE.get(key)
    if q is None:
        import json

        from gpuquant.api import Quantizer

        q = Quantizer.from_dict(json.loads(qjson), backend=backend)
        if len(_QCACHE) >= 2:  # one run's quantizer on its backend and on numpy (the edge counts)
            _QCACHE.clear()
        _QCACHE[key] = q
    return q


def _dim(q: Any, X: Any) -> int:
    d = int(q.truncate_dim or X.shape[1])
    return int(q.dim or (q.pre.out_dim(d) if q.pre.active else d))


def _encode(block: Any, qjson: str, device: str, dim: int) -> dict[str, np.ndarray]:
    """Encode one row chunk: the codes and each side array on the host, in :func:`layout` order."""
    from gpuquant.backends import is_device_array

    on_device = is_device_array(block)
    # auto: CuPy chunks on the cupy backend; host chunks on "auto" (the worker's GPU when one works and
    # implements the scheme, as the single-machine engine decides), else numpy. Same bits either way.
    backend = {"cpu": "numpy", "gpu": "cupy"}.get(device, "cupy" if on_device else "auto")
    if backend == "numpy" and on_device:
        block = _host(block)
    q = _worker_quantizer(qjson, backend)
    codes = q.transform(block)
    q.check_refusals()  # device chunks: the rows the kernels refused, before any code leaves the task
    return {name: _host(codes.data if name == "codes" else codes.side[name]) for name, *_ in layout(q.scheme, dim)}


def _encode_packed(block: Any, qjson: str, device: str, dim: int) -> np.ndarray:
    """Encode one row chunk; codes and side arrays as one uint8 (rows, bytes per row) block."""
    m = int(block.shape[0])
    return np.concatenate([np.ascontiguousarray(p).reshape(m, -1).view(np.uint8)
                           for p in _encode(block, qjson, device, dim).values()], axis=1)


def _unpack(packed: np.ndarray, start: int, stop: int, tail: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    m = packed.shape[0]
    return np.ascontiguousarray(packed[:, start:stop]).view(dtype).reshape((m, *tail))


def _qjson(q: Any) -> str:
    import json

    return json.dumps(q.to_dict(), sort_keys=True)


def packed(q: Any, X: Any, device: str = "auto") -> Any:
    """The uint8 Dask array of packed codes + side arrays per row (:func:`layout` order)."""
    da = _dask()
    if not q.is_fitted:
        raise InputError("the quantizer is not fitted: call gpuquant.cluster.fit(q, X) first")
    X = _rows_only(X)
    width = sum(e[3] for e in layout(q.scheme, _dim(q, X)))
    return X.map_blocks(_encode_packed, _qjson(q), device, _dim(q, X), dtype=np.uint8, chunks=(X.chunks[0], (width,)),
                        meta=np.empty((0, 0), np.uint8)) if width else da.zeros(
        (X.shape[0], 0), np.uint8, chunks=(X.chunks[0], (0,)))


def transform(q: Any, X: Any, *, device: str = "auto") -> Any:
    """Encode the Dask array ``X`` with the fitted ``q``: a :class:`gpuquant.Codes` whose ``data`` and
    ``side`` arrays are Dask arrays (numpy chunks, the row chunks of ``X``), lazily computed."""
    from gpuquant.codes import Codes

    P = packed(q, X, device)
    arrays = {}
    off = 0
    for name, tail, dtype, nb in layout(q.scheme, _dim(q, X)):
        arrays[name] = P.map_blocks(_unpack, off, off + nb, tail, dtype, dtype=dtype,
                                    chunks=(P.chunks[0], *[(t,) for t in tail]), drop_axis=[] if tail else [1],
                                    meta=np.empty((0,) * (1 + len(tail)), dtype))
        off += nb
    return Codes(arrays.pop("codes"), arrays, q.name, _dim(q, X))


# --------------------------------------------------------------------------------------------
# writing a store


def _part_name(a: int, b: int) -> str:
    return f"{a:020d}-{b:020d}"


def _parts_done(path: Path) -> set[tuple[int, int]]:
    d = path / PARTS
    done = set()
    if d.is_dir():
        for f in d.iterdir():
            a, _, b = f.name.partition("-")
            if a.isdigit() and b.isdigit():
                done.add((int(a), int(b)))
    return done


def _current(root: Path, run: str) -> dict[str, Any] | None:
    """The manifest of the store ``root`` while run ``run`` is writing it, else ``None`` (an older
    run's task, left running on a worker after its run stopped, or a finished store)."""
    manifest = gstore.read_manifest(root)
    state = manifest.get("state", {})
    if state.get("status") != gstore.IN_PROGRESS or (state.get("dask") or {}).get("run") != run:
        return None
    return manifest


def _edges(block: Any, qjson: str, arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    """The chunk's edge counts (values stored as NaN/±Inf, inputs clipped), on the host."""
    q = _worker_quantizer(qjson, "numpy")
    codes = arrays["codes"].view(q.scheme.code_dtype)
    pre = q.pre if q.pre.active else None  # the rows the scheme encoded: after the pre-transform
    return q.scheme.edge_counts(_prepared(block, q.truncate_dim, pre), codes,
                                {k: v for k, v in arrays.items() if k != "codes"}, q.state)


def _write_block(block: Any, qjson: str, device: str, dim: int, path: str, start: int,
                 run: str) -> tuple[int, int, int, int]:
    """Encode one row chunk and write it at rows ``start ..`` of the store ``path``, fsync, record
    the range; returns the range and the chunk's edge counts.

    A task whose run is not current (see :func:`_current`, asked before encoding and again before
    writing) writes nothing and returns an empty range."""
    from gpuquant import files as gfiles

    root = Path(path)
    m = int(block.shape[0])
    if _current(root, run) is None:
        return start, start, 0, 0
    try:
        arrays = _encode(block, qjson, device, dim)
    except RowError as exc:  # the chunk's row, as a row of the input
        raise exc.shifted(start) from None
    manifest = _current(root, run)
    if manifest is None:
        return start, start, 0, 0
    writer = gstore.StoreWriter(root, manifest)
    try:
        writer.write_rows(start, arrays)
        writer.sync()
    finally:
        writer.close()
    (root / PARTS).mkdir(exist_ok=True)
    gfiles.write_json_atomic(root / PARTS / _part_name(start, start + m),
                          {"rows": [start, start + m], "pid": os.getpid(), "checksums": writer.pending})
    return (start, start + m, *_edges(block, qjson, arrays))


def _describe(X: Any) -> dict[str, Any]:
    return {"kind": "dask", "path": "", "shape": [int(s) for s in X.shape], "dtype": X.dtype.name,
            "checksum": {"method": "dask-name", "value": X.name}}


def to_store(X: Any, dst: str | os.PathLike[str], quantizer_or_preset: Any = "int8-row", *, client: Any = None,
             device: str = "auto", resume: bool = False, overwrite: bool = False, params: dict[str, Any] | None = None,
             source_desc: dict[str, Any] | None = None, gather_bytes: int = GATHER_BYTES,
             progress: bool = False) -> dict[str, Any]:
    """Fit (if needed) and write the codes of the Dask array ``X`` into the store ``dst``, one task per
    row chunk; returns a report. See the module docstring for the protocol and :func:`convert` for
    file sources. ``source_desc`` replaces the manifest's ``source`` (default: the Dask array's name
    as the checksum, so ``resume`` needs the same graph). ``progress`` draws the engine's progress
    bar on stderr when it is a terminal."""
    check_device(device)
    X = _rows_only(X)
    runner = DaskRunner(X, client=client, device=device, source_desc=source_desc or _describe(X),
                        gather_bytes=gather_bytes, progress=bool(progress))
    return run(Path(dst), quantizer_or_preset, params, runner, resume=resume, overwrite=overwrite)


class DaskRunner:
    """The steps of :func:`gpuquant.engine.run.run` on a Dask cluster: a Dask array's rows, the
    cluster's fit (:func:`fit`), one write task per row chunk (:func:`_run_parts`)."""

    def __init__(self, X: Any, *, client: Any, device: str, source_desc: dict[str, Any], gather_bytes: int,
                 progress: bool) -> None:
        self.X, self.client, self.device, self.desc = X, client, device, source_desc
        self.gather_bytes, self.progress = gather_bytes, progress

    def session(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def describe(self) -> dict[str, Any]:
        return self.desc

    def resuming(self, manifest: dict[str, Any]) -> None:
        chunks = tuple(int(c) for c in (manifest.get("state", {}).get("dask") or {}).get("chunks") or ())
        # the recorded chunking, so that recorded ranges match; a store the single-machine engine
        # started has none: its finished prefix is kept and the rest runs in X's own chunks
        if chunks and sum(chunks) == self.X.shape[0] and tuple(self.X.chunks[0]) != chunks:
            self.X = self.X.rechunk({0: chunks})

    def prepare(self, q: Any) -> Rows:
        # what the checks read (take()); q's pre-transform is fitted in place before they read
        return DaskRows(self.X, q.truncate_dim, self.client, q.pre if q.pre.active else None)

    def fit(self, q: Any, rows: Rows) -> None:
        fit(q, self.X, client=self.client, gather_bytes=self.gather_bytes)

    def open_writer(self, dst: Path, q: Any, rows: Rows, desc: dict[str, Any], mode: str) -> gstore.StoreWriter:
        n, d = rows.shape
        writer = gstore.reopen(dst) if mode == "resume" else create_store(dst, q, n, d, desc, "dask", self.device)
        # a new run id: tasks of an earlier run still running on some worker stop writing
        writer.checkpoint(writer.rows_done, dask={"chunks": [int(c) for c in self.X.chunks[0]],
                                                  "run": uuid.uuid4().hex})
        return writer

    def stream(self, writer: gstore.StoreWriter, q: Any, rows: Rows) -> dict[str, Any]:
        return _run_parts(self.X, writer.path, q, writer, self.device, self.client, self.progress)

    def failed(self, exc: BaseException, dst: Path, *, fresh: bool, done: int, rows: int) -> None:
        if not isinstance(exc, Exception):  # SystemExit: as it is
            return
        raise ConvertError(
            f"the Dask run stopped ({type(exc).__name__}: {exc}); {dst} keeps {done} of {rows} rows as a finished "
            f"prefix and {len(_parts_done(dst))} finished chunks (unfinished): run again with resume=True "
            "(--resume)") from exc

    def report(self, store: gstore.Store, rows: Rows, stats: dict[str, Any], *, resumed: bool, start: int,
               fit_s: float, total_s: float) -> dict[str, Any]:
        X = self.X
        n, row_in = int(X.shape[0]), int(X.shape[1]) * X.dtype.itemsize
        skipped = stats["skipped_rows"]
        return report(store, rows, device=self.device, batch_rows=int(max(X.chunks[0])),
                      resumed_from=skipped if resumed else None,
                      extra={"dask": {"chunks": len(X.chunks[0]), "tasks_run": stats["tasks"],
                                      "skipped_chunks": stats["skipped"], "scheduler": stats["scheduler"]}},
                      bytes_in=n * row_in, row_bytes=row_in, rows_run=n - skipped, stream_s=stats["seconds"],
                      seconds={"fit": fit_s, "transform": stats["seconds"], "total": total_s}, stats=stats)


def _run_parts(X: Any, dst: Path, q: Any, writer: gstore.StoreWriter, device: str, client: Any,
               progress: bool) -> dict[str, Any]:
    from dask import delayed

    from gpuquant.engine.progress import Progress

    n = int(X.shape[0])
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(np.int64)
    ranges = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    prefix = writer.rows_done
    known = set(ranges)
    done = {r for r in _parts_done(dst) if r in known} | {r for r in ranges if r[1] <= prefix}
    todo = [i for i, r in enumerate(ranges) if r not in done]
    skipped_rows = rows_done = sum(b - a for a, b in done)
    blocks = X.to_delayed().ravel()
    run = writer.manifest["state"]["dask"]["run"]
    args = (_qjson(q), device, _dim(q, X), str(dst))
    tasks = [delayed(_write_block, pure=False)(blocks[i], *args, ranges[i][0], run) for i in todo]
    c = _scheduler(client)

    uncounted = sorted(done)  # written by an earlier run: counted from the store for the report
    edges = [0, 0]

    def finished(result: Any) -> None:
        nonlocal rows_done
        r = (int(result[0]), int(result[1]))
        if r not in done:
            done.add(r)
            rows_done += r[1] - r[0]
            edges[0] += int(result[2])
            edges[1] += int(result[3])

    bar = Progress(n, int(X.shape[1]) * X.dtype.itemsize, start=rows_done, enabled=progress)
    t0 = time.perf_counter()
    sched = type(c).__name__ if c is not None else "local"

    def advance() -> None:
        nonlocal prefix
        old = prefix
        for a, b in ranges:
            if a <= prefix < b and (a, b) in done:
                prefix = b
        if prefix != old:
            writer.checkpoint(prefix)

    if c is None or not hasattr(c, "compute"):
        import dask

        try:
            for r in dask.compute(*tasks, scheduler=c) if c is not None else dask.compute(*tasks):
                finished(r)
            advance()
            bar.update(rows_done)
        finally:
            bar.close()
    else:
        from distributed import as_completed

        futures = c.compute(tasks)
        last = 0.0
        try:
            for fut in as_completed(futures):
                finished(fut.result())
                bar.update(rows_done)
                if time.monotonic() - last > 0.5:
                    advance()
                    last = time.monotonic()
            advance()
        except BaseException:
            c.cancel(futures)
            _drain(c, {f.key for f in futures})
            with contextlib.suppress(Exception):
                advance()
            raise
        finally:
            bar.close()
    return {"tasks": len(tasks), "skipped": len(ranges) - len(todo), "skipped_rows": int(skipped_rows),
            "seconds": time.perf_counter() - t0, "scheduler": sched, "nonfinite_outputs": edges[0],
            "clipped_inputs": edges[1], "uncounted": uncounted}


def _executing(dask_worker: Any) -> list[str]:
    return [str(ts.key) for ts in getattr(getattr(dask_worker, "state", None), "executing", ())]


def _drain(c: Any, keys: set[Any], timeout: float = 60.0) -> None:
    """After a failure, wait (best effort, up to ``timeout`` s) until no worker still executes one of
    the write tasks ``keys``, so that nothing writes once the store's lock is released. (A task that
    outlives this writes identical bytes, and nothing once a later run or the completion moved the
    manifest on: see :func:`_write_block`.)"""
    want = {str(k) for k in keys}
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            running = c.run(_executing, on_error="ignore")
        except Exception:  # noqa: BLE001 - no answer from the cluster: nothing more to wait for
            return
        if not any(want.intersection(v) for v in running.values() if isinstance(v, list)):
            return
        time.sleep(0.1)
    log.warning("write tasks still running on Dask workers after %.0f s", timeout)


def convert(src: Any, dst: str | os.PathLike[str], quantizer_or_preset: Any = "int8-row", *, client: Any = None,
            device: str = "auto", batch_rows: int | None = None, resume: bool = False, overwrite: bool = False,
            shape: Any = None, params: dict[str, Any] | None = None, source_info: dict[str, Any] | None = None,
            gather_bytes: int = GATHER_BYTES, progress: bool = False, column: str | None = None,
            dataset: str | None = None) -> dict[str, Any]:
    """:func:`gpuquant.convert` on a Dask cluster: the same sources and store, rows chunked by
    ``batch_rows`` (default: 64 MiB of input per chunk), one task per chunk. The store is
    bit-identical to the single-machine one."""
    check_batch_rows(batch_rows)
    X, desc = from_source(src, shape=shape, chunk_rows=batch_rows, column=column, dataset=dataset)
    return to_store(X, dst, quantizer_or_preset, client=client, device=device, resume=resume, overwrite=overwrite,
                    params=params, source_desc={**desc, **(source_info or {})}, gather_bytes=gather_bytes,
                    progress=progress)


__all__ = ["NO_DASHBOARD", "DaskRows", "DaskRunner", "cluster_client", "convert", "fit", "from_source", "layout",
           "packed", "to_store", "transform"]
