"""What every pass shares: rerouting uses of a value, protected values, and the rule driver.

A rule is a pattern (the ops it watches), a check that returns either a match
or a string saying *why* it did not match, and a rewrite. The driver applies
rules over the graph until nothing changes and counts both rewrites and
reasons, so `--print-passes` can say what fired and what almost did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from graphc.builder import Builder
from graphc.ir import Graph, Node

# element-wise ops: output element i reads only element i of each (broadcast) input, so a
# group of them can run over concatenated or flattened operands unchanged
ELEMENTWISE = frozenset(
    {
        "add",
        "sub",
        "mul",
        "div",
        "neg",
        "sqrt",
        "square",
        "exp",
        "log",
        "abs",
        "sign",
        "reciprocal",
        "maximum",
        "minimum",
        "pow",
        "clip",
        "identity",
        "sigmoid",
        "tanh",
        "relu",
    }
)


def protected(g: Graph) -> set[str]:
    """Values the outside world reads by name: the outputs and the loss.

    Gradients are outputs of a gradient graph; inside a training step they are
    intermediate values like any other (the update reads them), so they may be
    renamed, fused and freed.
    """
    keep = set(g.outputs)
    if g.loss:
        keep.add(g.loss)
    return keep


def replace_uses(g: Graph, old: str, new: str) -> None:
    """Make every consumer of `old` read `new` instead (the producer is left for DCE)."""
    for n in g.nodes.values():
        if old in n.inputs:
            n.inputs = [new if v == old else v for v in n.inputs]


def reroute(readers, old: str, new: str) -> None:
    """Make each of `readers` (old's readers, from the round's index) read `new` instead.

    A rewrite that reroutes many values (one per time step) goes through the index; a
    `replace_uses` per value would scan the whole graph each time (quadratic in T)."""
    for r in readers:
        r.inputs = [new if v == old else v for v in r.inputs]


def reduce_axes(g: Graph, node: Node) -> tuple[int, ...]:
    """A reduction's axes attribute normalized: sorted and non-negative; None, an int or a
    tuple as the op accepts them (the graph is verified, so they are in range)."""
    rank = g.types[node.inputs[0]].rank
    axes = node.attrs["axes"]
    if axes is None:
        return tuple(range(rank))
    axes = (axes,) if isinstance(axes, int) else axes
    return tuple(sorted({a % rank for a in axes}))


def one_value(g: Graph, v: str) -> bool:
    """v holds a single element (0-d, or every dim 1): a scalar wherever it broadcasts."""
    return all(d == 1 for d in g.types[v].shape)


def read_once(ctx: dict, v: str) -> Node | None:
    """v's producer when v is read exactly once and is not a graph output (a rule may then
    rewrite or drop that producer), else None."""
    if v in ctx["protected"] or len(ctx["consumers"].get(v, ())) != 1:
        return None
    return ctx["producers"].get(v)


def sort_nodes(g: Graph) -> None:
    """Store the nodes in a topological order (rewrites append nodes at the end)."""
    order = g.topo_order()
    g.nodes = {n.name: n for n in order}


def builder_for(g: Graph, near: Node, prefix: str | None = None) -> Builder:
    """A builder whose new nodes carry `near`'s tags and location (gradient, recompute …)."""
    b = Builder(g, prefix=prefix if prefix is not None else f"{near.name}_", tags=dict(near.tags))
    b.loc = near.loc
    return b


def tagged(g: Graph, ctx: dict, key: str, value) -> list[Node]:
    """Nodes whose `tags[key] == value`, from an index built once per rule round."""
    index = ctx.get(("tags", key))
    if index is None:
        index = ctx[("tags", key)] = {}
        for n in g.nodes.values():
            if key in n.tags:
                index.setdefault(n.tags[key], []).append(n)
    return index.get(value, [])


@dataclass
class GradBoundary:
    """Where a forward region's backward pass meets the rest of the gradient graph."""

    nodes: list[Node]  # the gradient nodes of the region (tags grad_of)
    reads: set[str]  # what they read from neither the region nor themselves nor constants
    exits: set[str]  # what they make that nodes outside them read


def grad_boundary(g: Graph, ctx: dict, region: Iterable[Node]) -> GradBoundary:
    """The backward of a decomposed op (a loss, a batch norm) as the fusions see it: the
    incoming gradient is among `reads`, the outgoing ones are `exits`."""
    region = list(region)
    made = {o for n in region for o in n.outputs}
    names = dict.fromkeys(n.name for n in region)
    nodes = [n for name in names for n in tagged(g, ctx, "grad_of", name)]
    gmade = {o for n in nodes for o in n.outputs}
    reads = {
        v
        for n in nodes
        for v in n.inputs
        if v and v not in gmade and v not in made and v not in g.constants
    }
    inside = {n.name for n in nodes}
    exits = {
        o
        for n in nodes
        for o in n.outputs
        if any(c.name not in inside for c in ctx["consumers"].get(o, ()))
    }
    return GradBoundary(nodes, reads, exits)


@dataclass
class Match:
    """What a rule's check found; `values` are whatever its rewrite needs."""

    node: Node
    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rule:
    name: str
    ops: tuple[str, ...]  # ops the pattern is rooted at
    check: Callable[[Graph, Node, dict], Match | str]  # a match, or why not
    rewrite: Callable[[Graph, Match], None]
    doc: str = ""
    local: bool = True  # the rewrite changes only the graph next to the matched node


@dataclass
class RuleReport:
    fired: Counter = field(default_factory=Counter)
    missed: Counter = field(default_factory=Counter)  # (rule, reason) -> count
    unfinished: bool = False  # the round limit came before a fixed point

    def summary(self) -> str:
        parts = [f"{k} x{v}" for k, v in self.fired.items()]
        if self.unfinished:
            parts.append("stopped at the round limit: rules could still fire")
        return ", ".join(parts)


HUB = 8  # a value read this often is not walked through (see _near)


def _near(ctx: dict, node: Node, hops: int) -> set[str]:
    """Names of the nodes within `hops` edges of `node` (both directions) in the index.

    The walk does not continue through a hub: a node whose output has more than
    HUB readers (the transposed weight every time step of an unrolled LSTM
    reads), that has more than HUB inputs (the add_n summing those steps'
    weight gradients) or more than HUB outputs (the split cutting a sequence
    into its steps). The hub itself is within reach, so rules rooted at it wait;
    past it, the only fact a rewrite can change is a reader count, and checks
    only ask whether a value has exactly one reader, which a value with more
    than HUB readers does not have before or after (a split's outputs are
    separate values); rules never rewrite a many-input node from a neighbour's
    match. Without this, one rewrite would block every reader of the hub and
    the rounds would grow with the graph (one rewrite per round: quadratic).
    """
    seen = {node.name}
    frontier = [node]
    for _ in range(hops):
        nxt = []
        for n in frontier:
            if n is not node and (
                len(n.inputs) > HUB
                or len(n.outputs) > HUB
                or any(len(ctx["consumers"].get(o, ())) > HUB for o in n.outputs)
            ):
                continue
            for v in n.inputs:
                p = ctx["producers"].get(v)
                if p is not None and p.name not in seen:
                    seen.add(p.name)
                    nxt.append(p)
            for o in n.outputs:
                for c in ctx["consumers"].get(o, ()):
                    if c.name not in seen:
                        seen.add(c.name)
                        nxt.append(c)
        frontier = nxt
    return seen


def apply_rules(g: Graph, rules: Iterable[Rule], *, max_rounds: int = 200) -> RuleReport:
    """Apply rules until a fixed point.

    Each round indexes the graph once. A rewrite only changes facts next to the
    node it fired on, and a check reads facts at most two edges from its node,
    so after a rewrite the nodes within three edges (before and after the
    rewrite) wait for the next round instead of re-indexing the whole graph
    after every rewrite (quadratic on graphs with thousands of nodes). A rule
    marked `local=False` ends the round when it fires.
    """
    from graphc.passes.dce import eliminate_dead_code

    # dead readers would make "has other uses" checks fail until a later DCE: drop them first
    eliminate_dead_code(g)
    g.meta.pop("_pass_note", None)
    rules = list(rules)
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        for op in r.ops:
            by_op.setdefault(op, []).append(r)
    report = RuleReport()
    for _ in range(max_rounds):
        changed = False
        ctx: dict = {
            "consumers": g.consumers(),
            "producers": g.producers(),
            "protected": protected(g),
        }
        blocked: set[str] = set()
        stop = False
        for node in list(g.nodes.values()):
            if stop:
                break
            if node.name not in g.nodes or node.name in blocked:
                continue
            if not any(ctx["consumers"].get(o) or o in ctx["protected"] for o in node.outputs):
                continue  # dead (e.g. rerouted by an earlier rewrite): DCE removes it
            for rule in by_op.get(node.op, ()):
                found = rule.check(g, node, ctx)
                if isinstance(found, str):
                    report.missed[(rule.name, found)] += 1
                    continue
                blocked |= _near(ctx, node, 3)
                rule.rewrite(g, found)
                report.fired[rule.name] += 1
                changed = True
                if node.name in g.nodes:  # and around the inputs it reads now
                    blocked |= _near(ctx, node, 3)
                stop = not rule.local
                break
        if not changed:
            break
    else:
        report.unfinished = True
    sort_nodes(g)
    return report


def rule_pass(name: str, doc: str, rules: list[Rule]) -> Callable[[Graph], Graph]:
    """Register a pass that applies `rules` until none fires and records their report."""
    from graphc.passes.manager import register

    def run(g: Graph) -> Graph:
        g.meta["_pass_note"] = apply_rules(g, rules).summary()
        return g

    run.__name__ = name
    run.__doc__ = doc
    return register(name, doc)(run)
