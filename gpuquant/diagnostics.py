"""What works on this machine and why not: the probes behind ``gpuquant doctor``.

Each probe is a function returning a JSON-able dict with ``ok`` (bool) and, when not ok, a
``reason``; :func:`run_probes` runs every probe in :data:`PROBES` through :func:`guard`, so a probe
that raises (a missing library, a broken driver) becomes ``{"ok": False, "reason": ...}`` and
warnings raised while probing are recorded under ``warnings`` rather than shown. Everything is
imported lazily: no probe needs CUDA to be importable. The backends probe is the backends' own
(:func:`gpuquant.backends.available_backends`), the kernels probe reads the package the CUDA
loader compiles from (:data:`gpuquant.backends.cuda_loader.KERNEL_PACKAGE`).
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from gpuquant._version import __version__


def guard(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
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

    from gpuquant.backends.cuda_loader import KERNEL_PACKAGE

    try:
        kernels = resources.files(KERNEL_PACKAGE)
    except ModuleNotFoundError:
        return {"ok": False, "reason": "package gpuquant.kernels not found: gpuquant runs from a source "
                "tree that was not installed (pip install -e . maps kernels/ into the package)"}
    files = sorted(p.name for p in kernels.iterdir()
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


def run_probes() -> dict[str, Any]:
    """Every probe's result (never raises) and ``gpu_usable``: whether CuPy runs on a CUDA device."""
    results = {name: guard(probe) for name, probe in PROBES.items()}
    return {"gpu_usable": bool(results["cupy"].get("ok")), "probes": results}


__all__ = ["PROBES", "guard", "run_probes"]
