"""The fp8 float encoder's sm_89+ path (``FloatCodec::fp8_by_hardware`` in ``kernels/codecs.cuh``) on
the host: its fix-up (``fp8_fixed_up``: NaN with its sign, the non-saturating overflow to NaN above 464
for e4m3fn and to Inf from 61440 for e5m2) runs around a host model of the hardware's saturating
round-to-nearest-even conversion (``cvt.rn.satfinite``: ``gq::float_encode`` with saturation, never
given a NaN) and must equal ``gq::float_encode`` (itself checked against the numpy reference by
``tests/test_kernels_host.py``) for every sign, exponent and leading 16 bits of float32, with the low
bits at 0, 1, the half-way patterns, 0xffff and random. The conversion itself can only be checked on a
GPU (``tests/test_gpu_kernels.py``)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from test_kernels_host import EMU_SIGNATURES, I32, VP, build_library, ptr

SIGNATURES = {**EMU_SIGNATURES, "emu_fp8_fixup": [I32, I32, VP, I32, VP]}
FORMATS = {"e4m3": 0, "e5m2": 1}


@pytest.fixture(scope="module")
def emu() -> ctypes.CDLL:
    library = build_library("host_emulation.cpp", SIGNATURES)
    library.emu_fp8_fixup.restype = ctypes.c_longlong
    return library


@pytest.mark.parametrize("saturate", [0, 1])
@pytest.mark.parametrize("fmt", FORMATS)
def test_fixup_around_the_saturating_conversion_is_the_reference(emu: ctypes.CDLL, rng: np.random.Generator,
                                                                  fmt: str, saturate: int) -> None:
    lows = np.concatenate([np.uint32([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFE, 0xFFFF]),
                           rng.integers(0, 0x10000, 9, dtype=np.uint32)])
    bad = np.zeros(1, np.uint32)
    failures = emu.emu_fp8_fixup(FORMATS[fmt], saturate, ptr(lows), lows.size, ptr(bad))
    assert failures == 0, f"{failures} float32 values differ; first bits {int(bad[0]):#010x}"
