"""Passes for unrolled loops (recurrent layers): per-step shape ops and weight gradients.

`ops/recurrent.py` unrolls a sequence into T copies of a cell: the input
projection is cut into steps by a `split` along time and a `squeeze` per
step, and autodiff writes the way back as a `reshape_like` per step (ONNX
Shape + Reshape) and a `concat`. The recurrent weight's gradient is a sum of
T small products `h_{t-1}^T @ dz_t`. In ONNX Runtime each of these small
nodes costs about as much in dispatch as in work, so the passes here trade
T nodes for one:

* `static_reshape`: `reshape_like(x, like)` whose target shape is known up to
  dims it can copy (0) or infer (-1) -> `reshape(x, shape)` (no Shape node).
* `merge_step_slices`: `squeeze(split(x, axis=k, sizes=1,1,...)[t], k)` for
  every t -> `split(reshape(x), axis=k)` (T squeezes -> one view), and
  `concat(unsqueeze(a_t, k), axis=k)` -> `reshape(concat(a_t, axis=k))`
  (T unsqueezes -> one view).
* `merge_step_sums`: `add_n(reduce_sum(x_t))` -> `reduce_sum(add_n(x_t))` (the
  GRU's per-step bias_hn gradients) and nested concats along one axis -> one.
* `batch_weight_grads` (registered, not in -O2: at most +2 % on the LSTM step,
  inside the noise, for extra memory, see docs/optimizer.md):
  `add_n(gemm(a_t, b_t, transA) ...)` -> one gemm of the concatenated
  operands: sum_t a_t^T b_t = [a_1; ...; a_T]^T [b_1; ...; b_T], reusing an
  existing stack of the b_t when there is one.
"""

from __future__ import annotations

from graphc.ir import Graph, Node
from graphc.passes.rewrite import Match, Rule, builder_for, reroute, rule_pass


# ------------------------------------------------------------- static_reshape
def reshape_spec(src: tuple, dst: tuple) -> tuple | None:
    """A Reshape `shape` attribute taking a tensor of shape `src` to `dst`, or None.

    Integer dims are written as such; a symbolic dim equal to the source's at
    the same index is copied (0); at most one other symbolic dim is inferred
    (-1). A literal 0 dim cannot be written (it would mean "copy").
    """
    spec: list[int] = []
    for i, d in enumerate(dst):
        if isinstance(d, int):
            if d == 0:
                return None
            spec.append(d)
        elif i < len(src) and src[i] == d:
            spec.append(0)
        elif -1 in spec:
            return None
        else:
            spec.append(-1)
    return tuple(spec)


def check_static_reshape(g: Graph, node: Node, ctx: dict) -> Match | str:
    spec = reshape_spec(g.types[node.inputs[0]].shape, g.types[node.outputs[0]].shape)
    if spec is None:
        return "the target shape has more than one dim that is neither known nor copied"
    return Match(node, {"shape": spec})


def rewrite_static_reshape(g: Graph, m: Match) -> None:
    m.node.op = "reshape"
    m.node.inputs = [m.node.inputs[0]]
    m.node.attrs = {"shape": m.values["shape"]}


# ---------------------------------------------------------- merge_step_slices
def _unit_axis_view(g: Graph, node: Node) -> int | None:
    """The axis a squeeze/unsqueeze-like view removes or inserts (a single unit dim), else None.

    Positive when the output has one more dim than the input (inserted at that
    axis), negative-encoded as (-axis - 1) when it has one less (removed).
    """
    if node.op not in ("squeeze", "unsqueeze", "reshape", "reshape_like"):
        return None
    src, dst = g.types[node.inputs[0]].shape, g.types[node.outputs[0]].shape
    if len(dst) == len(src) + 1:
        long, short, sign = dst, src, 1
    elif len(dst) == len(src) - 1:
        long, short, sign = src, dst, -1
    else:
        return None
    for k in range(len(long)):
        if long[k] == 1 and long[:k] + long[k + 1 :] == short:
            return k if sign > 0 else -k - 1
    return None


# readers that use only a value's shape: (op, input index)
_SHAPE_ONLY = {("reshape_like", 1), ("zeros_like", 0), ("ones_like", 0)}


def check_split_squeeze(g: Graph, node: Node, ctx: dict) -> Match | str:
    """split(x, axis=k, sizes=(1,)*T) whose every part is squeezed at k (or read for its shape)."""
    x = g.types[node.inputs[0]]
    k = node.attrs["axis"] % x.rank
    if len(node.outputs) < 2 or any(s != 1 for s in node.attrs["sizes"]):
        return "not a split into unit slices"
    if k + 1 >= x.rank:
        return "the split axis is the last (the slices are not contiguous rows)"
    views, shape_readers = [], []
    for o in node.outputs:
        if o in ctx["protected"]:
            return "a slice is a graph output"
        readers = ctx["consumers"].get(o, ())
        squeezes = [r for r in readers if _unit_axis_view(g, r) == -k - 1 and r.inputs[0] == o]
        others = [r for r in readers if r not in squeezes]
        if not squeezes:
            return "a slice is not squeezed at the split axis"
        if any(
            (r.op, i) not in _SHAPE_ONLY for r in others for i, v in enumerate(r.inputs) if v == o
        ):
            return "a slice is read other than squeezed at the split axis or for its shape"
        if any(r.outputs[0] in ctx["protected"] for r in squeezes):
            return "a squeezed slice is a graph output"
        views.append(squeezes)
        shape_readers.append(others)
    merged = x.shape[:k] + ("?",) + x.shape[k + 2 :]
    spec = reshape_spec(x.shape, merged)
    if spec is None or any(isinstance(d, str) for d in x.shape[k + 1 :]):
        return "the dims after the split axis are not all known"
    return Match(
        node,
        {
            "k": k,
            "views": views,
            "shape_readers": shape_readers,
            "spec": spec,
            "width": x.shape[k + 1],
            "consumers": ctx["consumers"],
        },
    )


def rewrite_split_squeeze(g: Graph, m: Match) -> None:
    node, k = m.node, m.values["k"]
    b = builder_for(g, node)
    flat = b.reshape(b.tensor(node.inputs[0]), shape=m.values["spec"])
    parts = b.split(flat, axis=k, sizes=(m.values["width"],) * len(node.outputs))
    readers = m.values["consumers"]
    for old, squeezes, others, part in zip(
        node.outputs, m.values["views"], m.values["shape_readers"], parts
    ):
        for r in squeezes:
            reroute(readers.get(r.outputs[0], ()), r.outputs[0], part.name)
            # gone, not just unread: a squeeze left behind would match this split again
            # every round (until DCE), and rerouting through the index keeps this linear
            del g.nodes[r.name]
        if others:  # a gradient's reshape_like or zeros_like: give it the slice's shape back
            reroute(others, old, b.unsqueeze(part, axes=(k,)).name)


def check_concat_unsqueeze(g: Graph, node: Node, ctx: dict) -> Match | str:
    """concat(unsqueeze(a_t, k) ..., axis=k) with equal-shaped a_t (a stack along k)."""
    out = g.types[node.outputs[0]]
    k = node.attrs["axis"] % out.rank
    if len(node.inputs) < 2:
        return "one operand"
    srcs = []
    for v in node.inputs:
        p = ctx["producers"].get(v)
        if p is not None and _unit_axis_view(g, p) == k:
            srcs.append(p.inputs[0])
            continue
        # a step no gradient reached: zeros_like(view(s)) -> zeros_like(s), same zeros
        inner = (
            ctx["producers"].get(p.inputs[0]) if p is not None and p.op == "zeros_like" else None
        )
        if inner is None or _unit_axis_view(g, inner) != k:
            return "an operand is not a unit dim inserted at the concat axis"
        srcs.append(("zeros", inner.inputs[0]))
    shapes = {g.types[s[1] if isinstance(s, tuple) else s].shape for s in srcs}
    if len(shapes) != 1:
        return "the stacked tensors differ in shape"
    (shape,) = shapes
    if k >= len(shape):
        return "stacked along a new last axis (concat would interleave)"
    spec = reshape_spec(shape[:k] + ("?",) + shape[k + 1 :], out.shape)
    if spec is None:
        return "the stacked shape has unknown dims after the axis"
    return Match(node, {"k": k, "srcs": srcs, "spec": spec})


def rewrite_concat_unsqueeze(g: Graph, m: Match) -> None:
    node = m.node
    b = builder_for(g, node)
    parts = [
        b.zeros_like(b.tensor(s[1])) if isinstance(s, tuple) else b.tensor(s)
        for s in m.values["srcs"]
    ]
    cat = b.concat(*parts, axis=m.values["k"])
    node.op = "reshape"
    node.inputs = [cat.name]
    node.attrs = {"shape": m.values["spec"]}


# --------------------------------------------------------- batch_weight_grads
def _product(g: Graph, ctx: dict, v: str) -> Node | None:
    """The plain 2-D gemm (no C, alpha 1) producing `v` for add_n alone, else None."""
    p = ctx["producers"].get(v)
    if p is None or p.op != "gemm" or (len(p.inputs) > 2 and p.inputs[2]):
        return None
    if p.attrs["alpha"] != 1.0 or v in ctx["protected"] or len(ctx["consumers"].get(v, ())) != 1:
        return None
    return p


def check_sum_of_products(g: Graph, node: Node, ctx: dict) -> Match | str:
    """add_n of >= 3 gemms with the same layout and contraction-free dims."""
    groups: dict[tuple, list[Node]] = {}
    for v in node.inputs:
        p = _product(g, ctx, v)
        if p is None:
            continue
        ta, tb = p.attrs["transA"], p.attrs["transB"]
        a, b = g.types[p.inputs[0]].shape, g.types[p.inputs[1]].shape
        # the kept (non-contracted) dims must agree; the contracted one may differ
        key = (ta, tb, a[1] if ta else a[0], b[0] if tb else b[1], g.types[v].dtype)
        groups.setdefault(key, []).append(p)
    best = max(groups.values(), key=len, default=[])
    if len(best) < 3:
        return "fewer than three plain gemm terms of one layout"
    return Match(node, {"terms": best, "stack": _stacked(g, ctx, best)})


def _stacked(g: Graph, ctx: dict, terms: list[Node]) -> Node | None:
    """A concat(axis=1) that already holds every b_t of sum_t a_t^T b_t side by side.

    Autodiff of an unrolled loop stacks the per-step pre-activation gradients for
    the input projection's weight; reusing that stack saves copying the b_t again.
    """
    a_type, b_type = g.types[terms[0].inputs[0]], g.types[terms[0].inputs[1]]
    if (
        not terms[0].attrs["transA"]
        or terms[0].attrs["transB"]
        or a_type.shape[0] != b_type.shape[0]
    ):
        return None
    if any(g.types[t.inputs[0]] != a_type or g.types[t.inputs[1]] != b_type for t in terms):
        return None
    bs = [t.inputs[1] for t in terms]
    if len(set(bs)) != len(bs):
        return None
    for c in ctx["consumers"].get(bs[0], ()):
        if (
            c.op == "concat"
            and c.attrs["axis"] % 2 == 1
            and all(g.types[v] == b_type for v in c.inputs)
            and len(set(c.inputs)) == len(c.inputs)
            and set(bs) <= set(c.inputs)
            and isinstance(b_type.shape[1], int)
            and isinstance(a_type.shape[1], int)
        ):
            return c
    return None


def rewrite_sum_of_products(g: Graph, m: Match) -> None:
    node, terms = m.node, m.values["terms"]
    ta, tb = terms[0].attrs["transA"], terms[0].attrs["transB"]
    b = builder_for(g, node)
    stack = m.values["stack"]
    if stack is not None:
        # [N, T*G] -> [N*T, G] rows (n, t); a_t stacked the same way, zeros for the steps
        # of the stack that are not in this sum
        a_of = {t.inputs[1]: t.inputs[0] for t in terms}
        first = b.tensor(terms[0].inputs[0])
        zero = b.zeros_like(first) if len(a_of) < len(stack.inputs) else None
        a_cat = b.concat(*(b.tensor(a_of[v]) if v in a_of else zero for v in stack.inputs), axis=1)
        units, width = first.shape[1], g.types[stack.inputs[0]].shape[1]
        a = b.reshape(a_cat, shape=(-1, units))
        bb = b.reshape(b.tensor(stack.outputs[0]), shape=(-1, width))
        prod = b.gemm(a, bb, transA=True, transB=False)
    else:
        # the contracted dim is axis 0 of a^T (transA) or axis 1 of a; axis 0 of b, or 1 of b^T
        a = b.concat(*(b.tensor(t.inputs[0]) for t in terms), axis=0 if ta else 1)
        bb = b.concat(*(b.tensor(t.inputs[1]) for t in terms), axis=1 if tb else 0)
        prod = b.gemm(a, bb, transA=ta, transB=tb)
    gone = {t.outputs[0] for t in terms}
    rest = [v for v in node.inputs if v not in gone]
    node.inputs = [prod.name, *rest]


# ------------------------------------------------------------- merge_step_sums
def check_sum_of_reductions(g: Graph, node: Node, ctx: dict) -> Match | str:
    """add_n of >= 2 reduce_sums with the same axes over equal-shaped tensors."""
    groups: dict[tuple, list[Node]] = {}
    for v in node.inputs:
        p = ctx["producers"].get(v)
        if p is None or p.op != "reduce_sum" or v in ctx["protected"]:
            continue
        if len(ctx["consumers"].get(v, ())) != 1 or node.inputs.count(v) != 1:
            continue
        key = (p.attrs["axes"], p.attrs["keepdims"], g.types[p.inputs[0]])
        groups.setdefault(key, []).append(p)
    best = max(groups.values(), key=len, default=[])
    if len(best) < 2:
        return "fewer than two reduce_sums of one shape and axes"
    return Match(node, {"terms": best})


def rewrite_sum_of_reductions(g: Graph, m: Match) -> None:
    node, terms = m.node, m.values["terms"]
    b = builder_for(g, node)
    total = b.add_n(*(b.tensor(t.inputs[0]) for t in terms))
    red = b.reduce_sum(total, axes=terms[0].attrs["axes"], keepdims=terms[0].attrs["keepdims"])
    gone = {t.outputs[0] for t in terms}
    node.inputs = [red.name, *(v for v in node.inputs if v not in gone)]


def check_nested_concat(g: Graph, node: Node, ctx: dict) -> Match | str:
    """concat(..., concat(a, b, axis=k), ..., axis=k) where the inner one has no other reader."""
    k = node.attrs["axis"] % g.types[node.outputs[0]].rank
    flat, inlined = [], 0
    for v in node.inputs:
        p = ctx["producers"].get(v)
        if (
            p is not None
            and p.op == "concat"
            and p.attrs["axis"] % g.types[v].rank == k
            and len(ctx["consumers"].get(v, ())) == 1
            and node.inputs.count(v) == 1
            and v not in ctx["protected"]
        ):
            flat.extend(p.inputs)
            inlined += 1
        else:
            flat.append(v)
    if not inlined:
        return "no operand is a concat along the same axis read only here"
    return Match(node, {"inputs": flat})


def rewrite_nested_concat(g: Graph, m: Match) -> None:
    m.node.inputs = m.values["inputs"]


STEP_RULES = [
    Rule(
        "split_squeeze",
        ("split",),
        check_split_squeeze,
        rewrite_split_squeeze,
        "squeeze(split(x, unit slices)[t]) for all t -> split(reshape(x))",
    ),
    Rule(
        "concat_unsqueeze",
        ("concat",),
        check_concat_unsqueeze,
        rewrite_concat_unsqueeze,
        "concat(unsqueeze(a_t, k), axis=k) -> reshape(concat(a_t, axis=k))",
    ),
]

static_reshape = rule_pass(
    "static_reshape",
    "reshape_like with a target shape known up to copied/inferred dims -> reshape "
    "(no Shape node at run time)",
    [
        Rule(
            "static_reshape",
            ("reshape_like",),
            check_static_reshape,
            rewrite_static_reshape,
            "reshape_like(x, like) -> reshape(x, shape)",
        )
    ],
)

merge_step_slices = rule_pass(
    "merge_step_slices",
    "per-step squeezes of a unit split and unsqueezes into a concat -> one reshape each",
    STEP_RULES,
)

merge_step_sums = rule_pass(
    "merge_step_sums",
    "per-step reductions summed over time -> one reduction of the sum; nested concats "
    "along one axis -> one concat",
    [
        Rule(
            "sum_of_reductions",
            ("add_n",),
            check_sum_of_reductions,
            rewrite_sum_of_reductions,
            "add_n(reduce_sum(x_t, axes)) -> reduce_sum(add_n(x_t), axes)",
        ),
        Rule(
            "nested_concat",
            ("concat",),
            check_nested_concat,
            rewrite_nested_concat,
            "concat(a, concat(b, c, axis=k), axis=k) -> concat(a, b, c, axis=k)",
        ),
    ],
)

batch_weight_grads = rule_pass(
    "batch_weight_grads",
    "add_n of T gemms a_t^T b_t -> one gemm of the concatenated operands "
    "(the recurrent weight's gradient summed over time)",
    [
        Rule(
            "sum_of_products",
            ("add_n",),
            check_sum_of_products,
            rewrite_sum_of_products,
            "add_n(a_t^T @ b_t) -> concat(a)^T @ concat(b)",
        )
    ],
)
