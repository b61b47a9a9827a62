"""Shared fixtures: fresh random data every run (seed printed in the header, fixed with
GPUQUANT_TEST_SEED=...) and the ``gpu`` skip. The helpers test files share are in ``helpers.py``
(imported as ``from helpers import ...``; nothing is imported from this file)."""

from __future__ import annotations

import os

import numpy as np
import pytest

SEED = int(os.environ.get("GPUQUANT_TEST_SEED", np.random.SeedSequence().entropy % 2**32))


def pytest_report_header(config: pytest.Config) -> str:
    return f"gpuquant test seed: {SEED} (set GPUQUANT_TEST_SEED={SEED} to repeat)"


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the run's seed and the test's name: fresh data each run, repeatable."""
    return np.random.default_rng([SEED, *request.node.nodeid.encode()])


@pytest.fixture(scope="session")
def gpu() -> None:
    """Skips the test without a usable GPU (see ``cupy_usable``)."""
    from helpers import cupy_usable

    ok, why = cupy_usable()
    if not ok:
        pytest.skip(f"no usable GPU: {why}")
