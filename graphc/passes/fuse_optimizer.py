"""fuse_optimizer_update: the optimizer update of many parameters over one flat buffer.

The training step (graphc.train.step) updates each parameter with its own
handful of element-wise ops (Adam: about a dozen), so a model with P
parameter tensors runs ~12·P tiny kernels whose launch cost dominates small
models. This pass finds each parameter's update region — the element-wise
nodes between (parameter, gradient, optimizer slots, shared scalars such as
lr) and the step's `new.<name>` outputs — and groups parameters whose
regions have the same structure and dtype. Each group becomes carried state
of its own: a flat parameter buffer `params.flat0` (the members raveled and
concatenated) and one flat buffer per optimizer slot
(`opt.m.params.flat0`), fed back across steps like any parameter. The
region runs once over the flat vectors; only the gradients are gathered
(one flatten_concat), and the forward and backward passes read the members
through one `unflatten` of the flat parameter. A per-step Concat of the
parameters and slots and a Split of the results — what keeping the
per-parameter interface would cost — is gone.

The step's interface changes: the members' inputs and `new.*` outputs are
replaced by the buffers' (each at the position of its first member), and
`meta["flat_state"]` records the layout (graphc.train.layout packs and
unpacks). Running statistics are never flattened. The pass reads only the
step's naming contract (docs/training.md) and runs only on training steps.
"""

from __future__ import annotations

import numpy as np

from graphc.infer import infer_node
from graphc.ir import Graph, Node, Param
from graphc.passes.manager import register
from graphc.passes.rewrite import ELEMENTWISE, one_value, sort_nodes

NEW, SLOT = "new.", "opt."
# A member costs two copies per step (its gradient into the flat gradient, its part
# out of the flat parameter) and saves ~13 launches (~6 µs on CPU). Large tensors lose:
# benchmarks/bench_train.py's large MLP (1.8 M parameters; its weights 800 K and 1 M)
# measured 0.95-0.985x of -O0 with every tensor flat, 0.99-1.03x with the two big
# weights apart. The cut (64 K) keeps every sample's tensors flat but vgg_small's
# 131 K-element weight (lenet5's largest is 48 K); it was not tuned more finely.
MAX_ELEMENTS = 1 << 16
# Those two copies also outweigh a short update: SGD's two nodes per parameter and
# momentum's (two for a weight, whose `mu*v + g` fuse_gemm puts into its gradient's Gemm,
# four for a bias) measured 1-10% slower flat than per parameter (xor, perceptron,
# mlp_digits; interleaved StepRunner timing); Nesterov (6 nodes), AdaGrad (7), RMSprop
# (9) and Adam (13) gain.
MIN_UPDATE_NODES = 5
LAYOUT = "flat_state"  # graphc.train.layout.KEY (not imported: train imports the passes)


def _collect(g: Graph, shape, outs: dict[str, str], producers, consumers) -> dict[str, Node]:
    """The element-wise training nodes of the parameter's shape that only feed its update."""
    region: dict[str, Node] = {}
    stack = [producers[v].inputs[0] for v in outs.values()]
    while stack:
        v = stack.pop()
        p = producers.get(v)
        if p is None or p.name in region or not p.tags.get("train"):
            continue
        if p.op not in ELEMENTWISE or len(p.outputs) != 1 or g.types[v].shape != shape:
            continue  # a leaf (the gradient) or a shared scalar (lr, a clip norm …)
        region[p.name] = p
        stack.extend(i for i in p.inputs if i)
    # A value also read elsewhere (a clipped gradient the clip norm sums) must still
    # exist per parameter: it becomes a leaf, and so, in turn, may what computes it.
    ends = {producers[v].name for v in outs.values()}
    shown = set(g.outputs) | {g.loss}
    changed = True
    while changed:
        changed = False
        for name, n in list(region.items()):
            users = consumers.get(n.outputs[0], ())
            if n.outputs[0] in shown or any(
                u.name not in region and u.name not in ends for u in users
            ):
                del region[name]
                changed = True
    return region


def _canonical(g: Graph, n: Node, producers) -> tuple[str, list[str]]:
    """(op, inputs) of a region node with size-dependent rewrites undone.

    simplify turns `a / s` into `a * reciprocal(s)` only where the result is
    8x larger than the divisor, so a 5-element bias keeps the division its
    neighbours lost: read back as the division, equal updates look equal (the
    flat vector is large: the simplify that follows in -O2 rewrites it once).
    """
    if n.op == "mul" and len(n.inputs) == 2:
        for i in (1, 0):
            p = producers.get(n.inputs[i])
            if p is not None and p.op == "reciprocal" and one_value(g, n.inputs[i]):
                return "div", [n.inputs[1 - i], p.inputs[0]]
    return n.op, list(n.inputs)


def _region(g: Graph, param: str, outs: dict[str, str], producers, consumers):
    """(key, leaves, region nodes in canonical order) of one parameter's update, or a reason."""
    shape = g.types[param].shape
    region = _collect(g, shape, outs, producers, consumers)
    if not region:
        return "no element-wise update nodes"
    # a depth-first order from the outputs: equal structures list their nodes alike
    order: list[Node] = []
    seen: set[str] = set()

    def visit(v: str) -> None:
        p = producers.get(v)
        if p is None or p.name not in region or p.name in seen:
            return
        seen.add(p.name)
        for i in p.inputs:
            if i:
                visit(i)
        order.append(p)

    for _kind, o in sorted(outs.items()):
        visit(producers[o].inputs[0])
    index = {n.outputs[0]: i for i, n in enumerate(order)}
    slots = {f"{SLOT}{s}.{param}": s for s in outs if s}
    leaves: list[str] = []
    kinds: list[tuple] = []

    def leaf(v: str) -> tuple[str, int]:
        if v not in leaves:
            leaves.append(v)
            if v == param:
                kinds.append(("param",))
            elif v in slots:
                kinds.append(("slot", slots[v]))
            else:
                kinds.append(("value", g.types[v].dtype))
        return ("t", leaves.index(v))

    sig = []
    for n in order:
        refs = []
        op, inputs = _canonical(g, n, producers)
        for v in inputs:
            if v in index:
                refs.append(("n", index[v]))
            elif g.types[v].shape == shape:  # first: a parameter may have shape (1,)
                refs.append(leaf(v))
            elif one_value(g, v):
                if g.types[v].rank > 1:  # (1, 1) would broadcast the flat vector to a matrix
                    return f"'{n.name}' reads '{v}', a scalar of rank {g.types[v].rank}"
                refs.append(("s", v))
            else:
                return f"'{n.name}' reads '{v}' of another shape"
        sig.append((op, repr(sorted(n.attrs.items())), tuple(refs)))
    out_refs = []
    for kind, v in sorted(outs.items()):
        src = producers[v].inputs[0]
        if src in index:
            out_refs.append((kind, ("n", index[src])))
        elif g.types[src].shape == shape:
            # computed elsewhere: momentum's v = mu*v + g ends in the gradient's Gemm
            out_refs.append((kind, leaf(src)))
        else:
            return f"the output '{v}' has another shape"
    key = (g.types[param].dtype, tuple(sig), tuple(out_refs), tuple(kinds))
    return key, leaves, order


def _updates(g: Graph, flat: set[str]) -> dict[str, dict[str, str]]:
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
    keep = {}
    for p, kinds in found.items():
        param = g.params.get(p)
        if "" not in kinds or param is None or param.frozen or param.state or p in flat:
            continue  # running statistics and already-flat buffers stay as they are
        if p in g.outputs or p == g.loss:
            continue
        if all(f"{SLOT}{s}.{p}" in g.params for s in kinds if s):
            keep[p] = kinds
    return keep


def _add(g: Graph, name: str, op: str, inputs: list[str], attrs: dict, n_out: int = 1) -> Node:
    name = g.unique_name(name)
    outs = [name] + [f"{name}:{i}" for i in range(1, n_out)]
    node = Node(name, op, inputs, outs, attrs, None, [], {"train": True, "fused_update": True})
    g.add_node(node)
    infer_node(g, node)
    return node


def _flat_param(g: Graph, name: str, members: list[str], state: bool) -> None:
    values = g.param_values()
    dtype = g.params[members[0]].dtype
    value = np.concatenate([np.asarray(values[m], dtype=dtype).reshape(-1) for m in members])
    p = Param(name, (int(value.size),), dtype, "zeros", frozen=state, value=value, state=state)
    g.params[name] = p
    g.types[name] = p.type


def _fuse_group(g: Graph, gi: int, key: tuple, members: list, producers) -> list[dict]:
    """Rewrite one group; returns its layout entries (parameter buffer, then slot buffers)."""
    _dtype, sig, out_refs, kinds = key
    names = [m[0] for m in members]
    shapes = [tuple(g.types[p].shape) for p in names]
    pbuf = g.unique_name(f"params.flat{gi}")
    slot_kinds = sorted({k for k, _ in out_refs if k})
    buffers = {"": pbuf}
    for s in slot_kinds:
        buffers[s] = g.unique_name(f"{SLOT}{s}.{pbuf}")
    member_names = {s: [p if not s else f"{SLOT}{s}.{p}" for p in names] for s in [""] + slot_kinds}
    for s, buf in buffers.items():
        _flat_param(g, buf, member_names[s], state=bool(s))
    flat = []
    for j, kind in enumerate(kinds):
        if kind[0] == "param":
            flat.append(pbuf)
        elif kind[0] == "slot":
            flat.append(buffers[kind[1]])
        else:
            ins = [m[2][j] for m in members]
            flat.append(_add(g, f"opt_flat{gi}_gather", "flatten_concat", ins, {}).name)
    made: list[str] = []
    for i, (op, _attrs, refs) in enumerate(sig):  # the canonical op: see _canonical
        attrs = dict(members[0][3][i].attrs)  # equal in every member: part of the key
        ins = [made[r] if k == "n" else flat[r] if k == "t" else r for k, r in refs]
        made.append(_add(g, f"opt_flat{gi}_{op}", op, ins, attrs).name)
    # the buffers' outputs replace the members'; each takes its first member's place
    replace: dict[str, str | None] = {}
    for kind, (k, r) in out_refs:
        out = NEW + buffers[kind]
        src = made[r] if k == "n" else flat[r]
        node = Node(out, "identity", [src], [out], {}, None, [], {"train": True})
        g.add_node(node)
        infer_node(g, node)
        for i, (_p, outs, _leaves, _order) in enumerate(members):
            replace[outs[kind]] = out if i == 0 else None
    g.outputs = [replace.get(o, o) for o in g.outputs if replace.get(o, o) is not None]
    for _p, outs, _leaves, order in members:
        for n in order + [producers[o] for o in outs.values()]:
            for v in n.outputs:
                g.types.pop(v, None)
            g.remove_node(n.name)
    # every other read of a member (forward, backward) reads a part of its buffer
    for s, buf in buffers.items():
        old = member_names[s]
        for v in old:
            del g.params[v]
            g.types.pop(v, None)
        readers = [n for n in g.nodes.values() if any(v in old for v in n.inputs)]
        if readers:
            parts = _add(
                g, f"{buf}.unflatten", "unflatten", [buf], {"shapes": tuple(shapes)}, len(old)
            )
            parts.tags = {}  # the forward pass reads it: not part of the update
            rename = dict(zip(old, parts.outputs))
            for n in readers:
                n.inputs = [rename.get(v, v) for v in n.inputs]
    dtype = g.params[pbuf].dtype
    return [
        {
            "buffer": buffers[s],
            "dtype": dtype,
            "members": [[m, list(shape)] for m, shape in zip(member_names[s], shapes)],
        }
        for s in [""] + slot_kinds
    ]


@register(
    "fuse_optimizer_update",
    "the optimizer update of all parameters as a few element-wise ops over flat buffers "
    "kept flat across steps",
)
def fuse_optimizer_update(g: Graph) -> Graph:
    if not g.meta.get("train_step"):
        g.meta["_pass_note"] = "not a training step"
        return g
    if g.meta.get("memory_budget") is not None:
        # the flat gradient makes every gradient live until the last one exists, and
        # ONNX Runtime's depth-first order then runs the recomputed segments up front:
        # under a memory budget, memory comes first
        g.meta["_pass_note"] = "skipped: a memory budget is set (recompute)"
        return g
    layout = list(g.meta.get(LAYOUT) or ())
    flat = {e["buffer"] for e in layout}
    producers, consumers = g.producers(), g.consumers()
    groups: dict[tuple, list] = {}
    skipped: list[str] = []
    for param, outs in _updates(g, flat).items():
        if any(o not in producers or producers[o].op != "identity" for o in outs.values()):
            skipped.append(f"{param}: outputs are not identities")
            continue
        if int(np.prod(g.types[param].shape)) > MAX_ELEMENTS:
            skipped.append(f"{param}: over {MAX_ELEMENTS} elements (its own update is cheaper)")
            continue
        found = _region(g, param, outs, producers, consumers)
        if isinstance(found, str):
            skipped.append(f"{param}: {found}")
            continue
        key, leaves, order = found
        if len(order) < MIN_UPDATE_NODES:
            skipped.append(f"{param}: a {len(order)}-node update (the copies cost more)")
            continue
        groups.setdefault(key, []).append((param, outs, leaves, order))
    fused = n_groups = 0
    for key, members in groups.items():
        if len(members) < 2:
            skipped.extend(f"{m[0]}: alone in its group" for m in members)
            continue
        layout.extend(_fuse_group(g, len(flat) + n_groups, key, members, producers))
        fused += len(members)
        n_groups += 1
    if n_groups:
        from graphc.passes.dce import eliminate_dead_code

        g.meta[LAYOUT] = layout
        eliminate_dead_code(g)
        sort_nodes(g)
    g.meta["_pass_note"] = (
        f"{fused} parameters in {n_groups} flat group(s)" if fused else "nothing fused"
    ) + (f"; kept apart: {len(skipped)}" if skipped else "")
    g.meta["fuse_optimizer_skipped"] = skipped
    return g
