"""The convert run, written once: lock, resume check, fit, create, stream, check, report.

:func:`run` is the sequence every conversion follows, whoever streams the rows:

1. checks the request (``resume`` or ``overwrite``, the quantizer, the output's parent directory),
   then locks ``dst`` (:class:`gpuquant.store.StoreLock`), removes what killed runs left beside it
   (:func:`gpuquant.store.remove_leftovers`) and checks it: a new output,
   ``overwrite`` (only a previous gpuquant output or an empty directory; the new store is built
   beside it and exchanged for it only once complete) or ``resume`` (an unfinished store, or the
   unfinished staged replacement of a complete one);
2. opens and describes the source (the runner's): nothing is written before the input's shape,
   dtype, length and shards are known to be good; a resume is refused when the source, scheme or
   parameters changed (:func:`check_resume`) and then uses the store's own quantizer;
3. refuses a new store that the free disk space cannot hold (:func:`gpuquant.store.check_space`,
   before the fit pass reads the input), then fits the quantizer if it needs it
   (:func:`check_and_fit`, the runner's fit), unless a fitted one is given or the run resumes;
4. creates the store (every file preallocated, so a disk filled meanwhile is refused here;
   :func:`create_store`) or reopens it;
5. streams the rows (the runner's);
6. fsyncs, checks (files, and sampled rows re-encoded with the numpy reference byte for byte:
   :func:`verify_sample`), marks the store complete and returns the runner's report
   (:func:`report`, with :func:`sample_error`). A failure goes to the runner, which says what is
   kept and how to continue; an interruption (Ctrl-C, SIGTERM in the CLI) is re-raised as
   :class:`gpuquant.errors.Interrupted` saying the rows kept and ``--resume``.

A :class:`Runner` supplies the steps that differ: the single machine's
(:class:`gpuquant.engine.local.LocalRunner`: a file or array source, the CPU or GPU pipeline) and
the Dask cluster's (:mod:`gpuquant.cluster`: one task per row chunk).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gpuquant import files as gfiles
from gpuquant import store as gstore
from gpuquant.api import Quantizer, as_quantizer
from gpuquant.engine.fit import Rows
from gpuquant.engine.sources import Source
from gpuquant.errors import ConvertError, GpuquantError, InputError, Interrupted

log = logging.getLogger("gpuquant.engine")

DEVICES = ("auto", "gpu", "cpu")
VERIFY_ROWS = 64
ERROR_SAMPLE_ROWS = 1000
SAMPLE_K = 10


def check_device(device: str) -> None:
    """Refuse a ``device`` that is not one of :data:`DEVICES`."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {list(DEVICES)}, got {device!r}")


def check_batch_rows(batch_rows: Any) -> None:
    """Refuse a ``batch_rows`` that is neither ``None`` nor a positive integer."""
    if batch_rows is not None and (not isinstance(batch_rows, (int, np.integer)) or batch_rows < 1):
        raise InputError(f"batch_rows must be a positive integer, got {batch_rows!r}")


class Runner(Protocol):
    """The steps of :func:`run` that depend on where the rows come from and who encodes them."""

    #: where the rows were encoded, recorded in the manifest's ``state`` when the store completes
    device: str

    def session(self) -> contextlib.AbstractContextManager[Any]:
        """Held while the store is locked: opens the source and closes it at the end."""

    def describe(self) -> dict[str, Any]:
        """The manifest's ``source``: kind, path, shape, dtype, checksum."""

    def resuming(self, manifest: dict[str, Any]) -> None:
        """Called before a resume with the store's manifest."""

    def prepare(self, q: Any) -> Rows:
        """The rows the fit and the checks read (truncated for Matryoshka); settles the device."""

    def fit(self, q: Any, rows: Rows) -> None:
        """Fit ``q`` (in place) on ``rows``."""

    def open_writer(self, dst: Path, q: Any, rows: Rows, desc: dict[str, Any], mode: str) -> gstore.StoreWriter:
        """A new store at ``dst`` (``mode`` ``"new"``: :func:`create_store`) or the unfinished one there
        (``"resume"``); ``dst`` is the output or, for an overwrite, its staged replacement."""

    def stream(self, writer: gstore.StoreWriter, q: Any, rows: Rows) -> dict[str, Any]:
        """Encode and write rows ``writer.rows_done`` to the end; returns statistics for the report."""

    def failed(self, exc: BaseException, dst: Path, *, fresh: bool, done: int, rows: int) -> None:
        """Raise the error the caller sees for ``exc`` (the writer is closed, ``done`` rows are kept)."""

    def report(self, store: gstore.Store, rows: Rows, stats: dict[str, Any], *, resumed: bool, start: int,
               fit_s: float, total_s: float) -> dict[str, Any]:
        """The run's report (a JSON-able dict; :func:`report` builds the common part)."""


def run(dst: Path, quantizer_or_preset: Any, params: dict[str, Any] | None, runner: Runner, *, resume: bool,
        overwrite: bool) -> dict[str, Any]:
    """Convert into the store ``dst`` with ``runner`` (see the module docstring); returns the report."""
    t_start = time.perf_counter()
    q = check_request(dst, quantizer_or_preset, params, resume, overwrite)
    with gstore.StoreLock(dst):
        gstore.remove_leftovers(dst)
        mode = gstore.check_output_free(dst, overwrite, resume)
        with runner.session():
            return _run_locked(dst, q, mode, runner, t_start)


def _run_locked(dst: Path, q: Any, mode: str, runner: Runner, t_start: float) -> dict[str, Any]:
    desc = runner.describe()
    resumed = mode.startswith("resume")
    target = gstore.staging_path(dst) if mode.endswith("replace") else dst  # an overwrite builds beside dst
    if resumed:
        manifest = gstore.read_manifest(target)
        q = check_resume(target, manifest, desc, q)
        runner.resuming(manifest)
    rows = runner.prepare(q)
    n, d = rows.shape
    if not resumed:  # a full disk is refused before the fit pass reads the input
        gstore.check_space(dst, q.scheme, n, d)
    fit_s = 0.0 if resumed else check_and_fit(q, d, lambda: runner.fit(q, rows))
    if mode == "replace":
        gstore.stage(dst)
    writer = runner.open_writer(target, q, rows, desc, "resume" if resumed else "new")
    start = writer.rows_done
    try:
        stats = runner.stream(writer, q, rows)
        store = writer.complete({"device": runner.device}, verify=lambda st: verify_sample(st, rows))
    except BaseException as exc:
        done = rows_done(target)
        writer.close()
        if target != dst:
            log.warning("%s is unchanged: an overwrite replaces it only once the new store is complete (%s "
                        "holds the new one: --resume continues it, --overwrite starts it again)", dst, target)
        if isinstance(exc, KeyboardInterrupt):
            raise _interrupted(exc, target, done, n, staged=target != dst) from exc
        runner.failed(exc, target, fresh=not resumed, done=done, rows=n)
        raise
    writer.close()
    if target != dst:
        store = gstore.replace_with(target, dst)
    return runner.report(store, rows, stats, resumed=resumed, start=start, fit_s=fit_s,
                         total_s=time.perf_counter() - t_start)


def _interrupted(exc: KeyboardInterrupt, kept: Path, done: int, rows: int, *, staged: bool) -> Interrupted:
    """What an interruption (Ctrl-C, SIGTERM) says once the rows written are checkpointed (``staged``:
    ``kept`` is an overwrite's new store, built beside the output, which stays as it was)."""
    what = str(exc) or "interrupted"
    how = "with --resume in place of --overwrite" if staged else "with --resume"
    return Interrupted(f"{what}: {kept} keeps {done} of {rows} rows (unfinished): run the same command again "
                       f"{how} to continue", getattr(exc, "exit_code", 130))


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
    for key in ("kind", "shape", "dtype", "column", "dataset"):
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
        new_params, old_params = gfiles.to_jsonable(q.scheme.params), gfiles.to_jsonable(stored.scheme.params)
        same = (q.family == stored.family and new_params == old_params
                and (q.name == stored.name or q.name == q.family)
                and getattr(q, "truncate_dim", None) == getattr(stored, "truncate_dim", None)
                and q.pre.params() == stored.pre.params())
        if not same:
            raise InputError(f"--resume refused: {dst} was started with {stored.name!r} "
                             f"{old_params}, not {q.name!r} {new_params}")
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


def create_store(dst: Path, q: Any, rows: int, dim: int, desc: dict[str, Any], backend: str,
                 device: str) -> gstore.StoreWriter:
    """A new store for ``q``'s codes of ``rows`` x ``dim`` (:func:`gpuquant.store.create`), its manifest
    recording the scheme, the source ``desc``, the backend and device, and how an export preset loads."""
    manifest = {"scheme": q.name, "preset": q.preset, "family": q.family, "params": q.scheme.params,
                "truncate_dim": getattr(q, "truncate_dim", None), "source": desc, "backend": backend,
                "device": device, **_export_loading(q, dim)}
    return gstore.create(dst, quantizer=q, rows=rows, dim=dim, manifest=manifest)


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
    decoding what the store holds, over the entries finite on both sides (``null``, with ``why``,
    when there is none). A scheme whose reconstruction is a sign pattern (binary) gets no error but
    the recall@10 of its code search on the sample (a tenth of the rows as queries)."""
    n = store.rows
    idx = np.unique(np.linspace(0, n - 1, num=min(rows, n)).astype(np.int64))
    ref = np.asarray(source.take(idx), dtype=np.float32)
    with np.errstate(all="ignore"):
        got = store.decode(store.read_rows(idx), pre=False)  # as ``source``: the rows the scheme encoded
    out: dict[str, Any] = {"rows": int(idx.size), "rel_error": None, "max_abs_error": None}
    if store.scheme.search_in_code_space:
        out["why"] = "binary codes reconstruct to a sign pattern only: no reconstruction error"
        n_queries = idx.size // 10
        if n_queries and idx.size - n_queries >= SAMPLE_K:
            from gpuquant.evaluate import sample_recall

            with np.errstate(all="ignore"):  # huge values overflow float32 scores: they still rank
                out["recall_at_10"] = sample_recall(store.quantizer, ref[:n_queries], ref[n_queries:],
                                                    got[n_queries:].astype(np.float32), SAMPLE_K)
        return out
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    ok = np.isfinite(ref64) & np.isfinite(got64)
    out["compared_values"] = int(ok.sum())
    if not ok.any():
        out["why"] = "no finite value to compare: every sampled value or its decoding is NaN or ±Inf"
        return out
    denom = float(np.linalg.norm(ref64[ok]))
    diff = ref64[ok] - got64[ok]
    out["rel_error"] = float(np.linalg.norm(diff)) / denom if denom > 0 else float(np.linalg.norm(diff))
    out["max_abs_error"] = float(np.abs(diff).max())
    return out


def edge_totals(store: gstore.Store, source: Source | Rows, stats: dict[str, Any], batch_rows: int) -> dict[str, Any]:
    """The report's ``quality``: values stored as NaN/±Inf and inputs clipped to the range ends over
    every row. The stream counted every row but the ranges ``stats["uncounted"]`` (default: every
    row), which an earlier run wrote (a resume): those are counted here from the source and the store."""
    nonfinite, clipped = int(stats.get("nonfinite_outputs", 0)), int(stats.get("clipped_inputs", 0))
    counter = store.scheme.edge_counter(store.quantizer.state, np)
    for first, last in stats.get("uncounted", [(0, store.rows)]):
        for a in range(first, last, batch_rows):
            b = min(last, a + batch_rows)
            x = np.asarray(source.take(np.arange(a, b)), np.float32)
            side = {k: np.asarray(v[a:b]) for k, v in store.side.items()}
            with np.errstate(all="ignore"):
                nf, cl = counter(x, np.asarray(store.codes[a:b]), side)
            nonfinite, clipped = nonfinite + int(nf), clipped + int(cl)
    return {"nonfinite_outputs": nonfinite, "clipped_inputs": clipped}


def report(store: gstore.Store, source: Source | Rows, *, device: str, batch_rows: int, resumed_from: int | None,
           extra: dict[str, Any], bytes_in: int, row_bytes: int, rows_run: int, stream_s: float,
           seconds: dict[str, float], stats: dict[str, Any]) -> dict[str, Any]:
    """The report of a conversion into the complete ``store``: its manifest (the number of checksummed
    ranges, not the digests), ``extra`` (how it ran),
    the sizes, the throughput of the ``rows_run`` rows this run streamed (``row_bytes`` of input
    each) in ``stream_s`` seconds, the edge counts over every row (:func:`edge_totals`, from the
    stream's ``stats``), the reconstruction error on rows of ``source`` and ``seconds`` (rounded)."""
    out_bytes = int(store.codes.nbytes + sum(v.nbytes for v in store.side.values()))
    sums = store.manifest.get("checksums") or {}
    return {
        **store.manifest,
        "checksums": {"method": sums.get("method"), "ranges": len(sums.get("ranges", []))},  # not every digest
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
        "quality": edge_totals(store, source, stats, batch_rows),
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


