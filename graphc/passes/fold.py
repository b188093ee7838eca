"""Constant folding: evaluate nodes whose inputs are all constants, at compile time.

Shape-only ops fold too once the shapes they read are static (`ones_like`
of a fixed-size tensor, `numel_ratio`), which is what autodiff emits for the
seed and for means. Results larger than MAX_ELEMENTS stay as nodes: folding
them would only move work from the step into the model file.
"""

from __future__ import annotations

import numpy as np

from graphc.interp import reference_call
from graphc.ir import Graph, TensorType
from graphc.ops.registry import get_op
from graphc.passes.manager import register
from graphc.passes.rewrite import protected, replace_uses
from graphc.shapes import is_static

MAX_ELEMENTS = 1 << 16
# ops whose result depends only on the *shapes* of their inputs
SHAPE_ONLY = {"ones_like", "zeros_like", "numel_ratio"}


def _fold_value(g: Graph, node, sources_const) -> list[np.ndarray] | str:
    op = get_op(node.op, node.loc)
    if op.random:
        return "random"
    if any(is_static(g.types[o].shape) is False for o in node.outputs):
        return "symbolic output shape"
    if any(int(np.prod(g.types[o].shape)) > MAX_ELEMENTS for o in node.outputs):
        return "result too large"
    if node.op in SHAPE_ONLY:
        if not all(is_static(g.types[v].shape) for v in node.inputs if v):
            return "input shape not static"
        arrays = [np.zeros(g.types[v].shape, g.types[v].dtype) if v else None for v in node.inputs]
    else:
        if not all(sources_const(v) for v in node.inputs if v):
            return "non-constant input"
        arrays = [g.constants[v] if v else None for v in node.inputs]
    outs = reference_call(node, arrays)
    return [np.asarray(o, dtype=g.types[name].dtype) for o, name in zip(outs, node.outputs)]


@register(
    "fold_constants",
    "evaluate nodes whose inputs are constants (or whose result depends only on static shapes)",
)
def fold_constants(g: Graph) -> Graph:
    keep = protected(g)
    folded = 0
    for node in g.topo_order():
        if any(o in keep for o in node.outputs):
            continue
        vals = _fold_value(g, node, lambda v: v in g.constants)
        if isinstance(vals, str):
            continue
        del g.nodes[node.name]
        for name, val in zip(node.outputs, vals):
            cname = g.unique_name(f"{name}_folded")
            g.constants[cname] = val
            g.types[cname] = TensorType(str(val.dtype), tuple(val.shape))
            replace_uses(g, name, cname)
            g.types.pop(name, None)
        folded += 1
    g.meta["_pass_note"] = f"{folded} nodes folded" if folded else ""
    return g
