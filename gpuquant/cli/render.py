"""Human rendering: the text ``--format human`` prints for each command, made from the command's
JSON document (and the few raw values it rounds). No logic beyond formatting lives here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpuquant import files as gfiles


def mb(nbytes: float) -> float:
    return round(nbytes / 1e6, 3)


def fmt_summary(name: str, s: dict[str, Any]) -> str:
    shape = "x".join(str(n) for n in s["shape"]) or "scalar"
    text = f"  {name:<12} {s['dtype']:<14} {shape:<12}"
    if "min" in s:
        text += f" min {s['min']:.6g}  max {s['max']:.6g}  mean {s['mean']:.6g}"
    return text


def fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(gfiles.to_jsonable(v))}" for k, v in params.items()) or "(defaults)"


def quantizer_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"scheme   {info['scheme']} (family {info['family']})",
        f"params   {fmt_params(info['params'])}",
        f"codes    {info['code_dtype']}, {info['bytes_per_value']:.4g} byte(s) per value",
        f"fitted   {'yes' if info['is_fitted'] else 'no'}" + (f", dim {info['dim']}" if info["dim"] else ""),
    ]
    if info["state"]:
        lines.append("state (fitted ranges/thresholds):")
        lines += [fmt_summary(k, s) for k, s in info["state"].items()]
    pre = info.get("pre_transform")
    if pre:
        names = ("pca_dim", "rotate", "rotate_seed") if pre.get("rotate") else ("pca_dim",)  # a seed only rotates
        shown = {k: v for k, v in pre.items() if k in names and v is not None}
        lines.append(f"pre      {fmt_params(shown)}, fitted on {pre['input_dim']} dims"
                     if pre["input_dim"] else f"pre      {fmt_params(shown)}, not fitted")
        lines += [fmt_summary(k, s) for k, s in pre["state"].items()]
    return lines


def schemes_text(rows: list[dict[str, Any]]) -> str:
    """``gpuquant schemes``: one line per preset."""
    head = f"{'preset':<16} {'family':<10} {'code dtype':<14} {'B/value':>7}  {'side':<12} peer"
    lines = [head, "-" * len(head)]
    for r in rows:
        side = ",".join(r["side"]) or "-"
        lines.append(
            f"{r['name']:<16} {r['family']:<10} {r['code_dtype']:<14} {r['bytes_per_value']:>7.4g}  "
            f"{side:<12} {r['peer']}" + (f"  [export for {r['consumer']}]" if r["consumer"] else "")
        )
    lines.append("export presets: `gpuquant export-info NAME` says how to load their codes")
    return "\n".join(lines)


def fit_text(info: dict[str, Any], shape: tuple[int, ...], fit_s: float, out: Path) -> str:
    """``gpuquant fit``: what was fitted on what, in how long, and the quantizer."""
    lines = [f"fitted {info['scheme']} on {shape[0]} x {shape[1]} in {fit_s:.3f} s -> {out}"]
    return "\n".join([*lines, *quantizer_lines(info)])


def _error_line(err: dict[str, Any]) -> str:
    """The convert report's sampled reconstruction error (or why there is none, and the recall)."""
    if err["rel_error"] is not None:
        return f"relative reconstruction error {err['rel_error']:.3e} on {err['rows']} sampled rows"
    recall = f"; recall@10 of the code search {err['recall_at_10']:.4f}" if "recall_at_10" in err else ""
    why = err.get("why", "nothing compared")
    return f"relative reconstruction error n/a on {err['rows']} sampled rows ({why}){recall}"


def quality_warning(doc: dict[str, Any]) -> str | None:
    """The warning for a store holding NaN/±Inf values or clipped inputs (None when it holds neither)."""
    qual = doc.get("quality") or {}
    nonfinite, clipped = qual.get("nonfinite_outputs", 0), qual.get("clipped_inputs", 0)
    if not (nonfinite or clipped):
        return None
    total = doc["rows"] * doc["dims"]
    return (f"warning: {doc['output']}: {nonfinite} of {total} stored values decode to NaN or ±Inf and {clipped} "
            f"input values were clipped to the ends of what {doc['scheme']} holds (check the input's range, or "
            "choose a scheme that covers it)")


def convert_text(doc: dict[str, Any]) -> str:
    src, err = doc["source"], doc["reconstruction"]
    qual = doc.get("quality") or {}
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
            f"error      {_error_line(err)}",
            f"edges      {qual.get('nonfinite_outputs', 0)} values decode to NaN/±Inf, "
            f"{qual.get('clipped_inputs', 0)} inputs clipped to the range ends (every row)",
        ]
    )


def _rate(doc: dict[str, Any]) -> str:
    t = doc.get("throughput") or {}
    if not t.get("rows_per_s"):
        return "n/a"
    return f"{t['rows_per_s']:,.0f} rows/s, {t['gb_per_s_in']:.3f} GB/s of input"


def eval_text(r: dict[str, Any]) -> str:
    """``gpuquant eval``: recall, rescored recall and the reconstruction errors."""
    lines = [
        f"{r['scheme']}: {r['rows']} rows x {r['dims']} dims, {r['queries']} queries, k={r['k']}",
        f"  bytes per vector   {r['bytes_per_vector']:.1f} (float32: {4 * r['dims']})",
        f"  recall@{r['k']:<10d} {r['recall_at_k']:.4f}",
    ]
    if "recall_at_k_rescored" in r:
        lines.append(f"  rescored ({r['rescore']}x){'':<6} {r['recall_at_k_rescored']:.4f}")
    lines += [f"  mean cosine        {r['mean_cosine']:.5f}", f"  relative error     {r['relative_error']:.5f}",
              f"  mse                {r['mse']:.3e}"]
    return "\n".join(lines)


def exports_text(rows: list[dict[str, Any]]) -> str:
    """``gpuquant export-info`` without a NAME: the export presets and their consumers."""
    lines = [f"{r['name']:<18} {r['consumer']}" for r in rows]
    return "\n".join([*lines, "details: gpuquant export-info NAME [--dim D]"])


def npy_text(doc: dict[str, Any]) -> str:
    """``gpuquant inspect`` of a ``.npy`` file."""
    return (f"{doc['path']}: .npy array {doc['dtype']}{tuple(doc['shape'])}, "
            f"{'Fortran' if doc['fortran_order'] else 'C'} order, {mb(doc['bytes'])} MB")


def source_text(p: Path, doc: dict[str, Any]) -> str:
    """``gpuquant inspect`` of a Parquet, HDF5 or big-ann input."""
    where = "".join(f", {k} {doc[k]!r}" for k in ("column", "dataset") if k in doc)
    return f"{p}: {doc['kind']} input {doc['dtype']}{tuple(doc['shape'])}{where}, {mb(doc['bytes'])} MB"


def store_text(doc: dict[str, Any]) -> str:
    """``gpuquant inspect`` of a store: its manifest, side arrays and quantizer."""
    p, m, side, info = doc["path"], doc["manifest"], doc["side_summary"], doc["quantizer"]
    src, state = m.get("source", {}), m.get("state", {})
    status = state.get("status", "complete")
    lines = [
        f"{p}: gpuquant output (format {m['format_version']}, written by gpuquant {m.get('gpuquant_version')})",
        f"codes    {m['codes']['dtype']}{tuple(m['codes']['shape'])} in {m['codes']['file']} "
        f"(stored as {m['codes']['stored_dtype']})",
        f"source   {src.get('path')} {tuple(src.get('shape', ()))} {src.get('dtype')}",
        f"state    {status}, {state.get('rows_done', m.get('rows'))} of {m.get('rows')} rows written"
        + ("" if status == "complete" else " (continue with gpuquant convert ... --resume)"),
    ]
    lines += [fmt_summary(k, s) for k, s in side.items()]
    return "\n".join([*lines, *quantizer_lines(info)])


def quantizer_file_text(doc: dict[str, Any]) -> str:
    """``gpuquant inspect`` of a quantizer JSON."""
    return "\n".join([f"{doc['path']}: gpuquant quantizer", *quantizer_lines(doc["quantizer"])])


HINTS = {  # gpuquant is not on PyPI: extras install from a clone of its repository
    "nvml": 'pip install ".[cuda13]" (or ".[cuda12]") in a clone of gpuquant installs nvidia-ml-py',
    "cupy": 'pip install ".[cuda13]" (CUDA 13 driver) or ".[cuda12]" in a clone of gpuquant',
    "cuvs": 'pip install ".[cuda13,cuvs]" in a clone of gpuquant',
}


def doctor_line(name: str, r: dict[str, Any]) -> str:
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
        if name in HINTS and "not installed" in detail:
            detail += f"; {HINTS[name]}"
        if r.get("version"):
            detail = f"{name} {r['version']} installed, but {detail}"
    return f"[{mark}] {name:<9} {detail}"


def doctor_text(doc: dict[str, Any]) -> str:
    """``gpuquant doctor``: one line per probe, then whether the GPU backend is usable."""
    lines = [doctor_line(n, r) for n, r in doc["probes"].items()]
    lines.append("GPU backend usable: " + ("yes" if doc["gpu_usable"] else "no (the numpy backend works everywhere)"))
    return "\n".join(lines)


def convert_model_text(doc: dict[str, Any]) -> str:
    """``gpuquant convert-model``: sizes, tensors, the per-layer weight errors and how to serve it."""
    mb = 1e6
    lines = [f"converted {doc['model']} -> {doc['output']} ({doc['scheme']}, compressed-tensors {doc['format']}) "
             f"in {doc['seconds']:.1f} s",
             f"weights    {doc['bytes_before'] / mb:.1f} MB -> {doc['bytes_after'] / mb:.1f} MB"
             + (f" ({doc['ratio']:.2f}x smaller)" if doc["ratio"] else ""),
             f"tensors    {doc['quantized']} quantized, {doc['copied']} copied as they were"]
    if doc["worst"]:
        w = doc["worst"]
        lines.append(f"error      largest relative weight error {_num(w['rel_error'])} in {w['name']}")
    lines += [f"  {r['name']:<48} rel {_num(r['rel_error'])}  max abs {r['max_abs_error']:.3e}" for r in doc["layers"]]
    lines += [f"  kept {s['name']}: {s['reason']}" for s in doc["skipped"]]
    lines.append(f"serve it:  vllm serve {doc['output']}")
    return "\n".join(lines)


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3e}"
