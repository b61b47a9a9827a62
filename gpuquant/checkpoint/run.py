"""The ``convert-model`` run: tensor by tensor, bounded memory, resumable, finalised atomically.

Everything is written under ``.OUTPUT.partial`` next to ``OUTPUT_DIR`` (locked like a store):
``state.json`` (scheme, patterns and the input's sizes and modification times), then per input tensor
its output tensors' bytes (``parts/SHARD/K.NAME.bin``, written in row blocks of ``BLOCK_BYTES`` of
float32, so a 70B checkpoint never sits in memory) and, last, a record ``done/SHARD/K.json`` with
its error statistics; a tensor with a record is never redone (``--resume``). When every tensor of a
shard is done the output shard (same file name as the input's) is assembled from the parts and the
copied tensors, which are streamed from the input. Then ``config.json`` (with the
``quantization_config``), the index and every other file of the model directory (tokenizer,
generation config, ...; not the weights in other formats: ``.bin``, ``.pth``, ...) are written,
the bookkeeping is removed and the directory is renamed to ``OUTPUT_DIR`` in one step:
``OUTPUT_DIR`` exists only when complete. The math runs with numpy on the CPU
(:mod:`gpuquant.checkpoint.quant`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant.checkpoint.model import Checkpoint, Selection, quantization_config, read_checkpoint
from gpuquant.checkpoint.quant import F32, SCHEMES, WeightScheme, encode, weight_quantizer
from gpuquant.errors import InputError
from gpuquant.files import atomic_file, fsync_path, write_json_atomic
from gpuquant.store import StoreLock
from gpuquant.weights import DTYPES, dtype_name, header_bytes

BLOCK_BYTES = 64 << 20
COPY_CHUNK = 16 << 20
STATE_FORMAT = "gpuquant convert-model 1"
#: Files not copied: the weights in other formats (their quantized form is the new safetensors).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".bin.index.json", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".gguf")


def convert_model(model_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str], scheme: str = "fp8", *,
                  targets: Sequence[str] = (), ignore: Sequence[str] = (), resume: bool = False,
                  device: str = "auto") -> dict[str, Any]:
    """Quantize every Linear weight of the checkpoint ``model_dir`` into ``output_dir`` (compressed-tensors
    format; see :mod:`gpuquant.checkpoint`) on ``device`` (``"auto"``, ``"gpu"`` or ``"cpu"``; the bytes
    are the same: :func:`gpuquant.checkpoint.quant.weight_quantizer`); returns the report (a JSON-able dict)."""
    t0 = time.perf_counter()
    if scheme not in SCHEMES:
        raise InputError(f"unknown model scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    sel = Selection(SCHEMES[scheme], list(targets), list(ignore))
    quantizer = weight_quantizer(sel.scheme, device)
    ckpt = read_checkpoint(Path(model_dir))
    dst = Path(output_dir)
    if dst.exists():
        raise InputError(f"output exists: {dst} (convert-model writes a new directory)")
    work = dst.parent / f".{dst.name}.partial"
    dst.parent.mkdir(parents=True, exist_ok=True)
    with StoreLock(dst):
        state = {"format": STATE_FORMAT, "scheme": scheme, "targets": sel.targets, "ignore": sel.ignore,
                 "input": _fingerprint(ckpt)}
        _prepare(work, state, resume)
        records: list[dict[str, Any]] = []
        for shard in ckpt.shards:
            records += _convert_shard(ckpt, shard, sel, work, quantizer)
        _finish(ckpt, work, dst, sel.scheme, records)
    return _report(ckpt, dst, sel.scheme, records, time.perf_counter() - t0)


def _fingerprint(ckpt: Checkpoint) -> list[list[Any]]:
    files = [ckpt.root / "config.json", *ckpt.weight_files()]
    return [[p.name, (st := p.stat()).st_size, st.st_mtime_ns] for p in files]


def _prepare(work: Path, state: dict[str, Any], resume: bool) -> None:
    if work.exists():
        if not resume:
            raise InputError(f"{work} holds an unfinished conversion: run the same command with --resume to "
                             "continue it, or remove it")
        try:
            old = json.loads((work / "state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{work} cannot be resumed ({exc}); remove it and convert again") from None
        if old != state:
            changed = [k for k in state if old.get(k) != state[k]]
            raise InputError(f"--resume refused: {', '.join(changed)} changed since {work} was started; "
                             "remove it to start again")
        return
    if resume:
        raise InputError(f"--resume: there is no unfinished conversion ({work} does not exist)")
    work.mkdir(parents=True)
    write_json_atomic(work / "state.json", state)


def _convert_shard(ckpt: Checkpoint, shard: str, sel: Selection, work: Path, quantizer: Any) -> list[dict[str, Any]]:
    tensors, meta = ckpt.tensors(shard)
    done, parts = work / "done" / shard, work / "parts" / shard
    done.mkdir(parents=True, exist_ok=True)
    records = []
    for k, name in enumerate(sorted(tensors)):
        marker = done / f"{k}.json"
        if marker.exists():
            rec = json.loads(marker.read_text(encoding="utf-8"))
        else:
            rec = _convert_tensor(name, tensors[name], sel, parts, k, quantizer)
            write_json_atomic(marker, rec)
        records.append({**rec, "shard": shard})
    out = work / shard
    if not out.exists():
        _assemble(out, records, tensors, parts, meta)
        shutil.rmtree(parts, ignore_errors=True)
    return records


def _convert_tensor(name: str, arr: np.ndarray, sel: Selection, parts: Path, k: int,
                    quantizer: Any) -> dict[str, Any]:
    base = {"name": name, "shape": list(arr.shape), "dtype": dtype_name(arr.dtype)}
    reason = sel.decide(name, arr)
    if reason is not None:
        return {**base, "action": "copied", "reason": reason, "outputs": [{**base, "file": None}]}
    module, scheme = name[: -len(".weight")], sel.scheme
    rows, cols = arr.shape
    step = max(1, BLOCK_BYTES // (4 * cols))
    parts.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Any, np.dtype, int]] = {}  # local name -> (file, dtype, columns)
    err2 = ref2 = max_abs = 0.0
    with contextlib.ExitStack() as stack:
        for a in range(0, rows, step):
            w = np.asarray(arr[a : a + step], F32)
            try:
                stored, deq = encode(w, scheme, a, quantizer)
            except InputError as exc:
                raise InputError(f"tensor {name!r}: {exc}") from None
            for local, v in stored.items():
                if local not in files:
                    files[local] = (stack.enter_context(open(parts / f"{k}.{local}.bin", "wb")), v.dtype, v.shape[1])
                files[local][0].write(np.ascontiguousarray(v).tobytes())
            d = (w - deq).astype(np.float64)
            err2, ref2 = err2 + float(np.sum(d * d)), ref2 + float(np.sum(w.astype(np.float64) ** 2))
            max_abs = max(max_abs, float(np.max(np.abs(d))) if d.size else 0.0)
        for f, _, _ in files.values():
            f.flush()
            os.fsync(f.fileno())
    outputs: list[dict[str, Any]] = [
        {"name": f"{module}.{local}", "dtype": dtype_name(np.dtype(dt)), "shape": [rows, width],
         "file": f"{k}.{local}.bin"} for local, (_, dt, width) in files.items()]
    if scheme.bits < 8:
        outputs.append({"name": f"{module}.weight_shape", "dtype": "I64", "shape": [2], "file": None,
                        "data": [rows, cols]})
    rel = math.sqrt(err2 / ref2) if ref2 > 0 else (0.0 if err2 == 0 else None)
    return {**base, "action": "quantized", "reason": None, "outputs": outputs, "rel_error": rel,
            "max_abs_error": max_abs}


def _nbytes(entry: dict[str, Any]) -> int:
    return int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize


def _assemble(out: Path, records: list[dict[str, Any]], tensors: dict[str, np.ndarray], parts: Path,
              meta: dict[str, str]) -> None:
    """Write the shard ``out``: header, then each output tensor's bytes (from its part file, its
    inline data, or the input tensor it copies)."""
    entries = [o for r in records for o in r["outputs"]]
    header: dict[str, Any] = {"__metadata__": meta} if meta else {}
    offset = 0
    for o in entries:
        header[o["name"]] = {"dtype": o["dtype"], "shape": o["shape"], "data_offsets": [offset, offset + _nbytes(o)]}
        offset += _nbytes(o)
    head = header_bytes(header)
    with atomic_file(out, "wb") as f:
        f.write(head)
        for o in entries:
            if o["file"]:
                with open(parts / o["file"], "rb") as part:
                    shutil.copyfileobj(part, f, COPY_CHUNK)
            elif "data" in o:
                f.write(np.asarray(o["data"], "<i8").tobytes())
            else:
                raw = np.ascontiguousarray(tensors[o["name"]]).reshape(-1).view(np.uint8)
                for a in range(0, raw.size, COPY_CHUNK):
                    f.write(raw[a : a + COPY_CHUNK].tobytes())
            if f.tell() != len(head) + header[o["name"]]["data_offsets"][1]:
                raise InputError(f"{out}: tensor {o['name']!r} did not have the bytes its header says")


def _finish(ckpt: Checkpoint, work: Path, dst: Path, scheme: WeightScheme, records: list[dict[str, Any]]) -> None:
    kept = sorted({r["name"][: -len(".weight")] for r in records
                   if r["action"] == "copied" and r["reason"] != "not a 2-D float .weight"})
    config = {**ckpt.config, "quantization_config": quantization_config(scheme, sorted({"lm_head", *kept}))}
    write_json_atomic(work / "config.json", config)
    if ckpt.index_name is not None:
        index = dict(ckpt.index or {})
        total = sum(_nbytes(o) for r in records for o in r["outputs"])
        index["metadata"] = {**(index.get("metadata") or {}), "total_size": total}
        index["weight_map"] = {o["name"]: r["shard"] for r in records for o in r["outputs"]}
        write_json_atomic(work / ckpt.index_name, index)
    skip = {"config.json", ckpt.index_name}
    for p in sorted(ckpt.root.iterdir()):
        if p.name in skip or _not_copied(p.name):
            continue
        if p.is_dir():
            shutil.copytree(p, work / p.name, dirs_exist_ok=True, ignore=lambda _, names: [n for n in names
                                                                                         if _not_copied(n)])
        else:
            shutil.copy2(p, work / p.name)
    for name in ("done", "parts"):
        shutil.rmtree(work / name, ignore_errors=True)
    (work / "state.json").unlink()
    os.rename(work, dst)
    fsync_path(dst.parent)


def _not_copied(name: str) -> bool:
    """Hidden files and other copies of the weights (``.bin``, ``.pth``, ... and the input's safetensors)."""
    return name.startswith(".") or name.endswith(WEIGHT_SUFFIXES)


def _report(ckpt: Checkpoint, dst: Path, scheme: WeightScheme, records: list[dict[str, Any]],
            seconds: float) -> dict[str, Any]:
    before = sum(p.stat().st_size for p in ckpt.weight_files())
    after = sum((dst / s).stat().st_size for s in ckpt.shards)
    layers = [{k: r[k] for k in ("name", "shape", "dtype", "rel_error", "max_abs_error")}
              for r in records if r["action"] == "quantized"]
    worst = max(layers, key=lambda r: -1.0 if r["rel_error"] is None else r["rel_error"], default=None)
    return {"model": str(ckpt.root), "output": str(dst), "scheme": scheme.name, "format": scheme.format,
            "quantized": len(layers), "copied": len(records) - len(layers),
            "bytes_before": before, "bytes_after": after, "ratio": before / after if after else None,
            "worst": worst, "layers": layers,
            "skipped": [{"name": r["name"], "reason": r["reason"]} for r in records
                        if r["action"] == "copied" and r["reason"] != "not a 2-D float .weight"],
            "seconds": round(seconds, 3)}
