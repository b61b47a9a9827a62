"""The out-of-core engine: ``convert`` streams a matrix of any size into a code store.

``convert(src, dst, quantizer_or_preset)``:

1. locks ``dst`` (:class:`gpuquant.store.StoreLock`) and checks it: a new output, ``overwrite``
   (only a previous gpuquant output or an empty directory) or ``resume`` (an unfinished store);
2. opens and checks the source (:mod:`gpuquant.engine.sources`): nothing is written before the
   input's shape, dtype, length and shards are known to be good;
3. fits the quantizer if it needs it, streaming (:mod:`gpuquant.engine.fit`: the same state as the
   in-memory fit), unless a fitted one is given. The fit pass runs on the CPU (numpy, read-ahead,
   reductions split over the cores) whichever device converts;
4. creates the store (every file preallocated, so a full disk is refused here) or, for ``resume``,
   reopens it after checking that source, scheme and parameters are unchanged;
5. streams the rows (:mod:`gpuquant.engine.pipeline`): the GPU path (CuPy, pinned staging, two CUDA
   streams, batch size from the planner) or the CPU path (numpy backend, reader and writer
   threads, :data:`CPU_BATCH_BYTES` of input per batch);
6. fsyncs, checks (files and sampled rows re-encoded with the numpy reference, byte for byte) and
   marks the store complete; returns the report.

A failure while streaming leaves the store unfinished with every batch written so far recorded:
``resume=True`` (``--resume``) continues it. A failure before the first row is written removes a
store this run created. The output is bit-identical whatever the device, batch size or number of
interruptions: every scheme encodes each row from that row alone and the fitted state, which the
store keeps.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant import io as gio
from gpuquant import store as gstore
from gpuquant.api import Quantizer, as_quantizer
from gpuquant.engine.fit import Rows, fit_stream
from gpuquant.engine.progress import Progress
from gpuquant.engine.sources import PreparedSource, Source, SourceReadError, open_source
from gpuquant.errors import BackendUnavailableError, GpuquantError, InputError

log = logging.getLogger("gpuquant.engine")

DEVICES = ("auto", "gpu", "cpu")
#: Input bytes per batch on the CPU path (three input and three output buffers in the ring).
CPU_BATCH_BYTES = 8 * 2**20
GPU_STREAMS = 2
VERIFY_ROWS = 64
ERROR_SAMPLE_ROWS = 1000


class ConvertError(GpuquantError, RuntimeError):
    """The stream stopped (write or read error); the store is left resumable."""


def _device(device: str, scheme: Any) -> tuple[str, Any]:
    """(``"gpu"`` | ``"cpu"``, backend) for ``device``; an explicit ``"gpu"`` never falls back."""
    from gpuquant.backends import pick_auto, resolve, resolve_for

    if device not in DEVICES:
        raise InputError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device == "cpu":
        return "cpu", resolve("numpy")
    if device == "gpu":
        return "gpu", resolve_for("cupy", scheme)
    name, skipped = pick_auto(scheme)
    if name == "cupy":
        return "gpu", resolve("cupy")
    log.info("device auto: CPU (%s)", skipped.get("cupy", ""))
    return "cpu", resolve("numpy")


def _same_state(a: dict[str, np.ndarray] | None, b: dict[str, np.ndarray] | None) -> bool:
    a, b = a or {}, b or {}
    return set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


def check_request(dst: Path, quantizer_or_preset: Any, params: dict[str, Any] | None, resume: bool,
                  overwrite: bool) -> Any:
    """The checks made before taking the lock: ``resume`` or ``overwrite``, the quantizer (returned;
    ``None`` when resuming without one: the store's is used), the output's parent directory."""
    if resume and overwrite:
        raise InputError("--resume continues an unfinished output and --overwrite replaces it: choose one")
    q = None if (resume and quantizer_or_preset is None) else as_quantizer(quantizer_or_preset, params)
    if not dst.parent.is_dir():
        raise InputError(f"output's parent directory does not exist: {dst.parent}")
    return q


def check_resume(dst: Path, manifest: dict[str, Any], desc: dict[str, Any], q: Any | None) -> Any:
    """The stored quantizer, after refusing a resume whose source or parameters changed."""
    old = manifest.get("source", {})
    for key in ("kind", "shape", "dtype"):
        if old.get(key) != desc.get(key):
            raise InputError(f"--resume refused: the source changed since {dst} was started ({key} was "
                             f"{old.get(key)!r}, now {desc.get(key)!r}); use --overwrite to start again")
    if (old.get("checksum") or {}).get("value") != (desc.get("checksum") or {}).get("value"):
        raise InputError(f"--resume refused: the source changed since {dst} was started (its checksum "
                         f"{(desc.get('checksum') or {}).get('method', '').split(':')[0]} differs: size, "
                         "modification time or first/last MiB); use --overwrite to start again")
    stored = Quantizer.load(dst / manifest.get("quantizer", gstore.QUANTIZER), backend="numpy")
    stored.name = manifest.get("scheme", stored.name)
    if q is not None:
        same = (q.family == stored.family and gio.to_jsonable(q.scheme.params) == gio.to_jsonable(stored.scheme.params)
                and (q.name == stored.name or q.name == q.family)
                and getattr(q, "truncate_dim", None) == getattr(stored, "truncate_dim", None))
        if not same:
            raise InputError(f"--resume refused: {dst} was started with {stored.name!r} "
                             f"{gio.to_jsonable(stored.scheme.params)}, not {q.name!r} {gio.to_jsonable(q.scheme.params)}")
        if q.scheme.needs_fit and q.state is not None and not _same_state(q.state, stored.state):
            raise InputError(f"--resume refused: the given quantizer's fitted state differs from the one {dst} "
                             "was started with")
    return stored


def check_and_fit(q: Any, d: int, fit: Callable[[], Any]) -> float:
    """Refuse a quantizer fitted on other than ``d`` dimensions or a scheme that cannot take ``d``;
    run ``fit`` (which fits ``q``) unless ``q`` is fitted; returns the seconds the fit took."""
    if q.dim is not None and q.dim != d:
        raise InputError(f"the input has {d} dimensions but the quantizer was fitted on {q.dim}")
    q.scheme.check_dim(d)
    if q.is_fitted:
        return 0.0
    t0 = time.perf_counter()
    fit()
    return time.perf_counter() - t0


def create_store(dst: Path, q: Any, rows: int, dim: int, desc: dict[str, Any], backend: str, device: str,
                 replace: bool) -> gstore.StoreWriter:
    """A new store for ``q``'s codes of ``rows`` x ``dim`` (:func:`gpuquant.store.create`), its manifest
    recording the scheme, the source ``desc``, the backend and device, and how an export preset loads."""
    manifest = {"scheme": q.name, "preset": q.preset, "family": q.family, "params": q.scheme.params,
                "truncate_dim": getattr(q, "truncate_dim", None), "source": desc, "backend": backend,
                "device": device, **_export_loading(q, dim)}
    return gstore.create(dst, quantizer=q, rows=rows, dim=dim, manifest=manifest, replace=replace)


def verify_sample(store: gstore.Store, source: Source | Rows, rows: int = VERIFY_ROWS) -> None:
    """Re-encode sampled rows (first, last, evenly spaced) with the numpy reference; compare bytes."""
    n = store.rows
    idx = np.unique(np.concatenate([[0, n - 1], np.linspace(0, n - 1, num=min(rows, n)).astype(np.int64)]))
    x = np.asarray(source.take(idx), dtype=np.float32)
    with np.errstate(all="ignore"):
        codes, side = store.scheme.encode(x, store.quantizer.state)
    stored = store.read_rows(idx)
    got = stored.data
    if got.tobytes() != np.ascontiguousarray(codes).tobytes() or any(
            stored.side[k].tobytes() != np.ascontiguousarray(v).tobytes() for k, v in side.items()):
        bad = [int(i) for j, i in enumerate(idx) if got[j].tobytes() != codes[j].tobytes()]
        raise ConvertError(f"check failed: the codes stored in {store.path} differ from the reference encoding "
                           f"(rows {bad[:5]}); the store stays unfinished")


def sample_error(store: gstore.Store, source: Source | Rows, rows: int = ERROR_SAMPLE_ROWS) -> dict[str, Any]:
    """Relative reconstruction error ``||X - X^||_F / ||X||_F`` on up to ``rows`` evenly spaced rows,
    decoding what the store holds (finite entries only)."""
    n = store.rows
    idx = np.unique(np.linspace(0, n - 1, num=min(rows, n)).astype(np.int64))
    ref = np.asarray(source.take(idx), dtype=np.float32).astype(np.float64)
    got = store.decode(store.read_rows(idx)).astype(np.float64)
    ok = np.isfinite(ref) & np.isfinite(got)
    denom = float(np.linalg.norm(ref[ok]))
    diff = ref[ok] - got[ok]
    rel = float(np.linalg.norm(diff)) / denom if denom > 0 else float(np.linalg.norm(diff))
    return {"rows": int(idx.size), "rel_error": rel, "max_abs_error": float(np.abs(diff).max()) if diff.size else 0.0}


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
    params: dict[str, Any] | None = None,
    source_info: dict[str, Any] | None = None,
    streams: int = GPU_STREAMS,
) -> dict[str, Any]:
    """Quantize ``src`` into the store ``dst``, streaming; returns the report (a JSON-able dict).

    Args:
        src: a ``.npy`` path, a raw float32 file (with ``shape=(rows, dim)``, rows may be -1), a
            directory of ``.npy`` shards (natural name order), or a numpy array / memmap.
        dst: the output directory (see :mod:`gpuquant.store`).
        quantizer_or_preset: a :class:`gpuquant.Quantizer` (fitted, or fitted here, in place) or a
            preset / family name (with ``params``).
        device: ``"auto"`` (the GPU when the cupy backend works), ``"gpu"`` (never falls back), ``"cpu"``.
        batch_rows: rows per batch; default: the planner's N_max on the GPU (capped), 8 MiB of input on the CPU.
        resume: continue the unfinished store ``dst`` (refused if the source or parameters changed).
        overwrite: replace an existing gpuquant output (never anything else).
        progress: draw the progress bar on stderr when it is a terminal (progress is logged regardless).
        source_info: extra fields recorded under the manifest's ``source``.
        streams: CUDA streams (batches in flight) on the GPU path.

    Raises:
        InputError: bad input, parameters or output (nothing written); ``StoreBusyError``: another
        run holds ``dst``; ``ConvertError``: the stream stopped (the store is resumable);
        ``BackendUnavailableError``: ``device="gpu"`` without a usable GPU.
    """
    t_start = time.perf_counter()
    dst = Path(dst)
    if batch_rows is not None and (not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1):
        raise InputError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    q = check_request(dst, quantizer_or_preset, params, resume, overwrite)
    with gstore.StoreLock(dst):
        mode = gstore.check_output_free(dst, overwrite, resume)
        source = open_source(src, shape=shape)
        try:
            return _convert_locked(source, dst, q, mode, device, batch_rows, progress, source_info, streams, t_start)
        finally:
            source.close()


def _convert_locked(source: Source, dst: Path, q: Any, mode: str, device: str, batch_rows: int | None,
                    show: bool, source_info: dict[str, Any] | None, streams: int, t_start: float) -> dict[str, Any]:
    desc = {**source.describe(), **(source_info or {})}
    if mode == "resume":
        q = check_resume(dst, gstore.read_manifest(dst), desc, q)
    if getattr(q, "truncate_dim", None) is not None:
        source = PreparedSource(source, q.truncate_dim)
    where, backend = _device(device, q.scheme)
    n, d = source.shape

    def fit() -> None:
        log.info("fitting %s on %d x %d %s (streaming)", q.name, n, d, source.dtype)
        q.state = {k: np.asarray(v) for k, v in fit_stream(q.scheme, source).items()}
        q.dim = d

    fit_s = 0.0 if mode == "resume" else check_and_fit(q, d, fit)
    rb = source.row_bytes
    plan_doc = None  # the batch size is settled (and a GPU plan that fits nothing refused) before writing
    if where == "gpu":
        from gpuquant.planner import gpu_free_memory, plan

        free, _, mem_source = gpu_free_memory()
        p = plan(q, dim=d, rows=n, dtype=source.dtype, op="convert", gpu_memory=free, in_flight=streams,
                 batch_rows=batch_rows)
        p.memory_source = mem_source
        p.require()
        rows_per_batch = int(p.batch_rows or 1)
        plan_doc = {k: getattr(p, k) for k in ("n_max", "bytes_per_row", "fixed_bytes", "usable_bytes", "batch_rows",
                                                "peak_bytes", "pinned_host_bytes")}
    else:
        rows_per_batch = int(batch_rows or max(1, CPU_BATCH_BYTES // rb))
    rows_per_batch = max(1, min(rows_per_batch, n))
    if mode == "resume":
        writer = gstore.reopen(dst)
        start = writer.rows_done
        log.info("resuming %s at row %d of %d", dst, start, n)
    else:
        log.info("writing %s (%d rows)", dst, n)
        writer = create_store(dst, q, n, d, desc, backend.name, where, replace=mode == "replace")
        start = 0
    fresh = mode != "resume"
    bar = Progress(n, rb, start=start, enabled=show)
    meta = {"device": where, "batch_rows": rows_per_batch}
    log.info("streaming rows %d..%d on %s in batches of %d rows", start, n - 1, where, rows_per_batch)
    t0 = time.perf_counter()
    try:
        if start < n:
            from gpuquant.engine import pipeline

            run = pipeline.run_gpu if where == "gpu" else pipeline.run_cpu
            kwargs = {"streams": streams} if where == "gpu" else {}
            stats = run(source, q.scheme, q.state, writer, start=start, batch_rows=rows_per_batch, progress=bar,
                        meta=meta, **kwargs)
        else:
            stats = {"rows_done": n}
        bar.close()
        stream_s = time.perf_counter() - t0
        log.info("checking and closing %s", dst)
        store = writer.complete({"device": where}, verify=lambda st: verify_sample(st, source))
    except BaseException as exc:
        bar.close()
        done = rows_done(dst)
        writer.close()
        if fresh and done == 0 and not isinstance(exc, (KeyboardInterrupt, ConvertError)):
            gstore.discard(dst)
            raise
        where_msg = f"{dst} keeps {done} of {n} rows (unfinished)"
        if isinstance(exc, SourceReadError):
            raise ConvertError(f"{exc}. {where_msg}: make the input readable and run again with --resume") from exc
        if isinstance(exc, OSError):
            raise ConvertError(f"writing {dst} failed: {exc}. {where_msg}: free some space (or fix the "
                               "problem) and run the same command again with --resume") from exc
        if isinstance(exc, InputError):
            raise InputError(f"{exc}. {where_msg}: fix the input and convert again with --overwrite") from None
        raise
    writer.close()
    total_s = time.perf_counter() - t_start
    doc = report(store, source, device=where, batch_rows=int(stats.get("batch_rows", rows_per_batch)),
                 resumed_from=start if mode == "resume" else None, extra={"plan": plan_doc}, bytes_in=source.nbytes,
                 row_bytes=rb, rows_run=n - start, stream_s=stream_s,
                 seconds={"fit": fit_s, "transform": stream_s, "read": stats.get("read_s", 0.0),
                          "compute": stats.get("compute_s", 0.0), "write": stats.get("write_s", 0.0),
                          "flush": stats.get("flush_s", 0.0), "total": total_s})
    if stats.get("streams"):
        doc["streams"] = stats["streams"]
    if stats.get("oom_halvings"):
        doc["oom_halvings"] = stats["oom_halvings"]
    return doc


def report(store: gstore.Store, source: Source | Rows, *, device: str, batch_rows: int, resumed_from: int | None,
           extra: dict[str, Any], bytes_in: int, row_bytes: int, rows_run: int, stream_s: float,
           seconds: dict[str, float]) -> dict[str, Any]:
    """The report of a conversion into the complete ``store``: its manifest, ``extra`` (how it ran),
    the sizes, the throughput of the ``rows_run`` rows this run streamed (``row_bytes`` of input
    each) in ``stream_s`` seconds, the reconstruction error on rows of ``source`` and ``seconds``
    (rounded)."""
    out_bytes = int(store.codes.nbytes + sum(v.nbytes for v in store.side.values()))
    return {
        **store.manifest,
        "output": str(store.path),
        "rows": store.rows,
        "dims": store.dim,
        "device": device,
        "batch_rows": batch_rows,
        "resumed_from": resumed_from,
        **extra,
        "bytes_in": int(bytes_in),
        "bytes_out": out_bytes,
        "mb_in": round(bytes_in / 1e6, 3),
        "mb_out": round(out_bytes / 1e6, 3),
        "compression_ratio": round(bytes_in / out_bytes, 4) if out_bytes else None,
        "throughput": {"rows_per_s": round(rows_run / stream_s, 1) if stream_s > 0 else None,
                       "gb_per_s_in": round(rows_run * row_bytes / stream_s / 1e9, 4) if stream_s > 0 else None},
        "reconstruction": sample_error(store, source),
        "seconds": {k: round(v, 4) for k, v in seconds.items()},
    }


def _export_loading(q: Any, dim: int) -> dict[str, Any]:
    """``{"loading": ...}`` for an export preset (how its consumer loads the codes), else ``{}``."""
    try:
        from gpuquant.export import loading_entry
    except ImportError:  # pragma: no cover - the export module ships with gpuquant
        return {}
    entry = loading_entry(getattr(q, "preset", None), dim)
    return {"loading": entry} if entry else {}


def rows_done(dst: Path) -> int:
    """The ``rows_done`` the manifest of ``dst`` records (0 when it cannot be read)."""
    try:
        return int(gstore.read_manifest(dst).get("state", {}).get("rows_done", 0))
    except (GpuquantError, OSError, ValueError):
        return 0


__all__ = ["BackendUnavailableError", "ConvertError", "convert", "sample_error", "verify_sample"]
