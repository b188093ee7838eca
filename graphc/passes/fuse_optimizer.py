"""fuse_optimizer_update: the update of many parameters as a few ops over one flat buffer.

The training step (graphc.train.step) updates each parameter with its own
handful of element-wise ops (Adam: about a dozen), so a model with P
parameter tensors runs ~12·P tiny kernels whose launch cost dominates. This
pass finds each parameter's update region — the element-wise nodes between
(parameter, gradient, optimizer slots, shared scalars such as lr) and the
step's `new.<name>` outputs — groups parameters whose regions have the same
structure, and rewrites each group as: flatten_concat of every per-parameter
input, the region once over the flat vectors, unflatten back to the
parameters' shapes. Parameters larger than MAX_ELEMENTS keep their own
update: for them the extra copies into and out of the flat buffer cost more
than the launches they save.

It reads only the step's naming contract (docs/training.md): outputs
`new.<param>` and `new.opt.<slot>.<param>`.
"""

from __future__ import annotations

import numpy as np

from graphc.infer import infer_node
from graphc.ir import Graph, Node
from graphc.passes.manager import register
from graphc.passes.rewrite import sort_nodes

NEW, SLOT = "new.", "opt."
MAX_ELEMENTS = 1 << 16
VECTORS_ONLY = False  # only biases and other 1-D parameters (no Reshape in or out)
ELEMENTWISE = {
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
}


def _is_scalar(g: Graph, v: str) -> bool:
    return all(d == 1 for d in g.types[v].shape)


def _region(g: Graph, param: str, outs: dict[str, str], producers, consumers):
    """(signature, leaves, region nodes, output refs) of one parameter's update, or a reason."""
    shape = g.types[param].shape
    region: dict[str, Node] = {}
    stack = [producers[v].inputs[0] for v in outs.values()]
    while stack:
        v = stack.pop()
        p = producers.get(v)
        if p is None or p.name in region or _is_scalar(g, v) or not p.tags.get("train"):
            continue
        if p.op not in ELEMENTWISE or len(p.outputs) != 1 or g.types[v].shape != shape:
            continue  # a leaf: computed outside the update (the gradient, a clip norm …)
        region[p.name] = p
        stack.extend(i for i in p.inputs if i)
    if not region:
        return "no element-wise update nodes"
    allowed = set(region) | {producers[v].name for v in outs.values()}
    for n in region.values():
        if any(u.name not in allowed for u in consumers.get(n.outputs[0], ())):
            return f"the update value '{n.name}' is read outside the update"
    order = [n for n in g.topo_order() if n.name in region]
    index = {n.outputs[0]: i for i, n in enumerate(order)}
    leaves: list[str] = []
    sig = []
    for n in order:
        refs = []
        for v in n.inputs:
            if v in index:
                refs.append(("n", index[v]))
            elif _is_scalar(g, v):
                refs.append(("s", v))
            elif g.types[v].shape == shape:
                if v not in leaves:
                    leaves.append(v)
                refs.append(("t", leaves.index(v)))
            else:
                return f"'{n.name}' reads '{v}' of another shape"
        sig.append((n.op, repr(sorted(n.attrs.items())), tuple(refs)))
    out_refs = []
    for kind, v in sorted(outs.items()):
        src = producers[v].inputs[0]
        if src not in index:
            return f"the output '{v}' is not computed by the update"
        out_refs.append((kind, index[src]))
    key = (g.types[param].dtype, tuple(sig), tuple(out_refs))
    return key, leaves, order, out_refs


def _updates(g: Graph) -> dict[str, dict[str, str]]:
    """param -> {kind: output name}: kind "" for the parameter, the slot name for slots."""
    found: dict[str, dict[str, str]] = {}
    for o in g.outputs:
        if not o.startswith(NEW):
            continue
        target = o[len(NEW) :]
        if target.startswith(SLOT):
            slot, _, param = target[len(SLOT) :].partition(".")
            found.setdefault(param, {})[slot] = o
        else:
            found.setdefault(target, {})[""] = o
    return {p: kinds for p, kinds in found.items() if "" in kinds and p in g.params}


def _add(g: Graph, name: str, op: str, inputs: list[str], attrs: dict, n_out: int = 1) -> Node:
    name = g.unique_name(name)
    outs = [name] + [f"{name}:{i}" for i in range(1, n_out)]
    node = Node(name, op, inputs, outs, attrs, None, [], {"train": True, "fused_update": True})
    g.add_node(node)
    infer_node(g, node)
    return node


@register(
    "fuse_optimizer_update",
    "the optimizer update of all small parameters as a few element-wise ops over one flat buffer",
)
def fuse_optimizer_update(g: Graph) -> Graph:
    producers, consumers = g.producers(), g.consumers()
    groups: dict[tuple, list] = {}
    skipped: list[str] = []
    for param, outs in _updates(g).items():
        if any(o not in producers or producers[o].op != "identity" for o in outs.values()):
            skipped.append(f"{param}: outputs are not identities")
            continue
        if int(np.prod(g.types[param].shape)) > MAX_ELEMENTS:
            skipped.append(f"{param}: larger than {MAX_ELEMENTS} elements")
            continue
        if VECTORS_ONLY and g.types[param].rank != 1:
            skipped.append(f"{param}: not a vector (its flat copy would cost a Reshape)")
            continue
        found = _region(g, param, outs, producers, consumers)
        if isinstance(found, str):
            skipped.append(f"{param}: {found}")
            continue
        key, leaves, order, out_refs = found
        groups.setdefault(key, []).append((param, outs, leaves, order))
    fused = 0
    for gi, (key, members) in enumerate(groups.items()):
        if len(members) < 2:
            continue
        _, sig, out_refs = key
        n_leaves = len(members[0][2])
        flat = [
            _add(g, f"opt_flat{gi}_in{j}", "flatten_concat", [m[2][j] for m in members], {}).name
            for j in range(n_leaves)
        ]
        made: list[str] = []
        for i, (op, _attrs, refs) in enumerate(sig):
            attrs = dict(members[0][3][i].attrs)  # equal in every member: part of the key
            ins = [made[r] if k == "n" else flat[r] if k == "t" else r for k, r in refs]
            made.append(_add(g, f"opt_flat{gi}_{op}", op, ins, attrs).name)
        shapes = tuple(tuple(g.types[m[0]].shape) for m in members)
        for kind, ref in out_refs:
            parts = _add(
                g,
                f"opt_flat{gi}_unflatten",
                "unflatten",
                [made[ref]],
                {"shapes": shapes},
                n_out=len(members),
            )
            for m, part in zip(members, parts.outputs):
                producers[m[1][kind]].inputs = [part]
        fused += len(members)
    from graphc.passes.dce import eliminate_dead_code

    eliminate_dead_code(g)
    sort_nodes(g)
    n_groups = sum(1 for m in groups.values() if len(m) > 1)
    g.meta["_pass_note"] = (
        f"{fused} parameters in {n_groups} flat group(s)" if fused else "nothing fused"
    ) + (f"; kept apart: {len(skipped)}" if skipped else "")
    g.meta["fuse_optimizer_skipped"] = skipped
    return g
