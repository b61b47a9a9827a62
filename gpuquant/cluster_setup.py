"""Setting up a Dask run for :mod:`gpuquant.cluster`: importing Dask (an optional extra), joining or
starting a cluster (:func:`cluster_client`), and a Dask array over a gpuquant source
(:func:`from_source`: one task per row chunk, reading with the engine's readers).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from gpuquant.errors import BackendUnavailableError

log = logging.getLogger("gpuquant.cluster")

#: Input bytes per row chunk when gpuquant chunks a file source (``convert`` without ``batch_rows``).
CHUNK_BYTES = 64 * 2**20


def import_dask() -> Any:
    """``dask.array``, or :class:`gpuquant.BackendUnavailableError` saying how to install it."""
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - the extra is installed in the test environment
        raise BackendUnavailableError(f"gpuquant.cluster needs Dask: pip install 'gpuquant[dask]' ({exc})") from None
    return da


def _read_range(src: str, options: dict[str, Any], a: int, b: int) -> np.ndarray:
    from gpuquant.engine.sources import open_source

    s = open_source(src, **options)
    try:
        return s.read(a, b)
    finally:
        s.close()


def from_source(src: Any, *, shape: Any = None, chunk_rows: int | None = None, column: str | None = None,
                dataset: str | None = None) -> tuple[Any, dict[str, Any]]:
    """A Dask array over a gpuquant source (``.npy``, raw float32 with ``shape``, a directory of
    ``.npy`` shards, Parquet with ``column``, HDF5 with ``dataset``, big-ann files, or an array), one
    task per row chunk reading with the engine's readers, and the source's description (with its
    quick checksum) for the manifest."""
    da = import_dask()
    from dask import delayed

    from gpuquant.engine.sources import open_source

    options = {"shape": shape, "column": column, "dataset": dataset}
    s = open_source(src, **options)
    try:
        n, d = s.shape
        dtype, desc = s.dtype, s.describe()
        rows = int(chunk_rows or max(1, CHUNK_BYTES // s.row_bytes))
        if isinstance(src, (str, os.PathLike)):
            path = str(Path(src).resolve())
            parts = [da.from_delayed(delayed(_read_range, pure=True)(path, options, a, min(n, a + rows)),
                                     (min(n, a + rows) - a, d), dtype=dtype) for a in range(0, n, rows)]
            X = da.concatenate(parts, axis=0)
        else:
            X = da.from_array(np.asarray(src), chunks=(rows, d))
    finally:
        s.close()
    return X, desc


#: Keyword arguments for a local cluster that serves no dashboard and binds no fixed port:
#: ``dashboard_address=None`` alone still starts the scheduler's HTTP server on port 8787 (with a
#: warning and another port when 8787 is taken), so its address is set to port 0 (the OS picks one).
NO_DASHBOARD: dict[str, Any] = {"dashboard_address": None,
                                "scheduler_kwargs": {"dashboard": False, "dashboard_address": "127.0.0.1:0"}}


@contextlib.contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None, device: str = "auto") -> Any:
    """A ``distributed.Client``: connected to ``scheduler`` (an address), or to a new local cluster of
    ``workers`` workers: one per GPU through ``dask_cuda.LocalCUDACluster`` when dask-cuda is installed,
    a GPU is visible and ``device`` is not ``"cpu"``; otherwise ``workers`` processes of one thread."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise BackendUnavailableError(
            f"--scheduler / --workers need Dask: pip install 'gpuquant[dask]' ({exc})") from None
    if scheduler:
        with Client(scheduler) as c:
            yield c
        return
    cluster: Any = None
    if device != "cpu":
        try:
            from dask_cuda import LocalCUDACluster

            from gpuquant.backends import availability

            if availability("cupy")[0]:
                cluster = LocalCUDACluster(n_workers=workers, **NO_DASHBOARD)
        except ImportError:
            cluster = None
        except Exception as exc:  # noqa: BLE001 - no usable GPU: fall back to CPU processes
            log.info("dask-cuda cluster not started (%s); using CPU processes", exc)
            cluster = None
    if cluster is None:
        if device == "gpu":
            raise BackendUnavailableError("--device gpu with --workers needs dask-cuda and a working GPU "
                                          "(pip install dask-cuda)")
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               **NO_DASHBOARD)
    try:
        with Client(cluster) as c:
            yield c
    finally:
        cluster.close()


