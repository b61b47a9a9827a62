"""Helpers the test files share: the edge values every bit-exact test must include, random
matrices, bit views, reference quantizers, the in-process CLI, and :func:`same_on_backends`, which
runs one test body on the numpy reference and on other backends and compares the results bit for
bit (after CuPy's ``numpy_cupy_array_equal``), and :func:`disk_full_after` (a simulated full
disk). Import them with ``from helpers import ...``."""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import inspect
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest


def edge_values() -> np.ndarray:
    """float32 values that break careless code: NaN (signs, payloads), ±Inf, ±0, subnormals, ties, limits."""
    bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FA00001, 0xFFFFFFFF], np.uint32)
    special = [np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, -1.1754942e-38, 1e-40, -3e-39,
               1.1754944e-38, 0.5, -0.5, 1.5, 2.5, -2.5, 127.5, -127.5, 0.49999997, 1.0, -1.0,
               448.0, 464.0, 465.0, -480.0, 57344.0, 61439.0, 61440.0, 65504.0, 65519.0, 65520.0,
               3.3895314e38, 3.4028235e38, -3.4028235e38, 1e-8, 7.0, 3.5, -3.5]
    return np.concatenate([bits.view(np.float32), np.array(special, np.float32)])


def finite_edge_values() -> np.ndarray:
    v = edge_values()
    return v[np.isfinite(v)]


def matrix(rng: np.random.Generator, n: int, d: int, *, scale: float = 1.0, edges: np.ndarray | None = None) -> np.ndarray:
    """Random float32 (n, d) data (several magnitudes); ``edges`` are scattered into it when given."""
    x = (rng.standard_normal((n, d)) * scale * np.exp(rng.uniform(-3, 3, (n, 1)))).astype(np.float32)
    if edges is not None and x.size:
        flat = x.reshape(-1)
        idx = rng.choice(flat.size, size=min(flat.size, edges.size), replace=False)
        flat[idx] = edges[: idx.size]
    return x


def assert_means_agree(got: np.ndarray, want: np.ndarray, x32: np.ndarray) -> None:
    """Per-column float32 means from float64 sums taken in different orders agree within the
    float64 summation bound, ``(n - 1) * 2**-52 * sum|x|`` per column divided by n, plus one float32
    ulp for each side's final rounding. (With values near ±3.4e38 the order alone can move a mean
    far: no ulp count bounds it.)"""
    n = x32.shape[0]
    bound = max(n - 1, 1) * 2.0**-52 * np.abs(x32.astype(np.float64)).sum(axis=0) / n
    ulp = np.spacing(np.maximum(np.abs(got), np.abs(want)).astype(np.float32)).astype(np.float64)
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    assert (diff <= bound + ulp).all(), (diff, bound, ulp)


def fitted(name: str, x, **params):
    """A numpy-backend ``Quantizer(name, **params)``, fitted on ``x`` when its scheme needs a fit."""
    from gpuquant import Quantizer

    q = Quantizer(name, backend="numpy", **params)
    return q.fit(x) if q.scheme.needs_fit else q


def fit_codes(name: str, x, **params):
    """``(q, q.transform(x))`` for ``q = fitted(name, x, **params)``: the in-memory reference codes."""
    q = fitted(name, x, **params)
    return q, q.transform(x)


def bits(a) -> np.ndarray:
    """The raw bits of a host array (or ``Codes``) as unsigned integers of its width, for bit-exact comparison."""
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def cli_run(capsys: pytest.CaptureFixture[str], *argv) -> tuple[int, str, str]:
    """``gpuquant.cli.main`` in-process on ``str()`` of each argument: (exit code, stdout, stderr)."""
    from gpuquant import cli

    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv) -> tuple[int, dict]:
    """``cli_run`` with ``--format json`` appended: (exit code, the JSON document on stdout)."""
    code, out, _ = cli_run(capsys, *argv, "--format", "json")
    return code, json.loads(out)


def cupy_usable() -> tuple[bool, str]:
    """(True, device) when the cupy backend works here (CuPy imports and a CUDA device runs kernels)."""
    from gpuquant.backends.cupy_backend import CupyBackend

    return CupyBackend.is_available()


def host(a: Any) -> np.ndarray:
    """A numpy copy of ``a`` (a numpy or CuPy array, or anything ``np.asarray`` takes)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def assert_bit_equal(got: Any, want: Any, where: str = "result") -> None:
    """``got`` and ``want`` hold the same bits: arrays (numpy or CuPy, compared through their integer
    view, so NaN payloads and the sign of zero count), ``Codes`` (data and every side array), and
    dicts, lists and tuples of these, compared element by element; anything else with ``==``."""
    from gpuquant import Codes

    if isinstance(want, Codes):
        assert isinstance(got, Codes), f"{where}: got {type(got).__name__}, want Codes"
        assert_bit_equal(got.data, want.data, f"{where}.data")
        assert_bit_equal(dict(got.side), dict(want.side), f"{where}.side")
    elif isinstance(want, dict):
        assert set(got) == set(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_bit_equal(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_bit_equal(g, w, f"{where}[{i}]")
    elif hasattr(want, "dtype") and hasattr(want, "shape"):
        g, w = host(got), host(want)
        assert (g.dtype, g.shape) == (w.dtype, w.shape), f"{where}: {g.dtype}{g.shape} != {w.dtype}{w.shape}"
        np.testing.assert_array_equal(bits(g), bits(w), err_msg=where)
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


def same_on_backends(*backends: str) -> Callable[[Callable[..., Any]], Callable[..., None]]:
    """Decorator: the test body takes ``backend`` (a backend name) and returns what it computed; the
    test runs it with ``"numpy"`` (the reference) and with each of ``backends`` that can run here,
    and fails unless every result is bit-identical to the reference's (:func:`assert_bit_equal`).
    Each run gets its own copy of any ``numpy.random.Generator`` argument (the ``rng`` fixture), so
    every backend sees the same random data.
    Skipped, after running the reference, when none of ``backends`` can run. The body's other
    parameters are pytest fixtures and parameters as usual::

        @same_on_backends("cupy")
        def test_int8_row(backend, rng):
            x = matrix(rng, 100, 33)
            return gpuquant.Quantizer("int8-row", backend=backend).fit(x).transform(x)
    """
    def decorate(body: Callable[..., Any]) -> Callable[..., None]:
        @functools.wraps(body)
        def test(*args: Any, **kwargs: Any) -> None:
            from gpuquant.backends import availability

            def run(name: str) -> Any:  # every run draws from its own copy of the random generators
                fresh = [copy.deepcopy(a) if isinstance(a, np.random.Generator) else a for a in args]
                return body(*fresh, backend=name, **{k: copy.deepcopy(v) if isinstance(v, np.random.Generator)
                                                      else v for k, v in kwargs.items()})

            want = run("numpy")
            ran = []
            for name in backends:
                if availability(name)[0]:
                    assert_bit_equal(run(name), want, f"{name} vs numpy")
                    ran.append(name)
            if not ran:
                pytest.skip(f"none of {list(backends)} can run here: " +
                            "; ".join(f"{n}: {availability(n)[1]}" for n in backends))

        sig = inspect.signature(body)
        test.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[p for p in sig.parameters.values() if p.name != "backend"])
        return test

    return decorate


@contextlib.contextmanager
def disk_full_after(monkeypatch: pytest.MonkeyPatch, writes: int) -> Iterator[None]:
    """Inside the block, ``os.pwrite`` (the store's data writes) fails with ENOSPC after ``writes`` calls."""
    real, calls = os.pwrite, {"n": 0}

    def full(fd: int, data: Any, offset: int) -> int:
        calls["n"] += 1
        if calls["n"] > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    try:
        yield
    finally:
        monkeypatch.setattr(os, "pwrite", real)


def tiny_llama(seed: int, hidden: int, layers: int) -> tuple[Any, Any, Any]:
    """``(torch, transformers, model)``: a random float32 LlamaForCausalLM on the CPU (skips the test
    without torch, transformers and compressed-tensors: the ``models`` extra)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("compressed_tensors")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    return torch, transformers, transformers.LlamaForCausalLM(cfg).eval()
