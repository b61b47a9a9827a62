"""Quantizer files written by release 0.1.0 keep loading and keep giving the same codes.

``tests/data/release_quantizers/`` holds, for every preset and a few fitted variants, the quantizer
file that release saved after fitting on ``input.npy``, and the codes (as raw bytes) and side arrays
that release made from that input. The files were written once, by that release's code, and are
never regenerated: a change that breaks loading them, or changes a code, fails here. A deliberate
change is stated in :data:`CHANGED` and applied to the release's codes, never written into them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

import gpuquant
from gpuquant.api import Quantizer

DATA = Path(__file__).parent / "data" / "release_quantizers"
FILES = sorted(p.stem for p in DATA.glob("*.json"))
#: Presets added since that release: each gets its file from the first release that ships it.
UNRELEASED = {"faiss-rabitq"}


def _fp8_signed_zero(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """scaled_fp8 after 0.1.0: a -0 input gives the +0 code 0x00 (it gave 0x80), as compressed-tensors'
    quantize does (it adds the zero point 0 before the cast)."""
    negative_zero = (x == 0) & np.signbit(x)
    assert (codes[negative_zero] == 0x80).all()
    return np.where(negative_zero, np.uint8(0), codes)


#: Deliberate code changes since the release: file name -> (input, release codes) -> today's codes.
CHANGED = {"safetensors-fp8": _fp8_signed_zero, "scaled_fp8-tensor": _fp8_signed_zero}


def test_every_preset_has_a_release_file() -> None:
    assert {p.name for p in gpuquant.presets()} - UNRELEASED <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_release_file_loads_and_gives_the_same_codes(name: str) -> None:
    x = np.load(DATA / "input.npy")
    want = np.load(DATA / f"{name}.codes.npz")
    q = Quantizer.load(DATA / f"{name}.json", backend="numpy")
    codes = q.transform(x)
    expected = CHANGED[name](x, want["codes"]) if name in CHANGED else want["codes"]
    np.testing.assert_array_equal(np.ascontiguousarray(codes.data).view(np.uint8), expected)
    assert sorted(codes.side) == sorted(k[len("side_"):] for k in want.files if k != "codes")
    for k, v in codes.side.items():
        np.testing.assert_array_equal(np.asarray(v).view(np.uint32), want[f"side_{k}"].view(np.uint32))


@pytest.mark.parametrize("name", FILES)
def test_release_file_saves_back_byte_for_byte(name: str, tmp_path: Path) -> None:
    q = Quantizer.load(DATA / f"{name}.json", backend="numpy")
    assert q.save(tmp_path / "q.json").read_bytes() == (DATA / f"{name}.json").read_bytes()
    assert json.loads((tmp_path / "q.json").read_text())["params"] == q.scheme.params


def _doc(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def _set_state(doc: dict, key: str, values: np.ndarray) -> dict:
    from gpuquant.api import _encode_array

    doc["state"][key] = _encode_array(values)
    return doc


@pytest.mark.parametrize(("name", "key", "values", "message"), [
    ("st-int8", "lo", np.zeros(63, np.float32), "state array 'lo' in the quantizer file must be float32(64,)"),
    ("st-int8", "lo", np.zeros(64, np.float64), "state array 'lo' in the quantizer file must be float32(64,)"),
    ("cuvs-sq8", "hi", np.array([np.nan], np.float32), "state array 'hi' in the quantizer file holds NaN or ±Inf"),
    ("cuvs-sq8", "hi", np.array([-1e9], np.float32), "invalid: a range has lo > hi"),
    ("vespa-int8", "scales", np.array([-1.0], np.float32), "state array 'scales' must be >= 0"),
    ("scaled_fp8-tensor", "weight_scale", np.array([0.0], np.float32), "state array 'weight_scale' must be > 0"),
    ("binary-mean", "thresholds", np.full(64, np.inf, np.float32), "'thresholds' in the quantizer file holds NaN"),
    ("binary-mean", "extra", np.zeros(64, np.float32), "unknown state array(s) ['extra']"),
])
def test_loading_refuses_a_state_that_breaks_the_declared_layout(name: str, key: str, values: np.ndarray,
                                                                 message: str) -> None:
    with pytest.raises(gpuquant.InputError, match=re.escape(message)):
        Quantizer.from_dict(_set_state(_doc(name), key, values))


def test_loading_refuses_a_missing_state_array() -> None:
    doc = _doc("st-uint8")
    del doc["state"]["hi"]
    with pytest.raises(gpuquant.InputError, match="state array 'hi' is missing from the quantizer file"):
        Quantizer.from_dict(doc)


def _edited(name: str, edit: str) -> str:
    """The release file of ``name`` as text, with one field replaced (``edit``: "field=json text")."""
    field, value = edit.split("=", 1)
    doc = _doc(name)
    doc[field] = "PLACEHOLDER"
    return json.dumps(doc).replace('"PLACEHOLDER"', value)


@pytest.mark.parametrize(("name", "edit", "message"), [
    ("st-int8", "bogus=1", "unknown field(s) ['bogus'] in the quantizer file"),
    ("st-int8", 'dim="64"', "field 'dim' of the quantizer file must be a positive integer or null, got '64'"),
    ("st-int8", "dim=" + "9" * 5000, "field 'dim' of the quantizer file must be a positive integer or null, "
                                    "got a 5000-digit number"),
    ("st-int8", "dim=-3", "field 'dim' of the quantizer file must be a positive integer or null, got -3"),
    ("st-int8", 'scheme="int8-row"', "field 'scheme' of the quantizer file is 'int8-row' (a 'absmax' preset), "
                                     "but its state and parameters are of family 'scalar'"),
    ("st-int8", 'scheme="nonesuch"', "field 'scheme' of the quantizer file is 'nonesuch' (no preset or family)"),
    ("st-int8", "params=[1, 2]", "field 'params' of the quantizer file must be an object"),
])
def test_loading_refuses_a_malformed_field_naming_it(name: str, edit: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text(_edited(name, edit))
    with pytest.raises(gpuquant.InputError, match=re.escape(message)):
        Quantizer.load(path)
