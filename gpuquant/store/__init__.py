"""The code store: the one owner of gpuquant's on-disk format (a directory of plain ``.npy`` files,
a fitted quantizer and a manifest; :mod:`gpuquant.store.layout` describes it). This package only
re-exports: the names and manifest checks (:mod:`~gpuquant.store.layout`), the lock
(:mod:`~gpuquant.store.lock`), writing (:mod:`~gpuquant.store.write`) and reading
(:mod:`~gpuquant.store.read`; ``gpuquant.open`` is :func:`open`) and checking the content
against its checksums (:mod:`~gpuquant.store.verify`).
"""

from gpuquant.errors import StoreBusyError, StoreIncompleteError
from gpuquant.store.layout import (
    CODES,
    COMPLETE,
    FORMAT_NAME,
    FORMAT_VERSION,
    IN_PROGRESS,
    MANIFEST,
    PARTS,
    QUANTIZER,
    check_output,
    is_converted_dir,
    read_manifest,
    staging_path,
)
from gpuquant.store.lock import StoreLock
from gpuquant.store.read import Converted, Store, read_converted
from gpuquant.store.read import open_store as open  # noqa: A004 - gpuquant.store.open(path), as gpuquant.open
from gpuquant.store.verify import verify
from gpuquant.store.write import (
    StoreWriter,
    check_output_free,
    check_space,
    create,
    discard,
    remove_leftovers,
    reopen,
    replace_with,
    stage,
    write_converted,
)

__all__ = [
    "CODES",
    "COMPLETE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IN_PROGRESS",
    "MANIFEST",
    "PARTS",
    "QUANTIZER",
    "Converted",
    "Store",
    "StoreBusyError",
    "StoreIncompleteError",
    "StoreLock",
    "StoreWriter",
    "check_output",
    "check_output_free",
    "check_space",
    "create",
    "discard",
    "is_converted_dir",
    "open",
    "read_converted",
    "read_manifest",
    "remove_leftovers",
    "reopen",
    "replace_with",
    "stage",
    "staging_path",
    "verify",
    "write_converted",
]
