"""Small inputs in ``bench/gpu_check.py``: does a CUDA graph or queueing hide the fixed cost per call?

At the small-input point (:data:`POINT_BYTES`, 64 MiB) every transform row of the plain call gets two
companions, timed in the same interleaved rounds:

* ``transform (graph)``: one call captured into a CUDA graph (stream capture on a private stream,
  after a warm-up call on that stream so that its constants and refusal flags exist before the
  capture), replayed with ``Graph.launch`` on the timing stream. The graph holds the call's kernels
  with their arguments, so a replay costs one launch of host work; the arguments' device arrays are
  kept alive with the replay. A call that synchronises inside (a host read-back) cannot be captured:
  its row reports the error.
* ``transform (xN queued)``: :data:`QUEUE` plain calls back to back between the timing events (time
  per call), so the host's set-up of call i + 1 overlaps the kernels of call i, as in a loop that
  does not wait for each result.

The target for these rows is at least 0.5 of the copy bandwidth. :func:`graph_lines` adds their
comparison to the short table. The captured refusal flag stays pending in the backend's log; its
inputs are finite, so no replay records a row in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

POINT_BYTES = 64 * 2**20
QUEUE = 10
GRAPH_OP, QUEUED_OP = "transform (graph)", f"transform (x{QUEUE} queued)"


class Replay:
    """A captured CUDA graph, launched on the current stream by a call, and the device arguments of
    its kernels (kept alive with it: the backend's caches may drop their own references)."""

    def __init__(self, graph: Any, arguments: list[tuple[Any, ...]]) -> None:
        self.graph, self.arguments = graph, arguments

    def __call__(self) -> None:
        self.graph.launch()


def capture(call: Callable[[], Any], stream: Any) -> Replay:
    """``call`` captured once into a CUDA graph on ``stream`` (after a warm-up call there)."""
    from gpuquant.backends import cupy_launch

    with stream:
        call()  # warm-up on the capturing stream: its per-stream constants and flags are made here
        stream.synchronize()
        stream.begin_capture()
        try:
            with cupy_launch.observe_launches() as launches:
                call()
        finally:
            graph = stream.end_capture()
    graph.upload(stream)
    stream.synchronize()
    return Replay(graph, [launch.args for launch in launches])


def companions(cp: Any, cases: list[Any], make_case: Callable[..., Any], failed: Callable[..., Any]) -> list[Any]:
    """The graph and queued rows of every transform case that ran (``make_case(row, call, moved,
    read_only=..., queue=...)`` builds a case, ``failed(row, exc)`` a failed one)."""
    stream = cp.cuda.Stream(non_blocking=True)
    out = []
    for case in cases:
        if case.row.get("op") != "transform" or "error" in case.row:
            continue
        for op in (GRAPH_OP, QUEUED_OP):
            row: dict[str, Any] = {"scheme": case.row["scheme"], "op": op}
            try:
                call = capture(case.call, stream) if op == GRAPH_OP else case.call
                out.append(make_case(row, call, case.moved, read_only=case.read_only,
                                     queue=QUEUE if op == QUEUED_OP else 1))
            except Exception as exc:  # noqa: BLE001 - a call that cannot be captured reports why
                out.append(failed(row, exc))
    return out


def graph_lines(results: list[dict[str, Any]]) -> list[str]:
    """Per (scheme, d) at the small-input point: fraction of copy of the plain call, the graph and the
    queued calls (``-`` where missing or failed)."""
    small = [r for r in results if r.get("size_bytes", POINT_BYTES + 1) <= POINT_BYTES]
    by_key = {(r["scheme"], r.get("dim"), r["op"]): r for r in small}
    lines = []
    for scheme, dim, op in by_key:
        if op != "transform" or (scheme, dim, GRAPH_OP) not in by_key:
            continue
        fractions = [by_key.get((scheme, dim, o), {}).get("fraction_of_copy")
                     for o in ("transform", GRAPH_OP, QUEUED_OP)]
        shown = " ".join(f"{f:>8.2f}" if f is not None else f"{'-':>8}" for f in fractions)
        lines.append(f"{scheme[:34]:<34} {dim!s:>5} {shown}")
    if not lines:
        return []
    head = f"{'64 MiB: fraction of copy':<34} {'d':>5} {'plain':>8} {'graph':>8} {f'x{QUEUE} queue':>8}"
    return [head, *lines]
