"""What a rendered picture shows: boxes, wires and clusters built from a Graph.

This is the rendering's view of the IR, rebuilt on every render (never kept
as a second graph). `build_view` classifies every value and node into a
*kind* (graph input, parameter, forward op, gradient op, parameter gradient,
optimizer update, …), groups them into clusters (a layer and its
parameters, the primitives one composite expanded into, residual blocks),
and can fold each top-level cluster into one box (`collapse=True`).
`graphc.render_dot` turns the view into DOT text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from graphc.ir import Graph, Node
from graphc.ops.registry import get_op
from graphc.render_blocks import find_residual_blocks
from graphc.shapes import numel

SOURCE_KINDS = ("input", "param", "frozen", "state", "slot", "const")
PARAM_KINDS = ("param", "frozen", "state", "slot")
SCALAR_CONST_MAX = 1  # constants with at most this many elements are folded into their reader

# Arithmetic ops drawn as small circles with their symbol, as in lecture figures.
SYMBOLS = {
    "add": "+",
    "sub": "\u2212",
    "mul": "\u00d7",
    "div": "\u00f7",
    "neg": "\u2212x",
    "matmul": "@",
    "add_n": "\u03a3",
}


@dataclass
class Box:
    """One drawn node. `id` is unique in the picture and stable across runs."""

    id: str
    kind: str  # a key of render_style.KIND_STYLES, or "op" / "group"
    title: str
    lines: list[str] = field(default_factory=list)
    category: str = ""
    cluster: str | None = None  # innermost cluster id
    symbol: str | None = None  # draw as a circle with this symbol
    fused: bool = False
    value: str | None = None  # the value this box holds (sources, outputs, param grads)
    members: list[str] = field(default_factory=list)  # for groups: the boxes folded in
    params: list[str] = field(default_factory=list)  # parameters drawn in (or folded into) it
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (name, shape, kind)


@dataclass
class Wire:
    """One drawn edge: a value flowing from `src` to `dst`."""

    src: str
    dst: str
    value: str
    kind: str  # "data", "grad", "saved", "update"
    count: int = 1  # folded wires between two groups


@dataclass
class Cluster:
    id: str
    kind: str  # "layer", "composite", "block"
    label: str
    parent: str | None = None


@dataclass
class View:
    name: str
    mode: str  # "forward", "backward", "train"
    boxes: dict[str, Box]
    wires: list[Wire]
    clusters: dict[str, Cluster]
    beside: list[tuple[str, str]]  # (forward box, gradient box) pairs drawn on one rank
    types: dict[str, object]  # value -> TensorType
    collapsed: bool = False


# ------------------------------------------------------------------ kinds
def is_grad_node(node: Node) -> bool:
    return bool(node.tags.get("grad"))


def _grad_targets(graph: Graph) -> dict[str, str]:
    """`<target>.grad` value -> target, from autodiff's bookkeeping and the naming rule."""
    out = {v: k for k, v in graph.meta.get("grads", {}).items()}
    for n in graph.nodes.values():
        if n.name.endswith(".grad") and is_grad_node(n):
            base = n.name[: -len(".grad")]
            if base in graph.params or base in graph.inputs:
                out.setdefault(n.name, base)
    return out


def train_prefix() -> str:
    try:
        from graphc.train.step import NEW
    except ImportError:  # the training-step builder is optional for rendering
        return "new."
    return NEW


def node_kinds(graph: Graph) -> dict[str, str]:
    """Each node's kind: "op", "grad", "param_grad", "update" or "new_param".

    Optimizer nodes are the training step's nodes (tags "train" or
    "optimizer") that read a gradient, directly or not, plus the `new.<name>`
    outputs; other training-step nodes (regularization, metrics) are forward.
    """
    targets = _grad_targets(graph)
    new = train_prefix()
    kinds: dict[str, str] = {}
    # values computed from a gradient, an optimizer slot or the step's lr / step inputs
    from_step: set[str] = {k for k in graph.params if is_slot(k)}
    from_step.update(
        k for k in ("lr", "step") if k in graph.inputs and graph.meta.get("train_step")
    )
    for n in graph.topo_order():
        if is_grad_node(n):
            kinds[n.name] = "param_grad" if n.name in targets else "grad"
            from_step.update(n.outputs)
            continue
        trains = n.tags.get("train") or n.tags.get("optimizer")
        reads = any(v in from_step for v in n.inputs)
        if trains and n.name.startswith(new):
            kinds[n.name] = "new_param"
        elif (trains and reads) or n.tags.get("optimizer"):
            kinds[n.name] = "update"
        else:
            kinds[n.name] = "op"
        if reads:
            from_step.update(n.outputs)
    return kinds


def is_slot(name: str) -> bool:
    """An optimizer slot of a training step (`opt.m.fc1.weight`)."""
    try:
        from graphc.train.step import SLOT
    except ImportError:
        SLOT = "opt."
    return name.startswith(SLOT)


def fmt_dims(shape) -> str:
    if len(shape) == 0:
        return "scalar"
    return "\u00d7".join(str(d) for d in shape)


def fmt_type(t) -> str:
    dims = fmt_dims(t.shape)
    return dims if t.dtype == "float32" else f"{t.dtype} {dims}"


def _fmt_attr(v) -> str:
    if isinstance(v, (tuple, list)):
        return (
            "\u00d7".join(map(str, v))
            if v and len(set(v)) == 1 and len(v) <= 3
            else ("(" + ", ".join(map(str, v)) + ")")
        )
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _fmt_const(arr: np.ndarray) -> str:
    v = np.asarray(arr).reshape(-1)
    if v.size == 0:
        return "[]"
    x = v[0].item()
    return f"{x:g}" if isinstance(x, float) else str(x)


def param_count(graph: Graph, names) -> int | None:
    total = 0
    for k in names:
        n = numel(graph.params[k].shape) if k in graph.params else 1
        if not isinstance(n, int):
            return None
        total += n
    return total


def fmt_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:,}"


# ------------------------------------------------------------------ building
def build_view(
    graph: Graph, *, mode: str = "forward", collapse: bool = False, show_constants: bool = False
) -> View:
    """Classify, cluster and connect every node and value of `graph`."""
    order = graph.topo_order()
    kinds = node_kinds(graph)
    producers = {o: n for n in order for o in n.outputs}
    targets = _grad_targets(graph)
    boxes: dict[str, Box] = {}
    wires: list[Wire] = []
    folded: dict[str, list[str]] = {}  # node -> folded constant notes

    # sources: inputs, parameters, constants (frozen parameters of a training step
    # are constants named like parameters: drawn as frozen parameters)
    used = {v for n in order for v in n.inputs if v}
    for name, t in graph.inputs.items():
        if name in used or name in graph.outputs:
            boxes[name] = Box(name, "input", name, [fmt_type(t)], value=name)
    # a layer's own parameters share one box (a row each); shared ones get their own
    box_of: dict[str, str] = {}  # value -> the box that draws it
    owner = _param_owners(graph, order, kinds)
    for name, p in graph.params.items():
        if name not in used:
            continue
        kind = (
            "slot"
            if is_slot(name)
            else ("state" if p.state else ("frozen" if p.frozen else "param"))
        )
        layer = owner.get(name)
        if layer is None:
            boxes[name] = Box(name, kind, name, [fmt_type(p.type)], value=name, params=[name])
            continue
        bid = f"params:{layer}"
        box = boxes.setdefault(bid, Box(bid, kind, layer, value=None))
        short = name[len(layer) + 1 :] if name.startswith(layer + ".") else name
        box.rows.append((short, fmt_dims(p.shape), kind))
        box.params.append(name)
        # the box looks trainable if any row is, else frozen, else a statistic
        box.kind = min((r[2] for r in box.rows), key=("param", "frozen", "state").index)
        box_of[name] = bid
    for name, arr in graph.constants.items():
        if name not in used:
            continue
        layer = name.rsplit(".", 1)[0] if "." in name else None
        if layer in graph.nodes and arr.size > SCALAR_CONST_MAX:
            boxes[name] = Box(name, "frozen", name, [fmt_dims(arr.shape)], value=name)
        elif arr.size <= SCALAR_CONST_MAX and not show_constants:
            continue  # folded into the reader's label below
        else:
            boxes[name] = Box(
                name,
                "const",
                name if not name.startswith("d_") else "const",
                [fmt_dims(arr.shape) if arr.size > 1 else _fmt_const(arr)],
                value=name,
            )

    for n in order:
        op = get_op(n.op, n.loc)
        kind = kinds[n.name]
        lines = []
        shown = _display_name(n) if kind == "op" else None
        if shown:
            lines.append(shown)
        keys = [
            f"{k}={_fmt_attr(n.attrs[k])}"
            for k in op.key_attrs
            if k in n.attrs and n.attrs[k] is not None
        ]
        if keys:
            lines.append(", ".join(keys))
        names = op.input_names()
        for i, v in enumerate(n.inputs):
            if v in graph.constants and v not in boxes:
                slot = names[min(i, len(names) - 1)] if names else "c"
                folded.setdefault(n.name, []).append(f"{slot}={_fmt_const(graph.constants[v])}")
        lines += [", ".join(folded.get(n.name, []))] if n.name in folded else []
        fused = _fused_from(n)
        if fused:
            parts = _fused_summary(fused).split(" + ")
            lines += ["fused: " + " + ".join(parts[:3])] + [
                "+ " + " + ".join(parts[i : i + 3]) for i in range(3, len(parts), 3)
            ]
        title = n.op
        if kind == "param_grad":
            title, lines = f"\u2202L/\u2202{targets[n.name]}", [fmt_type(graph.type(n.name))]
        elif kind == "new_param":
            title, lines = n.name, [fmt_type(graph.type(n.name))]
        symbol = (
            SYMBOLS.get(n.op)
            if kind in ("op", "grad", "update")
            and not keys
            and n.name not in folded
            and not fused
            and len(shown or "") <= 3
            else None
        )
        boxes[n.name] = Box(
            n.name,
            kind,
            title,
            lines,
            category=op.category,
            symbol=symbol,
            fused=bool(fused),
            value=n.name if kind != "op" else None,
        )

    for n in order:
        seen: set[str] = set()
        for v in dict.fromkeys(x for x in n.inputs if x):
            src = producers[v].name if v in producers else box_of.get(v, v)
            if src not in boxes or (src in seen and src.startswith("params:")):
                continue
            seen.add(src)
            wires.append(Wire(src, n.name, v, _wire_kind(boxes[src].kind, kinds[n.name])))

    # graph outputs and the loss end in a sink that carries the last value
    sinks = list(dict.fromkeys(([graph.loss] if graph.loss else []) + list(graph.outputs)))
    for v in sinks:
        p = producers.get(v)
        if p is None or kinds.get(p.name) != "op":
            continue  # gradients and updates are drawn as boxes of their own
        sid = f"out:{v}"
        lines = ["loss"] if v == graph.loss and v != "loss" else []
        boxes[sid] = Box(sid, "output", v, lines, value=v)
        wires.append(Wire(p.name, sid, v, "data"))

    clusters = _clusters(graph, order, kinds, boxes)
    beside = _beside(graph, order, kinds, producers) if mode != "forward" else []
    beside = [(box_of.get(a, a), box_of.get(b, b)) for a, b in beside]
    view = View(graph.name, mode, boxes, wires, clusters, beside, dict(graph.types))
    if collapse:
        from graphc.render_collapse import collapse_view

        view = collapse_view(view, graph, order, kinds, targets)
    return view


def _display_name(n: Node) -> str | None:
    """The name worth printing under the op: none for names made up by the compiler
    (`fc1__mul`, `mul_2`, gradient nodes `d_...`), whose cluster or op says it all."""
    name = n.name
    comp = n.tags.get("expanded_from")
    if comp and name.startswith(comp + "__"):
        name = name[len(comp) + 2 :]
    base = name.rstrip("0123456789").rstrip("_")
    if base == n.op or base.endswith("_" + n.op):
        return None
    return name


def _wire_kind(src_kind: str, dst_kind: str) -> str:
    backward = ("grad", "param_grad")
    if dst_kind in backward:
        return "grad" if src_kind in backward else "saved"
    if dst_kind in ("update", "new_param"):
        return "update"
    return "data"


def _fused_summary(ops: list[str], most: int = 6) -> str:
    """`transpose + matmul`; long lists as counts: `mul ×3 + exp + sub + … (14 ops)`."""
    counts = Counter(ops)
    parts = [f"{op} \u00d7{k}" if k > 1 else op for op, k in counts.items()]
    if len(parts) <= most:
        return " + ".join(parts)
    return " + ".join(parts[:most]) + f" + \u2026 ({len(ops)} ops)"


def _fused_from(n: Node) -> list[str]:
    """What a fused node replaced, from the fusion pass's tags (several spellings accepted)."""
    for key in ("fused_from", "fused", "fused_ops"):
        v = n.tags.get(key)
        if isinstance(v, (list, tuple)) and v:
            return [str(x) for x in v]
        if isinstance(v, str) and v:
            return [x.strip() for x in v.replace("+", ",").split(",") if x.strip()]
    return []


# ------------------------------------------------------------------ clusters
def _clusters(
    graph: Graph, order: list[Node], kinds: dict[str, str], boxes: dict[str, Box]
) -> dict[str, Cluster]:
    """Residual blocks contain composites, which contain layers (a node and its params)."""
    clusters: dict[str, Cluster] = {}
    forward = [n for n in order if kinds[n.name] == "op"]
    block_of: dict[str, str] = {}
    for k, blk in enumerate(find_residual_blocks(graph, forward), start=1):
        cid = f"block:{blk.join}"
        parent = next((block_of[m] for m in blk.nodes if m in block_of), None)
        clusters[cid] = Cluster(cid, "block", f"residual block {k}", parent)
        for m in blk.nodes:
            block_of[m] = cid
    # an expanded composite lies wholly in the block that holds any of its primitives
    # (the primitives reading only parameters are not on the block's data paths)
    comp_block: dict[str, str] = {}
    for n in forward:
        comp = n.tags.get("expanded_from")
        if comp and n.name in block_of:
            comp_block.setdefault(comp, block_of[n.name])
    for n in forward:
        comp = n.tags.get("expanded_from")
        where = comp_block.get(comp) if comp else block_of.get(n.name)
        if comp:
            cid = f"composite:{comp}"
            if cid not in clusters:
                src_op = n.tags.get("expanded_op")
                clusters[cid] = Cluster(
                    cid, "composite", f"{comp}" + (f" \u00b7 {src_op}" if src_op else ""), where
                )
            where = cid
        if comp and f"params:{comp}" in boxes:
            boxes[f"params:{comp}"].cluster = where
        if f"params:{n.name}" in boxes and n.name != comp:
            cid = f"layer:{n.name}"
            clusters[cid] = Cluster(cid, "layer", n.name, where)
            boxes[f"params:{n.name}"].cluster = cid
            where = cid
        boxes[n.name].cluster = where
    # a training step's update of one parameter, with its optimizer slots
    for node, p in _update_owner(graph, order, kinds).items():
        cid = f"update:{p}"
        clusters.setdefault(cid, Cluster(cid, "update", f"update {p}"))
        boxes[node].cluster = cid
    for name, box in boxes.items():
        if box.kind == "slot":
            p = name.split(".", 2)[-1]
            if f"update:{p}" in clusters:
                box.cluster = f"update:{p}"
    # a cluster around a single box says nothing (a composite fused back into one op)
    for cid in list(clusters):
        members = [b for b in boxes.values() if b.cluster == cid]
        nested = [c for c in clusters.values() if c.parent == cid]
        if len(members) <= 1 and not nested:
            for b in members:
                b.cluster = clusters[cid].parent
            del clusters[cid]
    return clusters


def _param_owners(graph: Graph, order: list[Node], kinds: dict[str, str]) -> dict[str, str]:
    """Parameter -> the one forward node (layer) that reads it; shared ones are left out."""
    readers: dict[str, set[str]] = {}
    for n in order:
        if kinds[n.name] != "op":
            continue
        # the primitives of an expanded layer (batch norm) read its parameters together
        unit = n.tags.get("expanded_from") or n.name
        for p in n.inputs:
            if p in graph.params and not is_slot(p):
                readers.setdefault(p, set()).add(unit)
    return {p: next(iter(r)) for p, r in readers.items() if len(r) == 1}


def _update_owner(graph: Graph, order: list[Node], kinds: dict[str, str]) -> dict[str, str]:
    """Optimizer node -> the one parameter it updates (nodes shared by all have none).

    A node belongs to parameter p when everything it reads that is specific to a
    parameter (p itself, its gradient, its slots, nodes that belong to p) is p's;
    nodes reading nothing specific (bias corrections) fall back to the training
    step's naming, `opt_<p>_...`.
    """
    targets = _grad_targets(graph)
    owners: dict[str, set[str]] = {}
    for p in graph.params:
        owners[p] = {p.split(".", 2)[-1]} if is_slot(p) else {p}
    for g_value, target in targets.items():
        owners[g_value] = {target}
    by_length = sorted(graph.params, key=lambda k: (-len(k), k))
    out: dict[str, str] = {}
    for n in order:
        if kinds[n.name] not in ("update", "new_param"):
            continue
        mine: set[str] = set()
        for v in n.inputs:
            mine |= owners.get(v, set())
        if not mine:
            for p in by_length:
                if n.name.startswith(f"opt_{p}_") or (
                    n.name.endswith("." + p) and (n.name.startswith(train_prefix()))
                ):
                    mine = {p}
                    break
        for o in n.outputs:
            owners[o] = mine
        if len(mine) == 1:
            out[n.name] = next(iter(mine))
    return out


def _beside(
    graph: Graph, order: list[Node], kinds: dict[str, str], producers: dict[str, Node]
) -> list[tuple[str, str]]:
    """For each forward node, the gradient node drawn on its rank.

    That is the node of its gradient rule whose result leaves the rule (the
    gradient passed on to an input), preferring one that flows on to another
    rule over one that becomes a parameter gradient.
    """
    rules: dict[str, list[Node]] = {}
    for n in order:
        of = n.tags.get("grad_of")
        if kinds[n.name] == "grad" and of in graph.nodes:
            rules.setdefault(of, []).append(n)
    readers = graph.consumers()
    pairs = []
    for fwd, members in rules.items():
        names = {m.name for m in members}
        best, best_score = None, -1
        for m in members:
            outs = [c for o in m.outputs for c in readers.get(o, []) if c.name not in names]
            score = 2 if any(kinds[c.name] == "grad" for c in outs) else (1 if outs else 0)
            if score > best_score:
                best, best_score = m, score
        pairs.append((fwd, best.name))
    for n in order:
        if kinds[n.name] == "param_grad":
            target = _grad_targets(graph)[n.name]
            if target in graph.params or target in graph.inputs:
                pairs.append((target, n.name))
    return pairs
