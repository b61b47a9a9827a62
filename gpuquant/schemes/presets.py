"""Named presets: a family plus parameters that reproduce one peer's codes bit for bit.

Each preset accepts overrides (``Quantizer("cuvs-sq8", quantile=0.95)``); the peer column says
whose codes it reproduces with its defaults, on float32 input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Preset:
    """A named family + parameters, and the peer it reproduces."""

    name: str
    family: str
    params: dict[str, Any] = field(default_factory=dict)
    peer: str = ""
    summary: str = ""


_ST = "sentence-transformers quantize_embeddings"
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("cuvs-sq8", "scalar",
               dict(granularity="tensor", range="quantile", quantile=0.99, quantile_method="cuvs",
                    rounding="half_away", bits=8, signed=True),
               "cuVS scalar quantizer (preprocessing.quantize.scalar)",
               "int8, one global quantile range (0.99), half away from zero"),
        Preset("st-int8", "scalar",
               dict(granularity="dimension", range="minmax", rounding="floor", bits=8, signed=True),
               f"{_ST}(precision='int8')", "int8, per-dimension min/max of the fit data, floor"),
        Preset("st-uint8", "scalar",
               dict(granularity="dimension", range="minmax", rounding="floor", bits=8, signed=False),
               f"{_ST}(precision='uint8')", "uint8, per-dimension min/max of the fit data, floor"),
        Preset("st-binary", "binary", dict(threshold="zero", bitorder="big", signed=True),
               f"{_ST}(precision='binary')", "x > 0, MSB first, byte - 128 as int8"),
        Preset("st-ubinary", "binary", dict(threshold="zero", bitorder="big", signed=False),
               f"{_ST}(precision='ubinary')", "x > 0, MSB first, uint8"),
        Preset("faiss-sq8", "scalar",
               dict(granularity="dimension", range="minmax", rounding="trunc", bits=8, signed=False),
               "FAISS ScalarQuantizer QT_8bit, RS_minmax", "uint8, per-dimension min/max, truncate"),
        Preset("faiss-sq4", "scalar",
               dict(granularity="dimension", range="minmax", rounding="trunc", bits=4, signed=False,
                    nibble_order="low_first"),
               "FAISS ScalarQuantizer QT_4bit, RS_minmax",
               "4 bits, per-dimension min/max, truncate, even dimension in the low nibble"),
        Preset("fp8-e4m3", "float", dict(format="e4m3", saturate=False),
               "ml_dtypes float8_e4m3fn cast", "fp8 e4m3fn, round to nearest even"),
        Preset("fp8-e5m2", "float", dict(format="e5m2", saturate=False),
               "ml_dtypes float8_e5m2 cast", "fp8 e5m2, round to nearest even"),
        Preset("fp16", "float", dict(format="fp16", saturate=False),
               "numpy float16 cast", "IEEE half, round to nearest even"),
        Preset("bf16", "float", dict(format="bf16", saturate=False),
               "ml_dtypes bfloat16 cast", "bfloat16, round to nearest even"),
        Preset("int8-row", "absmax", dict(granularity="row", bits=8, eps=1e-8),
               "the seed's row-wise int8: s = (max|x| + 1e-8)/127, clip(round(x/s), -127, 127)",
               "int8 + one float32 scale per row"),
        Preset("uint8-affine", "scalar",
               dict(granularity="tensor", range="minmax", rounding="half_even", bits=8, signed=False),
               "the seed's affine uint8: round(x/scale + zero_point), clip to [0, 255]",
               "uint8 with a zero point, per tensor (granularity='dimension' for per dimension)"),
        Preset("int4-block", "absmax",
               dict(granularity="block", bits=4, block_size=64, eps=0.0, nibble_order="low_first"),
               "the seed's symmetric int4: scale = max|w| / 7 per group",
               "int4, one float32 scale per block of 64, two codes per byte"),
        Preset("binary", "binary", dict(threshold="zero", bitorder="little", signed=False),
               "cuVS binary quantizer (preprocessing.quantize.binary)",
               "x > threshold (zero / mean / median), LSB first"),
    ]
}
