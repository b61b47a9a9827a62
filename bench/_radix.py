"""The radix select's rows of ``bench/gpu_check.py`` (imported as ``_radix``, like ``_common``).

The exact quantile (``cupy_train.radix_select``) reads the input in pass 0 and pass 1, writes its
candidates in pass 1 and reads them in pass 2 (or the input again when they did not fit). Its six
launches (a histogram and a pick per pass) can be replayed on their own buffers; replaying them up
to the end of pass p times passes 1..p together, so a pass's own kernel time is the difference of
two such rows, and its fraction of the read-only roofline follows from the bytes it moves.
"""

from __future__ import annotations

from typing import Any

RADIX_ROW = "train: exact quantile (radix select, all values)"
CUPY_QUANTILE_ROW = "train: cupy.quantile (sort of a copy)"


def pass_bytes(nbytes: int, found: Any) -> list[int]:
    """Bytes each pass moves, for an input of ``nbytes`` and a ``cupy_train.RadixSelect``."""
    kept = 4 * min(found.candidates, found.capacity)
    return [nbytes, nbytes + kept, kept if found.input_reads == 2 else nbytes]


def pass_rows(launches: list[Any], per_pass: list[int]) -> list[tuple[dict[str, Any], list[Any], int]]:
    """(row, the launches up to the end of pass p, bytes of passes 1..p) per pass; no launches for
    every row when the select's were not all seen."""
    seen = len(launches) == 2 * len(per_pass)
    return [({"scheme": f"train: radix select passes 1-{p} (kernels)", "op": "train", "radix_pass": p,
              "pass_bytes": per_pass[p - 1]}, launches[:2 * p] if seen else [], sum(per_pass[:p]))
            for p in range(1, len(per_pass) + 1)]


def pass_figures(rows: list[dict[str, Any]], read_gbps: float) -> None:
    """Fills each pass row's own kernel time, bandwidth and fraction of the read-only roofline, and
    the select row's speed-up over ``cupy.quantile`` (whole calls)."""
    before = 0.0
    for r in sorted((r for r in rows if "radix_pass" in r and "kernel_seconds" in r), key=lambda r: r["radix_pass"]):
        r["pass_kernel_seconds"], before = r["kernel_seconds"] - before, r["kernel_seconds"]
        if r["pass_kernel_seconds"] > 0:
            r["pass_gbps"] = r["pass_bytes"] / r["pass_kernel_seconds"] / 1e9
            r["pass_fraction_of_read"] = r["pass_gbps"] / read_gbps
    seconds = {r["scheme"]: r.get("seconds") for r in rows}
    for r in rows:
        if r["scheme"] == RADIX_ROW and r.get("seconds") and seconds.get(CUPY_QUANTILE_ROW):
            r["speedup_vs_cupy_quantile"] = seconds[CUPY_QUANTILE_ROW] / r["seconds"]
