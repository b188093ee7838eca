"""A NumPy interpreter over the IR, built from each op's reference implementation.

It is the semantics the ONNX export is tested against, and it computes the
values that `graphc render --values` prints on edges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from graphc.errors import GraphError
from graphc.infer import split_inputs
from graphc.ir import Graph, Node
from graphc.ops.registry import get_op


def reference_call(node: Node, arrays: Sequence[np.ndarray | None], rng=None):
    op = get_op(node.op, node.loc)
    attrs = {k: v for k, v in node.attrs.items() if k in op.attrs}
    args = [a for a in arrays if a is not None]  # absent optional inputs are left out
    if op.random:
        attrs["rng"] = rng if rng is not None else np.random.default_rng(0)
    out = op.reference(*args, **attrs)
    return out if isinstance(out, tuple) else (out,)


def evaluate(
    graph: Graph,
    feeds: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    rng=None,
) -> dict[str, np.ndarray]:
    """Every value of the graph (or just `outputs`) for the given input arrays."""
    env: dict[str, np.ndarray] = {}
    env.update(graph.param_values())
    env.update(params or {})
    env.update(graph.constants)
    for name, t in graph.inputs.items():
        if name in feeds:
            env[name] = np.asarray(feeds[name], dtype=t.dtype)
    for node in graph.topo_order():
        missing = [v for v in node.inputs if v and v not in env]
        if missing:
            continue  # not computable from these feeds; an error only if asked for below
        outs = reference_call(node, [env[v] if v else None for v in node.inputs], rng)
        for name, val in zip(node.outputs, outs):
            env[name] = np.asarray(val)
    if outputs is None:
        return env
    for k in outputs:
        if k not in env:
            raise GraphError(
                f"cannot compute '{k}' from the given inputs",
                node=k,
                hint="feed every graph input it depends on",
            )
    return {k: env[k] for k in outputs}


__all__ = ["evaluate", "reference_call", "split_inputs"]
