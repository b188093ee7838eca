"""Memory planning: schedule, liveness, best-fit buffer sharing, in-place updates, peak.

The plan covers the values nodes produce (activations, gradients, updates);
inputs, parameters and constants are fixed memory and reported apart. Sizes
of symbolic dims come from `graph.meta["dim_sizes"]` (see passes.cost).

- Liveness: a value lives from the step that produces it to its last reader;
  graph outputs live to the end. A view (`aliases` facet: reshape, identity)
  takes no buffer of its own and extends the life of what it views. So does
  a transpose of the last two axes read by one matmul alone: ONNX Runtime
  folds it into the matmul (FusedMatMul with a transposed operand).
- In place: an output may take its input's memory when the op declares it
  safe (`inplace` facet) and that input is read for the last time there.
- Buffers: every tensor gets an offset in one arena. Largest first, each goes
  into the best-fitting (smallest sufficient) gap left by the tensors already
  placed whose lifetimes overlap its own; tensors that are never live at the
  same time share memory.
- Peak: the arena size. The liveness lower bound is the largest sum of live
  sizes at any step (no plan can beat it); a naive plan gives every tensor
  its own buffer.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field

from graphc.ir import Graph, Node
from graphc.ops.registry import get_op
from graphc.passes import cost
from graphc.passes.manager import register
from graphc.passes.rewrite import protected


@dataclass
class Tensor:
    name: str
    size: int  # bytes
    first: int  # step that produces it
    last: int  # last step that reads it (len(schedule) for outputs)
    offset: int | None = None  # byte offset in the arena; None for views
    view_of: str | None = None  # the value whose memory an alias reads
    inplace_of: str | None = None  # the input whose memory it took over


@dataclass
class MemoryPlan:
    schedule: list[str]  # node names in execution order
    tensors: list[Tensor]
    peak: int  # planned arena size: max(offset + size)
    lower_bound: int  # largest total of live bytes at any step
    naive: int  # one buffer per tensor
    fixed: int  # inputs, parameters and constants
    timeline: list[tuple[int, int]] = field(default_factory=list)  # (step, live bytes)
    inplace: int = 0  # outputs that reuse their input's memory

    @property
    def total_peak(self) -> int:
        return self.peak + self.fixed

    def table(self, limit: int | None = None) -> str:
        fb = cost.fmt_bytes
        rows = sorted(self.tensors, key=lambda t: (t.first, t.name))
        width = min(max([len(t.name) for t in rows] + [6]), 48)
        head = f"{'tensor':{width}} {'size':>10} {'first':>6} {'last':>6}  buffer (offset)"
        lines = [head, "-" * len(head)]
        for t in rows if limit is None else rows[:limit]:
            where = (
                f"view of {t.view_of}"
                if t.view_of
                else f"@{t.offset}" + (f" (in place of {t.inplace_of})" if t.inplace_of else "")
            )
            last = "end" if t.last >= len(self.schedule) else str(t.last)
            lines.append(
                f"{t.name[:width]:{width}} {fb(t.size):>10} {t.first:>6} {last:>6}  {where}"
            )
        if limit is not None and len(rows) > limit:
            lines.append(f"... {len(rows) - limit} more tensors")
        return "\n".join(lines + ["", self.summary()])

    def summary(self) -> str:
        fb = cost.fmt_bytes
        return (
            f"steps {len(self.schedule)}, tensors {len(self.tensors)}, "
            f"{self.inplace} in place\n"
            f"planned peak   {fb(self.peak)}  (activations, gradients, updates)\n"
            f"lower bound    {fb(self.lower_bound)}  (largest live set at one step)\n"
            f"naive plan     {fb(self.naive)}  (one buffer per tensor)\n"
            f"fixed          {fb(self.fixed)}  (inputs, parameters, constants)"
        )


def _root(views: dict[str, str], v: str) -> str:
    while v in views:
        v = views[v]
    return v


def _transposed_operand(
    graph: Graph, node: Node, readers: dict[str, list[Node]], keep: set[str]
) -> bool:
    """A transpose of the last two axes that one matmul alone reads (ORT fuses it away)."""
    if node.op != "transpose" or node.outputs[0] in keep:
        return False
    rank = graph.types[node.outputs[0]].rank
    perm = tuple(node.attrs.get("perm") or range(rank - 1, -1, -1))
    swap = tuple(range(rank - 2)) + (rank - 1, rank - 2)
    users = readers.get(node.outputs[0], [])
    return rank >= 2 and perm == swap and len(users) == 1 and users[0].op == "matmul"


def plan_memory(
    graph: Graph, schedule: Sequence[Node] | None = None, *, offsets: bool = True
) -> MemoryPlan:
    """Plan memory for `graph` executed in `schedule` (default: its topological order).

    With `offsets=False` only liveness is computed (fast): the plan's `peak` is then
    the lower bound, which is what schedule comparisons need.
    """
    order = list(schedule) if schedule is not None else graph.topo_order()
    sizes = cost.dim_sizes(graph)
    keep = protected(graph)
    end = len(order)
    size = {o: cost.nbytes(graph.types[o], sizes) for n in order for o in n.outputs}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    views: dict[str, str] = {}  # alias output -> the value it views
    readers = graph.consumers()
    for step, n in enumerate(order):
        op = get_op(n.op, n.loc)
        for i, o in enumerate(n.outputs):
            first[o] = last[o] = step
            j = op.aliases.get(i)
            if j is None and _transposed_operand(graph, n, readers, keep):
                j = 0
            if j is not None and j < len(n.inputs) and n.inputs[j] in size:
                views[o] = n.inputs[j]
        for v in n.inputs:
            if v in size:
                last[v] = max(last[v], step)
    for v in keep:
        if v in size:
            last[v] = end
    for v in sorted(views, key=lambda v: first[v], reverse=True):  # views keep their base alive
        r = _root(views, v)
        last[r] = max(last[r], last[v])
    roots = [v for v in size if v not in views]

    # in place: an output joins its input's slot when the op allows it and the input dies here
    slot_of = {v: v for v in roots}
    inplace_of: dict[str, str] = {}
    taken: set[str] = set()
    for step, n in enumerate(order):
        op = get_op(n.op, n.loc)
        for i, j in op.inplace.items():
            if i >= len(n.outputs) or j >= len(n.inputs):
                continue
            o, src = n.outputs[i], n.inputs[j]
            if (
                o in slot_of
                and src in slot_of
                and last[src] == step
                and src not in keep
                and size[o] <= size[src]
                and slot_of[src] == src
                and src not in taken
            ):
                slot_of[o] = slot_of[src]
                inplace_of[o] = src
                taken.add(src)
    slots: dict[str, list[str]] = {}
    for v in roots:
        slots.setdefault(_slot(slot_of, v), []).append(v)
    if offsets:
        offset = _assign_offsets(
            {
                s: (max(size[m] for m in ms), min(first[m] for m in ms), max(last[m] for m in ms))
                for s, ms in slots.items()
            }
        )
    else:
        offset = dict.fromkeys(slots)
    tensors = []
    for v, nb in size.items():
        if v in views:
            tensors.append(Tensor(v, nb, first[v], last[v], None, _root(views, v)))
        else:
            tensors.append(
                Tensor(v, nb, first[v], last[v], offset[_slot(slot_of, v)], None, inplace_of.get(v))
            )
    diff = [0] * (end + 2)
    for ms in slots.values():
        lo, hi = min(first[m] for m in ms), max(last[m] for m in ms)
        diff[lo] += max(size[m] for m in ms)
        diff[min(hi, end - 1) + 1] -= max(size[m] for m in ms)
    timeline, running = [], 0
    for step in range(end):
        running += diff[step]
        timeline.append((step, running))
    fixed = sum(
        cost.nbytes(graph.types[v], sizes)
        for v in list(graph.inputs) + list(graph.params) + list(graph.constants)
        if v in graph.types
    )
    lower = max((b for _, b in timeline), default=0)
    peak = (
        max((offset[s] + max(size[m] for m in ms) for s, ms in slots.items()), default=0)
        if offsets
        else lower
    )
    return MemoryPlan(
        [n.name for n in order],
        tensors,
        peak,
        lower,
        sum(size[v] for v in roots),
        fixed,
        timeline,
        len(inplace_of),
    )


def _slot(slot_of: dict[str, str], v: str) -> str:
    while slot_of[v] != v:
        v = slot_of[v]
    return v


def _assign_offsets(items: dict[str, tuple[int, int, int]]) -> dict[str, int]:
    """Offsets in one arena, largest first, each in the best-fitting gap among the
    already placed items whose lifetimes overlap it (greedy by size, as TFLite)."""
    import bisect

    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last), by offset
    out: dict[str, int] = {}
    for name, (sz, lo, hi) in sorted(items.items(), key=lambda kv: (-kv[1][0], kv[1][1])):
        best, best_gap, at = None, None, 0
        for a, b, f, la in placed:
            if f > hi or la < lo:
                continue  # never alive at the same time: its memory is free for this one
            gap = a - at
            if gap >= sz and (best_gap is None or gap < best_gap):
                best, best_gap = at, gap
            at = max(at, b)
        out[name] = best if best is not None else at
        bisect.insort(placed, (out[name], out[name] + sz, lo, hi))
    return out


def ort_schedule(graph: Graph) -> list[Node]:
    """The order ONNX Runtime's CPU executor runs the exported graph in (an emulation).

    ORT's default execution order (GraphViewer) is a post-order depth-first
    walk from the leaf nodes, visiting a node's producers highest node index
    first, where node indices follow the order of the exported model, i.e.
    this graph's topological order. ORT's own fusions change the graph a
    little, so this is a close estimate, not a guarantee. Planning with it
    tells what ORT will actually hold, which is what recompute must reduce.
    """
    nodes = graph.topo_order()
    index = {n.name: i for i, n in enumerate(nodes)}
    producers = graph.producers()
    has_users = {producers[v].name for n in nodes for v in n.inputs if v in producers}
    stack = [(n.name, False) for n in nodes if n.name not in has_users]
    seen: set[str] = set()
    out: list[Node] = []
    while stack:
        name, leave = stack.pop()
        if leave:
            out.append(graph.nodes[name])
            continue
        if name in seen:
            continue
        seen.add(name)
        stack.append((name, True))
        deps = sorted(
            {producers[v].name for v in graph.nodes[name].inputs if v in producers},
            key=index.__getitem__,
        )
        stack.extend((d, False) for d in deps if d not in seen)
    return out


def memory_order(graph: Graph) -> list[Node]:
    """A topological order that greedily runs the ready node freeing the most memory.

    Among ready nodes, run first one that frees more than it allocates (the
    largest net gain); otherwise keep the current order, so on a chain nothing
    changes. This pulls each gradient's consumers (updates, sums)
    right behind it instead of letting gradients pile up.
    """
    sizes = cost.dim_sizes(graph)
    keep = protected(graph)
    producers = graph.producers()
    nodes = graph.topo_order()
    pos = {n.name: i for i, n in enumerate(nodes)}
    users: dict[str, set[str]] = {}
    for n in nodes:
        for v in n.inputs:
            if v in producers:
                users.setdefault(v, set()).add(n.name)
    remaining = {v: len(u) for v, u in users.items()}
    nbytes = {o: cost.nbytes(graph.types[o], sizes) for n in nodes for o in n.outputs}
    indeg = {n.name: len({v for v in n.inputs if v in producers}) for n in nodes}
    done: set[str] = set()

    def gain(name: str) -> int:
        """Bytes allocated minus bytes freed by running `name` now (negative: it frees)."""
        n = graph.nodes[name]
        freed = sum(
            nbytes[v]
            for v in set(n.inputs)
            if v in remaining and remaining[v] == 1 and v not in keep
        )
        return sum(nbytes[o] for o in n.outputs) - freed

    # two heaps with lazy deletion: ready nodes by position, and those that free memory
    by_pos = [(pos[n.name], n.name) for n in nodes if indeg[n.name] == 0]
    heapq.heapify(by_pos)
    freeing: list[tuple[int, int, str]] = []
    score: dict[str, int] = {}
    for _, name in by_pos:
        score[name] = gain(name)
        if score[name] < 0:
            heapq.heappush(freeing, (score[name], pos[name], name))
    order: list[Node] = []
    while len(order) < len(nodes):
        name = None
        while freeing:
            sc, _, cand = heapq.heappop(freeing)
            if cand not in done and score.get(cand) == sc:
                name = cand
                break
        while name is None:
            _, cand = heapq.heappop(by_pos)
            if cand not in done:
                name = cand
        done.add(name)
        n = graph.nodes[name]
        order.append(n)
        touched: set[str] = set()
        for v in set(n.inputs):
            if v in remaining:
                remaining[v] -= 1
                if remaining[v] == 1:  # its last reader now frees it: rescore that reader
                    touched.update(u for u in users[v] if u not in done)
        for o in n.outputs:
            for u in users.get(o, ()):
                indeg[u] -= 1
                if indeg[u] == 0:
                    heapq.heappush(by_pos, (pos[u], u))
                    touched.add(u)
        for u in touched:
            if indeg[u] == 0 and u not in done:
                score[u] = gain(u)
                if score[u] < 0:
                    heapq.heappush(freeing, (score[u], pos[u], u))
    return order


@register(
    "order_for_memory",
    "reorder the schedule greedily to keep the live set small "
    "(kept only if ONNX Runtime's own order of the result holds less, too)",
)
def order_for_memory(g: Graph) -> Graph:
    # The new order is the exported node order. ORT does not run it as such: its
    # depth-first order only uses node indices to break ties, so the reorder is kept
    # only when the live peak drops in our schedule and does not grow in ORT's.
    before = plan_memory(g, offsets=False).lower_bound
    ort_before = plan_memory(g, ort_schedule(g), offsets=False).lower_bound
    order = memory_order(g)
    cand = g.copy()
    cand.nodes = {n.name: cand.nodes[n.name] for n in order}
    after = plan_memory(cand, offsets=False).lower_bound
    ort_after = plan_memory(cand, ort_schedule(cand), offsets=False).lower_bound
    fb = cost.fmt_bytes
    if after < before and ort_after <= ort_before:
        g.nodes = {n.name: g.nodes[n.name] for n in order}
        g.meta["_pass_note"] = (
            f"live peak {fb(before)} -> {fb(after)}; in ORT's order "
            f"{fb(ort_before)} -> {fb(ort_after)}"
        )
    else:
        g.meta["_pass_note"] = (
            f"kept the order (live peak {fb(before)} -> {fb(after)}, "
            f"ORT's order {fb(ort_before)} -> {fb(ort_after)})"
        )
    return g
