"""``gpuquant.files`` (dtype views for ``.npy``, JSON conversion) and ``gpuquant.store``'s whole-``Codes`` directory and its checks."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import gpuquant
from gpuquant import files as gfiles
from gpuquant import store as gstore
from gpuquant.errors import InputError


@pytest.mark.parametrize(
    ("dtype", "stored"),
    [(ml_dtypes.float8_e4m3fn, "uint8"), (ml_dtypes.float8_e5m2, "uint8"), (ml_dtypes.bfloat16, "uint16"),
     (np.float16, "float16"), (np.int8, "int8"), (np.uint8, "uint8"), (np.float32, "float32")],
)
def test_storage_view_round_trips_the_exact_bytes(tmp_path: Path, dtype: type, stored: str) -> None:
    a = np.random.default_rng(0).standard_normal((5, 7)).astype(dtype)
    view, logical, stored_name = gfiles.storage_view(a)
    assert stored_name == stored and logical == np.dtype(dtype).name
    np.save(tmp_path / "a.npy", view)
    back = gfiles.logical_view(np.load(tmp_path / "a.npy"), logical)
    assert back.dtype == a.dtype and back.tobytes() == a.tobytes()


def test_to_jsonable_is_strict_json() -> None:
    doc = gfiles.to_jsonable({"a": np.float32(1.5), "b": (np.int64(2), float("nan")), "c": np.arange(2),
                           "d": float("-inf"), "e": np.dtype("float32"), "f": Path("/x")})
    assert json.loads(json.dumps(doc, allow_nan=False)) == {
        "a": 1.5, "b": [2, "nan"], "c": [0, 1], "d": "-inf", "e": "float32", "f": "/x"}


def test_load_matrix_maps_the_file(tmp_path: Path) -> None:
    X = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "x.npy", X)
    m = gfiles.load_matrix(tmp_path / "x.npy")
    assert isinstance(m, np.memmap) and not m.flags.writeable
    np.testing.assert_array_equal(m, X)
    np.testing.assert_array_equal(gfiles.load_matrix(tmp_path / "x.npy", mmap=False), X)


def _converted(tmp_path: Path) -> Path:
    X = np.random.default_rng(3).standard_normal((10, 64)).astype(np.float32)
    q = gpuquant.Quantizer("int4-block", backend="numpy").fit(X)
    return gstore.write_converted(tmp_path / "out", q.transform(X), q, {"scheme": "int4-block"})


def test_read_converted_gives_codes_and_side_arrays(tmp_path: Path) -> None:
    conv = gstore.read_converted(_converted(tmp_path))
    assert conv.codes.shape == (10, 32) and conv.side["scales"].shape == (10, 1)
    assert conv.manifest["format"] == gstore.FORMAT_NAME and conv.quantizer_path.is_file()


def test_read_converted_detects_a_shape_mismatch(tmp_path: Path) -> None:
    out = _converted(tmp_path)
    np.save(out / "scales.npy", np.zeros((9, 1), np.float32))
    with pytest.raises(InputError, match="scales.npy has shape"):
        gstore.read_converted(out)


def test_read_converted_refuses_a_foreign_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a gpuquant output"):
        gstore.read_converted(tmp_path)


def test_side_names_must_be_file_names(tmp_path: Path) -> None:
    q = gpuquant.Quantizer("fp16")
    codes = gpuquant.Codes(np.zeros((2, 2), np.float16), {"../evil": np.zeros(2)}, "fp16", 2)
    with pytest.raises(InputError, match="side array name"):
        gstore.write_converted(tmp_path / "out", codes, q, {})
    assert list(tmp_path.iterdir()) == []
