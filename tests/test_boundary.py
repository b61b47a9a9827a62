"""The plug-in boundary between the families and the layers that serve them.

Statistics: every layer's implementation of each statistic equals the numpy reference bit for bit
(streaming, by row blocks in any order). Registries: every kernel family has both launchers, every
layer implements every statistic, ``auto`` is decided by one function. Parameters: typed, frozen,
checked once, with one granularity vocabulary whose words are saved in each family's own spelling.
And the rule the boundary exists for: no module outside ``gpuquant/schemes`` names a family.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import finite_edge_values, matrix

import gpuquant
from gpuquant import backends
from gpuquant.engine import fit as efit
from gpuquant.engine.sources import ArraySource
from gpuquant.schemes import FAMILIES, make_scheme
from gpuquant.schemes import statistics as st
from gpuquant.schemes.granularity import PerBlock, PerColumn, PerRow, PerTensor

PACKAGE = Path(gpuquant.__file__).parent
STATISTICS = [st.MinMax(None), st.MinMax(0), st.AbsMax(), st.Quantile(0.9, "exact", None),
              st.Quantile(0.95, "exact", 0), st.Quantile(0.99, "cuvs", None), st.Quantile(0.5, "cuvs", 0),
              st.ColumnMean(), st.ColumnMedian(), st.ColumnMeanF32(), st.KMeans(1, 1, 2, 0, 500), st.Covariance()]
#: Statistics that refuse ±Inf as well as NaN (with ``NONFINITE_FIT_ROW``).
FINITE_ONLY = (st.AbsMax, st.ColumnMeanF32, st.KMeans, st.Covariance)


def _bits(result: Any) -> list[np.ndarray]:
    """A statistic's result as integer views (``+0.0`` and ``-0.0`` kept apart only where they can
    differ: order statistics may return either zero, so zeros are compared as zeros)."""
    parts = [np.asarray(p) for p in (result if isinstance(result, tuple) else (result,))]
    parts = [p if p.dtype == np.float64 else p.astype(np.float32) for p in parts]  # Covariance: float64
    return [np.where(p == 0, p.dtype.type(0), p).view(f"u{p.dtype.itemsize}") for p in parts]


@pytest.mark.parametrize("stat", STATISTICS, ids=repr)
@pytest.mark.parametrize("shape", [(1, 5), (2, 3), (997, 13)])
def test_each_streamed_statistic_equals_the_reference(rng: np.random.Generator, stat: st.Statistic,
                                                      shape: tuple[int, int]) -> None:
    X = matrix(rng, *shape, edges=finite_edge_values())
    rows = efit.StreamRows(ArraySource(X))
    try:
        want = st.REFERENCE[type(stat)](stat, X)
    except gpuquant.InputError as exc:  # a float32 sum of the edge values overflows: refused alike
        with pytest.raises(gpuquant.InputError, match=re.escape(str(exc))):
            efit.STREAMING[type(stat)](stat, rows, lambda _: None)
        return
    got = efit.STREAMING[type(stat)](stat, rows, lambda _: None)
    for g, w in zip(_bits(got), _bits(want), strict=True):
        np.testing.assert_array_equal(g, w)


def _refuses(stat: st.Statistic, X: np.ndarray, template: str, row: int) -> None:
    """The reference names ``row``; the streaming statistic refuses with the same template (the
    streaming fit, :func:`gpuquant.engine.fit.fit_rows`, then finds the row of the input)."""
    with pytest.raises(st.RowError, match=re.escape(template.format(row=f"row {row}"))):
        st.REFERENCE[type(stat)](stat, X)
    with pytest.raises(st.RowError) as info:
        efit.STREAMING[type(stat)](stat, efit.StreamRows(ArraySource(X)), lambda _: None)
    assert info.value.template == template


@pytest.mark.parametrize("stat", [s for s in STATISTICS if not isinstance(s, FINITE_ONLY)], ids=repr)
def test_each_statistic_refuses_nan_naming_the_row(stat: st.Statistic) -> None:
    X = np.ones((40, 3), np.float32)
    X[17, 1] = np.nan
    X[30, 0] = np.nan
    _refuses(stat, X, st.NAN_FIT_ROW, 17)


@pytest.mark.parametrize("stat", [s for s in STATISTICS if isinstance(s, FINITE_ONLY)], ids=repr)
@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_finite_only_statistics_refuse_nan_and_infinity_in_every_layer(stat: st.Statistic, bad: float) -> None:
    X = np.ones((40, 3), np.float32)
    X[3, 2] = bad
    _refuses(stat, X, st.NONFINITE_FIT_ROW, 3)


def test_every_layer_implements_every_statistic() -> None:
    from gpuquant import planner
    from gpuquant.backends import cupy_train

    kinds = {type(s) for s in STATISTICS}
    for table in (st.REFERENCE, efit.STREAMING, cupy_train.DEVICE, planner.FIT_TERMS):
        assert set(table) == kinds


def test_a_statistic_no_layer_knows_is_named_in_the_error() -> None:
    @dataclasses.dataclass(frozen=True)
    class Lattice(st.Statistic):
        pass

    with pytest.raises(NotImplementedError, match="the streaming fit has no implementation of the statistic"):
        st.implementation(efit.STREAMING, Lattice(), "the streaming fit")


@pytest.mark.parametrize("name", [p.name for p in gpuquant.presets()])
def test_the_declared_state_is_what_the_fit_returns(rng: np.random.Generator, name: str) -> None:
    scheme = make_scheme(name)
    state = scheme.fit(matrix(rng, 40, 64)) or {}
    spec = scheme.state_spec(64)
    assert sorted(state) == sorted(spec)
    for key, (shape, dtype) in spec.items():
        assert state[key].shape == shape and state[key].dtype == dtype


def test_every_kernel_family_has_both_launchers() -> None:
    from gpuquant.backends.cupy_backend import LAUNCHERS

    families = {family for family, _ in LAUNCHERS}
    assert families <= set(FAMILIES)
    assert set(LAUNCHERS) == {(f, mode) for f in families for mode in ("encode", "decode")}


@pytest.mark.parametrize("preset", ["st-int8", "binary", "int4-block", "fp8-e4m3", "pgvector-halfvec"])
def test_planned_launches_are_the_launchers_own_on_the_host(preset: str) -> None:
    # the seam tools use (SASS report): one launch per call, its arrays the caller's, no device needed
    from gpuquant.backends import device_code_dtype
    from gpuquant.backends.cupy_launch import LAUNCHERS, NAME_EXPRESSIONS, QUANTIZE_FILE, planned_launches

    scheme = make_scheme(preset)
    x = matrix(np.random.default_rng(1), 3, 64)
    state = scheme.fit(x) or {}
    codes = np.zeros(scheme.code_shape(3, 64), device_code_dtype(scheme))
    side = {k: np.ones(shape, dtype) for k, (shape, dtype) in scheme.side_shapes(3, 64).items()}
    y = np.empty((3, 64), np.float32)
    (enc,) = planned_launches(scheme, "encode", state, x, codes, side)
    (dec,) = planned_launches(scheme, "decode", state, codes, y, side)
    assert (scheme.family, "encode") in LAUNCHERS
    assert enc.filename == dec.filename == QUANTIZE_FILE and {enc.name, dec.name} <= set(NAME_EXPRESSIONS)
    assert enc.args[0] is x and enc.args[1] is codes and dec.args[0] is codes


@pytest.mark.parametrize(("d", "offset", "kernel"), [(384, 0, "absmax_encode"), (768, 0, "absmax_encode_rows"),
                                                   (4096, 0, "absmax_encode_rows"), (4100, 0, "absmax_encode"),
                                                   (770, 0, "absmax_encode"), (768, 1, "absmax_encode")])
def test_long_rows_take_the_kernel_that_holds_them_in_several_warps(d: int, offset: int, kernel: str) -> None:
    from gpuquant.backends.cupy_launch import planned_launches

    scheme = make_scheme("int8-row")
    buf = np.zeros(2 * d + 8, np.float32)
    start = (-buf.ctypes.data % 16) // 4 + offset
    x = buf[start:start + 2 * d].reshape(2, d)
    codes, side = np.zeros((2, d), np.int8), {"scales": np.ones(2, np.float32)}
    (launch,) = planned_launches(scheme, "encode", {}, x, codes.view(np.uint8), side)
    assert launch.name == f"{kernel}<float>"


def test_every_cuvs_family_has_fit_transform_and_inverse() -> None:
    from gpuquant.backends.cuvs_backend import IMPLEMENTATIONS, REQUIRES

    assert set(IMPLEMENTATIONS) == {(f, mode) for f in REQUIRES for mode in ("fit", "transform", "inverse")}


@pytest.mark.parametrize(("cupy_ok", "cupy_supports", "want"), [(True, True, "cupy"), (True, False, "numpy"),
                                                               (False, True, "numpy")])
def test_auto_is_decided_in_one_place(monkeypatch: pytest.MonkeyPatch, cupy_ok: bool, cupy_supports: bool,
                                      want: str) -> None:
    monkeypatch.setattr(backends.registry, "availability",
                        lambda name: (cupy_ok, "no GPU here") if name == "cupy" else (True, "always"))
    monkeypatch.setattr(backends.registry, "supports",
                        lambda name, scheme: (cupy_supports, "no kernel") if name == "cupy" else (True, "all"))
    name, skipped = backends.pick_auto(make_scheme("int8-row"))
    assert name == want
    assert skipped == ({} if want == "cupy" else {"cupy": "no GPU here" if not cupy_ok else "no kernel"})


def test_every_backend_answers_supports() -> None:
    scheme = make_scheme("gguf-q8_0")
    assert backends.supports("numpy", scheme) == (True, "the numpy reference implements every scheme")
    assert backends.supports("cupy", scheme) == (True, "implemented by the GPU kernels")  # kernels/weights.cu
    assert backends.supports("cuvs", scheme)[0] is False


def test_the_cupy_modules_import_without_a_circle() -> None:
    code = ("import sys; import gpuquant.backends.cupy_train; "
            "print('gpuquant.backends.cupy_backend' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize(("family", "word", "saved", "kind"), [
    ("scalar", "column", "dimension", PerColumn()), ("scalar", "dimension", "dimension", PerColumn()),
    ("scalar", "tensor", "tensor", PerTensor()), ("scaled_fp8", "row", "channel", PerRow()),
    ("scaled_fp8", "channel", "channel", PerRow()), ("absmax", "row", "row", PerRow()),
    ("absmax", "block", "block", PerBlock(64)),
])
def test_one_granularity_vocabulary_saved_in_each_familys_spelling(family: str, word: str, saved: str,
                                                                     kind: Any) -> None:
    scheme = make_scheme(family, granularity=word)
    assert scheme.params["granularity"] == saved
    assert scheme.granularity == kind


@pytest.mark.parametrize(("family", "word", "message"), [
    ("scalar", "row", "granularity='row' is not supported; choose one of ['tensor', 'dimension']"),
    ("scaled_fp8", "block", "granularity='block' is not supported; choose one of ['channel', 'tensor']"),
])
def test_a_granularity_the_family_lacks_is_refused(family: str, word: str, message: str) -> None:
    with pytest.raises(gpuquant.InputError, match=re.escape(message)):
        make_scheme(family, granularity=word)


def test_parameters_are_typed_frozen_and_saved_in_field_order() -> None:
    scheme = make_scheme("cuvs-sq8", quantile=1)
    assert scheme.config.quantile == 1.0 and isinstance(scheme.config.quantile, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        scheme.config.bits = 4  # type: ignore[misc]
    assert list(scheme.params) == [f.name for f in dataclasses.fields(scheme.config)]


def test_no_module_outside_the_schemes_branches_on_a_family_name() -> None:
    names = "|".join(re.escape(f) for f in FAMILIES)
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)|family\s*(==|!=|in)\s*[("'\[]""")
    offenders = [f"{path.relative_to(PACKAGE)}:{i}: {line.strip()}"
                 for path in PACKAGE.rglob("*.py") if "schemes" not in path.relative_to(PACKAGE).parts
                 for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


@pytest.mark.parametrize("stat", [st.ColumnMeanF32(), st.KMeans(2, 4, 3, 7, 300), st.MinMax(0)], ids=repr)
def test_each_statistic_on_dask_chunks_equals_the_reference(rng: np.random.Generator, stat: st.Statistic) -> None:
    da = pytest.importorskip("dask.array")
    from gpuquant.cluster import DaskRows

    X = matrix(rng, 997, 12, edges=finite_edge_values()) / np.float32(1e30)  # keep float32 sums finite
    want = st.REFERENCE[type(stat)](stat, X)
    got = efit.STREAMING[type(stat)](stat, DaskRows(da.from_array(X, chunks=(101, 12))), lambda _: None)
    for g, w in zip(_bits(got), _bits(want), strict=True):
        np.testing.assert_array_equal(g, w)
