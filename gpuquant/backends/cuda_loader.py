"""Load the CUDA kernels shipped in ``gpuquant.kernels`` and compile them with NVRTC.

The kernels are ``.cu``/``.cuh`` text files in the top-level ``kernels/`` directory, installed as the
package ``gpuquant.kernels``; they are found with :mod:`importlib.resources` (never with paths
relative to this file), so they work from a wheel, an sdist or a source checkout.

Compilation:

* Local ``#include "name.cuh"`` lines are inlined here, recursively, each file wrapped in ``#line``
  directives, so NVRTC needs no include path for our own headers and its log names the original
  file and line.
* The CUDA headers (``cuda_fp16.h``, ``cuda_bf16.h``, ``cuda_fp8.h``) come from the CUDA toolkit
  wheels (``cuda.pathfinder``), ``$GPUQUANT_CUDA_INCLUDE``, ``$CUDA_PATH``/``$CUDA_HOME`` or
  ``/usr/local/cuda``, passed with ``-I``.
* Options are :data:`BASE_OPTIONS`. CuPy always appends ``-ftz=true``; the per-element math in
  ``kernels/quant_math.cuh`` is written in inline PTX without ``.ftz`` so results do not depend on it.
* :func:`get_module` builds a ``cupy.RawModule`` with the template instances as
  ``name_expressions`` and caches it per (kernel file, options, device id); CuPy's own disk cache
  keeps the binary across processes. :func:`get_kernel` (called on every launch) caches each
  kernel per (file, kernel, name expressions, device id), so the options are read once per process
  per kernel: set ``$GPUQUANT_CUDA_INCLUDE`` and the like before the first launch.
* :func:`nvrtc_check` compiles the same source with NVRTC directly for a virtual architecture
  (``compute_80``, ``compute_90``...): it needs no GPU, which is how CI checks every kernel.

A compile error raises :class:`KernelCompileError` naming the kernel file, the options and each
failing source line.
"""

from __future__ import annotations

import importlib.resources
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

from gpuquant.errors import KernelCompileError

KERNEL_PACKAGE = "gpuquant.kernels"

#: Options every kernel is compiled with (CuPy adds ``-ftz=true`` and the architecture itself).
BASE_OPTIONS: tuple[str, ...] = ("--std=c++17",)

_INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"\s*$')
_LOG_RE = re.compile(r"^(?P<file>[^\s()]+)\((?P<line>\d+)\): (?P<kind>error|warning)(?P<msg>.*)$")


def read_kernel_text(filename: str) -> str:
    """Return the text of ``filename`` from the ``gpuquant.kernels`` package."""
    return importlib.resources.files(KERNEL_PACKAGE).joinpath(filename).read_text(encoding="utf-8")


def kernel_files() -> list[str]:
    """Names of every ``.cu`` file shipped in ``gpuquant.kernels`` (sorted)."""
    root = importlib.resources.files(KERNEL_PACKAGE)
    return sorted(p.name for p in root.iterdir() if p.name.endswith(".cu"))


def build_source(filename: str) -> str:
    """Return ``filename`` with its local ``#include "..."`` headers inlined (each once).

    ``#line`` directives keep NVRTC's error positions pointing at the original files.
    """
    seen: set[str] = set()

    def expand(name: str) -> list[str]:
        out = [f'#line 1 "{name}"']
        for number, line in enumerate(read_kernel_text(name).splitlines(), start=1):
            match = _INCLUDE_RE.match(line)
            if match is None:
                out.append(line)
                continue
            header = match.group(1)
            if header not in seen:
                seen.add(header)
                out.extend(expand(header))
            out.append(f'#line {number + 1} "{name}"')
        return out

    seen.add(filename)
    return "\n".join(expand(filename)) + "\n"


def cuda_include_dir() -> str | None:
    """Directory holding ``cuda_fp16.h``/``cuda_fp8.h``, or ``None`` when none is found."""
    candidates: list[str] = []
    env = os.environ.get("GPUQUANT_CUDA_INCLUDE")
    if env:
        candidates.append(env)
    try:
        import cuda.pathfinder as pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            candidates.append(str(found))
    except Exception:  # noqa: BLE001 - optional helper; any failure means "not found here"
        pass
    for var in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    candidates.append("/usr/local/cuda/include")
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "cuda_fp8.h")):
            return directory
    return None


def compile_options(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Full NVRTC option tuple: :data:`BASE_OPTIONS`, the CUDA include dir, then ``extra``."""
    options = list(BASE_OPTIONS)
    include = cuda_include_dir()
    if include is not None:
        options.append(f"-I{include}")
    options.extend(extra)
    return tuple(options)


def format_compile_error(filename: str, options: Sequence[str], log: str) -> str:
    """Readable message for an NVRTC failure: file, options and each failing source line."""
    lines = [f"NVRTC failed to compile kernel file {filename!r}", f"options: {' '.join(options)}"]
    for entry in log.splitlines():
        match = _LOG_RE.match(entry.strip())
        if match is None or match.group("kind") != "error":
            continue
        src_file, src_line = match.group("file"), int(match.group("line"))
        try:
            text = read_kernel_text(os.path.basename(src_file)).splitlines()[src_line - 1].strip()
        except (OSError, IndexError):
            text = "<source line unavailable>"
        lines.append(f"{src_file}:{src_line}: error{match.group('msg')}")
        lines.append(f"    {text}")
    lines.append("full NVRTC log:")
    lines.append(log.strip())
    return "\n".join(lines)


def nvrtc_check(
    filename: str, name_expressions: Sequence[str], arch: str = "compute_90"
) -> dict[str, str]:
    """Compile ``filename`` with NVRTC for ``arch`` (no GPU needed); return lowered names.

    Raises :class:`KernelCompileError` on any error, or when a name expression is missing.
    """
    from cupy_backends.cuda.libs import nvrtc

    source = build_source(filename)
    options = compile_options((f"-arch={arch}",))
    prog = nvrtc.createProgram(source, filename, [], [])
    try:
        for expr in name_expressions:
            nvrtc.addNameExpression(prog, expr)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise KernelCompileError(format_compile_error(filename, options, log)) from exc
        return {expr: nvrtc.getLoweredName(prog, expr) for expr in name_expressions}
    finally:
        nvrtc.destroyProgram(prog)


_cache: dict[tuple[str, tuple[str, ...], tuple[str, ...], int], Any] = {}
_lock = threading.Lock()


def get_module(filename: str, name_expressions: Sequence[str], extra_options: Sequence[str] = ()):
    """Compiled ``cupy.RawModule`` for ``filename`` on the current device (cached).

    Every name expression is compiled at once; a failure raises :class:`KernelCompileError`.
    """
    import cupy

    options = compile_options(extra_options)
    key = (filename, options, tuple(name_expressions), cupy.cuda.Device().id)
    with _lock:
        module = _cache.get(key)
        if module is not None:
            return module
        module = cupy.RawModule(
            code=build_source(filename), options=options, name_expressions=list(name_expressions)
        )
        try:
            module.get_function(name_expressions[0])  # compiles the whole module now
        except cupy.cuda.compiler.CompileException as exc:
            raise KernelCompileError(
                format_compile_error(filename, exc.options or options, exc.get_message())
            ) from exc
        _cache[key] = module
        return module


_kernels: dict[tuple[str, str, tuple[str, ...], int], Any] = {}


def get_kernel(filename: str, name_expression: str, name_expressions: Sequence[str]):
    """One kernel (``cupy.RawKernel``) of the cached module for ``filename`` on the current device.

    Cached per (file, kernel, name expressions, device id): every later call returns the same
    object after one dictionary lookup (this runs on every launch). So the compile options
    (:func:`compile_options`: environment variables, CUDA include directory) are read once per
    process per kernel and device, at its first launch.
    """
    import cupy

    key = (filename, name_expression, tuple(name_expressions), cupy.cuda.runtime.getDevice())
    kernel = _kernels.get(key)
    if kernel is None:
        kernel = get_module(filename, name_expressions).get_function(name_expression)
        kernel = _kernels.setdefault(key, kernel)  # one object per key, even when threads race here
    return kernel
