"""The hot loop of a disassembled kernel, for ``bench/sass_report.py`` (whose docstring defines it).

``Instr`` is one SASS instruction as ``nvdisasm`` prints it; ``hot_loop`` finds the loops (back edges
to a dominating block) and, in the innermost loop that has one, the *common path* whose memory
operations match a ``Spec`` (the iteration's vector loads or stores), with no ``CALL`` block, and
returns its instruction count and what the budgets check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Instr:
    addr: int
    pred: str
    op: str
    text: str
    target: str | None  # branch or call label


def _blocks(instrs: list[Instr], labels: dict[str, int]) -> tuple[list[tuple[int, int]], dict[int, list[int]]]:
    """Basic blocks (start, end) and successors (block index -> block indices)."""
    starts = {0} | set(labels.values())
    for i, ins in enumerate(instrs):
        if ins.op.startswith(("BRA", "EXIT", "RET", "BRX", "JMP")):
            starts.add(i + 1)
    starts = sorted(s for s in starts if s < len(instrs))
    spans = [(s, e) for s, e in zip(starts, starts[1:] + [len(instrs)])]
    block_of = {s: b for b, (s, _) in enumerate(spans)}
    succ: dict[int, list[int]] = {}
    for b, (_, e) in enumerate(spans):
        last = instrs[e - 1]
        out: list[int] = []
        if last.op.startswith("BRA") and last.target in labels:
            out.append(block_of[labels[last.target]])
        falls = not (last.op.startswith(("BRA", "EXIT", "RET", "BRX", "JMP")) and not last.pred)
        if falls and b + 1 < len(spans):
            out.append(b + 1)
        succ[b] = out
    return spans, succ


def _dominators(succ: dict[int, list[int]], n: int) -> list[set[int]]:
    preds: dict[int, list[int]] = {b: [] for b in range(n)}
    for b, out in succ.items():
        for t in out:
            preds[t].append(b)
    dom = [set(range(n)) for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for b in range(1, n):
            new = set.intersection(*(dom[p] for p in preds[b])) if preds[b] else set()
            new = new | {b}
            if new != dom[b]:
                dom[b], changed = new, True
    return dom


def _topological(nodes: set[int], succ: dict[int, list[int]], dom: list[set[int]]) -> list[int]:
    """``nodes`` in an order where every forward edge (not to a dominator) goes later."""
    edges = {b: [t for t in succ[b] if t in nodes and t not in dom[b]] for b in nodes}
    indegree = {b: 0 for b in nodes}
    for out in edges.values():
        for t in out:
            indegree[t] += 1
    ready, order = sorted(b for b in nodes if indegree[b] == 0), []
    while ready:
        b = ready.pop(0)
        order.append(b)
        for t in edges[b]:
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    return order


@dataclass
class Spec:
    """The memory operations of a hot loop's common path: exactly ``count`` ops of ``kind`` (``"LDG"`` or
    ``"STG"``) ``bits`` wide (``None``: as many as any path has), and at least ``other_count`` of the
    other kind ``other_bits`` wide with none narrower (the code stores or loads of the tasks; exactly
    that many when ``vectors`` is set: the 16-byte vectors of real data per iteration when some wide
    ops are predicated off)."""

    kind: str
    bits: int
    count: int | None
    other_bits: int = 0
    other_count: int = 0
    vectors: int | None = None


def _width(ins: Instr) -> int:
    """Bits a memory instruction moves (LDG.E.128 128, LDG.E.U16 16, plain LDG.E 32)."""
    m = re.search(r"\.U?(8|16)\b", ins.op) or re.search(r"\.(32|64|128)\b", ins.op)
    return int(m.group(1)) if m else 32


def _feasible(ins: list[Instr], succ: list[int], spans: list[tuple[int, int]], labels: dict[str, int],
              *kinds: str) -> list[int]:
    """Successors of a block that a path counting its memory ops can take: a block ending in
    ``@P BRA`` whose counted ops run under ``@P`` (or ``@!P``) must take (or skip) that branch."""
    last = ins[-1]
    if not (last.op.startswith("BRA") and last.pred and last.target in labels):
        return succ
    guards = {i.pred for i in ins if i.op.startswith(kinds) and i.pred}
    taken = next(b for b, (start, _) in enumerate(spans) if start == labels[last.target])
    negated = last.pred[1:] if last.pred.startswith("@!") else "@!" + last.pred[1:]
    if last.pred in guards:
        return [taken]
    if negated in guards:
        return [t for t in succ if t != taken] or succ
    return succ


@dataclass
class LoopPath:
    instructions: int
    wide_ops: int
    input_load_bits: int
    local_memory_ops: int
    calls: list[str] = field(default_factory=list)
    listing: list[str] = field(default_factory=list)  # the common path, one instruction a line


def hot_loop(instrs: list[Instr], labels: dict[str, int], spec: Spec) -> LoopPath | None:
    """The innermost loop with a common path for ``spec`` (module docstring), or None."""
    spans, succ = _blocks(instrs, labels)
    dom = _dominators(succ, len(spans))
    back = [(u, h) for u, out in succ.items() for h in out if h in dom[u]]
    other = "STG" if spec.kind == "LDG" else "LDG"
    best: tuple[int, LoopPath] | None = None
    for head in sorted({h for _, h in back}):
        latches = {u for u, h in back if h == head}
        body, stack = {head}, list(latches)
        while stack:
            b = stack.pop()
            if b not in body:
                body.add(b)
                stack.extend(p for p, out in succ.items() if b in out)
        block_ins = {b: instrs[spans[b][0]:spans[b][1]] for b in body}
        cold = {b for b in body if any(i.op.startswith("CALL") for i in block_ins[b])}
        # DP over the body without back edges, in topological order: (wide, other, widest load) -> most
        # instructions (a clamp or NaN early-out is shorter than the common in-range path)
        order = _topological(body - cold, succ, dom)
        states: dict[int, dict[tuple[int, int, int], tuple[int, tuple[int, ...]]]] = {head: {(0, 0, 0): (0, ())}}
        paths: list[tuple[int, int, int, int, tuple[int, ...]]] = []
        for b in order:
            ins = block_ins[b]
            oth = [_width(i) for i in ins if i.op.startswith(other)]
            if b not in states or any(w < spec.other_bits for w in oth):
                continue
            wide = sum(1 for i in ins if i.op.startswith(spec.kind) and _width(i) == spec.bits)
            widest = max((_width(i) for i in ins if i.op.startswith("LDG")), default=0)
            targets = _feasible(ins, succ[b], spans, labels, spec.kind, other)
            for (w, o, lb), (cost, via) in states[b].items():
                key = (w + wide, min(o + oth.count(spec.other_bits), 64), max(lb, widest))
                cost, via = cost + len(ins), (*via, b)
                if b in latches:
                    paths.append((*key, cost, via))
                for t in targets:
                    if t in body and t not in cold and t not in dom[b]:
                        slot = states.setdefault(t, {})
                        slot[key] = max(slot.get(key, (cost, via)), (cost, via))
        want = spec.count if spec.count is not None else max((p[0] for p in paths), default=0)
        ok = [p for p in paths if p[0] == want and want > 0 and
              (p[1] == spec.other_count if spec.vectors else p[1] >= spec.other_count)]
        if not ok:
            continue
        w, _, lb, cost, via = max(ok, key=lambda p: p[3])
        size = sum(len(v) for v in block_ins.values())
        calls = sorted({i.target or "?" for v in block_ins.values() for i in v if i.op.startswith("CALL")})
        local = sum(1 for v in block_ins.values() for i in v if i.op.startswith(("LDL", "STL")))
        if best is None or size < best[0]:
            listing = [f"{i.pred} {i.op} {i.text}".strip() for b in via for i in block_ins[b]]
            best = (size, LoopPath(cost, spec.vectors or w, lb, local, calls, listing))
    return None if best is None else best[1]
