"""The cupy backend's host side without a GPU, on the numpy-backed stand-in for CuPy
(``tests/fake_cupy.py``, which logs every transfer and emulates the kernels it is given):

* refused rows (absmax, gguf, scaled_fp8: NaN or ±Inf) are not read back inside ``transform``; the
  same ``InputError`` surfaces at the next synchronisation (a download, ``fit``, ``check_refusals``;
  the engine's pipeline when the batch completes: ``tests/test_engine.py``), before any output is
  finalised, from a persistent flag buffer per stream;
* grids are one wave of the launched kernel's own occupancy (a pure function, and its use);
* launch constants are built and uploaded once per fitted state (none on a second call, again
  after a refit).
"""

from __future__ import annotations

from typing import Any

import fake_cupy
import numpy as np
import pytest
from helpers import matrix

import gpuquant
from gpuquant.backends.cupy_device import NO_ROW
from gpuquant.errors import InputError
from gpuquant.schemes import make_scheme


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> fake_cupy.FakeCupy:
    return fake_cupy.install(monkeypatch)


def rows_with_nan(rng: np.random.Generator, n: int, d: int, bad_rows: tuple[int, ...], value: float) -> np.ndarray:
    x = matrix(rng, n, d)
    for r in bad_rows:
        x[r, r % d] = value
    return x


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_device_transform_reads_nothing_back_and_the_refusal_surfaces_at_the_check(
        fake: fake_cupy.FakeCupy, rng: np.random.Generator, value: float) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    x = fake.asarray(rows_with_nan(rng, 40, 33, (29, 31), value))
    fake.log.clear()
    codes = backend.transform(scheme, {}, x)
    assert fake.count("download") == 0 and fake.count("launch") == 1
    with pytest.raises(InputError, match=r"^row 29 holds NaN or ±Inf; scheme 'absmax' needs finite values$"):
        backend.check_refusals()
    assert fake.count("download") == 1
    backend.check_refusals()  # raised once: nothing pending
    clean = fake.asarray(matrix(rng, 40, 33))
    codes = backend.transform(scheme, {}, clean)
    backend.check_refusals()  # the slot was set back to NO_ROW
    np.testing.assert_array_equal(np.asarray(codes.data), scheme.encode(np.asarray(clean), {})[0])


def test_one_row_and_empty_inputs(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int4-block")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    fake.log.clear()
    empty = backend.transform(scheme, {}, fake.asarray(np.zeros((0, 128), np.float32)))
    assert empty.data.shape == (0, 64) and fake.count("launch") == 0
    backend.check_refusals()
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 1, 128, (0,), -np.inf)))
    with pytest.raises(InputError, match=r"^row 0 holds"):
        backend.check_refusals()


@pytest.mark.parametrize(("preset", "kernel"), [("gguf-q8_0", "gguf_encode"), ("gguf-q4_0", "gguf_encode"),
                                               ("safetensors-fp8", "scaled_fp8_scales")])
def test_weight_refusals_are_the_references_and_wait_for_the_check(fake: fake_cupy.FakeCupy, rng: np.random.Generator,
                                                                   preset: str, kernel: str) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme(preset)
    fake_cupy.emulate_row_refusals(fake, kernel)
    x = rows_with_nan(rng, 12, 64, (9, 10), np.nan)
    with pytest.raises(InputError) as want:
        scheme.encode(x, scheme.fit(np.nan_to_num(x)) if scheme.needs_fit else {})
    backend = CupyBackend()
    fake.log.clear()
    backend.transform(scheme, {}, fake.asarray(x))
    assert fake.count("download") == 0
    with pytest.raises(InputError) as got:
        backend.check_refusals()
    assert str(got.value) == str(want.value) and "row 9 " in str(got.value)


def test_a_host_transform_raises_before_writing_its_out_arrays(fake: fake_cupy.FakeCupy,
                                                               rng: np.random.Generator) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int4-block")
    fake_cupy.emulate_absmax(fake, scheme)
    x = rows_with_nan(rng, 7, 128, (5,), np.nan)
    out = gpuquant.Codes(np.full((7, 64), 0xAB, np.uint8), {"scales": np.full((7, 2), 3.0, np.float32)})
    with pytest.raises(InputError, match=r"^row 5 holds NaN"):
        CupyBackend().transform(scheme, {}, x, out=out)
    assert (out.data == 0xAB).all() and (out.side["scales"] == 3.0).all()


def test_a_pending_refusal_surfaces_at_the_next_synchronisation(fake: fake_cupy.FakeCupy,
                                                                rng: np.random.Generator) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 9, 16, (4,), np.inf)))
    with pytest.raises(InputError, match=r"^row 4 holds"):  # a host transform's download
        backend.transform(scheme, {}, matrix(rng, 3, 16))
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 9, 16, (7,), np.nan)))
    with pytest.raises(InputError, match=r"^row 7 holds"):  # fit
        backend.fit(make_scheme("st-int8"), matrix(rng, 3, 16))
    taken = backend.take_refusals()
    assert taken.pending == []


def test_flags_come_from_one_persistent_buffer_per_stream(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    from gpuquant.backends import cupy_refusals
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    flags: list[Any] = []
    fake.emulators["absmax"] = lambda args: flags.append(args[3])
    x = fake.asarray(matrix(rng, 5, 16))
    for _ in range(3):
        backend.transform(scheme, {}, x)
    assert len({f.base.ctypes.data for f in flags}) == 1 and flags[0].base.size == cupy_refusals.MAX_PENDING
    assert len({f.ctypes.data for f in flags}) == 3  # three pending calls, three slots
    backend.check_refusals()
    backend.transform(scheme, {}, x)
    assert flags[-1].ctypes.data in {f.ctypes.data for f in flags[:3]} and int(flags[-1][0]) == NO_ROW
    with fake.cupy.cuda.Stream(non_blocking=True):
        backend.transform(scheme, {}, x)
    assert flags[-1].base.ctypes.data != flags[0].base.ctypes.data  # another stream, another buffer
    backend.check_refusals()


def test_an_unchecked_thread_is_checked_every_max_pending_calls(fake: fake_cupy.FakeCupy, rng: np.random.Generator,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuquant.backends import cupy_refusals
    from gpuquant.backends.cupy_backend import CupyBackend

    monkeypatch.setattr(cupy_refusals, "MAX_PENDING", 4)
    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    x = fake.asarray(matrix(rng, 5, 16))
    fake.log.clear()
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 5, 16, (1,), np.inf)))
    for _ in range(3):
        backend.transform(scheme, {}, x)
    assert fake.count("download") == 0
    with pytest.raises(InputError, match=r"^row 1 holds"):  # the four pending, checked in the fifth call
        backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 5, 16, (3,), np.nan)))  # on a fresh flag
    assert fake.count("download") == 1  # in one read of the buffer
    with pytest.raises(InputError, match=r"^row 3 holds"):  # the fifth call's own refusal is kept
        backend.check_refusals()
    backend.transform(scheme, {}, x)
    backend.check_refusals()  # the slots were given back


# -- the grid: one wave of the kernel's own resident blocks -----------------------------------------
@pytest.mark.parametrize(("blocks_per_sm", "sms", "items", "per_block", "want"), [
    (4, 132, 10**9, 256, 528), (8, 132, 10**9, 256, 1056), (3, 132, 1000, 256, 4), (3, 132, 1024, 256, 4),
    (3, 132, 1025, 256, 5), (2, 1, 10**6, 256, 2), (4, 132, 0, 256, 1), (4, 132, 1, 256, 1),
    (0, 132, 10**6, 256, 1), (4, 132, 10**6, 4096, 245)])
def test_grid_size_is_one_wave_at_most(blocks_per_sm: int, sms: int, items: int, per_block: int, want: int) -> None:
    from gpuquant.backends.cupy_device import grid_size

    assert grid_size(blocks_per_sm, sms, items, per_block) == want


@pytest.mark.parametrize("blocks_per_sm", [1, 3, 8])
def test_launches_are_sized_from_the_kernels_occupancy(monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator,
                                                       blocks_per_sm: int) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    fake = fake_cupy.install(monkeypatch, blocks_per_sm)
    backend = CupyBackend()
    for preset, n, d in [("st-int8", 100_000, 64), ("binary", 3, 64), ("int8-row", 50_000, 33)]:
        scheme = make_scheme(preset)
        x = fake.asarray(matrix(rng, n, d))
        state = scheme.fit(matrix(rng, 10, d)) or {}
        fake.log.clear()
        backend.transform(scheme, state, x)
        backend.transform(scheme, state, x)
        launches = [v for k, v in fake.log if k == "launch"]
        queries = [v for k, v in fake.log if k == "occupancy"]
        assert len(launches) == 2 and len(queries) == 1 and queries[0][1:] == (256, 0)  # asked once per kernel
        (name, grid, block), _ = launches
        items = {"st-int8": n * d // 8, "binary": n * d // 64, "int8-row": n * 32}[preset]
        assert grid == (min(blocks_per_sm * fake_cupy.SMS, -(-items // 256)),) and block == (256,), name
    backend.check_refusals()


# -- launch arguments: built and uploaded once per fitted state ---------------------------------------
@pytest.mark.parametrize(("name", "params"), [
    ("st-int8", {}), ("faiss-sq4", {}), ("cuvs-sq8", {}), ("binary", {"threshold": "mean"}),
    ("absmax", {"granularity": "tensor"}), ("pq", {"m": 4, "nbits": 4}), ("scaled_fp8", {"granularity": "tensor"})])
def test_a_second_call_builds_and_uploads_no_constant(fake: fake_cupy.FakeCupy, rng: np.random.Generator,
                                                      monkeypatch: pytest.MonkeyPatch, name: str,
                                                      params: dict[str, Any]) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend
    from gpuquant.backends.cupy_families import scalar

    built: list[int] = []
    real_params = scalar.scalar_params
    monkeypatch.setattr(scalar, "scalar_params", lambda *a: (built.append(1), real_params(*a))[1])
    q = gpuquant.Quantizer(name, backend="numpy", **params)
    backend = CupyBackend()
    x = fake.asarray(matrix(rng, 64, 32))
    uploads = []
    for fit in (True, False, True):  # fit, the same state again, a refit
        if fit:
            q.fit(matrix(rng, 300, 32))
        fake.log.clear()
        codes = backend.transform(q.scheme, q.state, x)
        backend.inverse_transform(q.scheme, q.state, codes)
        uploads.append(fake.count("upload"))
    assert uploads[1] == 0 and uploads[0] == uploads[2] > 0, uploads
    assert len(built) == (2 if q.family == "scalar" else 0)  # once per state (transform and inverse share it)
    backend.check_refusals()
