"""Shape and dtype inference: each node's rule runs over its inputs' types.

Layers that own parameters get them here, since a weight's shape depends on
the inferred shape of the layer's input (a dense layer's fan-in).
"""

from __future__ import annotations

import math

from graphc.errors import GraphError
from graphc.ir import Graph, Node, Param, TensorType
from graphc.ops.registry import InferCtx, ParamSpec, get_op


def param_names(node: Node) -> list[str]:
    op = get_op(node.op, node.loc)
    return [f"{node.name}.{p.name}" for p in op.active_params(node.attrs)]


def split_inputs(node: Node) -> tuple[list[str], list[str]]:
    """(data inputs, parameter inputs) of a node."""
    op = get_op(node.op, node.loc)
    k = len(op.active_params(node.attrs))
    return (
        (node.inputs[: len(node.inputs) - k], node.inputs[len(node.inputs) - k :])
        if k
        else (list(node.inputs), [])
    )


def _fans(spec: ParamSpec, shape) -> tuple[int, int]:
    dims = [d for d in shape if isinstance(d, int)]
    if not dims:
        return (1, 1)
    if spec.layout == "oi" and len(dims) >= 2:
        k = math.prod(dims[2:])
        return (dims[1] * k, dims[0] * k)
    if spec.layout == "io" and len(dims) >= 2:
        return (math.prod(dims[:-1]), dims[-1])
    return (dims[0], dims[0])


def infer_node(graph: Graph, node: Node) -> list[TensorType]:
    """Infer one node's output types (creating or resizing its parameters)."""
    op = get_op(node.op, node.loc)
    data, params = split_inputs(node)
    types: list[TensorType | None] = []
    for v in data:
        if not v:
            types.append(None)
        elif v not in graph.types:
            raise GraphError(f"'{v}' is not defined", loc=node.loc, node=node.name)
        else:
            types.append(graph.types[v])
    ctx = InferCtx(op, node.name, types, node.attrs, node.loc)
    for spec, pname in zip(op.active_params(node.attrs), params):
        shape = tuple(spec.shape(ctx))
        init = spec.init
        if node.attrs.get("init") and spec.layout != "vec":
            init = node.attrs["init"]
        dtype = next(
            (t.dtype for t in types if t is not None and t.dtype.startswith("float")), graph.dtype
        )
        old = graph.params.get(pname)
        keep = old is not None and old.shape == shape and old.value is not None
        p = Param(
            pname,
            shape,
            dtype,
            init,
            bool(node.attrs.get("frozen", False)) or spec.state,
            _fans(spec, shape),
            old.value if keep else None,
            spec.state,
        )
        if keep and old.value.dtype != dtype:
            p.value = old.value.astype(dtype)
        graph.params[pname] = p
        graph.types[pname] = p.type
        ctx.inputs.append(p.type)
    try:
        out = op.infer(ctx)
    except GraphError as e:
        raise e.with_context(loc=node.loc, node=node.name) from None
    outs = [out] if isinstance(out, TensorType) else list(out)
    if len(outs) != len(node.outputs):
        raise GraphError(
            f"{op.name} produces {len(outs)} outputs, node '{node.name}' names {len(node.outputs)}",
            loc=node.loc,
            node=node.name,
        )
    for name, t in zip(node.outputs, outs):
        graph.types[name] = t
    return outs


def infer(graph: Graph) -> Graph:
    """Infer every value's type in place (and return the graph); raises GraphError."""
    graph.types = {k: v for k, v in graph.inputs.items()}
    for name, c in graph.constants.items():
        graph.types[name] = TensorType(str(c.dtype), tuple(c.shape))
    used = set()
    for node in graph.topo_order():
        infer_node(graph, node)
        used.update(split_inputs(node)[1])
    for name in [p for p in graph.params if p not in used]:
        if not any(name in n.inputs for n in graph.nodes.values()):
            del graph.params[name]
    for name, p in graph.params.items():
        graph.types[name] = p.type
    known = graph.types
    for out in graph.outputs + ([graph.loss] if graph.loss else []):
        if out not in known:
            raise GraphError(f"output '{out}' is not defined", node=out)
    if graph.loss is not None:
        t = known[graph.loss]
        if t.shape not in ((), (1,)):
            raise GraphError(
                f"the loss '{graph.loss}' must be a scalar, got {t}",
                node=graph.loss,
                hint="losses reduce over the batch by default; check reduction='none'",
            )
    return graph
