"""Static SASS budget of every kernel path on sm_90, with no GPU: ``python bench/sass_report.py --json FILE``.

For each preset (``gpuquant schemes``, export presets included) and op (``transform``, ``inverse``,
the training passes its fit launches, and any read-only pass an op launches before its own kernel,
such as a row scale: ``<op>:<kernel>``; ``train[<param>=<value>]:<kernel><pass>`` for the passes of
a variant in ``TRAINING_VARIANTS``), float32 input of ``--dim`` columns:

1. The launch is recorded by running the cupy backend's own launcher of the family on the host
   (``cupy_launch.planned_launches``): kernel name and the real arguments.
2. The path the kernel's mode switch takes for those arguments is compiled on its own: a probe kernel
   with the kernel's parameter list and launch bounds calls the kernel's ``<name>_path<modes>``
   function (``kernels/quantize.cu``) with its own arguments; kernels without a mode switch are used
   as they are. Options are the cupy backend's: ``cuda_loader.compile_options()`` plus what CuPy adds
   (``-ftz=true``, ``-arch=sm_90``, ``--device-as-default-execution-space``). Registers and resident
   blocks are those of the real kernel instance, compiled the same way. Cubins are cached on disk,
   keyed by a hash of source and options (``$GPUQUANT_SASS_CACHE``, default ``~/.cache/gpuquant-sass``).
3. ``nvdisasm`` (``nvidia-cuda-nvdisasm`` wheel) disassembles it; the loops are back edges to a
   dominating block. The *hot loop* is the innermost loop with a *common path*: head to back edge,
   with the iteration's 16-byte input loads (transforms; inverses: output stores; 4 for 4 tasks of
   4 values), a vector code store (load) per task and none narrower, no block with a ``CALL`` (the
   slow paths of divisions), a ``@P BRA`` taken or not as its block's counted ``@P`` operations
   require, and the most instructions among such paths (values in range, no NaN, fast division:
   early-outs are shorter). A branch on a launch-wide value is charged its longer side, so counts
   err high. Training passes take the loop with the most loads (radix select: no candidate store).

Keys of a record: ``instr_per_16B`` = instructions on the common path / (its float32 bytes / 16)
(input bytes for transforms and training passes, output bytes for inverses); ``issue_fraction`` =
``instr_per_16B / budget``, where the budget is what one H100 SM can issue per 16 B of float32 when
the kernel moves ``0.9 * 3.0 TB/s`` (measured copy bandwidth) over 132 SMs at 1.755 GHz::

    budget = 4 warp-instructions/clock * 32 lanes * 16 B * (1 + r) * 132 * 1.755e9 / (0.9 * 3.0e12)
           = 175.8 * (1 + r)

with r the code bytes moved per float32 byte (0.25 for 1-byte codes, 0.5 for 16-bit codes, 0.125
for 4-bit, 1/32 for bits, 0 for read-only passes): 220 for 1-byte codes, 264 for 16-bit, 198 for
4-bit, 181 for bits (13% more at the 1.98 GHz boost clock). ``input_load_bits``: widest global load
on the common path; ``local_memory_ops``: LDL/STL in the hot loop; ``calls``: callees of CALLs in
the hot loop (a 64-bit division or a division slow path); ``registers`` and ``blocks_per_sm``:
resident blocks of 256 threads per SM (65536 registers allocated per warp in units of 256, 64 warps,
228 KB shared memory, 1 KB reserved per block). The static count is a proxy; the GPU benchmark
(``bench/gpu_check.py``) stays the ground truth.

Budgets (``BUDGETS``; enforced by ``tests/test_kernels_sass.py``) for every transform and inverse.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _sass_loops import Instr, LoopPath, Spec, hot_loop

import gpuquant
from gpuquant.backends import cuda_loader, cupy_backend, cupy_launch, cupy_train, device_code_dtype
from gpuquant.schemes import make_scheme

ARCH = "sm_90"
CUPY_OPTIONS = ("-ftz=true", f"-arch={ARCH}", "--device-as-default-execution-space")
THREADS = 256
ISSUE_PER_CLOCK, LANES, SMS, CLOCK_HZ, COPY_BPS, COPY_SHARE = 4, 32, 132, 1.755e9, 3.0e12, 0.9
BUDGETS = {"issue_fraction": 0.5, "input_load_bits": 128, "blocks_per_sm": 4}
TASKS_IN_FLIGHT = 4  # UNROLL in kernels/quantize.cu: tasks (or float4 steps) per loop iteration
RADIX_UNROLL = 4  # RADIX_UNROLL in kernels/train.cu: float4 loads per lane per step
#: A parameter of a preset's variant whose training passes are recorded under the preset as well.
TRAINING_VARIANTS: dict[str, dict[str, Any]] = {"cuvs-sq8": {"quantile_method": "exact"}}


def issue_budget(code_bytes_per_float_byte: float) -> float:
    """Warp-instructions one SM can issue per 16 B of float32 at 0.9 of copy bandwidth (docstring)."""
    bytes_per_clock = COPY_SHARE * COPY_BPS / SMS / CLOCK_HZ
    return ISSUE_PER_CLOCK * LANES * 16 * (1 + code_bytes_per_float_byte) / bytes_per_clock


# ----- compile and disassemble ------------------------------------------------------------------
def _tool(name: str) -> str:
    """Path of a CUDA binary from the nvidia-cuda-* wheels (``nvidia/cu13/bin``), else from PATH."""
    bases = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    found = [str(p) for base in bases for p in Path(base, "nvidia").glob(f"*/bin/{name}")]
    return sorted(found)[0] if found else name


def cache_dir() -> Path:
    return Path(os.environ.get("GPUQUANT_SASS_CACHE", Path.home() / ".cache" / "gpuquant-sass"))


def compile_cubin(filename: str, source: str, names: list[str]) -> tuple[Path, dict[str, str]]:
    """(cubin path, lowered names) of ``source`` compiled as the cupy backend does; cached on disk."""
    from cupy_backends.cuda.libs import nvrtc

    options = list(cuda_loader.compile_options()) + list(CUPY_OPTIONS)
    key = hashlib.sha256(repr((source, options, names, nvrtc.getVersion())).encode()).hexdigest()[:24]
    cubin, meta = cache_dir() / f"{key}.cubin", cache_dir() / f"{key}.json"
    if cubin.exists() and meta.exists():
        return cubin, json.loads(meta.read_text())
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise cuda_loader.KernelCompileError(cuda_loader.format_compile_error(filename, options, log)) from exc
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        data = nvrtc.getCUBIN(prog) + b"\0"  # cupy_backends returns the ELF one byte short
    finally:
        nvrtc.destroyProgram(prog)
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = cubin.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cubin)
    meta.write_text(json.dumps(lowered))
    return cubin, lowered


INSTR_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
LABEL_RE = re.compile(r"^\s*([.$][\w$.]+):\s*$")
TARGET_RE = re.compile(r"`\(([^)]+)\)")


def disassemble(cubin: Path) -> dict[str, tuple[list[Instr], dict[str, int]]]:
    """Per function (mangled name): its instructions and its labels (label -> instruction index)."""
    text = subprocess.run([_tool("nvdisasm"), str(cubin)], capture_output=True, text=True, check=True).stdout
    funcs: dict[str, tuple[list[Instr], dict[str, int]]] = {}
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("\t.section\t.text."):
            instrs, labels = [], {}
            funcs[line.split("\t")[2].split(",")[0][len(".text."):]] = (instrs, labels)
            continue
        label = LABEL_RE.match(line)
        if label:
            labels[label.group(1)] = len(instrs)
            continue
        m = INSTR_RE.search(line)
        if m:
            target = TARGET_RE.search(m.group(4))
            instrs.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4),
                                target.group(1) if target else None))
    return funcs


def resource_usage(cubin: Path) -> dict[str, dict[str, int]]:
    """Per function: REG, SHARED, LOCAL, STACK from ``cuobjdump -res-usage``."""
    text = subprocess.run([_tool("cuobjdump"), "-res-usage", str(cubin)], capture_output=True, text=True,
                          check=True).stdout
    out: dict[str, dict[str, int]] = {}
    for name, usage in re.findall(r"Function (\S+):\s*\n\s*(REG:.*)", text):
        out[name] = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", usage)}
    return out


def blocks_per_sm(registers: int, shared: int, threads: int = THREADS) -> int:
    """Resident blocks of ``threads`` threads on an H100 SM (registers, warps, shared memory)."""
    warps = -(-threads // 32)
    regs_per_warp = -(-registers * 32 // 256) * 256
    by_regs = 65536 // (regs_per_warp * warps) if registers else 32
    return min(by_regs, 64 // warps, 32, 233472 // (shared + 1024))


# ----- launches of the cupy backend ------------------------------------------------------------
def backend_launches(scheme: Any, d: int, n: int = 4) -> dict[str, list[cupy_launch.Launch]]:
    """{"transform": launches, "inverse": launches} as the cupy backend launches them for float32 (n, d),
    in order: the last one writes the op's output; any before it is a pass over the input (a row's scale)."""
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    state = scheme.fit(x) or {}
    codes = np.zeros(scheme.code_shape(n, d), device_code_dtype(scheme))
    side = {k: np.ones(shape, dtype) for k, (shape, dtype) in scheme.side_shapes(n, d).items()}
    out = {}
    for op, mode, data, result in (("transform", "encode", x, codes),
                                   ("inverse", "decode", codes, np.empty((n, d), np.float32))):
        out[op] = cupy_launch.planned_launches(scheme, mode, state, data, result, side)
    return out


def training_kernels(scheme: Any) -> list[str]:
    """Kernels of ``kernels/train.cu`` that ``cupy_train.fit`` launches for ``scheme`` (float32)."""
    p = scheme.params
    if scheme.family == "scalar" and p.get("range") == "minmax":
        return ["minmax_columns<float>" if p["granularity"] == "dimension" else "minmax_global<float>"]
    if scheme.family == "scalar" and p.get("range") == "quantile" and p["quantile_method"] == "exact":
        return [f"radix_histogram<float, {k}>" for k in range(cupy_train.RADIX_PASSES)]
    if scheme.family == "binary" and p["threshold"] == "mean":
        return ["column_sums<float>"]
    if scheme.family == "absmax" and p["granularity"] == "tensor":
        return ["minmax_global<float>"]
    return []  # no own pass (quantiles of a row sample and medians come from a CuPy sort)


# ----- path of a launch ------------------------------------------------------------------------
_KERNEL_RE = re.compile(r"(?:template\s*<([^>]*)>\s*)?__global__\s+void\s+(?:(__launch_bounds__\([^)]*\))\s*)?"
                        r"(\w+)\s*\(([^)]*)\)\s*\{")


def absmax_lanes(seg: int) -> int:
    """Lanes per segment of the absmax encode (``LaneGroup``'s width rule, kernels/quantize.cu)."""
    quads, sixteens = seg // 4, seg // 16
    if seg % 16 == 0 and 0 < sixteens <= 32 and 32 % sixteens == 0:
        return sixteens
    return quads if seg % 4 == 0 and seg < 128 and quads and 32 % quads == 0 else 32


def absmax_walk(kernel: str, args: tuple[Any, ...]) -> int:
    """The walk the absmax encode kernels take for ``args`` on aligned buffers: ``absmax_encode``'s
    float4 per lane of its walk without tests (4, or 3 for int8 codes; 0 the walk with tests),
    ``absmax_encode_rows``' warps a segment (``absmax_block_warps``)."""
    d, seg, bits = int(args[5]), int(args[6]), int(args[8])
    if kernel == "absmax_encode_rows":
        return next((k for k in (2, 4, 8) if 16 * 32 < seg <= 16 * 32 * k and seg % 4 == 0), 0)
    quad = 4 * absmax_lanes(seg)
    return 0 if d % 4 else 4 if seg == 4 * quad else 3 if bits == 8 and seg == 3 * quad else 0


def path_function(kernel: str, targs: list[str], args: tuple[Any, ...]) -> str | None:
    """The ``<kernel>_path<...>`` call the kernel's mode switch makes for ``args`` (None: no switch)."""
    if kernel in ("scalar_encode", "scalar_decode"):
        flat = int(args[7]) == 8 and not int(args[5])  # 8-bit codes, one range: the flat walk
        columns = int(args[5])  # per dimension: the column walk (a full grid)
        modes = [str(int(args[6])), "1" if int(args[7]) == 8 else "2", "1" if flat else "2" if columns else "0"]
    elif kernel == "float_encode":
        modes = [str(int(args[4])), str(int(bool(args[5]))), "1"]  # aligned buffers: the flat walk
    elif kernel == "float_decode":
        modes = [str(int(args[4])), "1"]
    elif kernel in ("gguf_encode", "gguf_decode"):
        modes = [str(int(args[4]))]  # Q4_0 or Q8_0
    elif kernel == "scaled_fp8_encode":  # aligned buffers: a warp per row for row scales
        modes = [str(int(args[6])), "1" if int(args[5]) and int(args[4]) % 4 == 0 else "0"]
    elif kernel == "scaled_fp8_decode":
        n, d, per_row = int(args[3]), int(args[4]), int(args[5])
        modes = [str(int(args[6])), "1" if (d if per_row else n * d) % 4 == 0 else "0"]  # aligned: the flat walk
    elif kernel == "rabitq_encode1":
        modes = ["true" if int(args[5]) % 4 == 0 else "false"]  # rows of whole float4s: the vector path
    elif kernel in ("absmax_encode", "absmax_encode_rows"):  # tensor scale, bits, then the walk itself
        modes = ["1" if int(args[12]) else "0", "8" if int(args[8]) == 8 else "4", str(absmax_walk(kernel, args))]
    elif kernel == "absmax_decode":
        tensor, groups, d, seg = int(args[9]), int(args[6]), int(args[4]), int(args[5])
        quads = seg % 4 == 0 and d % 4 == 0  # aligned buffers: the flat walk over float4s
        layout = 4 if quads else 0 if tensor else 1 if groups == 1 else 2 if d <= 0xFFFFFFFF else 3  # ScaleLayout
        modes = ["1" if int(args[7]) == 8 else "2", str(layout)]
    else:
        return None
    return f"{kernel}_path<{', '.join(targs + modes)}>"


def probe_source(filename: str, probes: dict[str, tuple[str, str]]) -> str:
    """``filename``'s source plus one kernel per probe: {probe name: (name expression, path call)}.

    A probe has the kernel's parameter list (its template parameters replaced by the instance's
    arguments) and launch bounds, and calls the path function with its own arguments."""
    text = cuda_loader.read_kernel_text(filename)
    decls = {m.group(3): m for m in _KERNEL_RE.finditer(text)}
    out = [cuda_loader.build_source(filename)]
    for probe, (expr, call) in probes.items():
        kernel, targs = _split(expr)
        m = decls[kernel]
        params = m.group(4)
        tparams = [t.split()[-1] for t in (m.group(1) or "").split(",") if t.strip()]
        for name, value in zip(tparams, targs):
            params = re.sub(rf"\b{name}\b", value, params)
        names = ", ".join(re.findall(r"\w+", p)[-1] for p in params.split(","))
        out.append(f'extern "C" __global__ void {m.group(2) or ""} {probe}({params}) {{ {call}({names}); }}')
    return "\n".join(out) + "\n"


def _split(expr: str) -> tuple[str, list[str]]:
    kernel, _, rest = expr.partition("<")
    return kernel, [t.strip() for t in rest.rstrip(">").split(",") if t.strip()]


# ----- records ---------------------------------------------------------------------------------
def spec_for(op: str, kernel: str, args: tuple[Any, ...], ratio: float) -> Spec:
    """What the common path of ``kernel``'s hot loop moves per iteration (module docstring)."""
    if kernel.startswith("radix_histogram"):  # RADIX_UNROLL float4 a lane; no (32-bit) candidate store
        return Spec("LDG", 128, RADIX_UNROLL, 64, 0)
    if op not in ("transform", "inverse"):
        return Spec("LDG", 32, None)
    per_task = 2 if kernel.startswith("binary") else 1  # float4 per task: 8 values for bits, else 4
    code_bits = round(128 * ratio * per_task)  # the codes of one task, moved at once
    if kernel == "rabitq_encode1":  # a thread's row, 8 values a step: 2 float4 of x and of the center, a byte
        return Spec("LDG", 128, 4, 8, 1, vectors=2)
    if kernel == "rabitq_decode":  # a thread's row, value by value from its sign bytes
        return Spec("STG", 32, None, 8, 0)
    if kernel in ("absmax_encode", "absmax_encode_rows"):
        d, seg = int(args[5]), int(args[6])
        width = absmax_lanes(seg)
        if kernel == "absmax_encode_rows":  # K warps a segment
            width = 32 * absmax_walk(kernel, args) or width
        if seg % 4 == 0 and d % 4 == 0 and seg <= 16 * width:
            steps = min(4, -(-seg // (4 * width)))  # float4 per lane; the other steps' loads are predicated off
            return Spec("LDG", 128, None, code_bits, steps, vectors=steps)
        return Spec("LDG", 32, None)  # long rows: the max pass, one value per load
    if kernel == "gguf_encode":  # a thread's block of 32 values in 16-byte loads, its bytes in 16/32-bit stores
        return Spec("LDG", 128, None, 16, 1)
    if kernel == "gguf_decode":  # its bytes in 16/32-bit loads, its 32 values in 16-byte stores
        return Spec("STG", 128, None, 16, 1)
    if op == "transform":  # encode_rows keeps 64 B in flight: half as many binary tasks
        tasks = TASKS_IN_FLIGHT // per_task
        return Spec("LDG", 128, tasks * per_task, code_bits, tasks)
    return Spec("STG", 128, TASKS_IN_FLIGHT * per_task, code_bits, TASKS_IN_FLIGHT)


@dataclass
class Job:
    preset: str
    op: str
    filename: str
    expr: str
    path: str | None
    spec: Spec
    ratio: float  # code bytes per float32 byte (0 for read-only passes)


def jobs(d: int) -> list[Job | dict[str, Any]]:
    """One job per (preset, op); presets without GPU kernels give a record right away."""
    out: list[Job | dict[str, Any]] = []
    for preset in gpuquant.presets():
        scheme = make_scheme(preset.name)
        ok, why = cupy_backend.CupyBackend.supports(scheme)
        if not ok:
            out += [{"preset": preset.name, "op": op, "kernel": None, "note": why} for op in ("transform", "inverse")]
            continue
        rc = scheme.code_shape(1, d)[1]
        ratio = rc * device_code_dtype(scheme).itemsize / (4 * d)
        for op, (*passes, launch) in backend_launches(scheme, d).items():
            for first in passes:  # read-only passes before the op's own kernel: recorded, no budget
                out.append(Job(preset.name, f"{op}:{_split(first.name)[0]}", first.filename, first.name, None,
                               spec_for("pass", first.name, (), 0.0), 0.0))
            kernel, targs = _split(launch.name)
            out.append(Job(preset.name, op, launch.filename, launch.name, path_function(kernel, targs, launch.args),
                           spec_for(op, kernel, launch.args, ratio), ratio))
        fits = [("train", scheme)] + [(f"train[{k}={v}]", make_scheme(preset.name, **{k: v}))
                                      for k, v in TRAINING_VARIANTS.get(preset.name, {}).items()]
        for label, fitted in fits:
            for expr in training_kernels(fitted):
                kernel, targs = _split(expr)  # after the input type: the radix select's pass
                name = kernel + (f"<{', '.join(targs[1:])}>" if len(targs) > 1 else "")
                out.append(Job(preset.name, f"{label}:{name}", cupy_train.TRAIN_FILE, expr, None,
                               spec_for("train", expr, (), 0.0), 0.0))
    return out


listings: dict[tuple[str, str], list[str]] = {}  # common path per (preset, op) of the last analyse()


def analyse(d: int) -> list[dict[str, Any]]:
    """Every record (see the module docstring)."""
    todo = jobs(d)
    work = [j for j in todo if isinstance(j, Job)]
    measured: dict[tuple[str, str], dict[str, Any]] = {}
    listings.clear()
    for filename in sorted({j.filename for j in work}):
        mine = [j for j in work if j.filename == filename]
        exprs = sorted({j.expr for j in mine})
        real, real_names = compile_cubin(filename, cuda_loader.build_source(filename), exprs)
        paths = sorted({(j.expr, j.path) for j in mine if j.path})
        probes = {f"gq_probe_{i}": (expr, path) for i, (expr, path) in enumerate(paths)}
        probe, _ = compile_cubin(filename, probe_source(filename, probes), list(probes))
        funcs = {**disassemble(real), **disassemble(probe)}
        usage = resource_usage(real)
        by_path = {v: k for k, v in probes.items()}
        for j in mine:
            fn = by_path[(j.expr, j.path)] if j.path else real_names[j.expr]
            loop = hot_loop(*funcs[fn], j.spec)
            res = usage[real_names[j.expr]]
            measured[(j.preset, j.op)] = _record(j, loop, res)
            listings[(j.preset, j.op)] = loop.listing if loop else []
    return [measured[(j.preset, j.op)] if isinstance(j, Job) else j for j in todo]


def _record(job: Job, loop: LoopPath | None, res: dict[str, int]) -> dict[str, Any]:
    rec: dict[str, Any] = {"preset": job.preset, "op": job.op, "kernel": job.expr, "path": job.path or job.expr}
    if loop is None:
        rec["note"] = "no loop with the expected memory operations found"
    else:
        per16 = loop.instructions / (loop.wide_ops * job.spec.bits / 128)
        rec.update(instr_per_16B=round(per16, 1), issue_fraction=round(per16 / issue_budget(job.ratio), 3),
                   input_load_bits=loop.input_load_bits, local_memory_ops=loop.local_memory_ops,
                   calls=loop.calls)
    rec.update(registers=res.get("REG", 0), blocks_per_sm=blocks_per_sm(res.get("REG", 0), res.get("SHARED", 0)))
    return rec


def budget_failures(rec: dict[str, Any]) -> list[str]:
    """Why a transform/inverse record is over its budget (empty: within it). Training has no budget."""
    if rec["op"] not in ("transform", "inverse"):
        return []
    if "instr_per_16B" not in rec:
        return [rec.get("note", "no analysis")]
    out = []
    if rec["issue_fraction"] > BUDGETS["issue_fraction"]:
        out.append(f"issue_fraction {rec['issue_fraction']} > {BUDGETS['issue_fraction']}")
    if rec["op"] == "transform" and rec["input_load_bits"] < BUDGETS["input_load_bits"]:
        out.append(f"{rec['input_load_bits']}-bit input loads")
    if rec["local_memory_ops"]:
        out.append(f"{rec['local_memory_ops']} local-memory operations in the hot loop")
    if rec["blocks_per_sm"] < BUDGETS["blocks_per_sm"]:
        out.append(f"{rec['blocks_per_sm']} blocks of {THREADS} per SM")
    if rec["calls"]:
        out.append("CALL in the hot loop: " + ", ".join(sorted({c.split("$__")[-1] for c in rec["calls"]})))
    return out


# ----- output ----------------------------------------------------------------------------------
COLUMNS = ("preset", "op", "instr_per_16B", "issue_fraction", "input_load_bits", "local_memory_ops", "registers",
           "blocks_per_sm")


def table(records: list[dict[str, Any]]) -> str:
    """A Markdown table of the records, with the budget failures of each."""
    head = [*COLUMNS, "over budget"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        cells = [str(r.get(c, "-")) for c in COLUMNS] + ["; ".join(budget_failures(r)) or "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the records here (and a .md table next to it)")
    ap.add_argument("--dim", type=int, default=768, help="columns of the float32 input (default 768)")
    ap.add_argument("--show", metavar="PRESET:OP", action="append", default=[],
                    help="also print the common path of this record's hot loop (repeatable)")
    args = ap.parse_args(argv)
    records = analyse(args.dim)
    for item in args.show:
        preset, _, op = item.partition(":")
        print(f"== {preset} {op}: common path of the hot loop", *listings.get((preset, op), ["(none)"]), sep="\n")
    text = table(records)
    if args.json:
        report = {"arch": ARCH, "dim": args.dim, "budgets": BUDGETS, "options": list(CUPY_OPTIONS),
                  "issue_budget_1_byte_codes": round(issue_budget(0.25), 1), "records": records}
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        md = (f"# SASS budget on {ARCH} (float32 input, d = {args.dim})\n\nWritten by `python bench/sass_report.py "
              f"--json {args.json.as_posix()}`; definitions in that script's docstring.\n\n{text}\n")
        args.json.with_suffix(".md").write_text(md)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
