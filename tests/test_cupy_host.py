"""The cupy backend's host side without a GPU, on the numpy-backed stand-in for CuPy
(``tests/fake_cupy.py``, which logs every transfer and emulates the kernels it is given):

* refused rows (absmax, gguf, scaled_fp8: NaN or ±Inf; rabitq: also overflowing norms; float with
  ``nonfinite="raise"``: NaN, ±Inf or overflow, reduced on the device from its codes) are not read
  back inside ``transform``; the same ``InputError`` surfaces at the next synchronisation (a
  download, ``fit``, ``check_refusals``; the engine's pipeline when the batch completes:
  ``tests/test_engine.py``), before any output is finalised, from a persistent flag buffer per
  thread and stream; each refused call raises once, at successive checks, and a call that raises
  leaves none of its own; buffers stay bounded, are never shared by threads, and a slot a CUDA
  graph captured is never given back; callers that keep no quantizer (``gpuquant.quantize``,
  ``evaluate``, a Dask task on CuPy chunks) check before returning;
* grids are one wave of the launched kernel's own occupancy (a pure function, and its use);
* launch constants are built and uploaded once per fitted state (none on a second call, again
  after a refit, or after an entry of the state is replaced by another array);
* the planner's bytes for the exact quantile cover what the radix select allocates.
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
from gpuquant.schemes.statistics import RowError


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


@pytest.mark.parametrize("bits", [1, 3])
def test_rabitq_refusals_are_the_references_and_wait_for_the_check(fake: fake_cupy.FakeCupy,
                                                                    rng: np.random.Generator, bits: int) -> None:
    """Nonfinite rows and rows whose norms overflow: nothing read back inside ``transform``; at the
    check the reference's one error (a nonfinite row, even after an overflowing one; else the
    overflowing row), raised once; a host transform raises it before returning."""
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("rabitq", bits=bits, center="zero")
    fake_cupy.emulate_rabitq(fake, scheme)
    x = matrix(rng, 12, 9)
    x[3, 1], x[8, 4] = 3e38, np.nan
    backend = CupyBackend()
    overflow = "row 3: |x|^2 or |x - center|^2 overflows float32, so its RaBitQ factors would not be finite"
    for rows, error in ((x, "row 8 holds NaN or ±Inf; RaBitQ codes need finite values"),
                        (np.delete(x, 8, axis=0), overflow)):
        with pytest.raises(InputError) as want:
            scheme.encode(rows, {})
        assert str(want.value) == error
        fake.log.clear()
        backend.transform(scheme, {}, fake.asarray(rows))
        assert fake.count("download") == 0 and fake.count("launch") == (2 if bits > 1 else 1)
        with pytest.raises(InputError) as got:
            backend.check_refusals()
        assert str(got.value) == str(want.value)
        backend.check_refusals()  # raised once
        with pytest.raises(InputError) as got:
            backend.transform(scheme, {}, rows)
        assert str(got.value) == str(want.value)
        backend.check_refusals()  # the raising call left no refusal
    clean = matrix(rng, 5, 9)
    np.testing.assert_array_equal(backend.transform(scheme, {}, clean).data, scheme.encode(clean, {})[0])


@pytest.mark.parametrize("preset", ["int8-row", "int4-block"])
def test_absmax_refusal_is_the_references_row_error(fake: fake_cupy.FakeCupy, rng: np.random.Generator,
                                                    preset: str) -> None:
    """The absmax refusal is the reference's ``RowError`` (same text), so a caller that encodes part of
    an input (a Dask task on CuPy chunks) restates it as a row of the input."""
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme(preset)
    fake_cupy.emulate_absmax(fake, scheme)
    x = rows_with_nan(rng, 12, 64, (9, 10), np.inf)
    with pytest.raises(RowError) as want:
        scheme.encode(x, {})
    backend = CupyBackend()
    backend.transform(scheme, {}, fake.asarray(x))
    with pytest.raises(RowError) as got:
        backend.check_refusals()
    assert str(got.value) == str(want.value)
    assert str(got.value.shifted(100)) == str(want.value.shifted(100))
    assert str(got.value.shifted(100)).startswith("row 109 of the input holds NaN or ±Inf")


def float_raise(fake: fake_cupy.FakeCupy, fmt: str) -> Any:
    """The ``float`` scheme refusing non-finite rows in ``fmt``, its kernel emulated."""
    fake_cupy.emulate_float(fake, make_scheme("float", format=fmt, nonfinite="keep"))
    return make_scheme("float", format=fmt, nonfinite="raise")


def float_bits(codes: Any) -> np.ndarray:
    a = np.asarray(codes)
    return a.view({1: np.uint8, 2: np.uint16}[a.dtype.itemsize])


@pytest.mark.parametrize(("fmt", "value"), [("fp16", np.nan), ("fp16", np.inf), ("e4m3", -np.inf),
                                            ("bf16", np.nan), ("e5m2", -1e6)])
def test_float_raise_is_filed_for_the_check_with_the_references_row_error(
        fake: fake_cupy.FakeCupy, rng: np.random.Generator, fmt: str, value: float) -> None:
    """``nonfinite="raise"`` on device input: nothing read back inside ``transform``; the reference's
    ``RowError`` (same text, the first refused row, restated as a row of the input) at the check,
    raised once; a clean call after it gives the reference's codes and no refusal."""
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = float_raise(fake, fmt)
    x = rows_with_nan(rng, 13, 9, (7, 11), value)
    with pytest.raises(RowError) as want:
        scheme.encode(x, {})
    assert str(want.value).startswith("row 7 holds NaN, ±Inf or a value beyond")
    backend = CupyBackend()
    fake.log.clear()
    backend.transform(scheme, {}, fake.asarray(x))
    assert fake.count("download") == 0 and fake.count("launch") == 1
    with pytest.raises(RowError) as got:
        backend.check_refusals()
    assert str(got.value) == str(want.value) and str(got.value.shifted(40)) == str(want.value.shifted(40))
    backend.check_refusals()  # raised once
    clean = matrix(rng, 13, 9)
    codes = backend.transform(scheme, {}, fake.asarray(clean))
    backend.check_refusals()
    np.testing.assert_array_equal(float_bits(codes.data), float_bits(scheme.encode(clean, {})[0]))


@pytest.mark.parametrize("fmt", ["fp16", "e4m3"])
def test_float_raise_on_empty_and_one_row_inputs(fake: fake_cupy.FakeCupy, rng: np.random.Generator, fmt: str) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = float_raise(fake, fmt)
    backend = CupyBackend()
    fake.log.clear()
    empty = backend.transform(scheme, {}, fake.asarray(np.zeros((0, 5), np.float32)))
    assert empty.data.shape == (0, 5) and fake.count("launch") == 0
    backend.check_refusals()
    one = matrix(rng, 1, 5)
    np.testing.assert_array_equal(float_bits(backend.transform(scheme, {}, fake.asarray(one)).data),
                                  float_bits(scheme.encode(one, {})[0]))
    backend.check_refusals()
    bad = fake.asarray(rows_with_nan(rng, 1, 5, (0,), np.nan))
    fake.log.clear()
    backend.transform(scheme, {}, bad)
    assert fake.count("download") == 0
    with pytest.raises(RowError, match=r"^row 0 holds NaN, ±Inf"):
        backend.check_refusals()
    backend.check_refusals()


def test_float_raise_on_numpy_input_raises_before_writing_its_out_array(fake: fake_cupy.FakeCupy,
                                                                       rng: np.random.Generator) -> None:
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = float_raise(fake, "fp16")
    x = rows_with_nan(rng, 6, 10, (4,), np.inf)
    with pytest.raises(RowError) as want:
        scheme.encode(x, {})
    out = np.full((6, 10), 3.0, np.float16)
    backend = CupyBackend()
    with pytest.raises(RowError) as got:
        backend.transform(scheme, {}, x, out=out)
    assert str(got.value) == str(want.value) and (out == 3.0).all()
    backend.check_refusals()  # the raising call left no refusal
    clean = matrix(rng, 6, 10)
    np.testing.assert_array_equal(float_bits(backend.transform(scheme, {}, clean).data),
                                  float_bits(scheme.encode(clean, {})[0]))


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
    assert fake.count("download") == 2  # one read of the buffer, and the fifth call's fresh flag
    backend.check_refusals()  # the fifth call raised (no codes returned): its own refusal went with it
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


@pytest.mark.parametrize(("name", "params", "entry"), [
    ("st-int8", {}, "hi"), ("binary", {"threshold": "mean"}, "thresholds"), ("absmax", {"granularity": "tensor"}, "scales")])
def test_a_state_entry_replaced_by_another_array_gets_new_constants(fake: fake_cupy.FakeCupy, rng: np.random.Generator,
                                                                     name: str, params: dict[str, Any],
                                                                     entry: str) -> None:
    """The cache is keyed on the state's arrays too: ``state[k] = new`` in the same dict is a new key."""
    from gpuquant.backends.cupy_backend import CupyBackend

    q = gpuquant.Quantizer(name, backend="numpy", **params).fit(matrix(rng, 300, 32))
    backend = CupyBackend()
    x = fake.asarray(matrix(rng, 64, 32))
    seen: list[np.ndarray] = []
    fake.emulators[""] = lambda args: seen.append(np.array(next(
        a for a in args[2:] if isinstance(a, fake_cupy.DeviceArray) and a.dtype in (np.uint8, np.float32))))
    backend.transform(q.scheme, q.state, x)
    q.state[entry] = q.state[entry] * np.float32(0.5)
    backend.transform(q.scheme, q.state, x)
    changed = not np.array_equal(seen[0], seen[1])
    assert changed, "the second call used the constants of the replaced array"
    backend.check_refusals()


def test_each_refused_call_raises_once_at_successive_checks(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    """A check raises the first refused call; the later refused calls stay pending, none dropped."""
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    for bad in (3, None, 5, 2):
        x = matrix(rng, 8, 16) if bad is None else rows_with_nan(rng, 8, 16, (bad,), np.nan)
        backend.transform(scheme, {}, fake.asarray(x))
    for row in (3, 5):
        with pytest.raises(InputError, match=rf"^row {row} holds"):
            backend.check_refusals()
    with pytest.raises(InputError, match=r"^row 2 holds"):  # a host call's download checks first
        backend.transform(scheme, {}, matrix(rng, 2, 16))
    backend.check_refusals()
    backend.transform(scheme, {}, matrix(rng, 2, 16))


def test_threads_never_share_a_flag_buffer(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    """Two threads on streams of one handle (CuPy's per-thread default stream): a slot one thread
    resets on its own stream is never taken by the other, whose stream is not ordered after it."""
    import threading

    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    flags: list[Any] = []
    fake.emulators["absmax"] = lambda args: flags.append(args[3])
    backend = CupyBackend()
    x = fake.asarray(matrix(rng, 5, 16))
    per_thread = fake.cupy.cuda.Stream(ptr=2)

    def call() -> None:
        with per_thread:
            backend.transform(scheme, {}, x)
            backend.check_refusals()

    for _ in range(2):
        worker = threading.Thread(target=call)
        worker.start()
        worker.join()
    assert flags[0].base is not flags[1].base


def test_flag_buffers_stay_bounded_with_a_stream_per_call(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    from gpuquant.backends import cupy_refusals
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    x = fake.asarray(matrix(rng, 5, 16))
    for _ in range(3 * cupy_refusals.MAX_BUFFERS):
        with fake.cupy.cuda.Stream(non_blocking=True):
            backend.transform(scheme, {}, x)
            backend.check_refusals()
    assert len(backend._refusals._thread().buffers) <= cupy_refusals.MAX_BUFFERS
    streams = [fake.cupy.cuda.Stream(non_blocking=True) for _ in range(cupy_refusals.MAX_BUFFERS + 2)]
    for stream in streams:  # every buffer pending: the streams past the limit get fresh flags
        with stream:
            backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 5, 16, (4,), np.inf)))
    assert len(backend._refusals._thread().buffers) <= cupy_refusals.MAX_BUFFERS
    for _ in streams:
        with pytest.raises(InputError, match=r"^row 4 holds"):
            backend.check_refusals()
    backend.check_refusals()


def test_a_captured_calls_slot_is_never_given_back(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    """Every replay of a CUDA graph writes into the slot its captured call took: no later call gets it."""
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    flags: list[Any] = []
    fake.emulators["absmax"] = lambda args: flags.append(args[3])
    backend = CupyBackend()
    x = fake.asarray(matrix(rng, 5, 16))
    stream = fake.cupy.cuda.Stream(non_blocking=True)
    with stream:
        backend.transform(scheme, {}, x)  # warm-up: the stream's buffer is made outside the capture
        backend.check_refusals()
        stream.capturing = True
        backend.transform(scheme, {}, x)
        stream.capturing = False
        captured = flags[-1]
        captured[0] = 7  # a replay refused row 7
        with pytest.raises(InputError, match=r"^row 7 holds"):
            backend.check_refusals()
        for _ in range(3):
            backend.transform(scheme, {}, x)
        assert all(f.ctypes.data != captured.ctypes.data for f in flags[-3:])
        backend.check_refusals()


@pytest.fixture
def usable(fake: fake_cupy.FakeCupy, monkeypatch: pytest.MonkeyPatch) -> fake_cupy.FakeCupy:
    """The stand-in, with the cupy backend reporting it usable (``backend="cupy"`` resolves to it)."""
    from gpuquant.backends.cupy_backend import CupyBackend

    monkeypatch.setattr(CupyBackend, "is_available", staticmethod(lambda: (True, "the CuPy stand-in")))
    return fake


def test_callers_that_keep_no_quantizer_check_device_codes(usable: fake_cupy.FakeCupy, rng: np.random.Generator,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``gpuquant.quantize`` and a cluster task on a CuPy chunk drop their quantizer (or only
    download the codes themselves): the refused row raises before the codes are returned."""
    from gpuquant import cluster

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(usable, scheme)
    x = usable.asarray(rows_with_nan(rng, 6, 16, (4,), np.nan))
    with pytest.raises(InputError, match=r"^row 4 holds NaN"):
        gpuquant.quantize(x, "int8-row", backend="cupy")
    monkeypatch.setattr(cluster, "_QCACHE", {})
    qjson = cluster._qjson(gpuquant.Quantizer("int8-row", backend="numpy"))
    with pytest.raises(InputError, match=r"^row 4 holds NaN"):
        cluster._encode(x, qjson, "gpu", 16)
    clean = matrix(rng, 6, 16)
    got = cluster._encode(usable.asarray(clean), qjson, "gpu", 16)
    np.testing.assert_array_equal(got["codes"], scheme.encode(clean, {})[0])


def test_quantizer_check_refusals(usable: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    q = gpuquant.Quantizer("int4-block", backend="cupy")
    q.check_refusals()  # nothing transformed yet
    fake_cupy.emulate_absmax(usable, q.scheme)
    q.transform(usable.asarray(rows_with_nan(rng, 3, 64, (1,), -np.inf)))
    with pytest.raises(InputError, match=r"^row 1 holds"):
        q.check_refusals()
    q.check_refusals()
    gpuquant.Quantizer("int4-block", backend="numpy").check_refusals()


def test_evaluate_on_device_arrays_raises_the_refused_row(usable: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    from gpuquant.evaluate import evaluate

    q = gpuquant.Quantizer("int8-row", backend="cupy")
    fake_cupy.emulate_absmax(usable, q.scheme)
    x = rows_with_nan(rng, 40, 16, (30,), np.inf)
    with pytest.raises(InputError, match=r"^row 25 holds"):  # the 5 held-out queries come first
        evaluate(usable.asarray(x), q, n_queries=5, k=3)


@pytest.mark.parametrize(("n", "d"), [(1, 1), (1000, 100), (3000, 384), (20_000, 64), (70_000, 256)])
def test_the_planner_counts_what_the_radix_select_allocates(fake: fake_cupy.FakeCupy, monkeypatch: pytest.MonkeyPatch,
                                                            n: int, d: int) -> None:
    """The exact quantile's device bytes beyond the input (candidates, histograms, selection state)
    are within the planner's ``rows * per_row + fixed`` for the global radix select."""
    from gpuquant import planner
    from gpuquant.backends import cupy_train
    from gpuquant.schemes import statistics as st

    allocated: list[int] = []
    for name in ("zeros", "empty"):
        make = getattr(fake.cupy, name)
        monkeypatch.setattr(fake.cupy, name, lambda shape, dtype=np.float32, make=make: (
            allocated.append(make(shape, dtype).nbytes), make(shape, dtype))[1])
    x = fake_cupy.DeviceArray((n, d), np.float32)  # no values are read: the kernels are not emulated
    fake.log.clear()
    cupy_train.radix_select(x, 0, n * d - 1)
    uploaded = sum(size for kind, size in fake.log if kind == "upload")
    per_row, fixed, _ = planner._quantile_terms(st.Quantile(0.99, "exact"), d, n)
    assert sum(allocated) + uploaded <= n * per_row + fixed


def test_a_call_that_raises_leaves_no_refusal_of_its_own(fake: fake_cupy.FakeCupy, rng: np.random.Generator) -> None:
    """A host call that raises an earlier device call's row returns no codes: its own refused row is
    not left to fail the next, clean call; a later device call's refusal is kept."""
    from gpuquant.backends.cupy_backend import CupyBackend

    scheme = make_scheme("int8-row")
    fake_cupy.emulate_absmax(fake, scheme)
    backend = CupyBackend()
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 8, 16, (3,), np.nan)))
    with pytest.raises(InputError, match=r"^row 3 holds"):
        backend.transform(scheme, {}, rows_with_nan(rng, 8, 16, (5,), np.nan))
    clean = matrix(rng, 4, 16)
    np.testing.assert_array_equal(backend.transform(scheme, {}, clean).data, scheme.encode(clean, {})[0])
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 8, 16, (2,), np.nan)))
    backend.transform(scheme, {}, fake.asarray(rows_with_nan(rng, 8, 16, (6,), np.nan)))
    with pytest.raises(InputError, match=r"^row 2 holds"):
        backend.transform(scheme, {}, clean)
    with pytest.raises(InputError, match=r"^row 6 holds"):
        backend.check_refusals()
    backend.check_refusals()
