"""Quantizer files written by release 0.1.0 keep loading and keep giving the same codes.

``tests/data/release_quantizers/`` holds, for every preset and a few fitted variants, the quantizer
file that release saved after fitting on ``input.npy``, and the codes (as raw bytes) and side arrays
that release made from that input. The files were written once, by that release's code, and are
never regenerated: a change that breaks loading them, or changes a code, fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import gpuquant
from gpuquant.api import Quantizer

DATA = Path(__file__).parent / "data" / "release_quantizers"
FILES = sorted(p.stem for p in DATA.glob("*.json"))


def test_every_preset_has_a_release_file() -> None:
    assert {p.name for p in gpuquant.presets()} <= set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_release_file_loads_and_gives_the_same_codes(name: str) -> None:
    x = np.load(DATA / "input.npy")
    want = np.load(DATA / f"{name}.codes.npz")
    q = Quantizer.load(DATA / f"{name}.json", backend="numpy")
    codes = q.transform(x)
    np.testing.assert_array_equal(np.ascontiguousarray(codes.data).view(np.uint8), want["codes"])
    assert sorted(codes.side) == sorted(k[len("side_"):] for k in want.files if k != "codes")
    for k, v in codes.side.items():
        np.testing.assert_array_equal(np.asarray(v).view(np.uint32), want[f"side_{k}"].view(np.uint32))


@pytest.mark.parametrize("name", FILES)
def test_release_file_saves_back_byte_for_byte(name: str, tmp_path: Path) -> None:
    q = Quantizer.load(DATA / f"{name}.json", backend="numpy")
    assert q.save(tmp_path / "q.json").read_bytes() == (DATA / f"{name}.json").read_bytes()
    assert json.loads((tmp_path / "q.json").read_text())["params"] == q.scheme.params
