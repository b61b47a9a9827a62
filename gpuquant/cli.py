"""The ``gpuquant`` command line (also ``python -m gpuquant``).

Subcommands::

    gpuquant schemes                       every preset: family, code dtype, bytes per value, peer
    gpuquant fit INPUT --scheme S [--param k=v ...] -o QUANTIZER.json
    gpuquant convert INPUT OUTPUT (--scheme S [--param k=v ...] | --quantizer Q.json)
                                           fit if needed, transform, write the OUTPUT directory
                                           (--workers N / --scheduler ADDRESS: on Dask, gpuquant.cluster)
    gpuquant export-info [NAME] [--dim D]  how to load an export preset's codes (Qdrant, pgvector, ...)
    gpuquant inspect PATH                  a quantizer JSON, a converted directory or a .npy file
    gpuquant doctor                        GPU, driver, CUDA, CuPy, cuVS, NVML: what works, why not
    gpuquant eval DATA --scheme S          recall@k and reconstruction error against float32 search

INPUT is a ``.npy`` file holding a 2-D float matrix (memory-mapped), or ``demo`` for the dataset
shipped with the package (2000 x 384 MiniLM embeddings, :mod:`gpuquant.data`); write ``./demo`` for
a file of that name. ``--param`` values are parsed as JSON when they parse (``0.99``, ``true``,
``[[0, 1]]``), else taken as strings (``bitorder=little``).

Every command takes ``--format human|json|quiet``: ``human`` prints a report on stdout, ``json``
prints exactly one JSON document on stdout (also on failure: ``{"ok": false, "error": ...}``),
``quiet`` prints nothing on success. Progress and logs go to stderr. Exit codes: 0 success,
2 bad usage or input (argument errors, missing or malformed files, bad parameters, an OUTPUT that
exists), 1 any other failure (e.g. an explicitly requested backend that cannot run here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from gpuquant import files as gio
from gpuquant import store as gstore
from gpuquant._version import __version__
from gpuquant.errors import GpuquantError, InputError, UsageError

log = logging.getLogger("gpuquant.cli")

FORMATS = ("human", "json", "quiet")
BACKENDS = ("auto", "numpy", "cupy", "cuvs")
DEMO = "demo"
ERROR_SAMPLE_ROWS = 1000
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Report = tuple[dict[str, Any], str]  # (JSON document, human text)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that raises :class:`UsageError` instead of exiting, so ``main`` decides."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message}")


# ------------------------------------------------------------------------------------------------
# small helpers


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--param expects key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _params(items: Sequence[str] | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items or ():
        key, value = _parse_param(item)
        if key in params:
            raise InputError(f"--param {key} given twice")
        params[key] = value
    return params


def _resolve_input(name: str) -> tuple[Path, bool]:
    """Return ``(path, is_demo)`` for an INPUT argument."""
    if name == DEMO:
        from gpuquant.data import demo_path

        return Path(demo_path()), True
    return Path(name), False


def _load_input(name: str) -> tuple[np.ndarray, dict[str, Any]]:
    path, demo = _resolve_input(name)
    log.info("reading %s", "the demo dataset" if demo else path)
    X = gio.load_matrix(path)
    source = {
        "path": str(path.resolve()),
        "demo": demo,
        "shape": list(X.shape),
        "dtype": X.dtype.name,
        "bytes": int(X.nbytes),
    }
    return X, source


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "get"):  # CuPy
        return a.get()
    return np.asarray(a)


def _mb(nbytes: float) -> float:
    return round(nbytes / 1e6, 3)


def _array_summary(a: Any) -> dict[str, Any]:
    arr = _to_numpy(a)
    out: dict[str, Any] = {"shape": list(arr.shape), "dtype": arr.dtype.name}
    if arr.size and arr.dtype.kind in "biuf":
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        if finite.size:
            out["min"] = float(finite.min())
            out["max"] = float(finite.max())
            out["mean"] = float(finite.astype(np.float64).mean())
        out["non_finite"] = int(arr.size - finite.size)
    return out


def _fmt_summary(name: str, s: dict[str, Any]) -> str:
    shape = "x".join(str(n) for n in s["shape"]) or "scalar"
    text = f"  {name:<12} {s['dtype']:<14} {shape:<12}"
    if "min" in s:
        text += f" min {s['min']:.6g}  max {s['max']:.6g}  mean {s['mean']:.6g}"
    return text


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(gio.to_jsonable(v))}" for k, v in params.items()) or "(defaults)"


# ------------------------------------------------------------------------------------------------
# schemes


def _preset_row(preset: Any) -> dict[str, Any]:
    from gpuquant import Quantizer

    scheme = Quantizer(preset.name).scheme
    side = sorted(scheme.side_shapes(1, 1024)) if hasattr(scheme, "side_shapes") else []
    return {
        "name": preset.name,
        "family": preset.family,
        "code_dtype": np.dtype(scheme.code_dtype).name,
        "bytes_per_value": float(scheme.bytes_per_value),
        "side": side,
        "peer": preset.peer,
        "params": gio.to_jsonable(preset.params),
        "summary": preset.summary,
        "consumer": getattr(preset, "consumer", ""),
    }


def cmd_schemes(args: argparse.Namespace) -> Report:
    """List every preset, one line each."""
    import gpuquant

    rows = [_preset_row(p) for p in gpuquant.presets()]
    head = f"{'preset':<16} {'family':<10} {'code dtype':<14} {'B/value':>7}  {'side':<12} peer"
    lines = [head, "-" * len(head)]
    for r in rows:
        side = ",".join(r["side"]) or "-"
        lines.append(
            f"{r['name']:<16} {r['family']:<10} {r['code_dtype']:<14} {r['bytes_per_value']:>7.4g}  "
            f"{side:<12} {r['peer']}" + (f"  [export for {r['consumer']}]" if r["consumer"] else "")
        )
    lines.append("export presets: `gpuquant export-info NAME` says how to load their codes")
    return {"presets": rows}, "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# fit


def _make_quantizer(scheme: str, params: dict[str, Any], backend: str) -> Any:
    from gpuquant import Quantizer

    return Quantizer(scheme, backend=backend, **params)


def _quantizer_info(q: Any) -> dict[str, Any]:
    state = q.state if q.is_fitted else {}
    return {
        "scheme": getattr(q, "name", None) or q.scheme.family,
        "preset": getattr(q, "preset", None),
        "family": q.scheme.family,
        "params": gio.to_jsonable(q.scheme.params),
        "dim": q.dim,
        "is_fitted": bool(q.is_fitted),
        "code_dtype": np.dtype(q.scheme.code_dtype).name,
        "bytes_per_value": float(q.scheme.bytes_per_value),
        "state": {k: _array_summary(v) for k, v in (state or {}).items()},
    }


def _quantizer_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"scheme   {info['scheme']} (family {info['family']})",
        f"params   {_fmt_params(info['params'])}",
        f"codes    {info['code_dtype']}, {info['bytes_per_value']:.4g} byte(s) per value",
        f"fitted   {'yes' if info['is_fitted'] else 'no'}" + (f", dim {info['dim']}" if info["dim"] else ""),
    ]
    if info["state"]:
        lines.append("state (fitted ranges/thresholds):")
        lines += [_fmt_summary(k, s) for k, s in info["state"].items()]
    return lines


def _check_new_file(path: Path, overwrite: bool) -> None:
    if not path.parent.is_dir():
        raise InputError(f"output's parent directory does not exist: {path.parent}")
    if path.exists() and not overwrite:
        raise InputError(f"output already exists: {path} (pass --overwrite to replace it)")
    if path.is_dir():
        raise InputError(f"output is a directory: {path}")


def cmd_fit(args: argparse.Namespace) -> Report:
    """Fit a quantizer on INPUT and save it as JSON."""
    out = Path(args.output)
    _check_new_file(out, args.overwrite)
    q = _make_quantizer(args.scheme, _params(args.param), args.backend)
    _backend_used(q, strict=True)
    X, source = _load_input(args.input)
    log.info("fitting %s on %d x %d %s", args.scheme, X.shape[0], X.shape[1], X.dtype)
    t0 = time.perf_counter()
    q.fit(X)
    fit_s = time.perf_counter() - t0
    q.save(out)  # atomic: Quantizer.save writes a temporary file and renames it
    info = _quantizer_info(q)
    doc = {"output": str(out), "source": source, "fit_s": round(fit_s, 4), "quantizer": info}
    lines = [f"fitted {info['scheme']} on {X.shape[0]} x {X.shape[1]} in {fit_s:.3f} s -> {out}"]
    return doc, "\n".join(lines + _quantizer_lines(info))


# ------------------------------------------------------------------------------------------------
# convert


def _load_quantizer(path: str, backend: str) -> Any:
    from gpuquant import Quantizer

    p = Path(path)
    if not p.is_file():
        raise InputError(f"quantizer file not found: {p}")
    q = Quantizer.load(p, backend=backend)
    if not q.is_fitted:
        raise InputError(f"{p} holds a quantizer that was never fitted")
    return q


def _backend_used(q: Any, strict: bool = False) -> str:
    """The backend that runs (``auto`` resolved), e.g. ``numpy`` or ``cupy``.

    ``strict`` lets the error of a backend that cannot run here propagate (checked before reading
    any data); otherwise this is only a label for the report.
    """
    try:
        return str(q.backend.name)
    except Exception:  # noqa: BLE001
        if strict:
            raise
        return str(getattr(q, "backend_name", "?"))


def _convert_human(doc: dict[str, Any]) -> str:
    src, err = doc["source"], doc["reconstruction"]
    rel = "n/a" if err["rel_error"] is None else f"{err['rel_error']:.3e}"
    side = ", ".join(f"{k} {v['dtype']}{tuple(v['shape'])}" for k, v in doc["side"].items()) or "none"
    return "\n".join(
        [
            f"converted {src['shape'][0]} rows x {src['shape'][1]} dims ({src['dtype']}) "
            f"with {doc['scheme']} on {doc['backend']} -> {doc['output']}",
            f"codes      {doc['codes']['dtype']}{tuple(doc['codes']['shape'])} "
            f"(stored as {doc['codes']['stored_dtype']}); side arrays: {side}",
            f"time       {doc['seconds']['total']:.3f} s (fit {doc['seconds']['fit']:.3f}, "
            f"stream {doc['seconds']['transform']:.3f} of which final fsync {doc['seconds'].get('flush', 0.0):.3f})",
            f"throughput {_rate(doc)} on {doc['device']}, batches of {doc['batch_rows']} rows"
            + (f", resumed at row {doc['resumed_from']}" if doc.get("resumed_from") is not None else ""),
            f"size       {doc['mb_in']:.3f} MB in, {doc['mb_out']:.3f} MB out, "
            f"compression {doc['compression_ratio']:.2f}x",
            f"error      relative reconstruction error {rel} on {err['rows']} sampled rows",
        ]
    )


def _rate(doc: dict[str, Any]) -> str:
    t = doc.get("throughput") or {}
    if not t.get("rows_per_s"):
        return "n/a"
    return f"{t['rows_per_s']:,.0f} rows/s, {t['gb_per_s_in']:.3f} GB/s of input"


def _quantizer_args(args: argparse.Namespace, backend: str) -> tuple[Any, dict[str, Any] | None]:
    """``(the --quantizer file, loaded on backend, None)`` or ``(--scheme, the --param values)``."""
    if args.quantizer:
        if args.param:
            raise InputError("--param goes with --scheme; a --quantizer file already has its parameters")
        return _load_quantizer(args.quantizer, backend), None
    return args.scheme, _params(args.param)


def _get_quantizer(args: argparse.Namespace) -> Any:
    """The quantizer to use, built (or loaded) before any data is read, so bad options fail fast."""
    q, params = _quantizer_args(args, args.backend)
    return q if params is None else _make_quantizer(q, params, args.backend)


def _convert_device(args: argparse.Namespace) -> str:
    """--device, reconciled with the older --backend (numpy = cpu, cupy = gpu)."""
    implied = {"numpy": "cpu", "cupy": "gpu"}.get(args.backend)
    if implied and args.device not in ("auto", implied):
        raise UsageError(f"gpuquant convert: error: --backend {args.backend} and --device {args.device} disagree")
    return implied or args.device


def _convert_dask(args: argparse.Namespace, path: Any, q: Any, device: str, demo: bool) -> dict[str, Any]:
    """``convert`` on a Dask cluster (``--scheduler ADDRESS`` or ``--workers N``): gpuquant.cluster."""
    if args.scheduler and args.workers:
        raise UsageError("gpuquant convert: error: --scheduler (an existing cluster) and --workers (a local one) "
                         "exclude each other")
    from gpuquant import cluster as gdask

    with gdask.cluster_client(args.scheduler, args.workers, device) as client:
        log.info("Dask cluster: %s", client)
        return gdask.convert(path, args.output, q, client=client, device=device, batch_rows=args.batch_rows,
                             resume=args.resume, overwrite=args.overwrite, shape=args.shape,
                             source_info={"demo": demo}, progress=args.format == "human")


def cmd_convert(args: argparse.Namespace) -> Report:
    """Stream INPUT through the quantizer into the OUTPUT store (fit first if needed); resumable."""
    from gpuquant.engine import convert

    if not (args.scheme or args.quantizer or args.resume):
        raise UsageError("gpuquant convert: error: one of the arguments --scheme --quantizer is required "
                         "(or --resume, which takes them from OUTPUT)")
    device = _convert_device(args)
    q = _get_quantizer(args) if (args.scheme or args.quantizer) else None
    if q is not None and args.backend != "auto":
        _backend_used(q, strict=True)
    path, demo = _resolve_input(args.input)
    if demo and args.shape:
        raise InputError("--shape is for raw float32 files, not the demo dataset")
    log.info("reading %s", "the demo dataset" if demo else path)
    if args.scheduler or args.workers:
        doc = _convert_dask(args, path, q, device, demo)
    else:
        doc = convert(path, args.output, q, device=device, batch_rows=args.batch_rows, resume=args.resume,
                      overwrite=args.overwrite, progress=args.format == "human", shape=args.shape,
                      source_info={"demo": demo})
    return doc, _convert_human(doc)


# ------------------------------------------------------------------------------------------------
# plan


def cmd_plan(args: argparse.Namespace) -> Report:
    """The N_max planner: what fits on the GPU for an operation (see gpuquant.planner)."""
    from gpuquant.engine.sources import open_source
    from gpuquant.planner import plan

    rows, dim, dtype = args.rows, args.dim, args.dtype
    if args.input:
        path, _ = _resolve_input(args.input)
        src = open_source(path, shape=args.shape)
        rows, dim, dtype = rows or src.rows, dim or src.dim, src.dtype.name if args.dtype is None else dtype
        src.close()
    if dim is None:
        raise UsageError("gpuquant plan: error: give INPUT, or --dim (and --rows) to plan without a file")
    scheme, params = _quantizer_args(args, "numpy")
    bandwidths = {k: v * 1e9 for k, v in (("read", args.read_gbs), ("write", args.write_gbs),
                                          ("h2d", args.h2d_gbs), ("d2h", args.d2h_gbs)) if v is not None}
    p = plan(scheme, params=params, dim=dim, rows=rows, dtype=dtype or "float32", op=args.op,
             gpu_memory=args.gpu_memory, other=args.other, headroom=args.headroom, in_flight=args.in_flight,
             batch_rows=args.batch_rows, output=args.output, bandwidths=bandwidths or None, measure=args.measure)
    p.require()
    return p.to_dict(), p.text()


# ------------------------------------------------------------------------------------------------
# eval


def cmd_eval(args: argparse.Namespace) -> Report:
    """Reconstruction error and recall@k of a scheme on DATA (see gpuquant.evaluate)."""
    from gpuquant.evaluate import evaluate

    X, _ = _load_input(args.data)
    q = _get_quantizer(args)
    queries = gio.load_matrix(Path(args.queries)) if args.queries else None
    start = time.perf_counter()
    r = evaluate(np.asarray(X), q, queries, k=args.k, n_queries=args.n_queries, rescore=args.rescore,
                 rescore_with=args.rescore_with, backend=args.backend)
    r["seconds"] = time.perf_counter() - start
    lines = [
        f"{r['scheme']}: {r['rows']} rows x {r['dims']} dims, {r['queries']} queries, k={r['k']}",
        f"  bytes per vector   {r['bytes_per_vector']:.1f} (float32: {4 * r['dims']})",
        f"  recall@{r['k']:<10d} {r['recall_at_k']:.4f}",
    ]
    if "recall_at_k_rescored" in r:
        lines.append(f"  rescored ({r['rescore']}x){'':<6} {r['recall_at_k_rescored']:.4f}")
    lines += [f"  mean cosine        {r['mean_cosine']:.5f}", f"  relative error     {r['relative_error']:.5f}",
              f"  mse                {r['mse']:.3e}"]
    return r, "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# export-info


def cmd_export_info(args: argparse.Namespace) -> Report:
    """How to load an export preset's codes into its consumer (or the list of export presets)."""
    from dataclasses import asdict

    from gpuquant import export

    if not args.name:
        rows = [{"name": e.preset, "consumer": e.consumer, "encoding": e.encoding} for e in export.EXPORTS.values()]
        lines = [f"{r['name']:<18} {r['consumer']}" for r in rows]
        return {"exports": rows}, "\n".join(lines + ["details: gpuquant export-info NAME [--dim D]"])
    info = export.export_info(args.name)
    doc = {"export": export.loading_entry(args.name, args.dim) or asdict(info)}
    return doc, export.render(info, args.dim)


# ------------------------------------------------------------------------------------------------
# inspect


def _inspect_npy(p: Path) -> Report:
    header = gio.read_npy_header(p)
    doc = {"kind": "npy", "path": str(p), "shape": list(header.shape), "dtype": header.dtype.name,
           "fortran_order": header.fortran_order, "bytes": header.data_bytes}
    text = (f"{p}: .npy array {header.dtype.name}{tuple(header.shape)}, "
            f"{'Fortran' if header.fortran_order else 'C'} order, {_mb(header.data_bytes)} MB")
    return doc, text


def _inspect_converted(p: Path) -> Report:
    from gpuquant import Quantizer

    conv = gstore.read_converted(p)
    info = _quantizer_info(Quantizer.load(conv.quantizer_path, backend="numpy"))
    m = conv.manifest
    side = {k: _array_summary(v) if v.dtype.kind in "biuf" else {"shape": list(v.shape), "dtype": v.dtype.name}
            for k, v in conv.side.items()}
    doc = {"kind": "converted", "path": str(p), "manifest": m, "side_summary": side, "quantizer": info}
    lines = [
        f"{p}: gpuquant output (format {m['format_version']}, written by gpuquant {m.get('gpuquant_version')})",
        f"codes    {m['codes']['dtype']}{tuple(m['codes']['shape'])} in {m['codes']['file']} "
        f"(stored as {m['codes']['stored_dtype']})",
        f"source   {m.get('source', {}).get('path')} {tuple(m.get('source', {}).get('shape', ()))} "
        f"{m.get('source', {}).get('dtype')}",
        f"state    {m.get('state', {}).get('status', 'complete')}, {m.get('state', {}).get('rows_done', m.get('rows'))} "
        f"of {m.get('rows')} rows written" + ("" if m.get("state", {}).get("status", "complete") == "complete"
                                              else " (continue with gpuquant convert ... --resume)"),
    ]
    lines += [_fmt_summary(k, s) for k, s in side.items()]
    return doc, "\n".join(lines + _quantizer_lines(info))


def _inspect_quantizer(p: Path) -> Report:
    from gpuquant import Quantizer

    try:
        q = Quantizer.load(p, backend="numpy")
    except GpuquantError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{p} is not a gpuquant quantizer JSON ({type(exc).__name__}: {exc})") from exc
    info = _quantizer_info(q)
    return {"kind": "quantizer", "path": str(p), "quantizer": info}, "\n".join(
        [f"{p}: gpuquant quantizer"] + _quantizer_lines(info)
    )


def cmd_inspect(args: argparse.Namespace) -> Report:
    """Describe a quantizer JSON, a converted directory or a ``.npy`` file."""
    p = Path(args.path)
    if not p.exists():
        raise InputError(f"path not found: {p}")
    if p.is_dir():
        return _inspect_converted(p)
    if p.name == gstore.MANIFEST and gstore.is_converted_dir(p.parent):
        return _inspect_converted(p.parent)
    with open(p, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        return _inspect_npy(p)
    return _inspect_quantizer(p)


# ------------------------------------------------------------------------------------------------
# doctor: every probe is lazy and guarded


def _guard(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one probe; never raise. Warnings raised while probing are recorded, not shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = probe()
        except ImportError as exc:
            result = {"ok": False, "reason": f"not installed ({exc})"}
        except Exception as exc:  # noqa: BLE001 - a probe must never crash doctor
            result = {"ok": False, "reason": f"{type(exc).__name__}: {exc}".strip()}
    if caught:
        result["warnings"] = [str(w.message) for w in caught]
    return result


def _probe_nvml() -> dict[str, Any]:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return {"ok": False, "reason": f"NVML cannot start: {exc} (no NVIDIA driver here?)"}
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_total": int(mem.total), "memory_free": int(mem.free),
                         "compute_capability": list(pynvml.nvmlDeviceGetCudaComputeCapability(h))})
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {"ok": bool(gpus), "driver": driver.decode() if isinstance(driver, bytes) else driver,
                "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}", "gpus": gpus,
                **({} if gpus else {"reason": "NVML sees no GPU"})}
    finally:
        pynvml.nvmlShutdown()


def _probe_cupy() -> dict[str, Any]:
    import cupy

    out: dict[str, Any] = {"version": cupy.__version__}
    try:
        out["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
    except Exception as exc:  # noqa: BLE001 - NVRTC missing: CuPy works, our kernels cannot compile
        out["nvrtc"] = f"unavailable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CUDARuntimeError and driver load failures
        return {**out, "ok": False, "reason": f"no usable CUDA device: {exc}"}
    if count == 0:
        return {**out, "ok": False, "reason": "CUDA reports 0 devices"}
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {**out, "ok": True, "devices": count,
            "device0": name.decode() if isinstance(name, bytes) else name,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion()}


def _probe_cuvs() -> dict[str, Any]:
    import cuvs

    return {"ok": True, "version": getattr(cuvs, "__version__", "unknown")}


def _probe_kernels() -> dict[str, Any]:
    from importlib import resources

    try:
        resources.files("gpuquant.kernels")
    except ModuleNotFoundError:
        return {"ok": False, "reason": "package gpuquant.kernels not found: gpuquant runs from a source "
                "tree that was not installed (pip install -e . maps kernels/ into the package)"}
    files = sorted(p.name for p in resources.files("gpuquant.kernels").iterdir()
                   if p.name.endswith((".cu", ".cuh")))
    return {"ok": bool(files), "files": files, **({} if files else {"reason": "no kernel sources found"})}


def _probe_backends() -> dict[str, Any]:
    from gpuquant.backends import available_backends

    rows = [{"name": n, "usable": bool(u), "reason": r} for n, u, r in available_backends()]
    return {"ok": any(r["usable"] for r in rows), "backends": rows}


def _probe_host() -> dict[str, Any]:
    import ml_dtypes

    return {"ok": True, "gpuquant": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "numpy": np.__version__,
            "ml_dtypes": ml_dtypes.__version__, "cpus": os.cpu_count()}


PROBES: dict[str, Callable[[], dict[str, Any]]] = {
    "host": _probe_host,
    "nvml": _probe_nvml,
    "cupy": _probe_cupy,
    "cuvs": _probe_cuvs,
    "kernels": _probe_kernels,
    "backends": _probe_backends,
}

_HINTS = {
    "nvml": 'pip install "gpuquant[cuda13]" (or [cuda12]) installs nvidia-ml-py',
    "cupy": 'pip install "gpuquant[cuda13]" (CUDA 13 driver) or "gpuquant[cuda12]"',
    "cuvs": 'pip install "gpuquant[cuvs]"',
}


def _doctor_line(name: str, r: dict[str, Any]) -> str:
    mark = "ok " if r.get("ok") else "-- "
    if name == "host":
        detail = (f"gpuquant {r.get('gpuquant')}, python {r.get('python')}, numpy {r.get('numpy')}, "
                  f"ml_dtypes {r.get('ml_dtypes')}, {r.get('cpus')} CPUs")
    elif name == "nvml" and r.get("ok"):
        gpus = "; ".join(f"{g['name']} ({g['memory_free'] / 2**30:.1f} of {g['memory_total'] / 2**30:.1f} GiB free)"
                         for g in r["gpus"])
        detail = f"driver {r['driver']}, CUDA {r['cuda_driver']}: {gpus}"
    elif name == "cupy" and r.get("ok"):
        detail = f"CuPy {r['version']}, NVRTC {r['nvrtc']}, {r['devices']} device(s), device 0: {r['device0']}"
    elif name == "kernels" and r.get("ok"):
        detail = ", ".join(r["files"])
    elif name == "backends" and "backends" in r:
        detail = "; ".join(f"{b['name']}: {'usable' if b['usable'] else 'no'}"
                           + (f" ({b['reason']})" if b["reason"] else "") for b in r["backends"])
    elif r.get("ok"):
        detail = ", ".join(f"{k} {v}" for k, v in r.items() if k not in ("ok", "warnings"))
    else:
        detail = str(r.get("reason", "unavailable"))
        if name in _HINTS and "not installed" in detail:
            detail += f"; {_HINTS[name]}"
        if r.get("version"):
            detail = f"{name} {r['version']} installed, but {detail}"
    return f"[{mark}] {name:<9} {detail}"


def cmd_doctor(args: argparse.Namespace) -> Report:
    """Probe the machine: never raises, each probe says what works and why not."""
    results = {name: _guard(probe) for name, probe in PROBES.items()}
    gpu = bool(results["cupy"].get("ok"))
    doc = {"gpu_usable": gpu, "probes": results}
    lines = [_doctor_line(n, r) for n, r in results.items()]
    lines.append("GPU backend usable: " + ("yes" if gpu else "no (the numpy backend works everywhere)"))
    return doc, "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# parser and main


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--format", choices=FORMATS, default=argparse.SUPPRESS,
                        help="human (default): a report; json: one JSON document on stdout; quiet: nothing")
    return common


def _add_scheme_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a scheme parameter (repeatable); the value is parsed as JSON when it parses")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto (GPU when one works, else numpy), numpy, or cupy (never falls back)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``gpuquant`` argument parser."""
    common = _common()
    parser = _Parser(prog="gpuquant", description="Quantize float32 matrices into compact codes (CPU or GPU).",
                     epilog="INPUT may be 'demo': the embedded 2000 x 384 MiniLM dataset.")
    parser.add_argument("--format", choices=FORMATS, default="human", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"gpuquant {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("schemes", parents=[common], help="list the presets and the peers they match")
    p.set_defaults(func=cmd_schemes)

    p = sub.add_parser("fit", parents=[common], help="fit a quantizer and save it as JSON")
    p.add_argument("input", metavar="INPUT", help="a .npy file (2-D float) or 'demo'")
    p.add_argument("--scheme", required=True, help="a preset name (see `gpuquant schemes`) or a family")
    _add_scheme_args(p)
    p.add_argument("-o", "--output", required=True, metavar="QUANTIZER.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("convert", parents=[common], help="stream INPUT through a quantizer into the OUTPUT store")
    p.add_argument("input", metavar="INPUT",
                   help="a .npy file (2-D float), a raw float32 file with --shape, a directory of .npy shards, or 'demo'")
    p.add_argument("output", metavar="OUTPUT", help="the store directory to write (must not exist)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--scheme", help="fit this preset or family on INPUT")
    how.add_argument("--quantizer", metavar="Q.json", help="use this fitted quantizer")
    _add_scheme_args(p)
    p.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                   help="auto (the GPU when one works and implements the scheme), gpu (never falls back), cpu")
    p.add_argument("--batch-rows", type=_positive_int, metavar="N",
                   help="rows per batch (default: the planner's N_max on the GPU, 8 MiB of input on the CPU)")
    p.add_argument("--shape", metavar="ROWS,DIM", help="INPUT is raw float32 of this shape (ROWS may be auto: from the file size)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished store OUTPUT")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gpuquant output directory")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on this Dask cluster (e.g. tcp://host:8786; needs gpuquant[dask]); OUTPUT must be "
                        "visible to every worker at the same path")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="run on a local Dask cluster of N workers (one per GPU with dask-cuda, else processes); "
                        "--batch-rows is then the rows per task")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("plan", parents=[common], help="N_max: the batch that fits on the GPU, peak, time, disk")
    p.add_argument("input", metavar="INPUT", nargs="?", help="a .npy, raw (with --shape), shard directory or 'demo'")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--scheme", default="int8-row", help="a preset or family (default int8-row)")
    how.add_argument("--quantizer", metavar="Q.json", help="a saved quantizer")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a scheme parameter (repeatable)")
    p.add_argument("--op", choices=("fit", "transform", "inverse", "convert"), default="convert")
    p.add_argument("--rows", type=_positive_int, help="rows (default: INPUT's)")
    p.add_argument("--dim", type=_positive_int, help="dimensions (default: INPUT's)")
    p.add_argument("--dtype", choices=("float16", "float32", "float64"), default=None, help="input dtype (float32)")
    p.add_argument("--shape", metavar="ROWS,DIM", help="INPUT is raw float32 of this shape")
    p.add_argument("--gpu-memory", metavar="SIZE", help="free GPU memory to plan with, e.g. 80GiB (no GPU needed)")
    p.add_argument("--other", metavar="SIZE", default="0", help="M_other: memory used by other things (default 0)")
    p.add_argument("--headroom", type=float, default=0.10, help="H, the scratch headroom fraction (default 0.10)")
    p.add_argument("--in-flight", type=_positive_int, default=2, help="convert: batches in flight (default 2)")
    p.add_argument("--batch-rows", type=_positive_int, metavar="N", help="convert: plan this batch size instead")
    p.add_argument("--output", metavar="DIR", help="convert: where the output goes (checks the free disk space)")
    for name in ("read", "write", "h2d", "d2h"):
        p.add_argument(f"--{name}-gbs", type=float, metavar="GB/S", help=f"{name} bandwidth for the time estimate")
    p.add_argument("--measure", action="store_true", help="run one batch on the GPU: real peak and H_measured")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("eval", parents=[common], help="recall@k and reconstruction error of a scheme on DATA")
    p.add_argument("data", metavar="DATA", help="a .npy matrix (the corpus), or 'demo'")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--scheme", default="int8-row", help="a preset or family (default int8-row)")
    how.add_argument("--quantizer", metavar="Q.json", help="a saved, fitted quantizer")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a scheme parameter (repeatable)")
    held = p.add_mutually_exclusive_group()
    held.add_argument("--queries", metavar="Q.npy", help="query vectors (default: the first --n-queries rows)")
    held.add_argument("--n-queries", type=_positive_int, default=1000, help="rows held out as queries (1000)")
    p.add_argument("--k", type=_positive_int, default=10, help="neighbours (default 10)")
    p.add_argument("--rescore", type=_positive_int, metavar="M", help="re-rank k*M candidates with the float query")
    p.add_argument("--rescore-with", choices=("original", "reconstructed"), default="original")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("export-info", parents=[common],
                       help="how to load an export preset's codes into its consumer (Qdrant, pgvector, GGUF, ...)")
    p.add_argument("name", metavar="NAME", nargs="?", help="an export preset; none: list them")
    p.add_argument("--dim", type=int, help="fill the number of dimensions into the snippet")
    p.set_defaults(func=cmd_export_info)

    p = sub.add_parser("inspect", parents=[common], help="describe a quantizer JSON, an output directory or a .npy")
    p.add_argument("path", metavar="PATH")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("doctor", parents=[common], help="what GPU support works here, and why not")
    p.set_defaults(func=cmd_doctor)
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the one at setup)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(fmt: str) -> None:
    logger = logging.getLogger("gpuquant")
    for h in [h for h in logger.handlers if getattr(h, "_gpuquant_cli", False)]:
        logger.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("gpuquant: %(message)s"))
    handler._gpuquant_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if fmt == "quiet" else logging.INFO)


def _wants_json(argv: Sequence[str]) -> bool:
    args = list(argv)
    pairs = zip(args, args[1:], strict=False)
    return "--format=json" in args or any(a == "--format" and b == "json" for a, b in pairs)


def _emit(fmt: str, doc: dict[str, Any]) -> None:
    if fmt == "json":
        sys.stdout.write(json.dumps(gio.to_jsonable(doc), allow_nan=False) + "\n")


def _fail(fmt: str, command: str | None, exc: BaseException, code: int) -> int:
    message = str(exc) or type(exc).__name__
    sys.stderr.write(f"{message}\n" if isinstance(exc, UsageError) else f"gpuquant: error: {message}\n")
    _emit(fmt, {"ok": False, "command": command,
                "error": {"type": type(exc).__name__, "message": message, "exit_code": code}})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 2 bad usage or input, 1 failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        sys.stderr.write(parser.format_usage())
        return _fail("json" if _wants_json(argv) else "human", None, exc, EXIT_USAGE)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return _fail(args.format, None, UsageError("gpuquant: error: a COMMAND is required"), EXIT_USAGE)
    _setup_logging(args.format)
    try:
        doc, text = args.func(args)
    except (InputError, UsageError, FileNotFoundError) as exc:
        return _fail(args.format, args.command, exc, EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args.format, args.command, RuntimeError("interrupted"), 130)
    except Exception as exc:  # noqa: BLE001 - the CLI reports every failure as exit 1
        log.debug("failure", exc_info=True)
        return _fail(args.format, args.command, exc, EXIT_FAILURE)
    if args.format == "json":
        _emit("json", {"ok": True, "command": args.command, **doc})
    elif args.format == "human":
        sys.stdout.write(text + "\n")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
