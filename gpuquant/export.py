"""Export presets: codes in the exact encoding a vector database or weight format loads, and how to load them.

Every export preset (``gpuquant schemes`` lists them with their consumer) is a scheme family plus
parameters; this module says, per preset, what the bytes are and how the consumer takes them
(:data:`EXPORTS`, printed by ``gpuquant export-info NAME`` and written into the ``loading`` key of
``manifest.json`` by ``gpuquant convert``), and has the small helpers that turn codes into what each
client wants: pgvector text literals and COPY rows, hex strings (Elasticsearch/OpenSearch ``bit``
and ``byte``), ``bytes`` rows (Milvus ``BINARY_VECTOR``). Weight formats (GGUF blocks, safetensors
FP8) have their file helpers in :mod:`gpuquant.weights`.

Queries must be encoded by the same fitted quantizer as the corpus (save it: the quantizer JSON is
the calibration file; ``gpuquant convert`` writes it as ``OUTPUT/quantizer.json``).

Bit orders and byte forms, with where they were read:

* ``pgvector-bit``, ``lancedb-binary``: ``x > 0``, most significant bit first (pgvector
  ``binary_quantize``: ``rx[i / 8] |= (ax[i] > 0) << (7 - (i % 8))``; LanceDB's docs pack with
  ``np.packbits``), uint8.
* ``vespa-pack-bits``, ``es-bit``: ``x > 0``, MSB first, each byte read as int8 two's complement
  (Vespa's ``pack_bits`` table: ``[1, 0, 0, 0, 0, 0, 0, 0]`` -> -128; Elasticsearch's ``bit``
  example: bytes ``[-127, 0, 1, 42, 127]`` are hex ``"8100012a7f"``).
* ``qdrant-binary``: ``v > 0``, bit ``i % 8`` of byte ``i / 8`` (LSB first), as Qdrant's
  ``encode_one_bit_vector`` stores them (``lib/quantization/src/encoded_vectors_binary.rs``).
* ``milvus-binary``: LSB first, uint8: the current Milvus user guide builds ``BINARY_VECTOR``
  bytes with ``convert_bool_list_to_bytes`` (``byte[i // 8] |= 1 << (i % 8)``); some older examples
  use ``np.packbits`` (MSB first). Milvus's HAMMING and JACCARD metrics count bits, so either order
  gives the same distances as long as corpus and queries share it: we follow the current guide, so
  queries built with its helper match codes made here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.schemes import PRESETS

__all__ = [
    "EXPORTS",
    "ExportInfo",
    "export_info",
    "is_export_preset",
    "loading_entry",
    "pgvector_copy_rows",
    "pgvector_literals",
    "to_bytes",
    "to_hex",
    "write_pgvector_copy",
]


@dataclass(frozen=True)
class ExportInfo:
    """What an export preset's codes are and how its consumer loads them."""

    preset: str
    consumer: str
    encoding: str
    load: str
    queries: str
    nan_inf: str
    source: str


_Q = "Encode queries with the same fitted quantizer (the calibration file): Quantizer.load(PATH).transform(queries)."

EXPORTS: dict[str, ExportInfo] = {
    e.preset: e
    for e in [
        ExportInfo(
            "qdrant-uint8", "Qdrant",
            "uint8 0..255 per dimension: one global range [lo, hi] at the 0.99 quantile of the corpus "
            "(cuVS's rule, seeded sample above 1e6 values), u = lroundf(255 (x - lo)/(hi - lo)) clamped.",
            """PUT /collections/docs
{"vectors": {"size": D, "distance": "Euclid", "datatype": "uint8"}}

client.upsert("docs", points=[models.PointStruct(id=i, vector=row.tolist())
                              for i, row in enumerate(np.asarray(codes))])""",
            _Q + " Use distance Euclid: one global affine map scales every L2 distance alike, so the L2 "
            "ranking is kept (for normalised embeddings that is the cosine ranking); Cosine or Dot on "
            "offset bytes is not.",
            "NaN -> 0, +Inf -> 255, -Inf -> 0 (the scalar family's rule); fitting refuses NaN.",
            "Qdrant stores uint8 vectors as given (datatype uint8); its own scalar quantization samples "
            "rows at random, so no tool reproduces that range: this preset fixes its own.",
        ),
        ExportInfo(
            "qdrant-binary", "Qdrant",
            "uint8, ceil(D/8) bytes: bit i % 8 of byte i // 8 is x[i] > 0 (LSB first).",
            """# Qdrant builds binary codes itself from the float vectors:
PUT /collections/docs
{"vectors": {"size": D, "distance": "Cosine"},
 "quantization_config": {"binary": {"always_ram": true}}}""",
            "These codes equal Qdrant's stored one-bit codes (without its zero padding up to its storage "
            "word): use them to size memory and estimate recall offline (Hamming distance on them is "
            "Qdrant's xor-popcount score). Qdrant has no API to upload packed bits.",
            "NaN -> 0 bit (NaN > 0 is false), +Inf -> 1, -Inf -> 0.",
            "qdrant lib/quantization/src/encoded_vectors_binary.rs, encode_one_bit_vector.",
        ),
        ExportInfo(
            "pgvector-bit", "pgvector",
            "bit(D): x > 0, most significant bit first (binary_quantize); uint8 codes, ceil(D/8) bytes.",
            """CREATE TABLE items (id bigint PRIMARY KEY, embedding bit(D));
from gpuquant import export                                        # Python: the COPY file
export.write_pgvector_copy("items.tsv", codes, ids=ids)            # id<TAB>0101... per row
\\copy items (id, embedding) FROM 'items.tsv'
CREATE INDEX ON items USING hnsw (embedding bit_hamming_ops);
SELECT id FROM items ORDER BY embedding <~> '0101...' LIMIT 10;""",
            "Query bits: the same preset, or binary_quantize(query::vector)::bit(D) in SQL (same bits). "
            "export.pgvector_literals(codes) (from gpuquant import export) gives the '0101...' literals.",
            "NaN -> 0 bit, +Inf -> 1, -Inf -> 0.",
            "pgvector src/vector.c binary_quantize: rx[i / 8] |= (ax[i] > 0) << (7 - (i % 8)).",
        ),
        ExportInfo(
            "pgvector-halfvec", "pgvector",
            "halfvec(D): IEEE half per value, float32 -> half round to nearest even (pgvector's "
            "Float4ToHalf); float16 codes.",
            """CREATE TABLE items (id bigint PRIMARY KEY, embedding halfvec(D));
from gpuquant import export                                        # Python: the COPY file
export.write_pgvector_copy("items.tsv", codes, ids=ids)            # id<TAB>[0.1,-0.2,...] per row
\\copy items (id, embedding) FROM 'items.tsv'
CREATE INDEX ON items USING hnsw (embedding halfvec_cosine_ops);""",
            "Queries: '[...]'::halfvec(D) of the float query (pgvector rounds it the same way).",
            "Refused (InputError naming the row): NaN, +-Inf and values that overflow half (|x| >= 65520), "
            "as halfvec input refuses them.",
            "pgvector src/halfutils.h Float4ToHalfUnchecked (round to nearest even) and halfvec_in checks.",
        ),
        ExportInfo(
            "vespa-pack-bits", "Vespa",
            "tensor<int8>(x[ceil(D/8)]): x > 0, MSB first, each byte read as int8 (0x80 = -128), as "
            "binarize | pack_bits.",
            """field binary_embedding type tensor<int8>(x[D/8]) {
    indexing: attribute | index
    attribute { distance-metric: hamming }
}
feed: {"put": "id:docs:doc::1", "fields": {"binary_embedding": {"values": codes[i].tolist()}}}""",
            "Query tensor tensor<int8>(x[D/8]) from the same preset (or let Vespa binarize | pack_bits "
            "the float query: same bytes).",
            "NaN -> 0 bit, +Inf -> 1, -Inf -> 0.",
            "Vespa docs, Binarizing vectors: [1,0,0,0,0,0,0,0] -> -128, [1,0,...,0,1] -> -127.",
        ),
        ExportInfo(
            "vespa-int8", "Vespa",
            "tensor<int8>(x[D]): q = clip(rint(x / s), -127, 127) with one scale s = max|x| / 127 fitted "
            "on the corpus (symmetric: 0 stays 0, so angular, dotproduct and euclidean rankings survive).",
            """field embedding type tensor<int8>(x[D]) {
    indexing: attribute | index
    attribute { distance-metric: angular }
}
feed: {"put": "id:docs:doc::1", "fields": {"embedding": {"values": codes[i].tolist()}}}
# tensor<bfloat16>(x[D]): use the bf16 preset instead""",
            _Q,
            "Refused (InputError naming the row): NaN or +-Inf in a row; fitting refuses them too. "
            "Values beyond the fitted range clip to +-127.",
            "Vespa stores int8 tensor cells as given; the scale rule is gpuquant's absmax family.",
        ),
        ExportInfo(
            "es-bit", "Elasticsearch / OpenSearch",
            "dense_vector element_type bit, dims = 8 * ceil(D/8): x > 0, MSB first, bytes as signed int8; "
            "the hex form is the same bytes, two hex digits each.",
            """PUT docs
{"mappings": {"properties": {"embedding": {"type": "dense_vector", "element_type": "bit", "dims": 8*ceil(D/8)}}}}
doc: {"embedding": export.to_hex(codes)[i]}    # from gpuquant import export; or codes[i].tolist() (signed bytes)
query: {"knn": {"field": "embedding", "query_vector": "<hex>", "k": 10, "num_candidates": 100}}
OpenSearch: {"type": "knn_vector", "dimension": 8*ceil(D/8), "data_type": "binary",
             "space_type": "hamming", "method": {"name": "hnsw", "engine": "faiss"}}  # signed byte lists""",
            "Query vectors from the same preset (hex or signed bytes). Pad bits past D are 0 on both sides.",
            "NaN -> 0 bit, +Inf -> 1, -Inf -> 0.",
            "Elasticsearch dense_vector docs, bit element type: [-127, 0, 1, 42, 127] is '8100012a7f'.",
        ),
        ExportInfo(
            "es-byte", "Elasticsearch / OpenSearch",
            "dense_vector element_type byte: q = clip(rint(x / s), -127, 127), one scale s = max|x| / 127 "
            "fitted on the corpus; hex form = the bytes in two's complement.",
            """PUT docs
{"mappings": {"properties": {"embedding": {"type": "dense_vector", "element_type": "byte",
                                           "dims": D, "similarity": "cosine"}}}}
doc: {"embedding": codes[i].tolist()}          # or export.to_hex(codes)[i] (from gpuquant import export)
OpenSearch: {"type": "knn_vector", "dimension": D, "data_type": "byte", "space_type": "cosinesimil"}""",
            _Q + " (dot_product needs vectors of equal length: prefer cosine or l2_norm.)",
            "Refused (InputError naming the row): NaN or +-Inf; values beyond the fitted range clip.",
            "Elasticsearch dense_vector docs: byte elements are integers -128..127 (or hex).",
        ),
        ExportInfo(
            "milvus-binary", "Milvus",
            "BINARY_VECTOR, dim = 8 * ceil(D/8) bits: x > 0, LSB first (dimension i -> bit 1 << (i % 8) "
            "of byte i // 8), uint8, one bytes object per row.",
            """schema.add_field("embedding", DataType.BINARY_VECTOR, dim=8 * ceil(D/8))
index_params.add_index("embedding", index_type="BIN_IVF_FLAT", metric_type="HAMMING", params={"nlist": 128})
# Milvus Lite (MilvusClient("docs.db")) refuses BIN_IVF_FLAT: use index_type="BIN_FLAT" there
from gpuquant import export
client.insert("docs", [{"id": i, "embedding": b} for i, b in enumerate(export.to_bytes(codes))])""",
            "Queries: bytes from the same preset. Bit order: LSB first as the Milvus user guide's "
            "convert_bool_list_to_bytes; HAMMING/JACCARD give the same distances for either order "
            "as long as corpus and queries share it.",
            "NaN -> 0 bit, +Inf -> 1, -Inf -> 0.",
            "Milvus user guide, Binary Vector: convert_bool_list_to_bytes (byte[i // 8] |= 1 << (i % 8)).",
        ),
        ExportInfo(
            "milvus-int8", "Milvus",
            "INT8_VECTOR (Milvus 2.6+): q = clip(rint(x / s), -127, 127), one scale s = max|x| / 127 "
            "fitted on the corpus.",
            """schema.add_field("embedding", DataType.INT8_VECTOR, dim=D)
index_params.add_index("embedding", index_type="HNSW", metric_type="COSINE")
client.insert("docs", [{"id": i, "embedding": row} for i, row in enumerate(np.asarray(codes))])  # np.int8 rows""",
            _Q,
            "Refused (InputError naming the row): NaN or +-Inf; values beyond the fitted range clip.",
            "Milvus INT8_VECTOR takes int8 values as given.",
        ),
        ExportInfo(
            "lancedb-binary", "LanceDB",
            "uint8 lists of ceil(D/8) bytes: np.packbits(x > 0) (MSB first).",
            """import lancedb, pyarrow as pa
schema = pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.uint8(), ceil(D/8)))])
tbl = lancedb.connect("db").create_table("docs", schema=schema,
        data=[{"id": i, "vector": row} for i, row in enumerate(np.asarray(codes))])
tbl.search(query_codes[0]).distance_type("hamming").limit(10).to_list()""",
            "Query codes from the same preset (np.packbits(q > 0)).",
            "NaN -> 0 bit, +Inf -> 1, -Inf -> 0.",
            "LanceDB docs, binary vectors: np.packbits, uint8 fixed-size lists, metric hamming.",
        ),
        ExportInfo(
            "gguf-q8_0", "GGUF (llama.cpp)",
            "Q8_0 blocks of 32 values, 34 bytes each: fp16 d = amax/127 (little-endian), then int8 "
            "roundf(x * (1/d)); codes are the raw bytes, uint8 (rows, D/32*34). D % 32 == 0.",
            """import gguf
w = gguf.GGUFWriter("model.gguf", "llama")
w.add_tensor("blk.0.ffn_down.weight", np.asarray(codes), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
# read back: t = gguf.GGUFReader("model.gguf").tensors[0]
#            from gpuquant import weights; weights.dequantize_gguf(t.data, "q8_0")""",
            "Weights: no queries. Bit for bit with llama.cpp's quantize_row_q8_0_ref and gguf.quants.quantize.",
            "Refused (InputError naming the row): NaN or +-Inf.",
            "ggml-quants.c quantize_row_q8_0_ref; gguf-py gguf/quants.py Q8_0.",
        ),
        ExportInfo(
            "gguf-q4_0", "GGUF (llama.cpp)",
            "Q4_0 blocks of 32 values, 18 bytes each: fp16 d = max/-8 (max = signed value of largest "
            "magnitude), q = min(15, (int8)(x * (1/d) + 8.5)); byte j = element j (low nibble) | "
            "element j+16 (high nibble). Codes: uint8 (rows, D/32*18). D % 32 == 0.",
            """import gguf
w = gguf.GGUFWriter("model.gguf", "llama")
w.add_tensor("blk.0.ffn_down.weight", np.asarray(codes), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
# read back: from gpuquant import weights
#            weights.dequantize_gguf(gguf.GGUFReader("model.gguf").tensors[0].data, "q4_0")""",
            "Weights: no queries. Bit for bit with llama.cpp's quantize_row_q4_0_ref and gguf.quants.quantize.",
            "Refused (InputError naming the row): NaN or +-Inf.",
            "ggml-quants.c quantize_row_q4_0_ref; gguf-py gguf/quants.py Q4_0.",
        ),
        ExportInfo(
            "safetensors-fp8", "safetensors (vLLM / compressed-tensors)",
            "F8_E4M3 weight = fp8(clip(w / s + 0, -448, 448)) (round to nearest even; -0 -> +0) and F32 "
            "weight_scale s = amax / 448 (2**-23 where that is 0), per output channel (rows, 1) or per "
            "tensor (1,) with granularity='tensor'.",
            """from gpuquant import weights
t = weights.fp8_weight_tensors("model.layers.0.mlp.down_proj", q, codes)   # .weight, .weight_scale
weights.save_safetensors("model.safetensors", t, metadata={"format": "pt"})
# config.json: "quantization_config": {"quant_method": "compressed-tensors", "format": "float-quantized",
#   "quantization_status": "compressed", "ignore": ["lm_head"],
#   "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float",
#   "strategy": "channel", "symmetric": true, "dynamic": false}}}}
# read back: tensors, meta = weights.load_safetensors("model.safetensors")
#            weights.dequantize_fp8(tensors["model.layers.0.mlp.down_proj.weight"],
#                                   tensors["model.layers.0.mlp.down_proj.weight_scale"])
# a whole checkpoint: gpuquant convert-model MODEL_DIR OUTPUT_DIR --scheme fp8""",
            "Weights: no queries. __metadata__ holds str -> str only (save_safetensors checks).",
            "Refused (InputError naming the row): NaN or +-Inf (the scale would be meaningless).",
            "compressed-tensors calculate_qparams (symmetric FP8: amax / 448, a zero scale replaced by float32 "
            "eps) and its compressor's quantize (w / s plus the zero point 0).",
        ),
    ]
}


def is_export_preset(name: str | None) -> bool:
    return name in EXPORTS


def export_info(name: str) -> ExportInfo:
    """The export information of preset ``name``; ``InputError`` listing the export presets otherwise."""
    try:
        return EXPORTS[name]
    except KeyError:
        raise InputError(f"{name!r} is not an export preset; export presets: {', '.join(EXPORTS)}") from None


def loading_entry(name: str | None, dim: int | None = None) -> dict[str, Any] | None:
    """The ``loading`` entry ``gpuquant convert`` writes into ``manifest.json`` (None if not an export preset)."""
    if not is_export_preset(name):
        return None
    info = asdict(EXPORTS[name])  # type: ignore[index]
    if dim is not None:
        info["load"] = _with_dim(info["load"], dim)
    return info


def _with_dim(text: str, dim: int) -> str:
    packed = -(-dim // 8)
    return (text.replace("8 * ceil(D/8)", str(8 * packed)).replace("8*ceil(D/8)", str(8 * packed))
            .replace("ceil(D/8)", str(packed)).replace("D/8", str(packed)).replace("(D)", f"({dim})")
            .replace("[D]", f"[{dim}]").replace('"size": D', f'"size": {dim}').replace('"dims": D', f'"dims": {dim}')
            .replace('"dimension": D', f'"dimension": {dim}').replace("dim=D", f"dim={dim}"))


def render(info: ExportInfo, dim: int | None = None) -> str:
    """The human text ``gpuquant export-info`` prints."""
    preset = PRESETS[info.preset]
    load = info.load if dim is None else _with_dim(info.load, dim)
    return "\n".join([
        f"{info.preset}: codes for {info.consumer}",
        f"scheme    family {preset.family}, {', '.join(f'{k}={v!r}' for k, v in preset.params.items())}",
        f"encoding  {info.encoding}",
        f"NaN/Inf   {info.nan_inf}",
        f"queries   {info.queries}",
        f"source    {info.source}",
        "",
        "how to load it" + ("" if dim else " (D = the number of dimensions)") + ":",
        *("  " + line for line in load.splitlines()),
    ])


# ------------------------------------------------------------------------------------------------
# helpers: codes -> what each client takes


def _array(codes: Codes | Any) -> np.ndarray:
    return np.asarray(codes.data if isinstance(codes, Codes) else codes)


def pgvector_literals(codes: Codes | Any, dim: int | None = None) -> list[str]:
    """pgvector text literals, one per row: ``'0101...'`` for ``bit`` codes (uint8, MSB first; ``dim``
    bits, taken from ``codes.dim`` when ``codes`` is a ``Codes``), ``'[v1,v2,...]'`` for ``halfvec``
    codes (float16; each value printed so that pgvector parses back exactly the same half)."""
    arr = _array(codes)
    if arr.ndim != 2:
        raise InputError(f"codes must be 2-D, got shape {arr.shape}")
    if arr.dtype == np.float16:
        if not np.isfinite(arr).all():
            raise InputError("halfvec codes hold NaN or Inf, which pgvector refuses (use the pgvector-halfvec preset)")
        return ["[" + ",".join(repr(float(v)) for v in row) + "]" for row in arr.astype(np.float64)]
    if arr.dtype != np.uint8:
        raise InputError(f"pgvector literals need uint8 bit codes or float16 halfvec codes, got {arr.dtype}")
    if dim is None:
        dim = codes.dim if isinstance(codes, Codes) else arr.shape[1] * 8
    if not 0 < dim <= arr.shape[1] * 8:
        raise InputError(f"dim={dim} does not fit codes of {arr.shape[1]} bytes")
    bits = np.unpackbits(arr, axis=1, count=dim)  # big bit order: MSB first, as bit(n)
    chars = np.where(bits.astype(bool), np.uint8(ord("1")), np.uint8(ord("0")))
    return [row.tobytes().decode("ascii") for row in chars]


def pgvector_copy_rows(
    codes: Codes | Any, *, ids: Iterable[Any] | None = None, dim: int | None = None
) -> Iterator[str]:
    """Lines of PostgreSQL ``COPY ... FROM`` text format: ``id<TAB>literal`` (or the literal alone)."""
    literals = pgvector_literals(codes, dim)
    if ids is None:
        yield from (f"{lit}\n" for lit in literals)
        return
    ids = list(ids)
    if len(ids) != len(literals):
        raise InputError(f"{len(ids)} ids for {len(literals)} rows of codes")
    for i, lit in zip(ids, literals, strict=True):
        text = str(i)
        if any(c in text for c in "\t\n\r\\"):
            raise InputError(f"id {text!r} holds a tab, newline or backslash; COPY text format would need escapes")
        yield f"{text}\t{lit}\n"


def write_pgvector_copy(
    path: str | os.PathLike[str], codes: Codes | Any, *, ids: Sequence[Any] | None = None, dim: int | None = None
) -> Path:
    """Write COPY-ready rows (see :func:`pgvector_copy_rows`) to ``path``; ``\\copy t (id, v) FROM 'path'``."""
    p = Path(path)
    with open(p, "w", encoding="utf-8", newline="") as f:
        f.writelines(pgvector_copy_rows(codes, ids=ids, dim=dim))
    return p


def to_hex(codes: Codes | Any) -> list[str]:
    """Each row's bytes as a lowercase hex string (int8 codes in two's complement): Elasticsearch /
    OpenSearch ``bit`` and ``byte`` vectors accept it in place of the byte list."""
    arr = _array(codes)
    if arr.dtype.itemsize != 1 or arr.dtype.kind not in "iu":
        raise InputError(f"hex strings need int8 or uint8 codes, got {arr.dtype}")
    return [row.tobytes().hex() for row in np.ascontiguousarray(arr).view(np.uint8)]


def to_bytes(codes: Codes | Any) -> list[bytes]:
    """Each row's bytes as a ``bytes`` object (Milvus ``BINARY_VECTOR`` insert format)."""
    arr = _array(codes)
    if arr.dtype.itemsize != 1:
        raise InputError(f"byte rows need 1-byte codes, got {arr.dtype}")
    return [row.tobytes() for row in np.ascontiguousarray(arr).view(np.uint8)]
