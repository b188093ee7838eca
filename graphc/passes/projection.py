"""fold_input_projection: a sequence layer's input projection, without its [N, T, K] tensors.

A recurrent layer projects its whole input sequence at once, `Y = X @ W + b`
with X [N, T, F] (one matmul for all steps, as cuDNN does), cuts Y into
steps, and adds step t's slice to the recurrent product: `z_t = h @ U + y_t`.
Autodiff writes the way back as the reverse: the steps' gradients dz_t are
copied into one [N, T, K] stack, and the weight's gradient is a batched
product of X transposed with that stack, summed over the batch; the bias's a
reduce_sum over N and T. In ONNX Runtime on a CPU every one of these is a
pass over N*T*K values that the steps themselves never need whole (the
stack, the matmul, the bias add, the split, the batched product, the sum),
and the batched product runs as N small GEMMs. Three rules remove them:

* `step_projection` (forward): when every step's slice but the first is the
  C operand of its recurrent GEMM, each step's projection moves into that
  GEMM, stacked along the contraction:

      gemm(h, U, C=y_t)  ->  gemm(concat(x_t, 1, h), concat(W, b, U))

  x_t = X[:, t, :] comes from one split of X (with a column of ones for the
  bias, built once); the first step, which has no recurrent product, gets
  `gemm(concat(x_0, 1), concat(W, b))`. Y, its bias add and its split go.
* `gate_projection` (forward, the GRU): its recurrent product is cut into
  gates and only r's and z's parts are added to the slice (the candidate's
  recurrent part gets b_hn and is scaled by the reset gate). One GEMM per
  step gives all four pieces, with a block weight (zeros where a part does
  not read an operand, as cuDNN's GRU does):

      [x_t, 1, h] @ [[W, 0], [b, b_hn], [U_r, U_z, 0, U_n]]  ->  r, z, n_x, n_h

* `projection_grads` (backward): the weight's batched product and the
  bias's sum become one 2-D GEMM over all N*T rows, the bias gradient as its
  last row (the same column of ones):

      sum_n X[n]^T dZ[n], sum_{n,t} dZ[n,t]  ->  split(gemm([X, 1] as [N*T, F+1],
                                                           dZ as [N*T, K], transA))

  Where the forward rule has run, each step's operand `[x_t, 1, h]` already
  exists and the recurrent weight's gradient is a sum of per-step GEMMs
  `h^T dz_t`: those GEMMs take the whole operand instead, and one sum gives
  the input weight's, the bias's and the recurrent weight's gradients, with
  no stack at all:

      sum_t [x_t, 1, h]^T dz_t  ->  split into dW, db, dU

  It matches any matmul of a [N, T, F] tensor by a 2-D weight whose
  gradient autodiff sums over the batch (`linear` on a sequence already
  lowers to one 2-D Gemm and needs nothing).

All are exact up to float summation order, and matched by data flow and
shapes. See docs/optimizer.md for what each measured.
"""

from __future__ import annotations

import numpy as np

from graphc.builder import Builder, Tensor
from graphc.ir import Graph, Node
from graphc.passes.rewrite import (
    Match,
    Rule,
    builder_for,
    reduce_axes,
    replace_uses,
    reroute,
    rule_pass,
)
from graphc.passes.time_batch import SHAPE_ONLY


def _with_ones(b: Builder, x: Tensor) -> Tensor:
    """[N, T, F] -> [N, T, F + 1], the last column ones (the bias's row of the products)."""
    return b.concat(x, b.ones_like(b.slice(x, starts=(0,), ends=(1,), axes=(2,))), axis=2)


def _sum_over_batch(g: Graph, node: Node) -> bool:
    """A sum over the leading axis alone (as autodiff writes it, or as a ones GEMV)."""
    if node.op == "batch_sum":
        return True
    return node.op == "reduce_sum" and reduce_axes(g, node) == (0,) and not node.attrs["keepdims"]


def _sequence(g: Graph, x: str, steps) -> int | None:
    """F when x is [N, T, F] with this T and F known, else None."""
    shape = g.types[x].shape
    if len(shape) != 3 or shape[1] != steps or not isinstance(shape[2], int):
        return None
    return shape[2]


# ------------------------------------------------------------- projection_grads
def check_grads(g: Graph, node: Node, ctx: dict) -> Match | str:
    """matmul(transpose(X, (0, 2, 1)), dZ) read only by a sum over the batch."""
    tr = ctx["producers"].get(node.inputs[0])
    if tr is None or tr.op != "transpose" or tuple(tr.attrs["perm"] or ()) != (0, 2, 1):
        return "the left operand is not a transpose of its last two axes"
    dz = node.inputs[1]
    shape = g.types[dz].shape
    if len(shape) != 3 or not isinstance(shape[2], int):
        return "the right operand is not [N, T, K] with K known"
    if _sequence(g, tr.inputs[0], shape[1]) is None or g.types[tr.inputs[0]].shape[0] != shape[0]:
        return "the left operand is not [N, T, F] with the same N and T and F known"
    out = node.outputs[0]
    readers = ctx["consumers"].get(out, ())
    if out in ctx["protected"] or len(readers) != 1 or not _sum_over_batch(g, readers[0]):
        return "the product is not read by a sum over the batch alone"
    bias = [
        r
        for r in ctx["consumers"].get(dz, ())
        if r.op == "reduce_sum" and reduce_axes(g, r) == (0, 1) and not r.attrs["keepdims"]
    ]
    wide = _step_operands(g, ctx, dz, tr.inputs[0]) if bias else None
    return Match(
        node, {"x": tr.inputs[0], "dz": dz, "sum": readers[0], "bias": bias[:1], "wide": wide}
    )


def _steps(g: Graph, pieces: list[str], steps: int, width: int) -> list[list[str]] | None:
    """A concat's operands grouped into `steps` runs of `width` columns, or None."""
    groups: list[list[str]] = []
    run: list[str] = []
    cols = 0
    for v in pieces:
        t = g.types[v]
        if t.rank != 2 or not isinstance(t.shape[1], int):
            return None
        run.append(v)
        cols += t.shape[1]
        if cols == width:
            groups.append(run)
            run, cols = [], 0
        elif cols > width:
            return None
    return groups if not run and len(groups) == steps else None


def _ones_split(ctx: dict, v: str, x: str) -> tuple[Node, int] | None:
    """(the split, index) when v is step t's [x_t, 1] from split(reshape(concat(X, ones)))."""
    sp = ctx["producers"].get(v)
    flat = ctx["producers"].get(sp.inputs[0]) if sp is not None and sp.op == "split" else None
    cat = (
        ctx["producers"].get(flat.inputs[0]) if flat is not None and flat.op == "reshape" else None
    )
    if cat is None or cat.op != "concat" or cat.inputs[0] != x:
        return None
    ones = ctx["producers"].get(cat.inputs[1])
    return (sp, sp.outputs.index(v)) if ones is not None and ones.op == "ones_like" else None


def _weight_term(ctx: dict, d: str) -> tuple[Node, Node] | None:
    """(gemm, add_n) for a plain gemm(h, d, transA) read only by an add_n, else None."""
    for r in ctx["consumers"].get(d, ()):
        plain = r.op == "gemm" and r.inputs[1] == d and r.inputs[2:3] in ([], [""])
        if not plain or not r.attrs["transA"] or r.attrs["transB"] or r.attrs["alpha"] != 1.0:
            continue
        sums = ctx["consumers"].get(r.outputs[0], ())
        if r.outputs[0] not in ctx["protected"] and len(sums) == 1 and sums[0].op == "add_n":
            return r, sums[0]
    return None


def _step_operand(g: Graph, ctx: dict, h: str, x: str, t: int) -> tuple[Node, Node] | None:
    """(concat, split) for step t's forward operand concat([x_t, 1], h), [x_t, 1] being
    output t of the split of [X, 1] that step_projection made, else None."""
    for c in ctx["consumers"].get(h, ()):
        if c.op != "concat" or c.inputs[1:] != [h] or c.attrs["axis"] % 2 != 1:
            continue
        found = _ones_split(ctx, c.inputs[0], x)
        if found is not None and found[1] == t:
            return c, found[0]
    return None


def _step_operands(g: Graph, ctx: dict, dz: str, x: str) -> dict | None:
    """Where step_projection has run: the recurrent weight's per-step gradient terms
    gemm(h, dz_t, transA) whose h sits next to [x_t, 1] in that step's forward operand
    concat(x_t, 1, h). Their GEMMs over the whole operand give the input weight's and the
    bias's gradients too, and the dz stack is not needed."""
    flat = ctx["producers"].get(dz)
    if flat is None or flat.op != "reshape":
        return None
    stack = ctx["producers"].get(flat.inputs[0])
    if stack is None or stack.op != "concat" or len(ctx["consumers"][stack.outputs[0]]) != 1:
        return None
    groups = _steps(g, stack.inputs, *g.types[dz].shape[1:])
    if groups is None:
        return None
    terms: dict[int, tuple[Node, Node]] = {}
    split = total = None
    for t, run in enumerate(groups):
        term = _weight_term(ctx, run[0]) if len(run) == 1 else None
        operand = _step_operand(g, ctx, term[0].inputs[0], x, t) if term else None
        if operand is None or split not in (None, operand[1]) or total not in (None, term[1]):
            continue
        terms[t] = (term[0], operand[0])
        split, total = operand[1], term[1]
    if not terms:
        return None
    return {"groups": groups, "terms": terms, "split": split, "sum": total}


def _rewrite_wide(g: Graph, m: Match) -> None:
    """[dW; db; dU] as one sum of per-step GEMMs over the forward's [x_t, 1, h] operands."""
    total, bias, wide = m.values["sum"], m.values["bias"], m.values["wide"]
    b = builder_for(g, total)
    terms, xs = wide["terms"], wide["split"].outputs
    first = next(iter(terms.values()))[0]
    features = g.types[m.values["x"]].shape[2]
    hidden = g.types[first.inputs[0]].shape[1]
    stacked = b.add_n(
        *(
            b.gemm(b.tensor(c.outputs[0]), b.tensor(r.inputs[1]), transA=True)
            for r, c in terms.values()
        )
    )
    top, du = b.split(stacked, axis=0, sizes=(features + 1, hidden))
    rest = [
        b.gemm(
            b.tensor(xs[t]),
            b.tensor(run[0]) if len(run) == 1 else b.concat(*map(b.tensor, run), axis=1),
            transA=True,
        )
        for t, run in enumerate(wide["groups"])
        if t not in terms
    ]
    old = {r.outputs[0] for r, _ in terms.values()}
    wide["sum"].inputs = [du.name, *(v for v in wide["sum"].inputs if v not in old)]
    for r, _ in terms.values():
        del g.nodes[r.name]
    _replace_sums(g, b, b.add_n(top, *rest) if rest else top, features, total, bias)


def _replace_sums(g: Graph, b: Builder, grad: Tensor, features: int, total: Node, bias):
    """Route the weight's batch sum (and the bias's sum, grad's last row) to grad, and drop
    them: gone, not just unread, since a sum left behind keeps the product alive for the
    next round."""
    if bias:
        dw, db = b.split(grad, axis=0, sizes=(features, 1))
        replace_uses(g, bias[0].outputs[0], b.reshape(db, shape=(-1,)).name)
        grad = dw
    replace_uses(g, total.outputs[0], grad.name)
    for n in (total, *bias):
        del g.nodes[n.name]


def rewrite_grads(g: Graph, m: Match) -> None:
    if m.values["wide"] is not None:
        _rewrite_wide(g, m)
        return
    total, bias = m.values["sum"], m.values["bias"]
    b = builder_for(g, total)
    x, dz = b.tensor(m.values["x"]), b.tensor(m.values["dz"])
    features = x.shape[2]
    if bias:
        x = _with_ones(b, x)
    rows = b.reshape(x, shape=(-1, x.shape[2]))
    grad = b.gemm(rows, b.reshape(dz, shape=(-1, dz.shape[2])), transA=True)
    _replace_sums(g, b, grad, features, total, bias)


# ------------------------------------------------------------- step_projection
def _projection(g: Graph, ctx: dict, y: str) -> tuple[str, str, str | None] | None:
    """(X, W, b) for y = X @ W [+ b] with W 2-D and b [K], y read once, else None."""
    p = ctx["producers"].get(y)
    if p is None or y in ctx["protected"] or len(ctx["consumers"].get(y, ())) != 1:
        return None
    bias = None
    if p.op == "add":
        mm = [
            v for v in p.inputs if (q := ctx["producers"].get(v)) is not None and q.op == "matmul"
        ]
        if len(mm) != 1 or len(ctx["consumers"].get(mm[0], ())) != 1 or mm[0] in ctx["protected"]:
            return None
        bias = p.inputs[1] if p.inputs[0] == mm[0] else p.inputs[0]
        if g.types[bias].shape != g.types[y].shape[-1:]:
            return None
        p = ctx["producers"][mm[0]]
    if p.op != "matmul" or g.types[p.inputs[1]].rank != 2:
        return None
    return p.inputs[0], p.inputs[1], bias


def _recurrent_gemm(g: Graph, ctx: dict, v: str) -> tuple[Node, list[Node]] | None:
    """The plain gemm(h, U, C=v) that alone reads the step slice v, and the nodes reading
    only v's shape (a zeros_like for a step truncated BPTT cuts off), else None."""
    if v in ctx["protected"]:
        return None
    gemms, shape = [], []
    for r in ctx["consumers"].get(v, ()):
        only_shape = all((r.op, i) in SHAPE_ONLY for i, x in enumerate(r.inputs) if x == v)
        (shape if only_shape else gemms).append(r)
    if len(gemms) != 1:
        return None
    r = gemms[0]
    if r.op != "gemm" or len(r.inputs) < 3 or r.inputs[2] != v or v in r.inputs[:2]:
        return None
    if r.attrs["transA"] or r.attrs["transB"] or r.attrs["alpha"] != 1.0 or r.attrs["beta"] != 1.0:
        return None
    return (r, shape) if g.types[v] == g.types[r.outputs[0]] else None


def _sliced_projection(g: Graph, node: Node, ctx: dict) -> tuple | str:
    """(X, W, b) when node is split(reshape(X @ W [+ b], [N, T*K]), axis=1, sizes=K...)."""
    flat = ctx["producers"].get(node.inputs[0])
    if flat is None or flat.op != "reshape" or g.types[node.inputs[0]].rank != 2:
        return "not a split of a reshaped sequence"
    y = flat.inputs[0]
    shape = g.types[y].shape
    if len(shape) != 3 or node.attrs["axis"] % 2 != 1:
        return "not a [N, T, K] sequence viewed as [N, T*K] and split along axis 1"
    if tuple(node.attrs["sizes"]) != (shape[2],) * shape[1]:
        return "not one part per step"
    if len(ctx["consumers"].get(node.inputs[0], ())) != 1 or node.inputs[0] in ctx["protected"]:
        return "the reshaped sequence has another reader"
    found = _projection(g, ctx, y)
    if found is None:
        return "the sequence is not X @ W (+ b) read only here"
    if _sequence(g, found[0], shape[1]) is None:
        return "X is not [N, T, F] with F known"
    if any(v in ctx["protected"] for v in node.outputs):
        return "a step's slice is a graph output"
    return found


def check_steps(g: Graph, node: Node, ctx: dict) -> Match | str:
    """split(reshape(X @ W + b, [N, T*K]), axis=1, sizes=K...) feeding recurrent GEMMs."""
    found = _sliced_projection(g, node, ctx)
    if isinstance(found, str):
        return found
    gemms = [_recurrent_gemm(g, ctx, v) for v in node.outputs]
    if sum(r is None for r in gemms) > 1:
        return "more than one step's slice is not the C of a recurrent gemm"
    return Match(node, {"projection": found, "gemms": gemms, "consumers": ctx["consumers"]})


def rewrite_steps(g: Graph, m: Match) -> None:
    node = m.node
    x_name, w_name, bias_name = m.values["projection"]
    b = builder_for(g, node)
    x, w = b.tensor(x_name), b.tensor(w_name)
    if bias_name is not None:
        x = _with_ones(b, x)
        w = b.concat(w, b.unsqueeze(b.tensor(bias_name), axes=(0,)), axis=0)
    steps, cols = x.shape[1], x.shape[2]
    xs = b.split(b.reshape(x, shape=(0, steps * cols)), axis=1, sizes=(cols,) * steps)
    stacked: dict[str, Tensor] = {}  # one [W; b; U] per recurrent weight
    readers = m.values["consumers"]
    for v, x_t, found in zip(node.outputs, xs, m.values["gemms"]):
        if found is None:  # the first step: no recurrent product to join
            reroute(readers.get(v, ()), v, b.gemm(x_t, w).name)
            continue
        gemm, shape_readers = found
        u = gemm.inputs[1]
        if u not in stacked:
            stacked[u] = b.concat(w, b.tensor(u), axis=0)
        gemm.inputs = [b.concat(x_t, b.tensor(gemm.inputs[0]), axis=1).name, stacked[u].name]
        reroute(shape_readers, v, gemm.outputs[0])  # the gemm's output has the slice's shape


# ------------------------------------------------------------- gate_projection
def _parts(ctx: dict, v: str, width: int) -> Node | None:
    """The split of v alone into three parts of `width` along axis 1, else None."""
    readers = ctx["consumers"].get(v, ())
    if v in ctx["protected"] or len(readers) != 1 or readers[0].op != "split":
        return None
    sp = readers[0]
    if sp.inputs[0] != v or tuple(sp.attrs["sizes"]) != (width,) * 3 or sp.attrs["axis"] != 1:
        return None
    return sp


def _only_reader(ctx: dict, v: str) -> Node | None:
    readers = ctx["consumers"].get(v, ())
    return readers[0] if len(readers) == 1 and v not in ctx["protected"] else None


def _gru_step(g: Graph, ctx: dict, v: str, width: int) -> dict | None:
    """A GRU step reading the slice v: split(v) -> xr, xz, xn; split(h @ U) -> rr, rz, rn;
    xr + rr, xz + rz and rn + b_hn (the reset gate later scales the last). Else None."""
    a = _parts(ctx, v, width)
    if a is None:
        return None
    adds = [_only_reader(ctx, o) for o in a.outputs[:2]]
    if any(n is None or n.op != "add" for n in adds):
        return None
    other = [n.inputs[1] if n.inputs[0] == o else n.inputs[0] for n, o in zip(adds, a.outputs)]
    b = ctx["producers"].get(other[0])
    if b is None or b.op != "split" or other != b.outputs[:2]:
        return None
    mm = ctx["producers"].get(b.inputs[0])
    if (
        mm is None
        or mm.op != "matmul"
        or _only_reader(ctx, mm.outputs[0]) is not b
        or tuple(b.attrs["sizes"]) != (width,) * 3
        or b.attrs["axis"] != 1
        or g.types[mm.inputs[1]].rank != 2
        or g.types[mm.inputs[0]].rank != 2
    ):
        return None
    if any(_only_reader(ctx, o) is not n for o, n in zip(b.outputs[:2], adds)):
        return None
    hn = _only_reader(ctx, b.outputs[2])
    if hn is None or hn.op != "add" or b.outputs[2] not in hn.inputs:
        return None
    bias_hn = hn.inputs[1] if hn.inputs[0] == b.outputs[2] else hn.inputs[0]
    if g.types[bias_hn].shape != (width,):
        return None
    return {
        "dead": [a, b, mm, *adds, hn],
        "h": mm.inputs[0],
        "u": mm.inputs[1],
        "bias_hn": bias_hn,
        "r": adds[0],
        "z": adds[1],
        "xn": a.outputs[2],
        "hn": hn,
    }


def check_gates(g: Graph, node: Node, ctx: dict) -> Match | str:
    """The GRU's form of step_projection: every step's slice but the first is cut into the
    gates r, z, n, and r and z are added to the same cut of h @ U (n's recurrent part gets
    b_hn and the reset gate instead)."""
    found = _sliced_projection(g, node, ctx)
    if isinstance(found, str):
        return found
    if found[2] is None:
        return "the projection has no bias"
    width = g.types[node.outputs[0]].shape[1]
    if width % 3:
        return "a step's slice is not three gates wide"
    steps = [_gru_step(g, ctx, v, width // 3) for v in node.outputs]
    if sum(s is None for s in steps) > 1:
        return "more than one step's slice is not a GRU step's gates"
    known = [s for s in steps if s is not None]
    if len({(s["u"], s["bias_hn"]) for s in known}) != 1:
        return "the steps do not share one recurrent weight and b_hn"
    return Match(node, {"projection": found, "steps": steps, "consumers": ctx["consumers"]})


def rewrite_gates(g: Graph, m: Match) -> None:
    node = m.node
    x_name, w_name, bias_name = m.values["projection"]
    known = next(s for s in m.values["steps"] if s is not None)
    b = builder_for(g, node)
    x, w, bias = b.tensor(x_name), b.tensor(w_name), b.tensor(bias_name)
    u, bias_hn = b.tensor(known["u"]), b.tensor(known["bias_hn"])
    features, hidden = w.shape[0], u.shape[0]
    dtype = np.dtype(w.dtype)
    x = _with_ones(b, x)
    w_b = b.concat(w, b.unsqueeze(bias, axes=(0,)), axis=0)  # [F + 1, 3H]: the first step
    # one weight for [x_t, 1, h] -> [r and z summed, n's input part, n's recurrent part]
    u_r, u_z, u_n = b.split(u, axis=1, sizes=(hidden,) * 3)
    blocks = b.concat(
        b.concat(w, b.const(np.zeros((features, hidden), dtype)), axis=1),
        b.unsqueeze(b.concat(bias, bias_hn, axis=0), axes=(0,)),
        b.concat(u_r, u_z, b.const(np.zeros((hidden, hidden), dtype)), u_n, axis=1),
        axis=0,
    )
    steps, cols = x.shape[1], x.shape[2]
    xs = b.split(b.reshape(x, shape=(0, steps * cols)), axis=1, sizes=(cols,) * steps)
    readers = m.values["consumers"]
    for v, x_t, step in zip(node.outputs, xs, m.values["steps"]):
        if step is None:  # the first step: no recurrent product
            reroute(readers.get(v, ()), v, b.gemm(x_t, w_b).name)
            continue
        gates = b.gemm(b.concat(x_t, b.tensor(step["h"]), axis=1), blocks)
        r, z, xn, hn = b.split(gates, axis=1, sizes=(hidden,) * 4)
        olds = (step["r"].outputs[0], step["z"].outputs[0], step["hn"].outputs[0], step["xn"])
        for old, new in zip(olds, (r, z, hn, xn)):
            reroute(readers.get(old, ()), old, new.name)
        # gone, not just unread: the old cut would match this split again every round
        for dead in step["dead"]:
            del g.nodes[dead.name]


fold_input_projection = rule_pass(
    "fold_input_projection",
    "a sequence layer's input projection folded into its per-step recurrent gemms, and "
    "its weight and bias gradients from the recurrent weight's per-step gemms or one 2-D "
    "gemm (no [N, T, K] projection, batched product or sum)",
    [
        Rule(
            "step_projection",
            ("split",),
            check_steps,
            rewrite_steps,
            "gemm(h, U, C=(X @ W + b)[:, t]) -> gemm(concat(x_t, 1, h), concat(W, b, U))",
            local=False,
        ),
        Rule(
            "gate_projection",
            ("split",),
            check_gates,
            rewrite_gates,
            "the GRU's gates: gemm([x_t, 1, h], [[W, 0], [b, b_hn], [U_r, U_z, 0, U_n]]) -> "
            "r and z summed, n's two parts apart",
            local=False,
        ),
        Rule(
            "projection_grads",
            ("matmul",),
            check_grads,
            rewrite_grads,
            "sum_n X[n]^T dZ[n] and sum_{n,t} dZ -> split(sum_t [x_t, 1, h]^T dz_t), or "
            "split(gemm([X, 1]^T, dZ) over N*T rows)",
            local=False,
        ),
    ],
)
