"""The shared test helpers: ``assert_bit_equal`` tells apart what ``==`` does not, and
``same_on_backends`` runs one body on the numpy reference and on each backend that can run here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from helpers import assert_bit_equal, edge_values, finite_edge_values, matrix, same_on_backends

import gpuquant
from gpuquant.backends import supports
from gpuquant.codes import Codes


@pytest.mark.parametrize(("a", "b"), [
    (np.float32([0.0]), np.float32([-0.0])),                                        # equal under ==
    (np.uint32([0x7FC00000]).view(np.float32), np.uint32([0x7FC00001]).view(np.float32)),  # two NaNs
    (np.int8([1, 2]), np.uint8([1, 2])),                                             # dtype
    (np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32)),                    # shape
    (Codes(np.int8([[1]]), {"scales": np.float32([1.0])}), Codes(np.int8([[1]]), {"scales": np.float32([-1.0])})),
    ({"lo": np.float32([1.0])}, {"hi": np.float32([1.0])}),
])
def test_assert_bit_equal_refuses_different_bits(a: Any, b: Any) -> None:
    with pytest.raises(AssertionError):
        assert_bit_equal(a, b)


def test_assert_bit_equal_accepts_the_same_bits() -> None:
    v = edge_values()
    assert_bit_equal(Codes(v.copy(), {"s": v[:3].copy()}), Codes(v, {"s": v[:3]}))
    assert_bit_equal([v, {"k": v}], (v.copy(), {"k": v.copy()}))


def test_same_on_backends_fails_when_a_backend_differs() -> None:
    calls: list[str] = []

    def body(backend: str) -> np.ndarray:
        calls.append(backend)
        return np.float32([0.0 if len(calls) == 1 else -0.0])

    test = same_on_backends("numpy")(body)  # the numpy backend runs everywhere: compared with itself
    with pytest.raises(AssertionError, match="numpy vs numpy"):
        test()
    assert calls == ["numpy", "numpy"]


def test_same_on_backends_hides_backend_from_pytest_and_passes_fixtures() -> None:
    def body(backend: str, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.arange(n)

    test = same_on_backends("numpy")(body)
    import inspect

    assert list(inspect.signature(test).parameters) == ["rng", "n"]
    test(rng=None, n=3)


@pytest.mark.parametrize("preset", [p.name for p in gpuquant.presets()])
@same_on_backends("cupy")
def test_every_preset_encodes_and_decodes_the_same_on_the_gpu(backend: str, preset: str,
                                                             rng: np.random.Generator) -> Any:
    """A quantizer fitted by the reference, then transform and inverse_transform on each backend."""
    edges = finite_edge_values()
    x = matrix(rng, 257, 128, edges=edges[np.abs(edges) <= 65504])  # what every preset accepts (halfvec refuses more)
    ref = gpuquant.Quantizer(preset, backend="numpy")
    ref = ref.fit(x) if ref.scheme.needs_fit else ref
    if backend != "numpy" and not supports(backend, ref.scheme)[0]:
        pytest.skip(f"{backend} does not implement {preset}")
    q = gpuquant.Quantizer.from_dict(ref.to_dict(), backend=backend)
    codes = q.transform(x)
    return codes, q.inverse_transform(codes)


def test_same_on_backends_gives_every_run_the_same_random_data() -> None:
    # the body draws its data from the rng fixture: each backend's run must see the same draws
    test = same_on_backends("numpy")(lambda backend, rng: rng.random(4))
    test(rng=np.random.default_rng(1))
