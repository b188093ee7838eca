"""Reverse-mode autodiff over the IR: gradients are ordinary graph nodes.

The driver owns what is common to every op: reverse topological order,
summing gradients that fan in from several consumers, undoing broadcasting,
pruning what no target depends on, and refusing to differentiate through
ops that have no gradient. Each op's rule (next to its declaration in
`ops/`) only says how its output gradient maps to its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from graphc.builder import Builder, Tensor
from graphc.errors import GraphError
from graphc.ir import Graph, Node, TensorType
from graphc.lowering import expand_composites
from graphc.ops.registry import NotDifferentiable, get_op
from graphc.shapes import FLOAT_DTYPES


@dataclass
class GradCtx:
    """What a gradient rule sees: the builder, the node, its inputs, outputs and their grads."""

    b: Builder
    node: Node
    x: list[Tensor | None]  # every input (data, then parameters); None where absent
    y: list[Tensor]  # forward outputs, shared rather than recomputed
    gy: list[Tensor | None]  # gradient of each output (None: no gradient flows there)
    attrs: dict[str, Any]

    @property
    def g(self) -> Tensor:
        """The gradient of the first output (most ops have one)."""
        return self.gy[0] if self.gy[0] is not None else self.b.zeros_like(self.y[0])

    def needs(self, i: int) -> bool:
        """Whether input i's gradient is wanted (rules may skip costly unneeded work)."""
        return self.node.inputs[i] in self._wanted if i < len(self.node.inputs) else False

    _wanted: frozenset = frozenset()


def grad_name(target: str, suffix: str = ".grad") -> str:
    return f"{target}{suffix}"


def default_targets(graph: Graph) -> list[str]:
    return [p.name for p in graph.params.values() if not p.frozen]


def grad(
    graph: Graph,
    loss: str | None = None,
    wrt: Sequence[str] | None = None,
    *,
    seed: str | None = None,
    suffix: str = ".grad",
) -> Graph:
    """Forward graph plus gradient nodes for d(loss)/d(each target).

    Targets default to every parameter that is not frozen; any float input or
    value may be named (saliency: the gradient of a class score with respect to
    the image). `seed` names a value holding the output gradient to propagate
    instead of 1 (vector-Jacobian products). The result keeps the forward
    outputs and adds `<target><suffix>` (default `<target>.grad`) for each
    target; the loss comes first among the outputs.
    """
    loss = loss or graph.loss
    if loss is None:
        raise GraphError(
            "no loss to differentiate", hint="add `minimize(loss)` to the model file, or pass loss="
        )
    g = expand_composites(graph, keep_differentiable=True)
    if g is graph:
        g = graph.copy()
    targets = list(default_targets(g) if wrt is None else wrt)
    _check_targets(g, targets)
    order = g.topo_order()
    depends = set(targets)
    for n in order:
        if any(v in depends for v in n.inputs if v):
            depends.update(n.outputs)
    if loss not in depends:
        raise GraphError(
            f"the loss '{loss}' does not depend on "
            + ("any parameter" if wrt is None else ", ".join(targets)),
            node=loss,
        )
    needed = _ancestors(g, loss)
    target_set = set(targets)
    active = [n for n in order if any(o in depends and o in needed for o in n.outputs)]
    b = Builder(g, prefix="d_", tags={"grad": True})
    grads: dict[str, list[Tensor]] = {}
    if seed is None:
        grads[loss] = [b.ones_like(Tensor(b, loss))]
    else:
        grads[loss] = [Tensor(b, seed)]
    for node in reversed(active):
        gys = [_total(b, grads.pop(o, [])) for o in node.outputs]
        for o, gy in zip(node.outputs, gys):
            if o in target_set and gy is not None:
                grads[o] = [gy]  # an intermediate value asked for as a target keeps its total
        if all(gy is None for gy in gys):
            continue
        op = get_op(node.op, node.loc)
        if isinstance(op.grad, NotDifferentiable) or op.grad is None:
            why = op.grad.why if isinstance(op.grad, NotDifferentiable) else "no gradient rule"
            raise GraphError(
                f"cannot differentiate through {node.op} '{node.name}': {why}",
                loc=node.loc,
                node=node.name,
                hint="wrap its input in stop_gradient(...) or use a differentiable op "
                "(e.g. sigmoid instead of step)",
            )
        b.prefix = f"d_{node.name}_"
        b.tags = {"grad": True, "grad_of": node.name}
        ctx = GradCtx(
            b,
            node,
            [Tensor(b, v) if v else None for v in node.inputs],
            [Tensor(b, o) for o in node.outputs],
            gys,
            node.attrs,
        )
        ctx._wanted = frozenset(v for v in node.inputs if v in depends)
        try:
            gxs = op.grad(ctx)
        except GraphError as err:
            raise err.with_context(loc=node.loc, node=node.name) from None
        gxs = list(gxs) + [None] * (len(node.inputs) - len(gxs))
        for v, gx in zip(node.inputs, gxs):
            if not v or gx is None or v not in depends:
                continue
            grads.setdefault(v, []).append(_unbroadcast(b, gx, g.type(v)))
    b.prefix = "d_"
    b.tags = {"grad": True}
    names = {}
    for t in targets:
        total = _total(b, grads.get(t, []))
        if total is None:
            total = b.zeros_like(Tensor(b, t))
        names[t] = b.emit("identity", [total.name], {}, name=grad_name(t, suffix)).name
    g.meta["grads"] = names
    g.meta["loss"] = loss
    _drop_dead_grad_nodes(g, [loss, *g.outputs, *names.values()])
    g.loss = loss
    g.outputs = [loss] + [o for o in g.outputs if o != loss] + list(names.values())
    return g


def _check_targets(g: Graph, targets: Sequence[str]) -> None:
    known = g.value_names()
    for t in targets:
        if t not in known:
            from graphc.errors import closest

            near = closest(t, known)
            raise GraphError(
                f"cannot take a gradient with respect to '{t}': no such value",
                node=t,
                hint=f"did you mean '{near}'?" if near else None,
            )
        dtype = g.type(t).dtype
        if dtype not in FLOAT_DTYPES:
            raise GraphError(
                f"cannot take a gradient with respect to '{t}': it is {dtype}, not a float tensor",
                node=t,
                hint="gradients exist only for float values (labels and indices have none)",
            )


def _ancestors(g: Graph, value: str) -> set[str]:
    producers = g.producers()
    seen: set[str] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in producers:
            stack.extend(i for i in producers[v].inputs if i)
    return seen


def _total(b: Builder, parts: list[Tensor]) -> Tensor | None:
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return b.add_n(*parts)


def _unbroadcast(b: Builder, gx: Tensor, want: TensorType) -> Tensor:
    """Sum a gradient back down to the shape of the input it belongs to."""
    have = gx.shape
    if have == want.shape:
        return gx
    extra = len(have) - len(want.shape)
    if extra > 0:
        gx = b.reduce_sum(gx, axes=tuple(range(extra)), keepdims=False)
        have = gx.shape
    ones = tuple(i for i, (h, w) in enumerate(zip(have, want.shape)) if w == 1 and h != 1)
    if ones:
        gx = b.reduce_sum(gx, axes=ones, keepdims=True)
    if gx.shape != want.shape:
        gx = b.reshape(gx, shape=tuple(d if isinstance(d, int) else 0 for d in want.shape))
    return gx


def _drop_dead_grad_nodes(g: Graph, outputs: Sequence[str]) -> None:
    """Remove gradient nodes no output needs (rules may build a few speculatively)."""
    live: set[str] = set()
    for o in outputs:
        live |= _ancestors(g, o)
    for name in [k for k, n in g.nodes.items() if n.tags.get("grad")]:
        if not any(o in live for o in g.nodes[name].outputs):
            del g.nodes[name]
    for c in [c for c in g.constants if c not in live and c.startswith("d_")]:
        del g.constants[c]


def hvp(graph: Graph, wrt: Sequence[str] | None = None, loss: str | None = None) -> Graph:
    """Hessian-vector products: for each target t, an input `<t>.v`, an output `<t>.hvp`.

    Differentiates the gradient graph again: hvp = d/dθ (Σ_t <∇_t L, v_t>). Works
    for every op whose gradient rule is built from differentiable ops (see
    docs/autodiff.md).
    """
    first = grad(graph, loss=loss, wrt=wrt)
    targets = list(first.meta["grads"])
    b = Builder(first, prefix="hv_", tags={"grad": True})
    terms = []
    for t in targets:
        v = b.input(f"{t}.v", first.type(t).shape, first.type(t).dtype)
        terms.append(b.reduce_sum(Tensor(b, first.meta["grads"][t]) * v))
    dot = terms[0] if len(terms) == 1 else b.add_n(*terms)
    dot = b.identity(dot, name="grad_dot_v")
    second = grad(first, loss=dot.name, wrt=targets, suffix=".hvp")
    second.meta["first_grads"] = first.meta["grads"]
    second.outputs = [graph.loss or loss] + list(second.meta["grads"].values())
    second.loss = graph.loss or loss
    return second
