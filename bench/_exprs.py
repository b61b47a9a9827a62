"""The presets' formulas as plain CuPy expressions, timed next to gpuquant's kernels by
``bench/gpu_check.py`` (a comparison of speed, not bit-exact equivalents; none for fp8, which CuPy lacks)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def cupy_expressions(cp: Any) -> dict[str, Callable[[Any, dict], Any]]:
    """Preset name -> ``f(x, state)``: its codes from a CuPy float32 ``x`` and the state's device arrays."""
    def affine(x: Any, s: dict) -> Any:
        scale = (s["hi"] - s["lo"]) / 255
        return cp.clip(cp.rint(x / scale + (0 - s["lo"] / scale)), 0, 255).astype(cp.uint8)

    def st_int8(x: Any, s: dict) -> Any:
        steps = (s["hi"] - s["lo"]) / 255
        return (cp.clip(cp.floor((x - s["lo"]) / steps), 0, 255) - 128).astype(cp.int8)

    def faiss8(x: Any, s: dict) -> Any:
        return (255 * cp.clip((x - s["lo"]) / (s["hi"] - s["lo"]), 0, 1)).astype(cp.uint8)

    def faiss4(x: Any, s: dict) -> Any:
        u = (15 * cp.clip((x - s["lo"]) / (s["hi"] - s["lo"]), 0, 1)).astype(cp.uint8)
        return u[:, 0::2] | (u[:, 1::2] << 4)

    def cuvs(x: Any, s: dict) -> Any:
        scale = 255 / (s["hi"] - s["lo"])
        return cp.clip(cp.around(x * scale + (-128 - s["lo"] * scale)), -128, 127).astype(cp.int8)

    def int8_row(x: Any, s: dict) -> Any:
        scale = (cp.abs(x).max(axis=1, keepdims=True) + 1e-8) / 127
        return cp.clip(cp.rint(x / scale), -127, 127).astype(cp.int8), scale

    def int4_block(x: Any, s: dict) -> Any:
        b = x.reshape(x.shape[0], -1, 64)
        scale = cp.abs(b).max(axis=2, keepdims=True) / 7
        q = (cp.clip(cp.rint(b / scale), -7, 7).astype(cp.int8).reshape(x.shape).view(cp.uint8)) & 15
        return q[:, 0::2] | (q[:, 1::2] << 4), scale

    def bf16(x: Any, s: dict) -> Any:
        u = x.view(cp.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cp.uint16)

    return {
        "cuvs-sq8": cuvs, "st-int8": st_int8, "st-uint8": lambda x, s: (st_int8(x, s).view(cp.uint8) ^ 0x80),
        "faiss-sq8": faiss8, "faiss-sq4": faiss4, "uint8-affine": affine, "int8-row": int8_row,
        "int4-block": int4_block, "fp16": lambda x, s: x.astype(cp.float16), "bf16": bf16,
        # cupy.packbits has no axis argument; rows of d values (each d of DIMS a multiple of 8) pack the same flat
        "binary": lambda x, s: cp.packbits((x > 0).ravel(), bitorder="little").reshape(x.shape[0], -1),
        "st-ubinary": lambda x, s: cp.packbits((x > 0).ravel()).reshape(x.shape[0], -1),
        "st-binary": lambda x, s: (cp.packbits((x > 0).ravel()) ^ 0x80).view(cp.int8).reshape(x.shape[0], -1),
    }
