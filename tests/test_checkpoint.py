"""``gpuquant convert-model``: the math against compressed-tensors' compressors, the checkpoint it
writes (shards, config, copies, resume), and a tiny Llama loaded back with transformers."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helpers import assert_bit_equal, bits, cli_json, cli_run, cupy_usable, tiny_llama

import gpuquant
from gpuquant.checkpoint import SCHEMES, convert_model, dequantize, pack_int32, quantize, unpack_int32
from gpuquant.checkpoint import run as crun
from gpuquant.checkpoint.quant import device_quantize, weight_quantizer
from gpuquant.errors import InputError
from gpuquant.weights import load_safetensors, save_safetensors


def weights(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """float32 weights over many magnitudes, with a zero row, -0 and subnormal values."""
    w = (rng.standard_normal((rows, cols)) * np.exp(rng.uniform(-9, 3, (rows, 1)))).astype(np.float32)
    w[1] = 0
    w[2, :5] = -0.0
    w[3, :4] = [1e-40, -1e-45, 3e-39, -1e-30]
    w[3, 4:] = 0
    return w


# ------------------------------------------------------------------------------------------------
# the math, numpy only


def test_pack_int32_layout_and_round_trip(rng: np.random.Generator) -> None:
    q = rng.integers(-8, 8, (5, 64)).astype(np.int8)
    p = pack_int32(q)
    assert p.dtype == np.int32 and p.shape == (5, 8)
    word = int(p[2, 3].view(np.uint32))
    assert [(word >> (4 * k)) & 15 for k in range(8)] == [int(v) + 8 for v in q[2, 24:32]]
    np.testing.assert_array_equal(unpack_int32(p, 64), q)
    with pytest.raises(InputError, match="cannot pack 12 columns"):
        pack_int32(q[:, :12])


@pytest.mark.parametrize("name", list(SCHEMES))
def test_quantize_reference(rng: np.random.Generator, name: str) -> None:
    scheme = SCHEMES[name]
    w = weights(rng, 7, 256)
    q, s = quantize(w, scheme)
    g = scheme.group or 256
    amax = np.abs(w.reshape(7, -1, g)).max(axis=2)
    want_s = (amax / np.float32(scheme.half)).astype(np.float32)
    want_s[want_s == 0] = np.float32(2.0**-23)
    np.testing.assert_array_equal(bits(s), bits(want_s))
    assert (bits(q[1]) == 0).all() and (bits(q[2, :5]) == 0).all()  # zero rows and -0 give +0 codes
    x = np.asarray(q, np.float32)
    assert x.min() >= scheme.lo and x.max() <= scheme.hi
    err = np.abs(dequantize(q, s) - w)
    step = np.repeat(want_s, g, axis=1)  # each value's scale
    if scheme.type == "int":  # half a step (the clipped end of int8 too), plus the float32 rounding of s
        assert (err <= step * 0.5 + np.abs(w) * 2.0**-22).all()
    else:  # fp8 e4m3: 3 mantissa bits, subnormal spacing 2**-9 of the scale
        assert (err <= np.abs(w) * 2.0**-4 * (1 + 1e-6) + step * 2.0**-10).all()
    w[4, 9] = np.nan
    with pytest.raises(InputError, match="row 14 holds NaN"):
        quantize(w, scheme, first_row=10)


# ------------------------------------------------------------------------------------------------
# checkpoints written without torch


def fake_checkpoint(root: Path, rng: np.random.Generator, *, sharded: bool = True) -> dict[str, np.ndarray]:
    """A Llama-shaped checkpoint in bfloat16: two shards with an index (or one file), a tokenizer."""
    root.mkdir()
    bf16 = ml_dtypes.bfloat16
    t = {
        "model.embed_tokens.weight": rng.standard_normal((50, 256)).astype(bf16),
        "model.layers.0.self_attn.q_proj.weight": weights(rng, 256, 256).astype(bf16),
        "model.layers.0.self_attn.q_proj.bias": rng.standard_normal(256).astype(bf16),
        "model.layers.0.mlp.down_proj.weight": weights(rng, 256, 384).astype(bf16),
        "model.layers.0.input_layernorm.weight": np.ones(256, bf16),
        "model.layers.0.mlp.odd_proj.weight": weights(rng, 64, 200).astype(bf16),
        "lm_head.weight": rng.standard_normal((50, 256)).astype(bf16),
    }
    names = sorted(t)
    files = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    if not sharded:
        files = {"model.safetensors": names}
    for f, ns in files.items():
        save_safetensors(root / f, {n: t[n] for n in ns}, metadata={"format": "pt"})
    if sharded:
        index = {"metadata": {"total_size": 1}, "weight_map": {n: f for f, ns in files.items() for n in ns}}
        (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 256}))
    (root / "tokenizer.json").write_text('{"tok": 1}')
    (root / "pytorch_model.bin").write_bytes(b"the same weights, another format")
    (root / "original").mkdir()
    (root / "original" / "params.json").write_text("{}")
    (root / "original" / "consolidated.00.pth").write_bytes(b"weights")
    return t


def read_all(root: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(root.glob("*.safetensors")):
        out.update(load_safetensors(f)[0])
    return out


@pytest.mark.parametrize("name", list(SCHEMES))
def test_convert_model_writes_the_compressed_checkpoint(tmp_path: Path, rng: np.random.Generator, name: str) -> None:
    t = fake_checkpoint(tmp_path / "m", rng)
    rep = convert_model(tmp_path / "m", tmp_path / "q", name)
    got = read_all(tmp_path / "q")
    scheme = SCHEMES[name]
    quantized = ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj"]
    if scheme.group is None:
        quantized.append("model.layers.0.mlp.odd_proj")
    for module in quantized:
        w = np.asarray(t[f"{module}.weight"], np.float32)
        q, s = quantize(w, scheme)
        np.testing.assert_array_equal(bits(got[f"{module}.weight_scale"]), bits(s))
        if scheme.bits == 4:
            np.testing.assert_array_equal(got[f"{module}.weight_packed"], pack_int32(q))
            np.testing.assert_array_equal(got[f"{module}.weight_shape"], w.shape)
        else:
            np.testing.assert_array_equal(bits(got[f"{module}.weight"]), bits(q))
    kept = [n for n in t if not any(n == f"{m}.weight" for m in quantized)]
    for n in kept:
        assert got[n].dtype == t[n].dtype and got[n].tobytes() == t[n].tobytes(), n
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["quantization_status"] == "compressed" and cfg["format"] == scheme.format
    assert cfg["config_groups"]["group_0"]["weights"]["strategy"] == scheme.strategy
    want_ignore = ["lm_head", "model.embed_tokens"] + ([] if scheme.group is None else ["model.layers.0.mlp.odd_proj"])
    assert cfg["ignore"] == sorted(want_ignore)
    index = json.loads((tmp_path / "q" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(got)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in got.values())
    assert (tmp_path / "q" / "tokenizer.json").read_text() == '{"tok": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "q"]
    assert rep["quantized"] == len(quantized) and rep["bytes_after"] < rep["bytes_before"]
    assert rep["worst"]["rel_error"] == max(r["rel_error"] for r in rep["layers"])


def test_targets_ignore_and_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    rng: np.random.Generator) -> None:
    fake_checkpoint(tmp_path / "m", rng, sharded=False)
    code, doc = cli_json(capsys, "convert-model", tmp_path / "m", tmp_path / "q", "--scheme", "w8a16",
                         "--targets", r"mlp\.", "--ignore", "odd")
    assert code == 0 and [r["name"] for r in doc["layers"]] == ["model.layers.0.mlp.down_proj.weight"]
    reasons = {s["name"]: s["reason"] for s in doc["skipped"]}
    assert reasons["model.layers.0.self_attn.q_proj.weight"] == "not in --targets"
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["config.json", "model.safetensors", "original",
                                                                  "tokenizer.json"]
    assert [p.name for p in (tmp_path / "q" / "original").iterdir()] == ["params.json"]
    code, out, err = cli_run(capsys, "convert-model", tmp_path / "m", tmp_path / "q", "--scheme", "fp8")
    assert code == 2 and "output exists" in err
    code, out, err = cli_run(capsys, "convert-model", tmp_path / "m", tmp_path / "q2", "--scheme", "w4a16")
    assert code == 0 and "vllm serve" in out and "largest relative weight error" in out
    code, doc = cli_json(capsys, "convert-model", tmp_path / "q2", tmp_path / "q3", "--scheme", "fp8")
    assert code == 2 and "already quantized" in doc["error"]["message"]
    code, doc = cli_json(capsys, "convert-model", tmp_path / "m", tmp_path / "q4", "--scheme", "fp8", "--ignore", "(")
    assert code == 2 and "not a valid regular expression" in doc["error"]["message"]
    code, doc = cli_json(capsys, "convert-model", tmp_path / "m", tmp_path / "new" / "q5", "--scheme", "fp8")
    assert code == 0 and (tmp_path / "new" / "q5" / "model.safetensors").is_file()


def test_an_interrupted_conversion_resumes_tensor_by_tensor(tmp_path: Path, rng: np.random.Generator,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake_checkpoint(tmp_path / "m", rng)
    convert_model(tmp_path / "m", tmp_path / "ref", "w4a16")
    real, calls = crun.encode, []

    def crash_on_second(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(crun, "encode", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        convert_model(tmp_path / "m", tmp_path / "q", "w4a16")
    assert not (tmp_path / "q").exists() and (tmp_path / ".q.partial").is_dir()
    with pytest.raises(InputError, match="unfinished conversion: run the same command with --resume"):
        convert_model(tmp_path / "m", tmp_path / "q", "w4a16")
    with pytest.raises(InputError, match="--resume refused: scheme changed"):
        convert_model(tmp_path / "m", tmp_path / "q", "fp8", resume=True)
    calls.clear()
    rep = convert_model(tmp_path / "m", tmp_path / "q", "w4a16", resume=True)
    assert len(calls) == 1  # the first tensor was not quantized again
    assert rep["quantized"] == 2
    for f in sorted((tmp_path / "ref").rglob("*")):
        if f.is_file():
            assert (tmp_path / "q" / f.relative_to(tmp_path / "ref")).read_bytes() == f.read_bytes(), f.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "q", "ref"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fp8_scheme_gives_the_safetensors_fp8_preset_bytes(rng: np.random.Generator, dtype: str) -> None:
    w = weights(rng, 67, 384).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32).astype(np.float32)
    q, s = quantize(w, SCHEMES["fp8"])
    codes = gpuquant.quantize(w, "safetensors-fp8", backend="numpy")
    np.testing.assert_array_equal(bits(codes), bits(q))
    np.testing.assert_array_equal(bits(codes.side["weight_scale"]), bits(s))
    assert bits(q)[2, :5].tolist() == [0] * 5  # -0 weights: +0 codes
    assert 0 < s[3, 0] < np.finfo(np.float32).eps  # a tiny positive scale is kept, only 0 becomes eps
    assert s[1, 0] == np.finfo(np.float32).eps


def test_nan_weight_is_refused_naming_tensor_and_row(tmp_path: Path, rng: np.random.Generator) -> None:
    fake_checkpoint(tmp_path / "m", rng, sharded=False)
    w = np.ones((4, 256), np.float32)
    w[2, 3] = np.inf
    save_safetensors(tmp_path / "m" / "model.safetensors", {"model.layers.1.mlp.up_proj.weight": w})
    with pytest.raises(InputError, match=r"tensor 'model.layers.1.mlp.up_proj.weight': row 2 holds NaN or \+-Inf"):
        convert_model(tmp_path / "m", tmp_path / "q", "fp8")
    assert not (tmp_path / "q").exists()


# ------------------------------------------------------------------------------------------------
# the device: --device auto | cpu | gpu


def test_int_schemes_stay_on_numpy_and_auto_picks_numpy_without_a_gpu(tmp_path: Path, rng: np.random.Generator,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("w8a16", "w4a16"):
        assert weight_quantizer(SCHEMES[name], "auto") is None and weight_quantizer(SCHEMES[name], "cpu") is None
    assert weight_quantizer(SCHEMES["fp8"], "cpu") is None
    with pytest.raises(InputError, match="device must be one of"):
        weight_quantizer(SCHEMES["fp8"], "tpu")
    fake_checkpoint(tmp_path / "m", rng, sharded=False)
    code, doc = cli_json(capsys, "convert-model", tmp_path / "m", tmp_path / "q", "--scheme", "w8a16", "--device", "gpu")
    assert code == 1 and doc["error"]["type"] == "BackendUnavailableError"
    assert "--scheme w8a16 has no GPU path" in doc["error"]["message"] and not (tmp_path / "q").exists()
    if cupy_usable()[0]:
        return  # with a GPU, auto takes it: test_fp8_on_the_gpu_writes_the_cpu_bytes
    assert weight_quantizer(SCHEMES["fp8"], "auto") is None
    code, doc = cli_json(capsys, "convert-model", tmp_path / "m", tmp_path / "q", "--scheme", "fp8", "--device", "gpu")
    assert code == 1 and doc["error"]["type"] == "BackendUnavailableError"
    assert "backend 'cupy' cannot run here" in doc["error"]["message"] and not (tmp_path / "q").exists()
    assert cli_json(capsys, "convert-model", tmp_path / "m", tmp_path / "q", "--scheme", "fp8", "--device", "auto")[0] == 0


@pytest.mark.parametrize("device", ["auto", "gpu"])
def test_fp8_on_the_gpu_writes_the_cpu_bytes(gpu: None, tmp_path: Path, rng: np.random.Generator, device: str) -> None:
    q = weight_quantizer(SCHEMES["fp8"], device)
    assert q is not None and q.backend_name == "cupy"
    for rows, cols in ((67, 384), (1, 37), (5, 1), (300, 129)):
        w = weights(rng, max(rows, 4), cols)[:rows]
        assert_bit_equal(device_quantize(w, q, 7), quantize(w, SCHEMES["fp8"], 7), f"{rows}x{cols}")
    w = weights(rng, 9, 64)
    w[5, 3] = np.nan
    with pytest.raises(InputError, match=r"^row 12 holds NaN or \+-Inf: it has no scale$"):
        device_quantize(w, q, 7)
    fake_checkpoint(tmp_path / "m", rng)
    convert_model(tmp_path / "m", tmp_path / "cpu", "fp8", device="cpu")
    convert_model(tmp_path / "m", tmp_path / "dev", "fp8", device=device)
    for f in sorted((tmp_path / "cpu").rglob("*")):
        if f.is_file():
            assert (tmp_path / "dev" / f.relative_to(tmp_path / "cpu")).read_bytes() == f.read_bytes(), f.name


# ------------------------------------------------------------------------------------------------
# the peers themselves: compressed-tensors' compressors and transformers (extra `models`)


def _torch_bytes(t) -> bytes:  # type: ignore[no-untyped-def]
    import torch

    t = t.contiguous()
    return (t.view(torch.uint8) if t.dtype.itemsize == 1 else t).numpy().tobytes()


@pytest.mark.models
@pytest.mark.parametrize("name", list(SCHEMES))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bytes_equal_compressed_tensors_compressors(rng: np.random.Generator, name: str, dtype: str) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    scheme = SCHEMES[name]
    w = weights(rng, 67, 384).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32).astype(np.float32)
    args = QuantizationArgs(**scheme.args())
    x = torch.from_numpy(w)
    grouped = x.reshape(x.shape[0], -1, scheme.group or x.shape[1])
    s, zp = calculate_qparams(grouped.amin(dim=2), grouped.amax(dim=2), args)
    want = BaseCompressor.get_value_from_registry(scheme.format).compress(
        {"weight": x, "weight_scale": s, "weight_zero_point": zp}, QuantizationScheme(targets=["Linear"], weights=args))
    q, s_ours = quantize(w, scheme)
    got = {"weight_scale": s_ours, **({"weight_packed": pack_int32(q), "weight_shape": np.array(w.shape)}
                                       if scheme.bits == 4 else {"weight": q})}
    assert set(want) == set(got)
    for k in got:
        assert _torch_bytes(want[k]) == np.ascontiguousarray(got[k]).tobytes(), k
    if name == "fp8":  # the safetensors-fp8 preset shares the formula: the same bytes
        codes = gpuquant.quantize(w, "safetensors-fp8", backend="numpy")
        assert _torch_bytes(want["weight"]) == np.asarray(codes).tobytes()
        assert _torch_bytes(want["weight_scale"]) == codes.side["weight_scale"].tobytes()


@pytest.mark.models
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("name", list(SCHEMES))
def test_tiny_llama_loads_with_transformers(tmp_path: Path, name: str) -> None:
    torch, transformers, model = tiny_llama(0, 256, 2)
    model.save_pretrained(tmp_path / "m", max_shard_size="600KB")
    convert_model(tmp_path / "m", tmp_path / "q", name)
    ids = torch.arange(1, 33).reshape(2, 16)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "q", quantization_config=transformers.CompressedTensorsConfig(dequantize=True)).eval()
    state = plain.state_dict()
    n_linear = 0
    for key, value in model.state_dict().items():
        w = value.numpy()
        if key.endswith("proj.weight"):
            q, s = quantize(w, SCHEMES[name])
            np.testing.assert_array_equal(bits(state[key].numpy()), bits(dequantize(q, s)), err_msg=key)
            n_linear += 1
        else:
            np.testing.assert_array_equal(bits(state[key].numpy()), bits(w), err_msg=key)
    assert n_linear == 14
    with torch.no_grad():
        ref, got, same = model(ids).logits, loaded(ids).logits, plain(ids).logits
        with_ours = transformers.LlamaForCausalLM(model.config).eval()
        with_ours.load_state_dict(state)
        ours = with_ours(ids).logits
    torch.testing.assert_close(got, ours, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same, ours, rtol=1e-5, atol=1e-5)
    rel = float((got - ref).norm() / ref.norm())
    assert rel < {"fp8": 0.15, "w8a16": 0.05, "w4a16": 0.4}[name]
