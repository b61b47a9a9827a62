"""Every kernel file and every template instance compiles with NVRTC, for compute_80 and
compute_90, on a machine without a GPU (CI runs this). Also checks the ``-ftz`` decision: compiled
with CuPy's ``-ftz=true``, the quantization kernels contain no flushing float instruction, so their
results cannot depend on that flag (see kernels/quant_math.cuh)."""

from __future__ import annotations

import re

import pytest

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy (with NVRTC) is not installed")

from gpuquant.backends import (  # noqa: E402
    cuda_loader,
    cupy_backend,
    cupy_rotate,
    cupy_train,
)
from gpuquant.backends.cupy_families import rabitq as rabitq_launch  # noqa: E402
from gpuquant.backends.cupy_families import weights  # noqa: E402

INSTANCES = {
    cupy_backend.QUANTIZE_FILE: cupy_backend.NAME_EXPRESSIONS,
    cupy_train.TRAIN_FILE: cupy_train.NAME_EXPRESSIONS,
    rabitq_launch.RABITQ_FILE: rabitq_launch.NAME_EXPRESSIONS,
    cupy_rotate.ROTATE_FILE: cupy_rotate.NAME_EXPRESSIONS,
    weights.WEIGHTS_FILE: weights.NAME_EXPRESSIONS,
}
ARCHS = ["compute_80", "compute_90"]


def test_every_kernel_file_has_its_instances_listed() -> None:
    assert sorted(INSTANCES) == cuda_loader.kernel_files()


def test_cuda_headers_found() -> None:
    assert cuda_loader.cuda_include_dir() is not None, "cuda_fp16.h not found: install cupy-cuda13x[ctk]"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("filename", sorted(INSTANCES))
def test_compiles(filename: str, arch: str) -> None:
    lowered = cuda_loader.nvrtc_check(filename, INSTANCES[filename], arch)
    assert set(lowered) == set(INSTANCES[filename])
    assert all(name.startswith("_Z") for name in lowered.values())


def _ptx(filename: str, options: tuple[str, ...]) -> str:
    prog = nvrtc.createProgram(cuda_loader.build_source(filename), filename, [], [])
    try:
        for expr in INSTANCES[filename]:
            nvrtc.addNameExpression(prog, expr)
        nvrtc.compileProgram(prog, list(cuda_loader.compile_options(options)))
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


@pytest.mark.parametrize("filename", [cupy_backend.QUANTIZE_FILE, rabitq_launch.RABITQ_FILE, cupy_rotate.ROTATE_FILE,
                                      weights.WEIGHTS_FILE])
def test_kernels_do_not_flush_subnormals(filename: str) -> None:
    ptx = _ptx(filename, ("-arch=compute_90", "-ftz=true"))
    flushing = sorted({m.group(0) for m in re.finditer(r"\b[a-z]+(\.[a-z0-9]+)*\.ftz(\.[a-z0-9]+)*", ptx)})
    assert not flushing, f"float instructions that flush subnormals: {flushing}"
    # the fma of gq::fma_f32 is written out (inline asm); one the compiler adds is a contraction
    contracted = re.sub(r"// begin inline asm.*?// end inline asm", "", ptx, flags=re.S)
    assert not re.search(r"\bfma\.", contracted), "an FMA contraction changes results"
    # the written-out ones are there (the stripping above is not vacuous); only quantize.cu uses fma_f32
    assert ("fma.rn.f32" if filename == cupy_backend.QUANTIZE_FILE else "add.rn.f") in ptx


def test_compile_error_names_file_options_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    original = cuda_loader.read_kernel_text

    def broken(name: str) -> str:
        text = original(name)
        return text + "\nconstexpr int gq_broken = 8 +;\n" if name == "quantize.cu" else text

    monkeypatch.setattr(cuda_loader, "read_kernel_text", broken)
    with pytest.raises(cuda_loader.KernelCompileError) as info:
        cuda_loader.nvrtc_check("quantize.cu", ["binary_decode"], "compute_90")
    message = str(info.value)
    assert "quantize.cu" in message and "--std=c++17" in message and "-arch=compute_90" in message
    assert "constexpr int gq_broken = 8 +;" in message
