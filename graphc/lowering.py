"""Expand composite ops (LSTM, normalizations, …) into the primitives they are made of."""

from __future__ import annotations

from graphc.builder import Builder, Tensor
from graphc.ir import Graph, Node
from graphc.ops.registry import get_op


def _needs_expansion(node: Node, keep_lowerable: bool, keep_differentiable: bool) -> bool:
    op = get_op(node.op, node.loc)
    if op.decompose is None:
        return False
    if keep_lowerable and op.lower is not None:
        return False
    return not (keep_differentiable and op.differentiable)


def expand_composites(
    graph: Graph, *, keep_lowerable: bool = False, keep_differentiable: bool = False
) -> Graph:
    """A copy of the graph where composite nodes are replaced by their decomposition.

    With `keep_lowerable`, composites that have their own ONNX lowering stay
    (inference export); with `keep_differentiable`, those with their own
    gradient rule stay (autodiff). Expansion repeats until nothing is left.
    """
    todo = [
        n for n in graph.nodes.values() if _needs_expansion(n, keep_lowerable, keep_differentiable)
    ]
    if not todo:
        return graph
    g = graph.copy()
    while todo:
        for node in todo:
            _expand(g, node)
        todo = [
            n for n in g.nodes.values() if _needs_expansion(n, keep_lowerable, keep_differentiable)
        ]
    return g


def _expand(g: Graph, node: Node) -> None:
    op = get_op(node.op, node.loc)
    order = list(g.nodes)
    at = order.index(node.name)
    del g.nodes[node.name]
    before = set(g.nodes)
    b = Builder(
        g,
        prefix=f"{node.name}__",
        tags=dict(node.tags, expanded_from=node.name, expanded_op=node.op),
    )
    b.loc = node.loc
    ins = [Tensor(b, v) if v else None for v in node.inputs]
    outs = op.decompose(b, node, *ins)
    outs = [outs] if isinstance(outs, Tensor) else list(outs)
    new = [k for k in g.nodes if k not in before]
    producers = {o: g.nodes[k] for k in new for o in g.nodes[k].outputs}
    for want, got in zip(node.outputs, outs):
        made = producers.get(got.name)
        if made is not None and len(made.outputs) == 1 and made.name not in node.outputs:
            # rename the producing node so consumers keep reading the original name
            del g.nodes[made.name]
            new[new.index(made.name)] = want
            made.name = want
            made.outputs = [want]
            made.comment = list(node.comment)
            g.nodes[want] = made
            g.types[want] = g.types.pop(got.name)
            producers[want] = made
        else:
            b.prefix = ""
            ident = b.emit("identity", [got.name], {}, name=want)
            new.append(ident.name)
    rest = [k for k in order[at + 1 :] if k in g.nodes]
    head = order[:at]
    g.nodes = {k: g.nodes[k] for k in head + new + rest}
