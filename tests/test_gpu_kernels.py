"""The cupy backend against the numpy reference, bit for bit, on a real GPU (marker ``gpu``).

Every preset and family variant x input dtype (float32, float16, float64) x shapes (n = 0, 1, odd
d, tails that are not multiples of 8/16, multi-block sizes) x edge values: transform and
inverse_transform equal ``scheme.encode`` / ``scheme.decode``; device training equals
``scheme.fit`` where the spec says exact; array kinds (numpy, CuPy, strided, Fortran, torch via
DLPack), ``out=`` and non-default streams. Skipped cleanly without CuPy or a usable GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_means_agree, edge_values, finite_edge_values, matrix
from helpers import bits as uint_bits

from gpuquant.codes import Codes
from gpuquant.errors import InputError
from gpuquant.schemes import PRESETS, make_scheme

cp = pytest.importorskip("cupy")
pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float16, np.float64]
SHAPES = [(0, 16), (1, 1), (1, 384), (3, 3), (5, 7), (17, 13), (33, 127), (64, 384), (9, 1000), (7, 64), (700, 40)]
BIG_SHAPE = (1025, 385)  # several blocks of tasks, rows not a multiple of anything


@pytest.fixture(scope="module")
def backend(gpu):
    from gpuquant.backends.cupy_backend import CupyBackend

    return CupyBackend()


def variants() -> list[tuple[str, dict]]:
    """(id, make_scheme kwargs): every preset plus every family variant."""
    from gpuquant.backends.cupy_backend import FAMILIES

    out = [(name, {"name": name}) for name in PRESETS if make_scheme(name).family in FAMILIES]
    for rounding in ("half_away", "floor", "trunc", "half_even"):
        for gran in ("tensor", "dimension"):
            for bits, signed, order in [(8, False, "low_first"), (8, True, "low_first"), (4, False, "low_first"),
                                        (4, True, "high_first"), (4, False, "high_first")]:
                kw = dict(granularity=gran, range="minmax", rounding=rounding, bits=bits, signed=signed,
                          nibble_order=order)
                out.append((f"scalar-{rounding}-{gran}-{bits}{'s' if signed else 'u'}-{order}", {"name": "scalar", **kw}))
    for gran, g in (("row", 64), ("block", 32), ("tensor", 64)):
        for bits, order in ((8, "low_first"), (4, "low_first"), (4, "high_first")):
            for eps in (0.0, 1e-8):
                out.append((f"absmax-{gran}-{bits}-{order}-{eps}",
                            {"name": "absmax", "granularity": gran, "bits": bits, "block_size": g, "eps": eps,
                             "nibble_order": order}))
    for fmt in ("e4m3", "e5m2", "fp16", "bf16"):
        for sat in (False, True):
            out.append((f"float-{fmt}-{'sat' if sat else 'nosat'}", {"name": "float", "format": fmt, "saturate": sat}))
        out.append((f"float-{fmt}-raise", {"name": "float", "format": fmt, "nonfinite": "raise"}))
    for thr in ("zero", "mean", "median"):
        for order in ("little", "big"):
            for signed, enc in ((False, "offset"), (True, "offset"), (True, "twos_complement")):
                out.append((f"binary-{thr}-{order}-{signed}-{enc}",
                            {"name": "binary", "threshold": thr, "bitorder": order, "signed": signed,
                             "signed_encoding": enc}))
    return out


VARIANTS = variants()


def build(kw: dict):
    kw = dict(kw)
    return make_scheme(kw.pop("name"), **kw)


def host(a) -> np.ndarray:
    """A C-ordered host copy (at least 1-D) of a CuPy or host array."""
    return np.ascontiguousarray(cp.asnumpy(a) if isinstance(a, cp.ndarray) else np.asarray(a))


def assert_same_bits(got, want, what: str = "") -> None:
    g, w = uint_bits(host(got)), uint_bits(host(want))
    assert g.shape == w.shape, f"{what}: shape {g.shape} != {w.shape}"
    bad = np.flatnonzero(g.reshape(-1) != w.reshape(-1))
    assert bad.size == 0, f"{what}: {bad.size} of {g.size} differ, first {bad[:5]}: {g.reshape(-1)[bad[:5]]} vs {w.reshape(-1)[bad[:5]]}"


def inputs(rng: np.random.Generator, scheme, n: int, d: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(x in ``dtype``, its float32 view as the reference sees it) with edge values scattered in."""
    x = matrix(rng, n, d, edges=finite_edge_values() if scheme.family == "absmax" else edge_values())
    if n >= 4 and d >= 1:
        x[1] = 0.0
        x[2] = (rng.standard_normal(d) * 1e-39).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN payloads and huge values in narrow types
        xd = x.astype(dtype)
        if scheme.family == "absmax":  # values beyond float16's range would make whole rows non-finite
            xd[~np.isfinite(xd)] = 0
        return xd, xd.astype(np.float32)


def reference_state(scheme, rng, d: int):
    """The reference's fitted state on clean data of width d (None for schemes without fit)."""
    if not scheme.needs_fit:
        return scheme.initial_state() or {}
    return scheme.fit(matrix(rng, max(8, 3000 // d), d))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("kw", [v[1] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_transform_and_inverse_match_reference(backend, rng, kw: dict, dtype) -> None:
    scheme = build(kw)
    for n, d in [*SHAPES, BIG_SHAPE]:
        if scheme.family == "absmax" and scheme.params["granularity"] == "block" and d % scheme.params["block_size"]:
            continue
        state = reference_state(scheme, rng, d)
        x, x32 = inputs(rng, scheme, n, d, dtype)
        try:
            want, want_side = scheme.encode(x32, state)
        except InputError as exc:  # refused rows (nonfinite="raise"): the same refusal, same row
            for arg in (cp.asarray(x), x):
                with pytest.raises(InputError) as info:
                    backend.transform(scheme, state, arg)
                    backend.check_refusals()  # device input: refusals surface at the check
                assert str(info.value) == str(exc)
            limit = getattr(scheme, "max_finite", np.inf)
            x32 = np.clip(np.nan_to_num(x32, nan=0.0, posinf=1.0, neginf=-1.0), -limit, limit)
            x = x32.astype(dtype)
            x32 = x.astype(np.float32)
            want, want_side = scheme.encode(x32, state)
        for source in ("device", "host"):
            arg = cp.asarray(x) if source == "device" else x
            got = backend.transform(scheme, state, arg)
            assert isinstance(got.data, cp.ndarray if source == "device" else np.ndarray)
            assert got.dim == d
            assert_same_bits(got.data, want, f"codes {source} n={n} d={d}")
            for name, arr in want_side.items():
                assert_same_bits(got.side[name], arr, f"side {name} n={n} d={d}")
        codes = rng.integers(0, 256, want.nbytes, dtype=np.uint8).view(want.dtype).reshape(want.shape)
        if scheme.family == "float":
            codes = want  # random fp16/bf16 NaN payloads are covered by the host test
        side = {k: v.copy() for k, v in want_side.items()}
        want_x = scheme.decode(codes, side, state, d)
        for source in ("device", "host"):
            c = Codes(cp.asarray(codes.view(np.uint8 if codes.dtype.itemsize == 1 else np.uint16))
                      if source == "device" else codes,
                      {k: cp.asarray(v) if source == "device" else v for k, v in side.items()}, scheme.family, d)
            got_x = backend.inverse_transform(scheme, state, c)
            assert isinstance(got_x, cp.ndarray if source == "device" else np.ndarray)
            assert_same_bits(got_x, want_x, f"inverse {source} n={n} d={d}")


@pytest.mark.parametrize("layout", ["strided", "fortran", "offset"])
def test_non_contiguous_device_input(backend, rng, layout: str) -> None:
    scheme = make_scheme("cuvs-sq8")
    x = matrix(rng, 301, 130, edges=edge_values())
    state = scheme.fit(np.nan_to_num(x, nan=0, posinf=1, neginf=-1))
    dev = cp.asarray(x)
    view = {"strided": dev[::2, 1::2], "fortran": cp.asfortranarray(dev), "offset": dev.reshape(-1)[3:3 + 300 * 129].reshape(300, 129)}[layout]
    want, _ = scheme.encode(cp.asnumpy(view).astype(np.float32), state)
    assert_same_bits(backend.transform(scheme, state, view).data, want, layout)


def test_out_arrays(backend, rng) -> None:
    scheme = make_scheme("int4-block")
    x = matrix(rng, 50, 128)
    want, want_side = scheme.encode(x, {})
    dev_out = Codes(cp.empty(want.shape, want.dtype), {"scales": cp.empty(want_side["scales"].shape, cp.float32)})
    got = backend.transform(scheme, {}, cp.asarray(x), out=dev_out)
    assert got.data is dev_out.data and got.side["scales"] is dev_out.side["scales"]
    assert_same_bits(dev_out.data, want)
    host_out = np.empty_like(want)
    got = backend.transform(scheme, {}, x, out=Codes(host_out, {"scales": np.empty_like(want_side["scales"])}))
    assert got.data is host_out
    assert_same_bits(host_out, want)
    y = cp.empty(x.shape, cp.float32)
    dev_codes = backend.transform(scheme, {}, cp.asarray(x))
    assert backend.inverse_transform(scheme, {}, dev_codes, out=y) is y
    assert_same_bits(y, scheme.decode(want, want_side, {}, 128))
    host_y = np.empty(x.shape, np.float32)
    assert backend.inverse_transform(scheme, {}, got, out=host_y) is host_y
    assert_same_bits(host_y, y)
    with pytest.raises(InputError):
        backend.transform(scheme, {}, cp.asarray(x), out=cp.empty((50, 63), cp.uint8))


def test_non_default_stream(backend, rng) -> None:
    scheme = make_scheme("st-int8")
    x = matrix(rng, 1000, 96)
    state = scheme.fit(x)
    want, _ = scheme.encode(x, state)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        dev = cp.asarray(x)
        got = backend.transform(scheme, state, dev)
        back = backend.inverse_transform(scheme, state, got)
    stream.synchronize()
    assert_same_bits(got.data, want)
    assert_same_bits(back, scheme.decode(want, {}, state, 96))


def test_torch_dlpack(backend, rng) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    scheme = make_scheme("fp8-e4m3")
    x = matrix(rng, 64, 48, edges=edge_values())
    for dtype in (torch.float32, torch.float16):
        t = torch.from_numpy(x).to("cuda").to(dtype)
        want, _ = scheme.encode(t.float().cpu().numpy(), {})
        got = backend.transform(scheme, {}, t)
        assert isinstance(got.data, cp.ndarray)
        assert_same_bits(got.data, want, str(dtype))
    t = torch.from_numpy(x).to("cuda").t()  # a transposed (non-contiguous) view
    want, _ = scheme.encode(np.ascontiguousarray(x.T), {})
    assert_same_bits(backend.transform(scheme, {}, t).data, want, "transposed")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_absmax_refuses_non_finite_rows(backend, rng, bad: float) -> None:
    scheme = make_scheme("int8-row")
    x = matrix(rng, 40, 33)
    x[29, 5] = bad
    x[31, 0] = bad
    codes = backend.transform(scheme, {}, cp.asarray(x))  # no read-back: the flag is checked later
    with pytest.raises(InputError, match="row 29"):
        backend.check_refusals()
    with pytest.raises(InputError, match="row 29"):
        backend.transform(scheme, {}, x)  # host input: before the codes come back
    backend.transform(scheme, {}, cp.asarray(x[:29]))
    backend.check_refusals()  # the flag's slot was set back
    assert codes.data.shape == (40, 33)


def _captured_transform(backend, scheme, state, x, out: Codes):
    """One transform of ``x`` into ``out`` captured into a CUDA graph: the capture fails if the call
    waits for the device (a read-back), so capturing it proves it does not."""
    cp.cuda.Device().synchronize()
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        backend.transform(scheme, state, x, out=out)  # warm-up here: this stream's constants and flags
        stream.synchronize()
        stream.begin_capture()
        try:
            backend.transform(scheme, state, x, out=out)
        finally:
            graph = stream.end_capture()
    return graph


@pytest.mark.parametrize("preset", ["int8-row", "int4-block", "gguf-q8_0", "safetensors-fp8", "st-int8", "cuvs-sq8",
                                    "faiss-sq4", "binary", "fp16", "fp8-e4m3"])
def test_a_device_transform_never_waits_so_a_graph_can_capture_it(backend, rng, preset: str) -> None:
    scheme = make_scheme(preset)
    x = matrix(rng, 300, 64)
    state = reference_state(scheme, rng, 64)
    want, want_side = scheme.encode(x, state)
    dev = cp.asarray(x)
    first = backend.transform(scheme, state, dev)
    out = Codes(cp.zeros_like(first.data), {k: cp.zeros_like(v) for k, v in first.side.items()})
    graph = _captured_transform(backend, scheme, state, dev, out)
    out.data.fill(0)
    graph.launch()  # on the current stream, after the fill
    cp.cuda.Device().synchronize()
    backend.check_refusals()
    assert_same_bits(out.data, want, "graph replay")
    for name, arr in want_side.items():
        assert_same_bits(out.side[name], arr, f"graph replay side {name}")


def test_a_refusal_recorded_by_a_graph_replay_surfaces_at_the_check(backend, rng) -> None:
    scheme = make_scheme("int8-row")
    x = matrix(rng, 50, 96)
    dev = cp.asarray(x)
    out = backend.transform(scheme, {}, dev)
    graph = _captured_transform(backend, scheme, {}, dev, out)  # its flag stays pending until a check
    dev[37, 5] = np.nan
    graph.launch()
    cp.cuda.Device().synchronize()
    with pytest.raises(InputError, match=r"^row 37 holds NaN"):
        backend.check_refusals()


# -- training -----------------------------------------------------------------------------------
def same_values(got: dict, want: dict) -> None:
    """Fitted states equal as values (±0 may differ in sign: both give identical codes)."""
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert np.array_equal(got[k], want[k]), f"{k}: {got[k][:8]} vs {want[k][:8]}"


FIT_VARIANTS = [
    dict(range="minmax", granularity="tensor"),
    dict(range="minmax", granularity="dimension"),
    dict(range="absmax", granularity="tensor"),
    dict(range="absmax", granularity="dimension"),
    dict(range="quantile", granularity="tensor", quantile_method="cuvs"),
    dict(range="quantile", granularity="dimension", quantile_method="cuvs"),
    dict(range="quantile", granularity="tensor", quantile_method="exact"),
    dict(range="quantile", granularity="dimension", quantile_method="exact"),
    dict(range="quantile", granularity="tensor", quantile_method="exact", quantile=1.0),
    dict(range="quantile", granularity="tensor", quantile_method="exact", quantile=0.5),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("kw", FIT_VARIANTS, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_scalar_fit_matches_reference(backend, rng, kw: dict, dtype) -> None:
    scheme = make_scheme("scalar", **kw)
    for n, d in [(1, 1), (2, 3), (7, 13), (257, 384), (4000, 300), (60_000, 21)]:
        if n < 2 and kw["granularity"] == "dimension":
            continue
        x = matrix(rng, n, d, edges=finite_edge_values()[:5])
        x[0, 0] = np.float32(1e-42)
        xd = x.astype(dtype)
        x32 = xd.astype(np.float32)
        want = scheme.fit(x32)
        for arg in (cp.asarray(xd), xd):
            same_values(backend.fit(scheme, arg), want)


def test_fit_refuses_nan(backend, rng) -> None:
    x = matrix(rng, 100, 8)
    x[50, 3] = np.nan
    for kw in FIT_VARIANTS:
        with pytest.raises(InputError, match="NaN"):
            backend.fit(make_scheme("scalar", **kw), cp.asarray(x))
    for thr in ("mean", "median"):
        with pytest.raises(InputError, match="NaN"):
            backend.fit(make_scheme("binary", threshold=thr), cp.asarray(x))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: np.dtype(t).name)
def test_binary_fit(backend, rng, dtype) -> None:
    for n, d in [(1, 1), (2, 5), (101, 384), (5000, 33)]:
        x = matrix(rng, n, d)
        xd = x.astype(dtype)
        x32 = xd.astype(np.float32)
        median = make_scheme("binary", threshold="median")
        same_values(backend.fit(median, cp.asarray(xd)), median.fit(x32))
        mean = make_scheme("binary", threshold="mean")
        got, want = backend.fit(mean, cp.asarray(xd))["thresholds"], mean.fit(x32)["thresholds"]
        assert_means_agree(got, want, x32)  # float64 sums taken in another order


def test_radix_select_equals_sorting(backend, rng) -> None:
    from gpuquant.backends.cupy_train import select_values

    pools = [
        matrix(rng, 1000, 1000, edges=edge_values()[~np.isnan(edge_values())]),
        rng.integers(-3, 4, (500, 77)).astype(np.float32),  # many duplicates, ±0
        np.full((10, 10), np.float32(-0.0)),
        np.array([[np.float32(1e-45), -np.inf, np.inf, 0.0]], np.float32),
    ]
    for x in pools:
        flat = np.sort(x.reshape(-1))
        for k0, k1 in [(0, flat.size - 1), (flat.size // 2, flat.size // 3), *rng.integers(0, flat.size, (5, 2))]:
            for dtype in DTYPES:
                with np.errstate(over="ignore", invalid="ignore"):
                    xd = x.astype(dtype)
                    ref = np.sort(xd.astype(np.float32).reshape(-1))
                values, nans = select_values(cp.asarray(xd), int(k0), int(k1))
                assert nans == 0
                assert np.array_equal(values, ref[[k0, k1]]), (k0, k1, values, ref[[k0, k1]])
    x = matrix(rng, 100, 10)
    x[3, 3] = np.nan
    assert select_values(cp.asarray(x), 0, 5)[1] == 1
