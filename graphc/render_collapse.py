"""`render --collapse`: fold each layer, composite and residual block into one box.

Large graphs (a ResNet's backward pass, an unrolled LSTM: hundreds of nodes)
stay legible: one box per top-level cluster of the view, one "∇ <group>" box
for the gradient nodes of each forward group, one "update <layer>" box for a
layer's optimizer nodes, and one edge per pair of boxes (counting the values
it stands for).
"""

from __future__ import annotations

from collections import Counter

from graphc.ir import Graph, Node
from graphc.ops.registry import get_op
from graphc.render_model import (
    SOURCE_KINDS,
    Box,
    View,
    Wire,
    fmt_count,
    param_count,
    train_prefix,
)


def collapse_view(
    view: View, graph: Graph, order: list[Node], kinds: dict[str, str], targets: dict[str, str]
) -> View:
    """Fold each top-level cluster (block, composite, layer) into one box.

    Gradient nodes fold into one "∇ <group>" box per forward group (parameter
    gradients join the box of the layer owning the parameter), optimizer
    nodes into one "update <group>" box.
    """

    def top(cid: str | None) -> str | None:
        while cid is not None and view.clusters[cid].parent is not None:
            cid = view.clusters[cid].parent
        return cid

    group: dict[str, str] = {}  # box id -> group box id
    updates: dict[str, str] = {}  # box in a parameter's update cluster -> the parameter
    for bid, box in view.boxes.items():
        t = top(box.cluster)
        if t is not None and view.clusters[t].kind == "update":
            updates[bid] = t[len("update:") :]
        elif t is not None:
            group[bid] = f"group:{t}"
    owner_of_param: dict[str, str] = {}
    consumers = graph.consumers()
    for p in graph.params:
        readers = [c.name for c in consumers.get(p, []) if kinds[c.name] == "op"]
        if readers:
            owner_of_param[p] = readers[0]

    def fwd_group(node_name: str) -> str:
        return group.get(node_name, node_name)

    # one "update <layer>" box per layer, for all of its parameters
    for bid, p in updates.items():
        anchor = owner_of_param.get(p)
        group[bid] = f"upd:{fwd_group(anchor) if anchor else p}"
    for n in order:
        if n.name in updates:
            continue
        k = kinds[n.name]
        anchor = None
        if k == "grad":
            anchor = n.tags.get("grad_of")
            if anchor not in graph.nodes:
                anchor = next((i for i in n.inputs if i in graph.nodes and kinds[i] == "op"), None)
        elif k == "param_grad":
            anchor = owner_of_param.get(targets[n.name])
        elif k in ("update", "new_param"):
            p = next((i for i in n.inputs if i in graph.params), None)
            p = p or (n.name[len(train_prefix()) :] if k == "new_param" else None)
            anchor = owner_of_param.get(p) if p else None
            if anchor is not None:
                group[n.name] = f"upd:{fwd_group(anchor)}"
            continue
        if anchor is not None and k in ("grad", "param_grad"):
            group[n.name] = f"grad:{fwd_group(anchor)}"
    # gradient nodes of no rule (autodiff's sums over fan-in) join the group all their
    # gradient inputs come from, or else the group of the parameter gradient they feed
    for n in order:
        if kinds[n.name] != "grad" or n.name in group:
            continue
        from_groups = {group.get(v) for v in n.inputs if v in group}
        to_groups = {
            group.get(c.name)
            for o in n.outputs
            for c in consumers.get(o, [])
            if kinds[c.name] == "param_grad"
        }
        for cands in (from_groups, to_groups):
            if len(cands) == 1 and None not in cands:
                group[n.name] = cands.pop()
                break

    boxes: dict[str, Box] = {}
    members: dict[str, list[str]] = {}
    for bid, box in view.boxes.items():
        g = group.get(bid)
        if g is None:
            boxes[bid] = box
        else:
            members.setdefault(g, []).append(bid)
    for gid, ms in members.items():
        boxes[gid] = _group_box(gid, ms, view, graph)

    wires: list[Wire] = []
    index: dict[tuple, Wire] = {}
    for w in view.wires:
        s, d = group.get(w.src, w.src), group.get(w.dst, w.dst)
        if s == d or s not in boxes or d not in boxes:
            continue
        key = (s, d, w.kind)  # one edge per pair of groups, counting what it carries
        if key in index:
            index[key].count += 1
            continue
        index[key] = Wire(s, d, w.value, w.kind)
        wires.append(index[key])

    beside = []
    for gid in boxes:
        if gid.startswith("grad:"):
            fwd = gid[len("grad:") :]
            if fwd in boxes:
                beside.append((fwd, gid))
    return View(view.name, view.mode, boxes, wires, {}, beside, view.types, collapsed=True)


def _group_box(gid: str, member_ids: list[str], view: View, graph: Graph) -> Box:
    kind_of, _, rest = gid.partition(":")
    ops = [
        view.boxes[m] for m in member_ids if view.boxes[m].kind not in SOURCE_KINDS + ("output",)
    ]
    counts: Counter = Counter()
    seen_composites: set[str] = set()
    for b in ops:
        n = graph.nodes.get(b.id)
        if n is None:
            continue
        comp = n.tags.get("expanded_from")
        if comp and n.tags.get("expanded_op"):  # a composite counts once, by its own op
            if comp not in seen_composites:
                seen_composites.add(comp)
                counts[n.tags["expanded_op"]] += 1
        else:
            counts[n.op] += 1
    summary = " \u00b7 ".join(f"{op} \u00d7{c}" if c > 1 else op for op, c in counts.items())
    params = [p for m in member_ids for p in view.boxes[m].params]
    if kind_of == "group":
        cluster = view.clusters[rest]
        lines = [summary] if summary else []
        n = param_count(graph, params)
        if params:
            lines.append((fmt_count(n) if n is not None else "?") + " params")
        comp_ops = [graph.nodes[b.id].tags.get("expanded_op") for b in ops if b.id in graph.nodes]
        cats = [get_op(o).category for o in comp_ops if o] + [b.category for b in ops if b.category]
        cat = next((c for c in cats if c not in ("math", "tensor")), cats[0] if cats else "")
        return Box(gid, "group", cluster.label, lines, category=cat, members=member_ids)
    label = view.clusters[rest[len("group:") :]].label if rest.startswith("group:") else rest
    if kind_of == "grad":
        n_grads = sum(1 for m in member_ids if view.boxes[m].kind == "param_grad")
        k = len(ops) - n_grads
        lines = [f"{k} gradient op" + ("s" if k != 1 else "")]
        if n_grads:
            lines.append(f"\u2192 {n_grads} parameter gradient" + ("s" if n_grads > 1 else ""))
        return Box(gid, "grad", f"\u2207 {label}", lines, members=member_ids)
    slots = sum(1 for m in member_ids if view.boxes[m].kind == "slot")
    lines = [f"{len(ops)} ops"] + ([f"{slots} optimizer slots"] if slots else [])
    return Box(gid, "update", f"update {label}", lines, members=member_ids)
