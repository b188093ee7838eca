"""Recomputation (gradient checkpointing) under a memory budget.

The backward pass reads forward activations, so by default all of them stay
alive from the forward pass until their gradient is computed: the training
peak grows with depth. Chen et al. (2016, "Training deep nets with sublinear
memory cost") keep only the activations at ~√n segment boundaries and
recompute each segment's inside during the backward pass.

Here the forward schedule is cut into k segments of about equal *saved
bytes* (rather than equal node counts, so one wide layer does not dominate a
segment); values crossing a boundary are kept, every other forward value the
backward pass reads is dropped and recomputed from the kept ones, right
before its first backward reader. k is chosen by planning each candidate
(passes.memory: the live peak, the liveness bound over ONNX Runtime's order,
which the offset plan meets or nearly meets) and taking the one with the least
recomputed FLOPs whose live peak fits the budget ("auto": the smallest live
peak, which is what √n checkpointing aims for).

Recomputed nodes carry `tags["recompute"]`, which is part of the CSE key, so
eliminate_common_subexpressions never merges them back into the originals.
ONNX Runtime has its own CSE, which would: each recomputed segment therefore
starts from its checkpoints through `recompute_barrier` nodes (an identity
ORT cannot see through), so the copies stay copies in the exported step.
"""

from __future__ import annotations

import math
import re

from graphc.errors import GraphError
from graphc.ir import Graph, Node
from graphc.ops.registry import get_op
from graphc.passes import cost
from graphc.passes.manager import register
from graphc.passes.memory import ort_schedule, plan_memory
from graphc.passes.rewrite import protected

EXPENSIVE = 8  # FLOPs per output element above which an op's output is worth keeping
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_budget(text: str | int) -> int | str:
    """'auto', a byte count, or a size such as 200MB / 1.5GiB."""
    if isinstance(text, int):
        return text
    t = str(text).strip().lower()
    if t == "auto":
        return "auto"
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([kmg]i?b|b)?", t)
    if not m:
        raise GraphError(
            f"cannot read the memory budget '{text}'",
            hint="give bytes (500000000), a size (200MB, 1.5GiB) or auto",
        )
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def backward_nodes(g: Graph, order: list[Node]) -> set[str]:
    """Nodes that run after the loss: everything downstream of the node producing it.

    Gradient nodes that read only forward values (relu's mask) are not among
    them: they are activations the backward pass keeps, so they may be dropped
    and recomputed like any other.
    """
    producers = g.producers()
    if g.loss is None or g.loss not in producers:
        return {n.name for n in order if n.tags.get("grad") or n.tags.get("train")}
    after: set[str] = set()
    reached = set(producers[g.loss].outputs)
    for n in order:
        if n.name != producers[g.loss].name and any(v in reached for v in n.inputs):
            after.add(n.name)
            reached.update(n.outputs)
    return after


def recompute_graph(g: Graph, segments: int, keep_expensive: bool = False) -> tuple[Graph, int]:
    """A copy of `g` with √n-style checkpointing over `segments` segments; (graph, FLOPs added).

    With `keep_expensive`, outputs of ops that cost more than EXPENSIVE FLOPs per
    output element (matmul, conv) are kept too: only the cheap element-wise work
    around them (activations, masks, residual sums) is recomputed.
    """
    g = g.copy()
    order = g.topo_order()
    keep = protected(g)
    sizes = cost.dim_sizes(g)
    back = backward_nodes(g, order)
    producers = g.producers()
    fwd_all = [n for n in order if n.name not in back]
    # forward nodes by depth, so a mask computed late in the file sits next to its layer
    level: dict[str, int] = {}
    for n in fwd_all:
        level[n.name] = 1 + max(
            (level.get(producers[v].name, 0) for v in n.inputs if v in producers), default=0
        )
    rank = {n.name: i for i, n in enumerate(order)}
    fwd = sorted(fwd_all, key=lambda n: (level[n.name], rank[n.name]))
    seg_of: dict[str, int] = {}
    saved = {o for n in order if n.name in back for o in n.inputs}
    weights = [sum(cost.nbytes(g.types[o], sizes) for o in n.outputs if o in saved) for n in fwd]
    total = max(sum(weights), 1)
    acc = 0
    for n, w in zip(fwd, weights):
        seg = min(int(acc * segments / total), segments - 1)
        for o in n.outputs:
            seg_of[o] = seg
        acc += w
    # a value is kept when a later segment (or anything but the backward) reads it
    kept: set[str] = set(keep)
    for n in fwd:
        for v in n.inputs:
            if v in seg_of and seg_of[v] != seg_of[n.outputs[0]]:
                kept.add(v)
    for n in fwd:
        if get_op(n.op, n.loc).random:
            kept.update(n.outputs)  # a second draw would differ
        elif keep_expensive and cost.node_flops(g, n) > EXPENSIVE * sum(
            cost.numel_of(g.types[o], sizes) for o in n.outputs
        ):
            kept.update(n.outputs)
    # the last segment is not dropped: the backward pass starts with it right away
    # (Chen et al. make the same remark), so recomputing it would buy nothing
    last = max(seg_of.values(), default=0)
    kept.update(v for v, s in seg_of.items() if s == last)
    dropped = {v for v in saved if v in seg_of and v not in kept}
    if not dropped:
        return g, 0
    clones: dict[str, str] = {}
    barriers: dict[str, str] = {}
    new_nodes: dict[str, list[Node]] = {}  # backward node -> clones to place before it
    added_flops = 0

    def source(v: str, before: str) -> str:
        """The value a clone reads for `v`: a clone, a barrier on a kept value, or v itself."""
        if v in seg_of and v not in kept:  # inside a segment: recomputed as well
            return clone(v, before)
        if v in seg_of:  # a kept activation: read through a barrier so ORT's CSE keeps copies
            if v not in barriers:
                name = g.unique_name(f"{v}_rc_in")
                node = Node(
                    name,
                    "recompute_barrier",
                    [v, anchor(before)],
                    [name],
                    {},
                    None,
                    [],
                    {"grad": True, "recompute": True},
                )
                g.add_node(node)
                g.types[name] = g.types[v]
                new_nodes.setdefault(before, []).append(node)
                barriers[v] = name
            return barriers[v]
        return v

    def anchor(before: str) -> str:
        """A gradient the node `before` reads: the recomputation must not start earlier."""
        for v in g.nodes[before].inputs:
            if v in producers and producers[v].name in back and v not in clones.values():
                return v
        return ""

    def clone(v: str, before: str) -> str:
        nonlocal added_flops
        if v in clones:
            return clones[v]
        p = producers[v]
        ins = [source(i, before) if i else "" for i in p.inputs]
        name = g.unique_name(f"{p.name}_rc")
        outs = [name] + [f"{name}:{i}" for i in range(1, len(p.outputs))]
        node = Node(
            name,
            p.op,
            ins,
            outs,
            dict(p.attrs),
            p.loc,
            [],
            dict(p.tags, grad=True, recompute=True, recompute_of=p.name),
        )
        g.add_node(node)
        for o, c in zip(p.outputs, outs):
            g.types[c] = g.types[o]
            clones[o] = c
        new_nodes.setdefault(before, []).append(node)
        added_flops += cost.node_flops(g, p)
        return clones[v]

    # a segment is recomputed as a whole, in forward order, where the backward pass first
    # needs any of it: each recomputed value then dies as soon as the copy of the forward
    # has used it, and only what the backward reads stays (as in the forward pass)
    by_segment: dict[int, list[str]] = {}
    for n in fwd:
        for o in n.outputs:
            if o in dropped:
                by_segment.setdefault(seg_of[o], []).append(o)
    for n in order:
        if n.name not in back:
            continue
        if any(v in dropped for v in n.inputs):
            for v in n.inputs:
                if v in dropped:
                    for w in by_segment[seg_of[v]]:
                        clone(w, n.name)
            n.inputs = [clone(v, n.name) if v in dropped else v for v in n.inputs]
    placed: list[str] = []
    for n in order:
        placed.extend(c.name for c in new_nodes.get(n.name, ()))
        placed.append(n.name)
    g.nodes = {k: g.nodes[k] for k in placed}
    g.meta["recompute_segments"] = segments
    from graphc.passes.dce import eliminate_dead_code

    eliminate_dead_code(g)  # the originals of dropped values are dead now
    g.meta.pop("_pass_note", None)
    return g, added_flops


def _choose(g: Graph, budget: int | str) -> tuple[Graph, str]:
    n_fwd = len(g.nodes) - len(backward_nodes(g, g.topo_order()))
    # ONNX Runtime runs its own (depth-first) order: plan what it will hold
    base = plan_memory(g, ort_schedule(g), offsets=False).peak
    root = max(int(math.sqrt(max(n_fwd, 1))), 2)
    tried = []
    for k in sorted(
        {2, 3, 4, 6, root // 2, root, 3 * root // 2, 2 * root, 3 * root, 4 * root} - {0, 1}
    ):
        for cheap in (False, True):
            cand, flops = recompute_graph(g, k, keep_expensive=cheap)
            tried.append(
                (k, plan_memory(cand, ort_schedule(cand), offsets=False).peak, flops, cand, cheap)
            )
    if budget == "auto":
        # near the smallest peak (within 5%), the candidate that recomputes least
        best = min(t[1] for t in tried)
        k, peak, flops, cand, cheap = min(
            (t for t in tried if t[1] <= 1.05 * best), key=lambda t: (t[2], t[1])
        )
    else:
        fits = [t for t in tried if t[1] <= budget]
        k, peak, flops, cand, cheap = (
            min(fits, key=lambda t: (t[2], t[1]))
            if fits
            else min(tried, key=lambda t: (t[1], t[2]))
        )
    if peak >= base:
        return g, f"no gain: live peak {cost.fmt_bytes(base)} is already the best"
    note = (
        f"{k} segments{' (matmul/conv outputs kept)' if cheap else ''}: "
        f"live peak {cost.fmt_bytes(base)} -> {cost.fmt_bytes(peak)}, "
        f"+{cost.fmt_count(flops)} FLOPs recomputed"
    )
    if budget != "auto" and peak > budget:
        note += f" (budget {cost.fmt_bytes(budget)} not reached)"
    return cand, note


@register(
    "recompute",
    "drop activations and recompute them in the backward pass to fit "
    "meta['memory_budget'] (bytes or 'auto')",
)
def recompute(g: Graph) -> Graph:
    budget = g.meta.get("memory_budget", "auto")
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if not any(n.tags.get("grad") for n in g.nodes.values()):
        g.meta["_pass_note"] = "no backward pass: nothing to recompute"
        return g
    out, note = _choose(g, budget)
    out.meta["_pass_note"] = note
    return out
