"""Export presets against their consumers, bit for bit: vector databases (tests/consumers.py formulas),
GGUF (the ``gguf`` package's quantizer, llama.cpp's reference in numpy), safetensors FP8 (the
``safetensors`` package reads what we write and we read what it writes). Then a round trip per
preset (export, read back, dequantize, error bound) and the NaN/Inf policy of each."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import gpuquant
from helpers import bits, edge_values, finite_edge_values, fitted, matrix, tiny_llama
from consumers import (
    compressed_tensors_fp8,
    elastic_bit_bytes,
    ggml_q4_0,
    ggml_q8_0,
    milvus_convert_bool_list_to_bytes,
    pgvector_binary_quantize,
    pgvector_float4_to_half,
    qdrant_one_bit,
    symmetric_int8,
    vespa_pack_bits,
)
from gpuquant import Codes, InputError, Quantizer, export, weights
from peers import cuvs_train, cuvs_transform

EXPORT_NAMES = ["qdrant-uint8", "qdrant-binary", "pgvector-bit", "pgvector-halfvec", "vespa-pack-bits", "vespa-int8",
                "es-bit", "es-byte", "milvus-binary", "milvus-int8", "lancedb-binary", "gguf-q8_0", "gguf-q4_0",
                "safetensors-fp8"]
BIT_SHAPES = [(1, 1), (3, 13), (7, 64), (40, 385)]


def test_every_export_preset_is_named_and_documented():
    presets = {p.name: p for p in gpuquant.presets()}
    assert [n for n, p in presets.items() if p.consumer] == EXPORT_NAMES
    assert list(export.EXPORTS) == EXPORT_NAMES
    for name in EXPORT_NAMES:
        info = export.export_info(name)
        assert info.consumer == presets[name].consumer and info.load and info.nan_inf and info.source
    with pytest.raises(InputError, match="not an export preset"):
        export.export_info("st-int8")


# -- bits --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", BIT_SHAPES)
def test_pgvector_bit_is_binary_quantize(rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    assert_array_equal(np.asarray(gpuquant.quantize(x, "pgvector-bit", backend="numpy")), pgvector_binary_quantize(x))


@pytest.mark.parametrize("shape", BIT_SHAPES)
def test_vespa_pack_bits(rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    codes = np.asarray(gpuquant.quantize(x, "vespa-pack-bits", backend="numpy"))
    assert codes.dtype == np.int8
    assert_array_equal(codes, vespa_pack_bits(x))


def test_vespa_documented_examples():
    x = np.array([[1.0] * 8, [0.0] * 8, [-1.0] * 8, [1.0] + [0.0] * 7, [2.0] + [0.0] * 6 + [1.0]], np.float32)
    codes = np.asarray(gpuquant.quantize(x, "vespa-pack-bits", backend="numpy"))
    assert_array_equal(codes[:, 0], [-1, 0, 0, -128, -127])


@pytest.mark.parametrize("shape", [(1, 8), (5, 40), (9, 384)])
def test_es_bit_and_hex(rng, shape):
    x = matrix(rng, *shape, edges=finite_edge_values())
    codes = gpuquant.quantize(x, "es-bit", backend="numpy")
    assert_array_equal(np.asarray(codes), elastic_bit_bytes(x))
    assert export.to_hex(codes) == [bytes(r.view(np.uint8)).hex() for r in elastic_bit_bytes(x)]


def test_es_documented_hex():
    assert export.to_hex(np.array([[-127, 0, 1, 42, 127]], np.int8)) == ["8100012a7f"]


@pytest.mark.parametrize("shape", BIT_SHAPES)
def test_qdrant_binary_is_qdrants_one_bit(rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    assert_array_equal(np.asarray(gpuquant.quantize(x, "qdrant-binary", backend="numpy")), qdrant_one_bit(x))


@pytest.mark.parametrize("shape", [(1, 8), (4, 128), (6, 20)])
def test_milvus_binary_is_the_user_guide_helper(rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    rows = export.to_bytes(gpuquant.quantize(x, "milvus-binary", backend="numpy"))
    pad = -shape[1] % 8
    assert rows == [milvus_convert_bool_list_to_bytes([int(v > 0) for v in r] + [0] * pad) for r in x]


@pytest.mark.parametrize("shape", BIT_SHAPES)
def test_lancedb_binary_is_packbits(rng, shape):
    x = matrix(rng, *shape, edges=edge_values())
    assert_array_equal(np.asarray(gpuquant.quantize(x, "lancedb-binary", backend="numpy")),
                       np.packbits(x > 0, axis=-1))


# -- pgvector halfvec ----------------------------------------------------------------------------------
def test_pgvector_halfvec_is_float4_to_half(rng):
    x = np.concatenate([matrix(rng, 1, 2000).reshape(-1), finite_edge_values(),
                        np.array([6e-8, 3e-8, 2.9802322e-08, 5.9604645e-08, 65504.0, 65519.0, -65519.0], np.float32)])
    x = x[np.abs(x) < 65520].reshape(1, -1)  # pgvector refuses the rest (tested below)
    codes = np.asarray(gpuquant.quantize(x, "pgvector-halfvec", backend="numpy"))
    assert_array_equal(codes.view(np.uint16)[0], [pgvector_float4_to_half(float(v)) for v in x[0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 65520.0, -1e6])
def test_pgvector_halfvec_refuses_what_halfvec_refuses(rng, bad):
    x = matrix(rng, 6, 8)
    x[4, 2] = bad
    with pytest.raises(InputError, match="^row 4 of the input holds NaN"):
        gpuquant.quantize(x, "pgvector-halfvec", backend="numpy")


def test_pgvector_literals_and_copy(tmp_path, rng):
    x = matrix(rng, 3, 13)
    bits = gpuquant.quantize(x, "pgvector-bit", backend="numpy")
    lits = export.pgvector_literals(bits)
    assert lits == ["".join("1" if v > 0 else "0" for v in row) for row in x]
    half = gpuquant.quantize(x, "pgvector-halfvec", backend="numpy")
    hl = export.pgvector_literals(half)
    parsed = np.array([[float(v) for v in s.strip("[]").split(",")] for s in hl], np.float32)
    assert_array_equal(parsed.astype(np.float16).view(np.uint16), np.asarray(half).view(np.uint16))
    path = export.write_pgvector_copy(tmp_path / "rows.tsv", bits, ids=[10, 11, 12])
    assert path.read_text().splitlines() == [f"{i}\t{s}" for i, s in zip([10, 11, 12], lits, strict=True)]
    with pytest.raises(InputError, match="2 ids for 3 rows"):
        export.write_pgvector_copy(tmp_path / "bad.tsv", bits, ids=[1, 2])


# -- int8 / uint8 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vespa-int8", "es-byte", "milvus-int8"])
def test_symmetric_int8_presets(rng, name):
    corpus = matrix(rng, 300, 48, edges=finite_edge_values()[:30])
    corpus[np.abs(corpus) > 1e30] = 3.0  # keep the corpus range sane; edges still include ties and subnormals
    q = fitted(name, corpus)
    assert_array_equal(np.asarray(q.transform(corpus)), symmetric_int8(corpus, corpus))
    queries = matrix(rng, 5, 48, scale=10)  # beyond the corpus range: clips to +-127
    assert_array_equal(np.asarray(q.transform(queries)), symmetric_int8(queries, corpus))


@pytest.mark.parametrize("shape", [(1, 7), (64, 384), (257, 37)])
def test_qdrant_uint8_is_one_global_quantile_range(rng, shape):
    x = matrix(rng, *shape, edges=finite_edge_values()[:8])
    q = fitted("qdrant-uint8", x)
    lo, hi = cuvs_train(x, 0.99)
    codes = np.asarray(q.transform(x))
    assert codes.dtype == np.uint8
    assert_array_equal(codes.astype(np.int16), cuvs_transform(x, lo, hi).astype(np.int16) + 128)


# -- GGUF --------------------------------------------------------------------------------------------
GGUF_SHAPES = [(1, 32), (3, 64), (17, 256), (64, 4096 // 8)]


def gguf_matrix(rng, n, d):
    x = (rng.standard_normal((n, d)) * np.exp(rng.uniform(-8, 8, (n, 1)))).astype(np.float32)
    flat = x.reshape(-1)
    edges = finite_edge_values()
    edges = edges[np.abs(edges) < 1e5]
    flat[rng.choice(flat.size, min(flat.size, edges.size), replace=False)] = edges[: min(flat.size, edges.size)]
    if n > 1:
        x[1, :32] = 0.0  # an all-zero block: d = 0, id = 0
        x[1, 32:64] = np.where(np.arange(32) % 2, 1.5, -1.5) if d >= 64 else x[1, 32:64]  # |max| tie: first wins
    return x


@pytest.mark.parametrize("shape", GGUF_SHAPES)
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_gguf_equals_ggml_reference_loop(rng, shape, kind):
    x = gguf_matrix(rng, *shape)[:4, :256]
    ours = np.asarray(gpuquant.quantize(x, f"gguf-{kind}", backend="numpy"))
    ref = ggml_q8_0(x) if kind == "q8_0" else ggml_q4_0(x)
    assert ours.dtype == np.uint8 and ours.shape == ref.shape
    assert_array_equal(ours, ref)


@pytest.mark.parametrize("shape", GGUF_SHAPES)
@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_gguf_equals_gguf_package(rng, shape, kind):
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
    x = gguf_matrix(rng, *shape)
    q = Quantizer(f"gguf-{kind}", backend="numpy")
    codes = q.transform(x)
    assert_array_equal(np.asarray(codes), gguf.quants.quantize(x, qtype))
    recon = q.inverse_transform(codes)
    assert_array_equal(recon.view(np.uint32), gguf.quants.dequantize(np.asarray(codes), qtype).view(np.uint32))


def test_gguf_q8_0_uses_x_times_inverse_not_division():
    # llama.cpp computes q = roundf(x * id) with id = 1/d in float32, not roundf(x / d): find values where
    # the two round differently and check that the codes follow x * (1/d), as the gguf package does
    from gpuquant.schemes.gguf import roundf

    f32 = np.float32
    d = f32(f32(1.0) / f32(127))  # the block's amax is 1.0
    inv = f32(f32(1) / d)
    found = []
    for k in range(127):
        centre = f32((k + 0.5) * float(d))
        for step in range(-40, 41):
            x = np.nextafter(centre, f32(np.inf) if step > 0 else f32(-np.inf), dtype=f32) if step else centre
            for _ in range(abs(step) - 1):
                x = np.nextafter(x, f32(np.inf) if step > 0 else f32(-np.inf), dtype=f32)
            a, b = roundf(np.array([x * inv], f32)), roundf(np.array([x / d], f32))
            if a[0] != b[0] and abs(x) < 1:
                found.append((x, a[0]))
        if len(found) >= 3:
            break
    if not found:
        pytest.skip("no value found where x * (1/d) and x / d round differently")
    block = np.zeros((1, 32), f32)
    block[0, 0] = 1.0
    block[0, 1 : 1 + len(found[:3])] = [x for x, _ in found[:3]]
    codes = np.asarray(gpuquant.quantize(block, "gguf-q8_0", backend="numpy"))
    assert list(codes[0, 3 : 3 + len(found[:3])].view(np.int8)) == [int(a) for _, a in found[:3]]
    assert_array_equal(codes, ggml_q8_0(block))


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_gguf_file_round_trip(rng, tmp_path, kind):
    gguf = pytest.importorskip("gguf")
    qtype = getattr(gguf.GGMLQuantizationType, kind.upper())
    x = (rng.standard_normal((24, 96)) * 0.05).astype(np.float32)
    codes = gpuquant.quantize(x, f"gguf-{kind}", backend="numpy")
    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.ffn_down.weight", np.asarray(codes), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = gguf.GGUFReader(str(path)).tensors[0]
    assert t.tensor_type == qtype
    assert_array_equal(np.asarray(t.data).reshape(np.asarray(codes).shape), np.asarray(codes))
    recon = weights.dequantize_gguf(t.data, kind)
    assert_array_equal(recon, gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(recon.shape))
    blocks = x.reshape(24, 3, 32)
    amax = np.abs(blocks).max(axis=2, keepdims=True)
    step = amax / (127 if kind == "q8_0" else 8)
    err = np.abs(recon.reshape(24, 3, 32) - blocks)
    # half a step (Q8_0) or one step (Q4_0: the top level clips at 15), plus d's fp16 rounding (2**-11 of amax)
    assert (err <= step * (0.5 if kind == "q8_0" else 1.0) + amax * 2.0**-10).all()


@pytest.mark.parametrize("d", [31, 48, 100])
def test_gguf_needs_multiple_of_32(rng, d):
    with pytest.raises(InputError, match="multiple of 32"):
        gpuquant.quantize(matrix(rng, 2, d), "gguf-q8_0", backend="numpy")


# -- safetensors FP8 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_fp8_equals_compressed_tensors(rng, granularity):
    w = matrix(rng, 64, 96, edges=finite_edge_values()[:40])
    w[np.abs(w) > 1e30] = 1.0
    w[5] = 0.0  # an all-zero channel: scale = float32 eps
    w[6] *= np.float32(1e-36)  # a tiny channel: a positive scale below float32 eps, kept as it is
    q = fitted("safetensors-fp8", w, granularity=granularity)
    codes = q.transform(w)
    ref_q, ref_s = compressed_tensors_fp8(w, per_channel=granularity == "channel")
    assert_array_equal(np.asarray(codes).view(np.uint8), ref_q.view(np.uint8))
    scale = codes.side["weight_scale"] if granularity == "channel" else q.state["weight_scale"]
    assert_array_equal(bits(scale), bits(ref_s))


@pytest.mark.models
@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_fp8_equals_compressed_tensors_itself(rng, granularity):
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    w = matrix(rng, 64, 96, edges=finite_edge_values())
    w[np.abs(w) > 1e30] = 1.0
    w[5], w[7, :9] = 0.0, -0.0
    w[6] *= np.float32(1e-36)
    q = fitted("safetensors-fp8", w, granularity=granularity)
    codes = q.transform(w)
    args = QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy=granularity, dynamic=False)
    x = torch.from_numpy(w)
    lo, hi = (x.amin(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)) if granularity == "channel" else (
        x.amin().reshape(1), x.amax().reshape(1))
    s, zp = calculate_qparams(lo, hi, args)
    want = BaseCompressor.get_value_from_registry("float-quantized").compress(
        {"weight": x, "weight_scale": s, "weight_zero_point": zp}, QuantizationScheme(targets=["Linear"], weights=args))
    assert_array_equal(bits(codes), want["weight"].view(torch.uint8).numpy())
    scale = codes.side["weight_scale"] if granularity == "channel" else q.state["weight_scale"]
    assert_array_equal(bits(scale).ravel(), bits(want["weight_scale"].numpy()).ravel())


@pytest.mark.parametrize("granularity", ["channel", "tensor"])
def test_safetensors_fp8_round_trip(rng, tmp_path, granularity):
    w = (rng.standard_normal((32, 80)) * 0.02).astype(np.float32)
    q = fitted("safetensors-fp8", w, granularity=granularity)
    codes = q.transform(w)
    tensors = weights.fp8_weight_tensors("model.layers.0.mlp.down_proj", q, codes)
    path = weights.save_safetensors(tmp_path / "m.safetensors", tensors, metadata={"format": "pt", "by": "gpuquant"})
    back, meta = weights.load_safetensors(path)
    assert meta == {"format": "pt", "by": "gpuquant"}
    wq, ws = back["model.layers.0.mlp.down_proj.weight"], back["model.layers.0.mlp.down_proj.weight_scale"]
    assert wq.dtype == ml_dtypes.float8_e4m3fn and ws.dtype == np.float32
    assert ws.shape == ((32, 1) if granularity == "channel" else (1,))
    recon = weights.dequantize_fp8(wq, ws)
    assert_array_equal(recon, q.inverse_transform(codes))
    s = ws.reshape(-1, 1) if granularity == "channel" else ws.reshape(1, 1)
    assert (np.abs(recon - w) <= np.maximum(np.abs(w) * 2.0**-4, s * 2.0**-9) * 1.0001).all()


def test_safetensors_package_agrees(rng, tmp_path):
    st = pytest.importorskip("safetensors")
    w = (rng.standard_normal((8, 40)) * 0.1).astype(np.float32)
    codes = gpuquant.quantize(w, "safetensors-fp8", backend="numpy")
    path = weights.save_safetensors(tmp_path / "ours.safetensors",
                                    {"l.weight": np.asarray(codes), "l.weight_scale": codes.side["weight_scale"]},
                                    metadata={"format": "pt"})
    parsed = dict(st.deserialize(path.read_bytes()))  # the reference parser validates header and offsets
    assert parsed["l.weight"]["dtype"] == "F8_E4M3" and parsed["l.weight"]["shape"] == [8, 40]
    assert bytes(parsed["l.weight"]["data"]) == np.asarray(codes).tobytes()
    assert parsed["l.weight_scale"]["dtype"] == "F32"
    with st.safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    # and we read what the package writes
    raw = np.asarray(codes)
    scale = np.ascontiguousarray(codes.side["weight_scale"])
    blob = st.serialize({
        "l.weight": st.TensorSpec(dtype="float8_e4m3fn", shape=list(raw.shape), data_ptr=raw.ctypes.data,
                                  data_len=raw.nbytes),
        "l.weight_scale": st.TensorSpec(dtype="float32", shape=list(scale.shape), data_ptr=scale.ctypes.data,
                                        data_len=scale.nbytes),
    }, metadata={"k": "v"})
    (tmp_path / "theirs.safetensors").write_bytes(bytes(blob))
    back, meta = weights.load_safetensors(tmp_path / "theirs.safetensors")
    assert meta == {"k": "v"}
    assert_array_equal(back["l.weight"].view(np.uint8), raw.view(np.uint8))
    assert_array_equal(back["l.weight_scale"], scale)


def test_safetensors_metadata_is_str_to_str(tmp_path):
    with pytest.raises(InputError, match="str to str"):
        weights.save_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.float32)}, metadata={"n": 3})


def test_safetensors_reader_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.safetensors"
    p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        weights.load_safetensors(p)
    header = json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    p.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(InputError, match="do not match"):
        weights.load_safetensors(p)


# -- round trip per preset: export, read back, dequantize, error bound -------------------------------------
def _exported_and_back(name: str, codes: Codes) -> np.ndarray:
    """Codes through their consumer's wire form and back to a code array."""
    arr = np.asarray(codes)
    if name in ("pgvector-bit",):
        bits = np.array([[c == "1" for c in s] for s in export.pgvector_literals(codes)])
        return np.packbits(bits, axis=1)
    if name == "pgvector-halfvec":
        return np.array([[float(v) for v in s.strip("[]").split(",")] for s in export.pgvector_literals(codes)],
                        np.float32).astype(np.float16)
    if name in ("es-bit", "es-byte"):
        return np.array([np.frombuffer(bytes.fromhex(h), np.int8) for h in export.to_hex(codes)])
    if name == "milvus-binary":
        return np.array([np.frombuffer(b, np.uint8) for b in export.to_bytes(codes)])
    return np.array(json.loads(json.dumps(arr.tolist())), dtype=arr.dtype)  # JSON lists (Qdrant, Vespa, ...)


@pytest.mark.parametrize("name", [n for n in EXPORT_NAMES if not n.startswith(("gguf", "safetensors"))])
def test_round_trip_through_the_wire_form(rng, name):
    corpus = matrix(rng, 200, 64)
    q = fitted(name, corpus)
    codes = q.transform(corpus)
    back = _exported_and_back(name, codes)
    assert back.dtype == np.asarray(codes).dtype and back.shape == np.asarray(codes).shape
    assert back.tobytes() == np.asarray(codes).tobytes()
    recon = q.inverse_transform(Codes(back, {}, name, 64))
    if q.family == "binary":
        assert_array_equal(recon, np.where(corpus > 0, 1.0, -1.0).astype(np.float32))
    elif q.family == "float":
        assert (np.abs(recon - corpus) <= np.abs(corpus) * 2.0**-11 + 2.0**-25).all()
    elif q.family == "absmax":
        assert (np.abs(recon - corpus) <= q.state["scales"][0] * 0.5001).all()
    else:  # qdrant-uint8: half a step inside the range, clipped outside
        lo, hi = q.state["lo"][0], q.state["hi"][0]
        inside = (corpus >= lo) & (corpus <= hi)
        step = (hi - lo) / 255
        assert (np.abs(recon - corpus)[inside] <= step * 0.5001 + 1e-6).all()
        assert (recon[~inside] >= lo - step) .all() and (recon[~inside] <= hi + step).all()


# -- NaN / Inf policy per preset ---------------------------------------------------------------------------
NAN_POLICY = {
    # the first code byte of the row [nan, +inf, -inf, 1.0, 0, ...] (bits: 0 1 0 1 0 0 0 0), or "refuse"
    "qdrant-binary": 0b00001010,  # LSB first
    "milvus-binary": 0b00001010,
    "pgvector-bit": 0b01010000,  # MSB first
    "lancedb-binary": 0b01010000,
    "vespa-pack-bits": 0b01010000,  # the same byte, read as int8 (80)
    "es-bit": 0b01010000,
    "qdrant-uint8": "levels",  # NaN -> 0, +inf -> 255, -inf -> 0
    "pgvector-halfvec": "refuse",
    "vespa-int8": "refuse",
    "es-byte": "refuse",
    "milvus-int8": "refuse",
    "gguf-q8_0": "refuse",
    "gguf-q4_0": "refuse",
    "safetensors-fp8": "refuse",
}


@pytest.mark.parametrize("name", EXPORT_NAMES)
def test_nan_inf_policy(rng, name):
    corpus = matrix(rng, 50, 32)
    q = fitted(name, corpus)
    row = np.zeros((1, 32), np.float32)
    row[0, :4] = [np.nan, np.inf, -np.inf, 1.0]
    policy = NAN_POLICY[name]
    if policy == "refuse":
        with pytest.raises(InputError, match="row 0"):
            q.transform(row)
        return
    codes = np.asarray(q.transform(row)).view(np.uint8)
    if policy == "levels":
        assert list(codes[0, :3]) == [0, 255, 0]
    else:
        assert codes[0, 0] == policy


# -- the GPU gate --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", EXPORT_NAMES)
def test_gpu_support_is_declared(name):
    from gpuquant.backends import supports
    from gpuquant.schemes import make_scheme

    scheme = make_scheme(name)
    assert supports("numpy", scheme)[0]
    ok, why = supports("cupy", scheme)
    if "cannot import" in why:
        pytest.skip(why)
    assert ok, why  # every export format has GPU kernels (gguf and scaled_fp8: kernels/weights.cu)


def test_explicit_gpu_backend_refuses_an_unsupported_scheme(monkeypatch):
    from gpuquant import backends
    from gpuquant.backends import cupy_launch
    from gpuquant.errors import BackendUnavailableError

    monkeypatch.setattr(backends.registry, "availability", lambda name: (True, "pretend"))
    monkeypatch.setattr(backends.registry, "resolve", lambda name: object())
    monkeypatch.delitem(cupy_launch.LAUNCHERS, ("gguf", "encode"))  # as a family without GPU kernels
    assert not backends.supports("cupy", gpuquant.schemes.make_scheme("gguf-q8_0"))[0]
    with pytest.raises(BackendUnavailableError, match="cannot run this scheme"):
        Quantizer("gguf-q8_0", backend="cupy").backend  # noqa: B018 - the property resolves


# -- the loading texts themselves ------------------------------------------------------------------------
def _texts():
    return [(e.preset, text) for e in export.EXPORTS.values() for text in (e.load, e.queries)]


def test_texts_call_only_what_import_gpuquant_reaches():
    import re
    import subprocess
    import sys

    calls = sorted({m for _, t in _texts() for m in re.findall(r"\bgpuquant(?:\.\w+)+", t)})
    imported = sorted({(m, n) for _, t in _texts() for m, n in re.findall(r"from gpuquant import (\w+).*?\b\1\.(\w+)\(",
                                                                           t, re.S)})
    assert {m for m, _ in imported} == {"export", "weights"}  # every helper the texts call, imported first
    probe = "import gpuquant\n" + "".join(f"{c}\n" for c in calls) + "".join(
        f"from gpuquant import {m}\n{m}.{n}\n" for m, n in imported)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_milvus_text_names_the_index_milvus_lite_takes():
    assert 'index_type="BIN_FLAT"' in export.EXPORTS["milvus-binary"].load


def test_faiss_qt_fp16_rounds_ties_away_from_zero_unlike_fp16():
    """The README's fp16 row says so: the fp16 preset rounds ties to even, FAISS's QT_fp16 away from zero."""
    faiss = pytest.importorskip("faiss")
    ties = np.array([[1 + 2.0**-11, 1 + 3 * 2.0**-11, -(1 + 2.0**-11), 2049.0, 0.1, -3.3]], np.float32)
    sq = faiss.ScalarQuantizer(ties.shape[1], faiss.ScalarQuantizer.QT_fp16)
    sq.train(ties)
    theirs = sq.compute_codes(ties).view(np.float16)
    ours = np.asarray(Quantizer("fp16").transform(ties))
    assert_array_equal(ours.view(np.uint16), ties.astype(np.float16).view(np.uint16))
    away = np.array([[1 + 2.0**-10, 1 + 2.0**-9, -(1 + 2.0**-10), 2050.0, 0.1, -3.3]], np.float16)
    assert_array_equal(theirs.view(np.uint16), away.view(np.uint16))
    assert (ours.view(np.uint16) != theirs.view(np.uint16)).tolist() == [[True, False, True, True, False, False]]


def _fp8_text_config() -> dict:
    """The quantization_config that export-info safetensors-fp8 prints, parsed from its text."""
    import itertools

    lines = export.EXPORTS["safetensors-fp8"].load.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# config.json:"))
    rest = itertools.takewhile(lambda line: line.startswith("#   "), lines[start + 1:])
    body = [lines[start].split(":", 1)[1]] + [line[1:] for line in rest]
    return json.loads("{" + " ".join(body) + "}")["quantization_config"]


@pytest.mark.models
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
def test_safetensors_fp8_text_loads_into_transformers(tmp_path):
    torch, transformers, model = tiny_llama(1, 128, 1)
    q = Quantizer("safetensors-fp8")
    tensors, want = {}, {}
    for name, value in model.state_dict().items():
        w = value.numpy()
        if name.endswith("proj.weight"):
            prefix = name[: -len(".weight")]
            tensors.update(weights.fp8_weight_tensors(prefix, q, q.transform(w)))
            want[name] = weights.dequantize_fp8(tensors[f"{prefix}.weight"], tensors[f"{prefix}.weight_scale"])
        else:
            tensors[name] = w
    (tmp_path / "m").mkdir()
    weights.save_safetensors(tmp_path / "m" / "model.safetensors", tensors, metadata={"format": "pt"})
    config = {**model.config.to_dict(), "quantization_config": _fp8_text_config()}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    state = loaded.state_dict()
    assert len(want) == 7
    for name, w in want.items():  # without quantization_status the fp8 values load as weights, unscaled
        fp8 = state[name]
        assert fp8.dtype == torch.float8_e4m3fn, name
        got = weights.dequantize_fp8(fp8.view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn),
                                     state[f"{name}_scale"].numpy())
        assert_array_equal(got.view(np.uint32), w.view(np.uint32), err_msg=name)
    ours = transformers.LlamaForCausalLM(model.config).eval()
    ours.load_state_dict({**model.state_dict(), **{k: torch.from_numpy(v) for k, v in want.items()}})
    ids = torch.arange(1, 17).reshape(1, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, ours(ids).logits, rtol=1e-5, atol=1e-6)
    # the text's read-back lines run as printed
    lines = [line[1:].split("read back:")[-1].strip() for line in export.EXPORTS["safetensors-fp8"].load.splitlines()
             if "read back:" in line or line.startswith("#            ") or line.startswith("#                   ")]
    scope = {"weights": weights}
    exec(lines[0].replace("model.safetensors", str(tmp_path / "m" / "model.safetensors")), scope)  # noqa: S102
    back = eval(" ".join(lines[1:]), scope)  # noqa: S307
    assert_array_equal(back, want["model.layers.0.mlp.down_proj.weight"])
