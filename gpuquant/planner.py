"""The N_max planner: how many rows fit on the GPU for one operation (``docs/memory.md``).

The formula is the one of the "Memory footprint" section of the cuVS scalar quantizer guide
(https://docs.nvidia.com/cuvs/user-guide/api-guides/preprocessing-guide/scalar-quantizer)::

    M_usable = (M_free - M_other) * (1 - H)                  H = 0.10 unless --headroom
    peak(N)  = N * B_per_row + B_fixed                        (undeclared scratch excluded)
    N_max    = floor((M_usable - B_fixed) / B_per_row)

with, for ``D`` input dimensions, ``B_x`` bytes per input value, ``C`` code bytes per row
(``code_shape(1, D')`` times the code itemsize) and ``S`` bytes of per-row side arrays (the
``scales`` of ``int8-row`` / ``int4-block``), where ``D'`` is what the scheme sees: ``D`` cut to
``truncate_dim``, then PCA's ``pca_dim``, then padded to a power of two by the Hadamard rotation
(``D' = D`` without them). The input term is the row as read (``D*B_x``); the scheme-side terms
(``C``, ``S``, ``inverse``'s float32 decode, the fit's statistics, the state and ``W``) count ``D'`` dimensions:

========== ====================================== ===================================================
op         B_per_row                              B_fixed
========== ====================================== ===================================================
transform  ``D*B_x + C + S``  (input + codes)      the fitted state (ranges, thresholds), float32, + ``W``
inverse    ``C + S + D*4``    (codes + float32     the fitted state
           reconstruction: the guide's
           ``reconstructed_size = N*D*B_x`` with
           the inverse's own input, the codes)
fit        ``D*B_x`` + the device training's       the state, + the cuVS quantile sample
           copies: per-dimension order statistics  (``min(1e6 // D, N)`` rows sorted as float32:
           (median, per-dimension exact quantile)  copy + sort buffer, ``2 * 4`` bytes a value)
           sort a float32 copy: ``+ 2*D*4``
convert    ``k * (D*B_x + C + S)``: k batches in   the state + ``k * W``: each batch's call its own scratch
           flight (``--in-flight``, default 2 =
           the engine's CUDA streams), each with
           its device input and output buffers
========== ====================================== ===================================================

``W`` is the device scratch one encode call allocates as its launcher declares it (``@scratch``, read by
:func:`~gpuquant.backends.cupy_launch.scratch_bytes`; the launcher sizes its buffers with it), for ``rows`` rows
when known (no batch holds more), else the most a call allocates; 0 where none (the plan's note states it).

``convert`` also reports the pinned host memory of its staging ring, ``(k + 1) * batch_rows *
(D*B_x)`` for inputs plus ``(k + 1) * batch_rows * (C + S)`` for outputs (what
:mod:`gpuquant.engine` allocates), the batch rows (``N_max``, capped at ``rows`` and at
:data:`BATCH_CAP_BYTES` of input per batch: larger batches buy nothing once transfers run at full
speed), the number of batches, the output's size on disk and whether the target file system has
room, and an estimated time: the slowest of disk read, host-to-device, device-to-host and disk write
at the bandwidths given (or measured with ``measure=True``). Defaults are stated in
:data:`DEFAULT_BANDWIDTHS`; they are assumptions, not measurements.

Free memory comes from ``gpu_memory=`` (plan without a GPU: ``"80GiB"``), else NVML (``pynvml`` from
nvidia-ml-py; no CUDA context is created), else CuPy (``cudaMemGetInfo``). Remember that a CUDA
context itself takes a few hundred MiB that NVML still counts as free: put it in ``other``.

``measure=True`` (GPU only) runs one batch of the operation on the device with a CuPy memory hook,
reads the real peak of the memory pool and reports
``H_measured = (observed_peak - formula_without_scratch) / formula_without_scratch``.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant.api import as_quantizer
from gpuquant.backends.cupy_families import scratch_bytes
from gpuquant.backends.cupy_train import CANDIDATE_MIN, CANDIDATE_SHARE, RADIX_STATE_BYTES
from gpuquant.errors import BackendUnavailableError, InputError
from gpuquant.files import to_jsonable
from gpuquant.schemes import statistics as st

OPS = ("fit", "transform", "inverse", "convert")
DEFAULT_HEADROOM = 0.10
DEFAULT_IN_FLIGHT = 2
#: Input bytes per batch above which ``convert`` does not grow its batches.
BATCH_CAP_BYTES = 256 * 2**20
#: Bytes per second assumed for the time estimate when none are given or measured.
DEFAULT_BANDWIDTHS: dict[str, float] = {"read": 2e9, "write": 1e9, "h2d": 25e9, "d2h": 25e9}

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15}


def parse_bytes(text: str | int | float) -> int:
    """``"80GiB"``, ``"80 GB"``, ``"512M"``, ``"1.5TiB"`` or a number of bytes, as an int.

    ``KiB/MiB/GiB/TiB`` and the bare letters ``K/M/G/T`` are powers of 1024; ``KB/MB/GB/TB`` powers of 1000.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise InputError(f"cannot read {text!r} as a size; write e.g. 80GiB, 512MiB, 40GB or a byte count")
        value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value) or value < 0:
        raise InputError(f"a size must be a finite number >= 0, got {text!r}")
    return int(value * _UNITS[unit])


def format_bytes(n: float | None) -> str:
    """``n`` bytes in binary units, e.g. ``"72.0 GiB"``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


# --------------------------------------------------------------------------------------------
# bytes of one row, and of the fitted state


def row_bytes(scheme: Any, d: int, dtype: Any = np.float32, scheme_dim: int | None = None) -> dict[str, int]:
    """Bytes per row of what the stream holds: ``input`` (D*B_x, the row as read, all ``d`` dimensions),
    and on the scheme's side, at the ``scheme_dim`` dimensions it sees (``d`` by default; fewer after
    ``truncate_dim`` or PCA, a power of two after the Hadamard rotation's padding): ``codes`` (C),
    ``side`` (S) and ``float32`` (the decoded rows, scheme_dim*4)."""
    sd = d if scheme_dim is None else scheme_dim
    _, code_cols = scheme.code_shape(1, sd)
    side = sum(int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dt).itemsize
               for shape, dt in scheme.side_shapes(1, sd).values())
    return {"input": d * np.dtype(dtype).itemsize, "codes": int(code_cols) * scheme.code_dtype.itemsize,
            "side": int(side), "float32": sd * 4}


def scheme_dims(q: Any, dim: int) -> tuple[int, int]:
    """(rows' dimensions after ``truncate_dim``, dimensions the scheme sees after PCA / rotation) for
    input rows of ``dim`` dimensions; ``InputError`` when the scheme cannot take them."""
    tdim = int(q.truncate_dim or dim)  # the pre-transforms take the rows after the Matryoshka step
    if tdim > dim:
        raise InputError(f"truncate_dim={tdim} is larger than the input's {dim} dimensions")
    sdim = q.pre.out_dim(tdim) if q.pre.active else tdim
    q.scheme.check_dim(sdim)
    return tdim, sdim


def state_bytes(scheme: Any, d: int) -> int:
    """Bytes of the fitted state for ``d`` dimensions, from the layout the scheme declares
    (``state_spec``); 0 for schemes without state."""
    return spec_bytes(scheme.state_spec(d))


def spec_bytes(spec: dict[str, tuple[tuple[int, ...], Any]]) -> int:
    """Bytes of the arrays a declared state layout holds (a scheme's, or a pre-transform's
    matrices, which the planner counts as fixed bytes)."""
    return int(sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize for shape, dt in spec.values()))


def _quantile_terms(stat: st.Quantile, d: int, rows: int | None) -> tuple[int, int, str]:
    if stat.method == "cuvs":
        sample_rows = max(1, st.CUVS_MAX_SAMPLES // d)
        if rows is not None:
            sample_rows = min(sample_rows, rows)
        return 0, sample_rows * d * 4 * 2, "cuVS sample sorted as float32 (copy + sort buffer)"
    if stat.axis == 0:
        return 2 * d * 4, 0, "per-dimension order statistics sort a float32 copy"
    return (-(-d * 4 // CANDIDATE_SHARE), CANDIDATE_MIN * 4 + RADIX_STATE_BYTES,
            f"radix select over the rows (two read passes; candidates: up to 1/{CANDIDATE_SHARE} of the values)")


def _kmeans_terms(stat: st.KMeans, d: int, rows: int | None) -> tuple[int, int, str]:
    sample = stat.max_rows if rows is None else min(rows, stat.max_rows)
    return 0, sample * d * 4 + sample * stat.k * 8, "k-means training rows gathered, float64 distances"


#: What each statistic (:mod:`gpuquant.schemes.statistics`) costs the device fit beyond one read
#: of the rows: (bytes per row, fixed bytes, note), or None for a plain read pass.
FIT_TERMS: dict[type[st.Statistic], Callable[[Any, int, int | None], tuple[int, int, str] | None]] = {
    st.MinMax: lambda stat, d, rows: None,
    st.AbsMax: lambda stat, d, rows: None,
    st.Quantile: _quantile_terms,
    st.ColumnMean: lambda stat, d, rows: None,
    st.ColumnMedian: lambda stat, d, rows: (2 * d * 4, 0, "per-dimension median sorts a float32 copy"),
    st.ColumnMeanF32: lambda stat, d, rows: None,
    st.KMeans: _kmeans_terms,
    st.Covariance: lambda stat, d, rows: (0, d * d * 8, "float64 X^T X accumulated"),
}


def _fit_terms(scheme: Any, d: int, rows: int | None, input_row: int) -> tuple[int, int, str]:
    """(per-row, fixed, note) of the ``fit`` op (gpuquant's device training, cupy_train): ``input_row``
    bytes of each row read, and the statistics' terms at the ``d`` dimensions the scheme sees."""
    per_row, fixed = input_row, state_bytes(scheme, d)
    note = "one read pass over the rows on the device"
    spec = scheme.fit_spec()
    for stat in (spec.stats.values() if spec else ()):
        terms = st.implementation(FIT_TERMS, stat, "the planner")(stat, d, rows)
        if terms is not None:
            per_row, fixed, note = per_row + terms[0], fixed + terms[1], terms[2]
    return per_row, fixed, note


# --------------------------------------------------------------------------------------------
# free memory


def _visible_index() -> int:
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def _nvml_memory() -> tuple[int, int, str]:
    import pynvml

    pynvml.nvmlInit()
    try:
        index = _visible_index()
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
        name = name.decode() if isinstance(name, bytes) else name
        return int(mem.free), int(mem.total), f"NVML, GPU {index} ({name})"
    finally:
        pynvml.nvmlShutdown()


def _cupy_memory() -> tuple[int, int, str]:
    import cupy

    free, total = cupy.cuda.runtime.memGetInfo()
    return int(free), int(total), f"CuPy cudaMemGetInfo, device {cupy.cuda.Device().id}"


def gpu_free_memory() -> tuple[int, int, str]:
    """(free, total, where from) of the GPU that would run: NVML first, then CuPy.

    Raises:
        BackendUnavailableError: neither can read a GPU's memory here (the reasons are listed).
    """
    reasons = []
    for name, probe in (("NVML", _nvml_memory), ("CuPy", _cupy_memory)):
        try:
            return probe()
        except ImportError as exc:
            reasons.append(f"{name}: not installed ({exc})")
        except Exception as exc:  # noqa: BLE001 - driver errors of either library mean "no GPU"
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
    raise BackendUnavailableError(
        "no GPU memory to plan with (" + "; ".join(reasons) + "); pass gpu_memory= / --gpu-memory 80GiB "
        "to plan for a GPU that is not here")


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class Plan:
    """The result of :func:`plan`; ``to_dict()`` is the JSON of ``gpuquant plan --format json``."""

    op: str
    scheme: str
    family: str
    params: dict[str, Any]
    rows: int | None
    dim: int
    dtype: str
    memory_source: str
    free_bytes: int
    other_bytes: int
    headroom: float
    usable_bytes: int
    bytes_per_row: int
    fixed_bytes: int
    n_max: int
    fits: bool
    row_bytes: dict[str, int]
    in_flight: int = 1
    batch_rows: int | None = None
    batches: int | None = None
    peak_bytes: int | None = None
    pinned_host_bytes: int | None = None
    output_bytes: int | None = None
    disk_free_bytes: int | None = None
    disk_fits: bool | None = None
    estimated_seconds: float | None = None
    bound_by: str | None = None
    bandwidths: dict[str, float] = field(default_factory=dict)
    bandwidth_source: str = "assumed"
    note: str = ""
    measured: dict[str, Any] | None = None

    @property
    def needed_bytes(self) -> int:
        """What one row needs: ``bytes_per_row + fixed_bytes``."""
        return self.bytes_per_row + self.fixed_bytes

    def refusal(self) -> str:
        """The message when nothing fits: needed vs available."""
        return (f"nothing fits for {self.op} with {self.scheme!r} on {self.dim} dims: one row needs "
                f"{self.bytes_per_row} B per row + {self.fixed_bytes} B fixed = {self.needed_bytes} B, "
                f"but only {self.usable_bytes} B ({format_bytes(self.usable_bytes)}) are usable: "
                f"(free {format_bytes(self.free_bytes)} - other {format_bytes(self.other_bytes)}) "
                f"x (1 - headroom {self.headroom:g})")

    def require(self) -> Plan:
        """``self``, or ``InputError`` with :meth:`refusal` when not even one row fits."""
        if not self.fits:
            raise InputError(self.refusal())
        return self

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["needed_bytes"] = self.needed_bytes
        return doc

    def text(self) -> str:
        """The table for people."""
        rows = self.row_bytes
        lines = [
            f"plan: {self.op} with {self.scheme} (family {self.family}), {self.dim} dims {self.dtype}"
            + (f", {self.rows:,} rows" if self.rows is not None else ""),
            f"  free memory      {format_bytes(self.free_bytes):>12}   ({self.memory_source})",
            f"  other            {format_bytes(self.other_bytes):>12}",
            f"  headroom H       {self.headroom:>12g}",
            f"  usable           {format_bytes(self.usable_bytes):>12}   = (free - other) x (1 - H), "
            f"{self.usable_bytes} B",
            f"  bytes per row    {self.bytes_per_row:>12}   (input {rows['input']}, codes {rows['codes']}, "
            f"side {rows['side']}, float32 row {rows['float32']}"
            + (f"; x{self.in_flight} batches in flight" if self.op == "convert" else "") + ")",
            f"  fixed bytes      {self.fixed_bytes:>12}   (fitted state{'; ' + self.note if self.note else ''})",
            f"  N_max            {self.n_max:>12,}   rows = floor((usable - fixed) / per row)",
        ]
        if not self.fits:
            lines.append("  REFUSED: " + self.refusal())
            return "\n".join(lines)
        if self.batch_rows is not None:
            batches = f"   x {self.batches:,} batches" if self.batches else ""
            lines.append(f"  batch rows       {self.batch_rows:>12,}{batches}")
        if self.peak_bytes is not None:
            lines.append(f"  device peak      {format_bytes(self.peak_bytes):>12}   (predicted, without scratch)")
        if self.pinned_host_bytes is not None:
            lines.append(f"  pinned host      {format_bytes(self.pinned_host_bytes):>12}")
        if self.output_bytes is not None:
            room = "" if self.disk_fits is None else (
                f"   ({format_bytes(self.disk_free_bytes)} free: {'fits' if self.disk_fits else 'DOES NOT FIT'})")
            lines.append(f"  output on disk   {format_bytes(self.output_bytes):>12}{room}")
        if self.estimated_seconds is not None:
            bw = ", ".join(f"{k} {v / 1e9:g} GB/s" for k, v in self.bandwidths.items())
            lines.append(f"  estimated time   {self.estimated_seconds:>12.1f} s   (bound by {self.bound_by}; "
                         f"{self.bandwidth_source}: {bw})")
        if self.measured:
            m = self.measured
            lines.append(f"  measured         {m['rows']:,} rows: peak {format_bytes(m['observed_peak'])}, formula "
                         f"{format_bytes(m['formula_without_scratch'])}, H_measured {m['h_measured']:.4f}")
        return "\n".join(lines)


def _disk_free(path: Path) -> int | None:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return int(shutil.disk_usage(p).free)
    except OSError:
        return None


def plan(
    scheme: Any = "int8-row",
    *,
    dim: int,
    rows: int | None = None,
    dtype: Any = "float32",
    op: str = "convert",
    params: dict[str, Any] | None = None,
    gpu_memory: str | int | None = None,
    other: str | int = 0,
    headroom: float = DEFAULT_HEADROOM,
    in_flight: int = DEFAULT_IN_FLIGHT,
    batch_rows: int | None = None,
    output: str | os.PathLike[str] | None = None,
    bandwidths: dict[str, float] | None = None,
    measure: bool = False,
) -> Plan:
    """Plan ``op`` (``fit``, ``transform``, ``inverse`` or ``convert``) for ``rows`` x ``dim`` input.

    Args:
        scheme: a preset or family name (with ``params``), or a :class:`gpuquant.Quantizer`.
        dim, rows, dtype: the input's shape and dtype (float16/32/64); ``rows`` may be unknown.
        gpu_memory: free device memory to plan with (``"80GiB"``); default: the GPU here.
        other: ``M_other``: memory taken by other arrays, pools or the CUDA context.
        headroom: ``H`` in [0, 1).
        in_flight: batches in flight for ``convert`` (k).
        batch_rows: ``convert``: use this batch size instead of the planned one (checked).
        output: ``convert``: where the output goes, to check the disk's free space.
        bandwidths: bytes/s for ``read``, ``write``, ``h2d``, ``d2h`` (missing keys: defaults).
        measure: run one batch on the GPU and report ``H_measured`` (and measure h2d/d2h).

    Returns:
        A :class:`Plan`; ``plan.fits`` is False (and ``plan.refusal()`` says why) when not one row fits.
    """
    if op not in OPS:
        raise InputError(f"op must be one of {list(OPS)}, got {op!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise InputError(f"dtype must be float16, float32 or float64, got {dtype}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InputError(f"dim must be a positive integer, got {dim!r}")
    if rows is not None and (not isinstance(rows, (int, np.integer)) or rows < 1):
        raise InputError(f"rows must be a positive integer, got {rows!r}")
    if not (isinstance(headroom, (int, float)) and 0 <= headroom < 1):
        raise InputError(f"headroom must be in [0, 1), got {headroom!r}")
    if not isinstance(in_flight, int) or in_flight < 1:
        raise InputError(f"in_flight must be a positive integer, got {in_flight!r}")
    dim = int(dim)
    q = as_quantizer(scheme, params)
    tdim, sdim = scheme_dims(q, dim)

    if gpu_memory is not None:
        free, source = parse_bytes(gpu_memory), "given (--gpu-memory)"
    else:
        free, _, source = gpu_free_memory()
    other_b = parse_bytes(other)
    usable = max(0, int((free - other_b) * (1 - headroom)))

    rb = row_bytes(q.scheme, dim, dtype, sdim)
    fixed, note = state_bytes(q.scheme, sdim), ""
    k = in_flight if op == "convert" else 1
    if op == "inverse":
        per_row = rb["codes"] + rb["side"] + rb["float32"]
    elif op == "fit":
        per_row, fixed, note = _fit_terms(q.scheme, sdim, rows, rb["input"])
    else:  # transform, convert: k encode calls in flight, each with its buffers and its launcher's scratch
        per_row, scratch = k * (rb["input"] + rb["codes"] + rb["side"]), scratch_bytes(q.scheme, rows, sdim)
        if scratch:
            fixed, note = fixed + k * scratch, f"+ {k} x {scratch} B encode scratch"
    fixed += spec_bytes(q.pre.state_spec(tdim))
    n_max = max(0, (usable - fixed) // per_row) if usable > fixed else 0
    p = Plan(op=op, scheme=q.name, family=q.family, params=to_jsonable(q.scheme.params), rows=rows, dim=dim,
             dtype=dtype.name, memory_source=source, free_bytes=int(free), other_bytes=other_b,
             headroom=float(headroom), usable_bytes=usable, bytes_per_row=int(per_row), fixed_bytes=int(fixed),
             n_max=int(n_max), fits=n_max >= 1, row_bytes=rb, in_flight=k, note=note)
    if not p.fits:
        return p

    if op == "convert":
        cap = max(1, BATCH_CAP_BYTES // rb["input"])
        planned = min(p.n_max, cap, rows) if rows is not None else min(p.n_max, cap)
        if batch_rows is not None:
            if batch_rows < 1:
                raise InputError(f"batch_rows must be >= 1, got {batch_rows}")
            planned = min(batch_rows, rows) if rows is not None else batch_rows
        p.batch_rows = int(planned)
        p.pinned_host_bytes = (k + 1) * p.batch_rows * (rb["input"] + rb["codes"] + rb["side"])
    else:
        p.batch_rows = int(min(p.n_max, rows)) if rows is not None else int(p.n_max)
    p.peak_bytes = p.batch_rows * per_row + fixed
    if rows is not None:
        p.batches = -(-rows // p.batch_rows)

    if op == "convert" and rows is not None:
        p.output_bytes, p.disk_free_bytes, p.disk_fits = _output_on_disk(rows, rb, output)

    bw = {**DEFAULT_BANDWIDTHS, **(bandwidths or {})}
    p.bandwidth_source = "given" if bandwidths else "assumed defaults"
    if measure:
        p.measured = _measure(q, p, dtype)
        bw.update({k2: v for k2, v in p.measured["bandwidths"].items() if v})
        p.bandwidth_source = "measured h2d/d2h" + (", given" if bandwidths else ", assumed disk")
    if op == "convert" and rows is not None:
        out = int(p.output_bytes or 0)  # set above for a convert with known rows
        links = {**_disk_links(rows * rb["input"], out, bw), "host-to-device": rows * rb["input"] / bw["h2d"],
                 "device-to-host": out / bw["d2h"]}
        p.bound_by, p.estimated_seconds = _slowest(links)
        p.bandwidths = bw
    return p


def _output_on_disk(rows: int, rb: dict[str, int], output: str | os.PathLike[str] | None
                    ) -> tuple[int, int | None, bool | None]:
    """(bytes the codes take on disk, free bytes where ``output`` goes, whether they fit; None: unknown)."""
    need = rows * (rb["codes"] + rb["side"])
    free = None if output is None else _disk_free(Path(output))
    return need, free, None if free is None else need <= free


def _disk_links(bytes_in: int, bytes_out: int, bw: dict[str, float]) -> dict[str, float]:
    return {"disk read": bytes_in / bw["read"], "disk write": bytes_out / bw["write"]}


def _slowest(links: dict[str, float]) -> tuple[str, float]:
    """The link that bounds the run and its seconds (the links overlap: the slowest one sets the pace)."""
    bound = max(links, key=links.__getitem__)
    return bound, round(links[bound], 3)


def cpu_run(scheme: Any = "int8-row", *, dim: int, rows: int, dtype: Any = "float32",
            params: dict[str, Any] | None = None, output: str | os.PathLike[str] | None = None,
            bandwidths: dict[str, float] | None = None) -> dict[str, Any]:
    """What a CPU ``convert`` of ``rows`` x ``dim`` writes and the time its disk traffic takes, with the
    bandwidths of :func:`plan` (``read``, ``write``): a lower bound, as the CPU's encoding speed is not
    modelled. Keys: ``output_bytes``, ``disk_free_bytes``, ``disk_fits``, ``estimated_seconds``,
    ``bound_by``, ``bandwidths``."""
    q = as_quantizer(scheme, params)
    rb = row_bytes(q.scheme, int(dim), np.dtype(dtype), scheme_dims(q, int(dim))[1])
    out, free, fits = _output_on_disk(int(rows), rb, output)
    bw = {k: v for k, v in {**DEFAULT_BANDWIDTHS, **(bandwidths or {})}.items() if k in ("read", "write")}
    bound, seconds = _slowest(_disk_links(int(rows) * rb["input"], out, bw))
    return {"output_bytes": out, "disk_free_bytes": free, "disk_fits": fits, "estimated_seconds": seconds,
            "bound_by": bound, "bandwidths": bw}


# --------------------------------------------------------------------------------------------
# --measure: one batch on the device


MEASURE_MAX_ROWS = 1 << 20


def _measure(q: Any, p: Plan, dtype: np.dtype) -> dict[str, Any]:
    """Run one batch of ``p.op`` on the GPU; report the memory pool's peak and ``H_measured``."""
    from gpuquant.backends import resolve

    backend = resolve("cupy")  # BackendUnavailableError (exit 1) with the reason when there is no GPU
    import cupy

    n = int(min(p.batch_rows or p.n_max, MEASURE_MAX_ROWS, p.rows or MEASURE_MAX_ROWS))
    rng = np.random.default_rng(0)
    host = rng.standard_normal((n, p.dim), dtype=np.float32).astype(dtype)
    if q.scheme.needs_fit and not q.is_fitted:
        q.fit(host[: min(n, 10_000)])
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()

    class Peak(cupy.cuda.MemoryHook):
        name = "gpuquant-peak"

        def __init__(self) -> None:
            self.now = self.peak = 0

        def malloc_postprocess(self, device_id: int, size: int, mem_size: int, mem_ptr: int = 0,
                               pmem_id: int = 0) -> None:
            self.now += mem_size
            self.peak = max(self.peak, self.now)

        def free_postprocess(self, device_id: int, mem_size: int, mem_ptr: int = 0, pmem_id: int = 0) -> None:
            self.now -= mem_size

    hook = Peak()
    state = q.state
    with hook:
        x = cupy.asarray(host)
        if p.op == "inverse":
            codes = backend.transform(q.scheme, state, x)
            del x
            hook.now = hook.peak = sum(int(a.nbytes) for a in [codes.data, *codes.side.values()])
            y = backend.inverse_transform(q.scheme, state, codes)
            del y, codes
        elif p.op == "fit":
            backend.fit(q.scheme, x)
            del x
        else:
            codes = backend.transform(q.scheme, state, x)
            del x, codes
        cupy.cuda.Device().synchronize()
    observed = max(hook.peak, 0)
    formula = (n * (p.bytes_per_row // p.in_flight) + p.fixed_bytes)
    bws = _pinned_bandwidths(min(n * p.row_bytes["input"], 512 * 2**20))
    pool.free_all_blocks()
    return {"rows": n, "observed_peak": int(observed), "formula_without_scratch": int(formula),
            "h_measured": (observed - formula) / formula if formula else None, "bandwidths": bws,
            "how": "CuPy MemoryHook over the default pool during one batch (device-side bytes; "
                   "the CUDA context is not counted)"}


def _pinned_bandwidths(nbytes: int) -> dict[str, float]:
    """Pinned host <-> device copy bandwidth (bytes/s), median of 5 after a warm-up."""
    import cupy
    import cupyx

    nbytes = max(nbytes, 16 * 2**20)
    host = cupyx.empty_pinned((nbytes,), np.uint8)
    host[:] = 1
    dev = cupy.empty((nbytes,), np.uint8)
    stream = cupy.cuda.Stream(non_blocking=True)
    out = {}
    for name, copy in (("h2d", lambda: dev.set(host, stream=stream)),
                       ("d2h", lambda: dev.get(stream=stream, out=host, blocking=False))):
        times = []
        for i in range(6):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            copy()
            stop.record(stream)
            stop.synchronize()
            if i:
                times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        out[name] = nbytes / sorted(times)[len(times) // 2]
    return out
