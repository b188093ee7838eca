"""What the canvas draws: boxes (label lines, kind) and edges, built from a Graph.

Plain logic, no Textual: the canvas lays a Scene out and paints it. Graph
inputs and nodes are boxes; parameters and constants are not (the inspector
lists a node's parameters). Collapsed groups become one box each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx

from graphc import Graph, GraphError
from graphc.infer import split_inputs
from graphc.ops.registry import get_op
from graphc.shapes import fmt_shape
from graphc.tui.check import CheckResult

MAX_W = 30
MIN_W = 12
BOX_H = 5  # border, three text lines, border

_SHORT_DTYPE = {
    "float32": "",
    "float64": "f64",
    "float16": "f16",
    "int64": "i64",
    "int32": "i32",
    "bool": "bool",
}


@dataclass
class SceneBox:
    name: str
    lines: list[str]
    kind: str  # "input", "node", "grad", "fused", "group"
    error: bool = False
    blocked: bool = False
    marks: str = ""  # "out", "loss"
    members: tuple[str, ...] = ()  # for a group: the nodes it stands for

    @property
    def size(self) -> tuple[int, int]:
        w = max(len(s) for s in self.lines) + 4
        return (max(MIN_W, min(MAX_W, w)), BOX_H)


@dataclass
class Scene:
    boxes: dict[str, SceneBox]
    edges: list[tuple[str, str]]  # box -> box
    error_edges: set[tuple[str, str]] = field(default_factory=set)
    owner: dict[str, str] = field(default_factory=dict)  # node/input name -> box name

    def key(self) -> tuple:
        """Everything the layout depends on: box sizes and edges."""
        return (tuple((k, b.size) for k, b in self.boxes.items()), tuple(self.edges))


def _fit(s: str, width: int = MAX_W - 4) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def type_text(graph: Graph, value: str) -> str:
    t = graph.types.get(value)
    if t is None:
        return "?"
    return f"{_SHORT_DTYPE.get(t.dtype, t.dtype)}{fmt_shape(t.shape)}".replace(" ", "")


def attr_text(node) -> str:
    try:
        op = get_op(node.op)
    except GraphError:
        return ""
    parts = []
    for k in op.key_attrs:
        v = node.attrs.get(k)
        if v is not None:
            parts.append(f"{k}={v}" if not isinstance(v, tuple) else f"{k}={','.join(map(str, v))}")
    return " ".join(parts)


def node_lines(graph: Graph, node) -> list[str]:
    extra = attr_text(node)
    return [
        _fit(node.name),
        _fit(f"{node.op} {extra}".strip()),
        _fit(type_text(graph, node.outputs[0])),
    ]


def residual_block(graph: Graph, fork: str) -> set[str]:
    """Nodes strictly between a fork and the first node where all its paths meet again."""
    g = nx.DiGraph()
    producers = graph.producers()
    for n in graph.nodes.values():
        g.add_node(n.name)
        for v in n.inputs:
            if v in producers:
                g.add_edge(producers[v].name, n.name)
            elif v in graph.inputs:
                g.add_edge(v, n.name)
    if fork not in g or g.out_degree(fork) < 2:
        return set()
    sub = g.subgraph(nx.descendants(g, fork) | {fork}).copy()
    sinks = [n for n in sub if sub.out_degree(n) == 0]
    for s in sinks:
        sub.add_edge(s, "__exit__")
    idom = nx.immediate_dominators(sub.reverse(copy=True), "__exit__")
    join = idom.get(fork)
    if join is None or join == "__exit__":
        return set()
    between = nx.descendants(sub, fork) & nx.ancestors(sub, join)
    return between


def build(
    graph: Graph,
    result: CheckResult | None = None,
    groups: Iterable[tuple[str, Iterable[str]]] = (),
    hidden: Iterable[str] = (),
    fused: Iterable[str] = (),
) -> Scene:
    """The scene for `graph`: one box per input and node, groups folded into one box."""
    hidden = set(hidden)
    fused = set(fused)
    owner: dict[str, str] = {}
    boxes: dict[str, SceneBox] = {}
    problems = {p.node for p in result.problems} if result else set()
    blocked = result.blocked if result else set()
    for name in graph.inputs:
        if name in hidden:
            continue
        boxes[name] = SceneBox(name, [_fit(name), "input", type_text(graph, name)], "input")
        owner[name] = name
    for node in graph.nodes.values():
        if node.name in hidden:
            continue
        kind = "fused" if node.name in fused else "grad" if node.tags.get("grad") else "node"
        boxes[node.name] = SceneBox(
            node.name, node_lines(graph, node), kind, node.name in problems, node.name in blocked
        )
        owner[node.name] = node.name
    for gname, members in groups:
        members = [m for m in members if m in boxes]
        if not members:
            continue
        err = any(boxes[m].error for m in members)
        for m in members:
            del boxes[m]
            owner[m] = gname
        last = graph.nodes.get(members[-1])
        boxes[gname] = SceneBox(
            gname,
            [
                _fit(f"▸ {gname}"),
                f"{len(members)} nodes",
                _fit(type_text(graph, last.outputs[0])) if last else "",
            ],
            "group",
            err,
            members=tuple(members),
        )
    for value in graph.outputs:
        b = owner.get(_base(value))
        if b in boxes:
            boxes[b].marks = "out"
    if graph.loss and owner.get(_base(graph.loss)) in boxes:
        boxes[owner[_base(graph.loss)]].marks = "loss"
    producers = graph.producers()
    edges: list[tuple[str, str]] = []
    error_edges: set[tuple[str, str]] = set()
    for node in graph.nodes.values():
        dst = owner.get(node.name)
        if dst is None or dst not in boxes:
            continue
        data, _ = split_inputs_safe(node)
        for v in data:
            src_name = producers[v].name if v in producers else (v if v in graph.inputs else None)
            src = owner.get(src_name) if src_name else None
            if src is None or src == dst or src not in boxes:
                continue
            edges.append((src, dst))
            if node.name in problems:
                error_edges.add((src, dst))
    return Scene(boxes, list(dict.fromkeys(edges)), error_edges, owner)


def _base(value: str) -> str:
    return value.split(":")[0]


def split_inputs_safe(node):
    try:
        return split_inputs(node)
    except GraphError:  # an unknown op: draw its inputs all the same
        return list(node.inputs), []


def fold_all_blocks(g: Graph) -> dict[str, list[str]]:
    """The outermost residual blocks, first fork first."""
    groups: dict[str, list[str]] = {}
    taken: set[str] = set()
    for name in list(g.inputs) + [n.name for n in g.topo_order()]:
        if name in taken:
            continue
        block = residual_block(g, name)
        if block and not block & taken:
            groups[f"{name}…"] = sorted(block, key=list(g.nodes).index)
            taken |= block
    return groups


def fold_all_clusters(g: Graph) -> dict[str, list[str]]:
    """One fold per forward node's gradient nodes, and one per expanded composite."""
    composite = {
        n.name: n.tags["expanded_from"] for n in g.nodes.values() if n.tags.get("expanded_from")
    }
    groups: dict[str, list[str]] = {}
    for n in g.nodes.values():
        of = n.tags.get("grad_of")
        if of:
            groups.setdefault(f"∇{composite.get(of, of)}", []).append(n.name)
        elif n.name in composite and not n.tags.get("grad"):
            groups.setdefault(f"{composite[n.name]}⋯", []).append(n.name)
    return {k: v for k, v in groups.items() if len(v) > 1}


def grad_nodes(g: Graph, name: str) -> list:
    """The gradient nodes of forward node `name` (and of the primitives it expanded into)."""
    mine = {name} | {n.name for n in g.nodes.values() if n.tags.get("expanded_from") == name}
    return [n for n in g.nodes.values() if n.tags.get("grad_of") in mine]
