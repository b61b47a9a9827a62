"""Named presets: a family plus parameters that reproduce one peer's codes bit for bit.

Each preset accepts overrides (``Quantizer("cuvs-sq8", quantile=0.95)``); the peer column says
whose codes it reproduces with its defaults, on float32 input. Other float input is converted to
float32 first: float16 exactly, float64 rounded to nearest even. A peer that quantizes float64
directly rounds only once, so on float64 input its codes can differ from ours by one level, or in
overflow (ml_dtypes casts float64 464.00000000000006 to e4m3 NaN; rounded to float32 it is 464.0,
which casts to 448). Export presets (``consumer`` set)
make codes in the exact encoding a vector database or weight format loads; how to load them is in
:mod:`gpuquant.export` (``gpuquant export-info NAME``).
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
    consumer: str = ""  # the system that loads these codes (export presets), else ""


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
               "the row-wise int8 recipe: s = (max|x| + 1e-8)/127, clip(round(x/s), -127, 127)",
               "int8 + one float32 scale per row"),
        Preset("uint8-affine", "scalar",
               dict(granularity="tensor", range="minmax", rounding="half_even", bits=8, signed=False),
               "the affine uint8 recipe: round(x/scale + zero_point), clip to [0, 255]",
               "uint8 with a zero point, per tensor (granularity='dimension' for per dimension)"),
        Preset("int4-block", "absmax",
               dict(granularity="block", bits=4, block_size=64, eps=0.0, nibble_order="low_first"),
               "the symmetric int4 recipe: scale = max|w| / 7 per group",
               "int4, one float32 scale per block of 64, two codes per byte"),
        Preset("binary", "binary", dict(threshold="zero", bitorder="little", signed=False),
               "cuVS binary quantizer (preprocessing.quantize.binary) with threshold zero",
               "x > threshold, LSB first; threshold='mean' / 'median' are gpuquant's own (float64 mean, "
               "exact median of every row), not cuVS's (float32 sum; median of a ~10% row sample)"),
        # -- export presets: the encoding each consumer loads (see gpuquant/export.py) ----------
        Preset("qdrant-uint8", "scalar",
               dict(granularity="tensor", range="quantile", quantile=0.99, quantile_method="cuvs",
                    rounding="half_away", bits=8, signed=False),
               "Qdrant vectors with datatype uint8 (values 0..255 stored as given)",
               "uint8 0..255, one global 0.99-quantile range, half away from zero", "Qdrant"),
        Preset("qdrant-binary", "binary", dict(threshold="zero", bitorder="little", signed=False),
               "Qdrant binary quantization (one bit: v > 0, bit i % 8 of byte i / 8)",
               "x > 0, LSB first, uint8 (Qdrant's stored one-bit codes)", "Qdrant"),
        Preset("pgvector-bit", "binary", dict(threshold="zero", bitorder="big", signed=False),
               "pgvector bit(n), as binary_quantize(vector)", "x > 0, most significant bit first, uint8",
               "pgvector"),
        Preset("pgvector-halfvec", "float", dict(format="fp16", saturate=False, nonfinite="raise"),
               "pgvector halfvec (float4 to half, round to nearest even)",
               "fp16; NaN, Inf and overflow refused as halfvec refuses them", "pgvector"),
        Preset("vespa-pack-bits", "binary",
               dict(threshold="zero", bitorder="big", signed=True, signed_encoding="twos_complement"),
               "Vespa pack_bits (binarize: x > 0, MSB first, bytes as int8)",
               "x > 0, MSB first, each byte read as int8 (tensor<int8>(x[d/8]), hamming)", "Vespa"),
        Preset("vespa-int8", "absmax", dict(granularity="tensor", bits=8, eps=0.0),
               "Vespa tensor<int8> cells (-128..127 stored as given)",
               "int8, one symmetric scale fitted on the corpus: clip(rint(x / s), -127, 127)", "Vespa"),
        Preset("es-bit", "binary",
               dict(threshold="zero", bitorder="big", signed=True, signed_encoding="twos_complement"),
               "Elasticsearch / OpenSearch dense_vector element_type bit (signed bytes or hex)",
               "x > 0, MSB first, signed bytes; hex of the same bytes", "Elasticsearch / OpenSearch"),
        Preset("es-byte", "absmax", dict(granularity="tensor", bits=8, eps=0.0),
               "Elasticsearch / OpenSearch dense_vector element_type byte (-128..127)",
               "int8, one symmetric scale fitted on the corpus", "Elasticsearch / OpenSearch"),
        Preset("milvus-binary", "binary", dict(threshold="zero", bitorder="little", signed=False),
               "Milvus BINARY_VECTOR bytes (the user guide's convert_bool_list_to_bytes: LSB first)",
               "x > 0, LSB first, uint8 (d/8 bytes; dim a multiple of 8)", "Milvus"),
        Preset("milvus-int8", "absmax", dict(granularity="tensor", bits=8, eps=0.0),
               "Milvus INT8_VECTOR (-128..127)", "int8, one symmetric scale fitted on the corpus", "Milvus"),
        Preset("lancedb-binary", "binary", dict(threshold="zero", bitorder="big", signed=False),
               "LanceDB binary vectors (np.packbits uint8 lists, metric hamming)",
               "x > 0, MSB first (np.packbits), uint8", "LanceDB"),
        Preset("gguf-q8_0", "gguf", dict(type="q8_0"),
               "llama.cpp GGUF Q8_0 (quantize_row_q8_0_ref; gguf.quants.quantize)",
               "34-byte blocks of 32: fp16 d = amax/127, int8 roundf(x * (1/d))", "GGUF (llama.cpp)"),
        Preset("gguf-q4_0", "gguf", dict(type="q4_0"),
               "llama.cpp GGUF Q4_0 (quantize_row_q4_0_ref; gguf.quants.quantize)",
               "18-byte blocks of 32: fp16 d = max/-8, min(15, (int8)(x/d + 8.5)), j low / j+16 high",
               "GGUF (llama.cpp)"),
        Preset("safetensors-fp8", "scaled_fp8", dict(granularity="channel", format="e4m3"),
               "safetensors F8_E4M3 weight + F32 weight_scale (compressed-tensors FP8, vLLM)",
               "fp8 e4m3 of w / s + 0, s = amax / 448 (2**-23 if 0) per channel (or per tensor)",
               "safetensors (vLLM / compressed-tensors)"),
    ]
}
