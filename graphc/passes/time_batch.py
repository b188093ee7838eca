"""Forward-only gradient factors of unrolled loops: gathered, shared, and (optionally) stacked.

Autodiff of an unrolled recurrent layer writes, for every time step, chains
of element-wise products on [N, units] blocks: sigmoid's derivative as
`(dy * s) * (1 - s)` after the product rule's `dh * tanh(c)`, tanh's as
`dy * (1 - t*t)`. Only dy carries the loss's gradient; the other factors
depend on the forward pass alone. Two generic passes (matched by data flow
and shapes, not by names):

* `reassociate_factors` (-O2), three rules run to a fixed point, each with
  a, b, e forward-only, d a gradient, all of one type:
  - `(d * a) * b -> d * (a * b)`, innermost first, so the gathered factor
    starts with autodiff's own first product, which for the LSTM's gates is
    the forward's `o * tanh(c)`, `i * g`, `f * c_prev`: CSE then shares them,
    and the gradient's path keeps one multiplication per gate and step;
  - `d * a ± d * b -> d * (a ± b)` in a sum (the GRU's update gate:
    `dh * h_prev - dh * n`);
  - `a * (1 - b * e) -> a - (a * b) * e` where `a * b` already exists (tanh'
    times a gate: `o * (1 - tanh(c)^2)` reuses the forward's `h = o * tanh(c)`).
  The numbers change by float rounding only.
* `batch_step_factors` (registered, not in -O2: it does not pay on ONNX
  Runtime CPU, see docs/optimizer.md): k >= 3 independent isomorphic
  element-wise subgraphs of forward-only gradient nodes (same ops,
  attributes, types, scalar constants) -> concat their inputs along the last
  axis, compute the subgraph once, split its outputs back. Bit-identical.
  On a [64, 32] block a node's dispatch is only about a third of its cost,
  so the stacked kernels cost about what the per-step ones did, and the
  concats and splits copy every factor twice more.

"Forward-only" is decided by data flow: a value is on the backward side when
it depends on the loss node's outputs or on a gradient seed (a gradient node
that reads nothing but constants and shapes, e.g. `ones_like(loss)` or what
constant folding made of it).
"""

from __future__ import annotations

import numpy as np

from graphc.ir import Graph, Node
from graphc.passes.manager import register
from graphc.passes.rewrite import (
    ELEMENTWISE,
    Match,
    Rule,
    builder_for,
    protected,
    read_once,
    replace_uses,
    rule_pass,
    sort_nodes,
)

# (op, input index) pairs that read only a value's shape
SHAPE_ONLY = {
    ("reshape_like", 1),
    ("zeros_like", 0),
    ("ones_like", 0),
    ("broadcast_to", 1),
    ("numel_ratio", 0),
    ("numel_ratio", 1),
}

MIN_STEPS = 3  # fewer isomorphic copies do not pay for the concats and splits
MIN_NODES = 2  # a one-node subgraph would save T - 1 dispatches for two full copies


def backward_values(g: Graph, order: list[Node] | None = None) -> set[str]:
    """Values that depend on the loss's gradient: downstream of the seed or of the loss node.

    A seed is a gradient node that reads nothing but constants and shapes
    (autodiff's `ones_like(loss)`, or what folding and broadcasting made of
    it). Shape-only reads do not carry the dependence.
    """
    order = order if order is not None else g.topo_order()
    back: set[str] = set()
    for n in order:
        if g.loss in n.outputs:  # a fused loss's other outputs (log-probabilities) too
            back.update(n.outputs)
            continue
        data = [v for i, v in enumerate(n.inputs) if v and (n.op, i) not in SHAPE_ONLY]
        seed = n.tags.get("grad") and all(v in g.constants for v in data)
        if seed or any(v in back for v in data):
            back.update(n.outputs)
    return back


# -------------------------------------------------------- reassociate_factors
def _forward(ctx: dict, v: str) -> bool:
    return v not in ctx["back"]


def _ctx_back(g: Graph, ctx: dict) -> None:
    if "back" not in ctx:
        ctx["back"] = backward_values(g)


def _reassociable(g: Graph, ctx: dict, v: str) -> bool:
    """v = d * a with d a gradient, a forward-only of the same type, and v read once."""
    p = ctx["producers"].get(v)
    if p is None or p.op != "mul" or len(ctx["consumers"].get(v, ())) != 1:
        return False
    if v in ctx["protected"] or p.tags.get("train") or p.tags.get("recompute"):
        return False
    kinds = {_forward(ctx, x) for x in p.inputs}
    return kinds == {True, False} and len({g.types[x] for x in (*p.inputs, v)}) == 1


def check_reassociate(g: Graph, node: Node, ctx: dict) -> Match | str:
    """(d * a) * b: a, b forward-only, d on the backward side, the inner product read once."""
    _ctx_back(g, ctx)
    out = node.outputs[0]
    if node.tags.get("train") or node.tags.get("recompute"):
        return "an optimizer update or recomputed node (left as it is)"
    if _forward(ctx, out):
        return "a forward-only product"
    for i in (0, 1):
        inner, b = node.inputs[i], node.inputs[1 - i]
        p = ctx["producers"].get(inner)
        if p is None or p.op != "mul" or not _forward(ctx, b):
            continue
        if inner in ctx["protected"] or len(ctx["consumers"].get(inner, ())) != 1:
            continue
        if node.inputs.count(inner) != 1:
            continue
        for j in (0, 1):
            d, a = p.inputs[j], p.inputs[1 - j]
            if _forward(ctx, d) or not _forward(ctx, a):
                continue
            # same-shaped operands only: a small broadcast factor is hoist_channel_scales'
            # business, and a * b over a larger shape would materialize a new big tensor
            if len({g.types[v] for v in (d, a, b, out)}) != 1:
                continue
            if _reassociable(g, ctx, d):
                # innermost first: ((d' * a') * a) * b gathers a' * a, then (a' * a) * b, in
                # autodiff's order, which is the forward's own product (o * tanh(c), i * g)
                # that CSE then shares
                return "waiting for the inner product to be reassociated first"
            return Match(node, {"d": d, "a": a, "b": b, "inner": p})
    return "not (d * a) * b with forward-only a, b and a gradient d"


def rewrite_reassociate(g: Graph, m: Match) -> None:
    v = m.values
    b = builder_for(g, m.node, prefix=f"{m.node.name}_fwd_")
    ab = b.tensor(v["a"]) * b.tensor(v["b"])
    m.node.inputs = [v["d"], ab.name]
    # the inner product had no other reader: drop it now, so that the next round sees
    # d * a read once and can pull the next factor out of the chain
    g.remove_node(v["inner"].name)


def _gradient_term(g: Graph, ctx: dict, v: str) -> tuple[str, str, bool, list[Node]] | None:
    """(d, a, negated, nodes) when v = d * a or -(d * a), read once; d a gradient, a not."""
    nodes = []
    p = ctx["producers"].get(v)
    negated = p is not None and p.op == "neg"
    if negated:
        if len(ctx["consumers"].get(v, ())) != 1 or v in ctx["protected"]:
            return None
        nodes.append(p)
        v = p.inputs[0]
        p = ctx["producers"].get(v)
    if p is None or p.op != "mul" or p.tags.get("train") or p.tags.get("recompute"):
        return None
    if len(ctx["consumers"].get(v, ())) != 1 or v in ctx["protected"]:
        return None
    nodes.append(p)
    for j in (0, 1):
        d, a = p.inputs[j], p.inputs[1 - j]
        if not _forward(ctx, d) and _forward(ctx, a) and g.types[d] == g.types[a] == g.types[v]:
            return d, a, negated, nodes
    return None


def check_shared_gradient(g: Graph, node: Node, ctx: dict) -> Match | str:
    """add_n(..., d * a, ±(d * b), ...) with one gradient d and forward-only a, b."""
    _ctx_back(g, ctx)
    if node.tags.get("train") or node.tags.get("recompute"):
        return "an optimizer update or recomputed node (left as it is)"
    out_type = g.types[node.outputs[0]]
    terms = {}
    for i, v in enumerate(node.inputs):
        t = _gradient_term(g, ctx, v) if node.inputs.count(v) == 1 else None
        if t is None or g.types[v] != out_type:
            continue
        if t[0] in terms:
            return Match(node, {"first": terms[t[0]], "second": (i, *t)})
        terms[t[0]] = (i, *t)
    return "no two terms are products of one gradient with forward-only factors"


def rewrite_shared_gradient(g: Graph, m: Match) -> None:
    (i, d, a, neg_a, nodes_a), (j, _, c, neg_c, nodes_c) = m.values["first"], m.values["second"]
    b = builder_for(g, m.node, prefix=f"{m.node.name}_fwd_")
    ta, tc = b.tensor(a), b.tensor(c)
    if neg_a and neg_c:  # -(d a) - (d c) = d * -(a + c)
        f = -(ta + tc)
    elif neg_a:
        f = tc - ta
    elif neg_c:
        f = ta - tc
    else:
        f = ta + tc
    rest = [v for k, v in enumerate(m.node.inputs) if k not in (i, j)]
    if rest:
        prod = b.tensor(d) * f
        m.node.inputs = [prod.name if k == i else v for k, v in enumerate(m.node.inputs) if k != j]
    else:  # the sum was just these two terms: it becomes the product
        m.node.op, m.node.inputs, m.node.attrs = "mul", [d, f.name], {}
    for n in (*nodes_a, *nodes_c):  # read only by this sum (checked): gone with their terms
        g.remove_node(n.name)


def _is_one(g: Graph, v: str) -> bool:
    return v in g.constants and np.asarray(g.constants[v]).size == 1 and np.all(g.constants[v] == 1)


def check_complement(g: Graph, node: Node, ctx: dict) -> Match | str:
    """a * (1 - b * e), all forward-only, where the product a * b already exists."""
    _ctx_back(g, ctx)
    if node.tags.get("train") or node.tags.get("recompute"):
        return "an optimizer update or recomputed node (left as it is)"
    out = node.outputs[0]
    for i in (0, 1):
        a, s = node.inputs[i], node.inputs[1 - i]
        sub = read_once(ctx, s)
        if sub is None or sub.op != "sub" or not _is_one(g, sub.inputs[0]):
            continue
        x = read_once(ctx, sub.inputs[1])
        if x is None or x.op != "mul":
            continue
        if not all(_forward(ctx, v) and g.types[v] == g.types[out] for v in (a, *x.inputs)):
            continue
        for j in (0, 1):
            b, e = x.inputs[j], x.inputs[1 - j]
            for c in ctx["consumers"].get(a, ()):
                if c is x or c.name not in g.nodes:  # x itself is about to go
                    continue
                if c.op == "mul" and sorted(c.inputs) == sorted([a, b]):
                    return Match(node, {"a": a, "ab": c.outputs[0], "e": e, "gone": [sub, x]})
    return "not a * (1 - b * e) with a * b already computed"


def rewrite_complement(g: Graph, m: Match) -> None:
    v = m.values
    b = builder_for(g, m.node, prefix=f"{m.node.name}_fwd_")
    abe = b.tensor(v["ab"]) * b.tensor(v["e"])
    m.node.op, m.node.inputs, m.node.attrs = "sub", [v["a"], abe.name], {}
    for n in v["gone"]:
        g.remove_node(n.name)


reassociate_factors = rule_pass(
    "reassociate_factors",
    "(d * a) * b -> d * (a * b) and d * a ± d * b -> d * (a ± b), with a, b forward-only "
    "and d a gradient (the forward-only factor becomes its own value)",
    [
        Rule(
            "reassociate_factor",
            ("mul",),
            check_reassociate,
            rewrite_reassociate,
            "(d * a) * b -> d * (a * b)",
        ),
        Rule(
            "shared_gradient",
            ("add_n", "add"),
            check_shared_gradient,
            rewrite_shared_gradient,
            "add_n(d * a, -(d * b)) -> d * (a - b)",
        ),
        Rule(
            "complement_of_product",
            ("mul",),
            check_complement,
            rewrite_complement,
            "a * (1 - b * e) -> a - (a * b) * e where a * b exists (tanh': o (1 - t^2))",
        ),
    ],
)


# --------------------------------------------------------- batch_step_factors
class _Piece:
    """One connected subgraph of candidate nodes, in a canonical form."""

    def __init__(self, nodes: list[Node], inside: set[str], g: Graph, readers: dict) -> None:
        self.nodes = nodes
        self.leaves: list[str] = []
        refs = []
        local = {}
        for i, n in enumerate(nodes):
            local[n.outputs[0]] = i
            row = []
            for v in n.inputs:
                if v in local:
                    row.append(("n", local[v]))
                elif v in g.constants:
                    c = np.asarray(g.constants[v])
                    row.append(("c", str(c.dtype), c.shape, c.tobytes()))
                else:
                    if v not in self.leaves:
                        self.leaves.append(v)
                    row.append(("l", self.leaves.index(v)))
            attrs = repr(sorted(n.attrs.items()))
            refs.append((n.op, attrs, tuple(row)))
        keep = readers["protected"]
        self.outs = [
            i
            for i, n in enumerate(nodes)
            if n.outputs[0] in keep
            or any(r.name not in inside for r in readers["consumers"].get(n.outputs[0], ()))
        ]
        self.key = (g.types[nodes[0].outputs[0]], tuple(refs), tuple(self.outs))


def _candidate(g: Graph, n: Node, back: set[str], keep: set[str]) -> bool:
    if n.op not in ELEMENTWISE or len(n.outputs) != 1 or not n.tags.get("grad"):
        return False
    if n.tags.get("train") or n.tags.get("recompute"):
        return False
    out = n.outputs[0]
    t = g.types[out]
    if out in back or out in keep or t.rank == 0 or not isinstance(t.shape[-1], int):
        return False
    for v in n.inputs:
        if not v:
            return False
        if v in g.constants:
            if np.asarray(g.constants[v]).size != 1:
                return False
        elif g.types[v] != t:
            return False
    return True


def _pieces(g: Graph, order: list[Node]) -> list[_Piece]:
    back = backward_values(g, order)
    keep = protected(g)
    cand = {n.name: n for n in order if _candidate(g, n, back, keep)}
    producers = g.producers()
    consumers = g.consumers()
    pos = {n.name: i for i, n in enumerate(order)}
    # connected components over candidate-to-candidate edges
    parent = {k: k for k in cand}

    def find(k: str) -> str:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for n in cand.values():
        for v in n.inputs:
            p = producers.get(v)
            if p is not None and p.name in cand:
                parent[find(p.name)] = find(n.name)
    comps: dict[str, list[Node]] = {}
    for k in cand:
        comps.setdefault(find(k), []).append(cand[k])
    readers = {"consumers": consumers, "protected": keep}
    out = []
    for nodes in comps.values():
        nodes.sort(key=lambda n: pos[n.name])
        out.append(_Piece(nodes, {n.name for n in nodes}, g, readers))
    return out


def _independent(g: Graph, members: list[_Piece]) -> bool:
    """No member's output reaches any member's input (else computing them together is a cycle)."""
    consumers = g.consumers()
    leaves = {v for m in members for v in m.leaves}
    seen: set[str] = set()
    stack = [n.outputs[0] for m in members for n in m.nodes]
    while stack:
        v = stack.pop()
        for c in consumers.get(v, ()):
            if c.name in seen:
                continue
            seen.add(c.name)
            for o in c.outputs:
                if o in leaves:
                    return False
                stack.append(o)
    return True


def _stack(g: Graph, members: list[_Piece]) -> None:
    first = members[0]
    t = g.types[first.nodes[0].outputs[0]]
    axis, width, k = t.rank - 1, t.shape[-1], len(members)
    b = builder_for(g, first.nodes[0], prefix=f"{first.nodes[0].name}_stk_")
    stacked = [
        b.concat(*(b.tensor(m.leaves[j]) for m in members), axis=axis)
        for j in range(len(first.leaves))
    ]
    made = []
    for n in first.nodes:
        ins = []
        for v in n.inputs:
            if v in g.constants:
                ins.append(v)
            elif v in first.leaves:
                ins.append(stacked[first.leaves.index(v)].name)
            else:
                ins.append(made[[x.outputs[0] for x in first.nodes].index(v)].name)
        made.append(b.emit(n.op, ins, dict(n.attrs)))
    for i in first.outs:
        parts = b.split(made[i], axis=axis, sizes=(width,) * k)
        for m, part in zip(members, parts):
            replace_uses(g, m.nodes[i].outputs[0], part.name)


@register(
    "batch_step_factors",
    "k >= 3 independent isomorphic element-wise subgraphs of forward-only gradient nodes "
    "(an unrolled loop's per-step derivative factors) -> concat inputs, compute once, split",
)
def batch_step_factors(g: Graph) -> Graph:
    from graphc.passes.dce import eliminate_dead_code

    order = g.topo_order()
    pos = {}
    for i, n in enumerate(order):
        for o in n.outputs:
            pos[o] = i
    groups: dict[tuple, list[_Piece]] = {}
    for piece in _pieces(g, order):
        groups.setdefault(piece.key, []).append(piece)
    done, skipped = 0, 0
    for members in groups.values():
        if len(members) < MIN_STEPS or len(members[0].nodes) < MIN_NODES:
            continue
        # a consistent member order (by time) lets CSE share the stacks of common inputs
        members.sort(key=lambda m: max((pos.get(v, -1) for v in m.leaves), default=-1))
        if not _independent(g, members):
            skipped += 1
            continue
        _stack(g, members)
        done += 1
    eliminate_dead_code(g)
    sort_nodes(g)
    note = f"{done} groups stacked" if done else ""
    if skipped:
        note += f"{', ' if note else ''}{skipped} dependent groups left"
    g.meta["_pass_note"] = note
    return g
