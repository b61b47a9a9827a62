"""Checking a store's content against the checksums its manifest recorded at write time.

:func:`verify` re-reads every row of every data file and compares, range by range, the BLAKE2b-128
digest of its bytes with the one written with that range (see :mod:`gpuquant.store.layout`). It reads
the whole store, a few MiB at a time, unlike :func:`gpuquant.open`, which checks headers and sizes
only. The first range whose bytes differ is reported (:class:`~gpuquant.errors.StoreCorruptError`);
a store written before checksums existed, or rows without one, are said to be unverifiable
(:class:`~gpuquant.errors.ChecksumsMissingError`) after the rows that have one were checked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gpuquant.errors import ChecksumsMissingError, InputError, StoreCorruptError
from gpuquant.store.layout import CHECKSUM_METHOD, MANIFEST, digest
from gpuquant.store.read import open_store


def _ranges(doc: Any, rows: int, where: Path) -> list[tuple[int, int, dict[str, str]]]:
    """The recorded ranges, checked for shape: ``(start, stop, {array: digest})`` in row order."""
    out = []
    for r in doc.get("ranges", []) if isinstance(doc, dict) else []:
        span, sums = (r.get("rows"), r.get("sums")) if isinstance(r, dict) else (None, None)
        if (not isinstance(span, list) or len(span) != 2 or not all(type(v) is int for v in span)
                or not 0 <= span[0] < span[1] <= rows or not isinstance(sums, dict)):
            raise InputError(f"{where}: a checksums entry is malformed: {r!r}")
        out.append((span[0], span[1], sums))
    return sorted(out, key=lambda t: t[0])


def _gaps(ranges: list[tuple[int, int, dict[str, str]]], rows: int) -> list[list[int]]:
    gaps, at = [], 0
    for a, b, _ in ranges:
        if a > at:
            gaps.append([at, a])
        at = max(at, b)
    return gaps + ([[at, rows]] if at < rows else [])


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Re-read the complete store ``path`` and check it against its recorded checksums.

    Returns:
        ``{"status": "intact", "rows_checked", "ranges", "bytes_read", "method"}``.

    Raises:
        InputError: not a readable store (the quick checks of :func:`gpuquant.open`), or unfinished.
        StoreCorruptError: the first range whose bytes differ, naming its rows and file.
        ChecksumsMissingError: no checksums recorded (an older store), or rows without one; the
            rows that have one matched.
    """
    store = open_store(path)
    m, root = store.manifest, store.path
    where = root / MANIFEST
    sums = m.get("checksums")
    if not sums:
        raise ChecksumsMissingError(f"{root} has no checksums (written by a gpuquant older than this one): "
                                    "its files pass the quick checks of open, but their content cannot be "
                                    "verified; convert it again to record them")
    if sums.get("method") != CHECKSUM_METHOD:
        raise InputError(f"{where}: checksum method {sums.get('method')!r} is not {CHECKSUM_METHOD!r}")
    arrays = {"codes": store.codes, **store.side}
    files = {"codes": m["codes"]["file"], **{k: e["file"] for k, e in m.get("side", {}).items()}}
    ranges = _ranges(sums, store.rows, where)
    read = 0
    for a, b, recorded in ranges:
        for name, arr in arrays.items():
            want = recorded.get(name)
            if want is None:
                raise ChecksumsMissingError(f"{root}: rows {a}..{b - 1} have no checksum for {files[name]}")
            if digest(arr, a, b) != want:
                raise StoreCorruptError(f"{root}: rows {a}..{b - 1} of {files[name]} differ from what was written "
                                        "(checksum mismatch; the first damaged range): the store is damaged, "
                                        "convert it again")
            read += arr[a:b].nbytes
    gaps = _gaps(ranges, store.rows)
    if gaps:
        rows = ", ".join(f"{a}..{b - 1}" for a, b in gaps)
        raise ChecksumsMissingError(f"{root}: rows {rows} have no checksums (written by an older gpuquant, or their "
                                    "record was lost); the rows that have one match")
    return {"status": "intact", "rows_checked": store.rows, "ranges": len(ranges), "bytes_read": int(read),
            "method": CHECKSUM_METHOD}
