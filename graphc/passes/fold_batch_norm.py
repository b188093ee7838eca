"""fold_batch_norm: an inference batch norm folded into the linear or conv layer before it.

In evaluation mode, batch_norm(W x + b) = (W x + b - mean) * s + beta with
s = gamma / sqrt(var + eps) per channel: the same as a layer with weights
W * s and bias (b - mean) * s + beta. The exported model then has one layer
instead of a layer and a normalization. Only for inference graphs: in a
gradient or training graph the parameters themselves are what is trained.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import Graph, Node, Param
from graphc.passes.rewrite import Match, Rule, replace_uses, rule_pass

LAYERS = {"linear": 1, "conv1d": 3, "conv2d": 4, "conv3d": 5}  # op -> weight rank


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    if node.attrs.get("training"):
        return "batch norm in training mode"
    if g.meta.get("grads") or any(
        n.tags.get("grad") or n.tags.get("train") for n in g.nodes.values()
    ):
        return "a gradient or training graph: its parameters are what is trained"
    layer = ctx["producers"].get(node.inputs[0])
    if layer is None or layer.op not in LAYERS:
        return "the input is not a linear or conv layer"
    if layer.attrs.get("groups", 1) != 1 and layer.op != "linear":
        return "grouped convolution"
    if len(ctx["consumers"].get(layer.outputs[0], ())) != 1 or layer.outputs[0] in ctx["protected"]:
        return "the layer's output has other uses"
    if any(v.startswith(layer.name + ".") is False for v in layer.inputs[1:]):
        return "the layer's parameters are shared"
    return Match(node, {"layer": layer})


def rewrite(g: Graph, m: Match) -> None:
    bn, layer = m.node, m.values["layer"]
    values = g.param_values()
    stats = bn.inputs[1:]
    if bn.attrs.get("affine", True):
        gamma, beta, mean, var = (values[v] for v in stats)
    else:
        mean, var = (values[v] for v in stats)
        gamma, beta = np.ones_like(mean), np.zeros_like(mean)
    scale = gamma / np.sqrt(var + bn.attrs["eps"])
    wname = f"{layer.name}.weight"
    w = values[wname]
    w = (
        w * scale[None, :]
        if layer.op == "linear"
        else w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
    )
    bname = f"{layer.name}.bias"
    bias = (
        values.get(bname, np.zeros_like(mean)) if layer.attrs.get("bias") else np.zeros_like(mean)
    )
    bias = (bias - mean) * scale + beta
    old = g.params[wname]
    g.params[wname] = Param(
        wname, old.shape, old.dtype, old.init, old.frozen, old.fan, w.astype(old.dtype)
    )
    g.params[bname] = Param(
        bname,
        tuple(bias.shape),
        old.dtype,
        "zeros",
        old.frozen,
        (bias.shape[0], bias.shape[0]),
        bias.astype(old.dtype),
    )
    g.types[bname] = g.params[bname].type
    if not layer.attrs.get("bias"):
        layer.attrs["bias"] = True
        layer.inputs.append(bname)
    if bn.outputs[0] in g.outputs or bn.outputs[0] == g.loss:
        bn.op, bn.inputs, bn.attrs = "identity", [layer.outputs[0]], {}
    else:
        replace_uses(g, bn.outputs[0], layer.outputs[0])
        del g.nodes[bn.name]
    for v in stats:
        if not any(v in n.inputs for n in g.nodes.values() if n is not bn):
            g.params.pop(v, None)
            g.types.pop(v, None)


RULES = [
    Rule(
        "fold_batch_norm",
        ("batch_norm",),
        check,
        rewrite,
        "batch_norm(layer(x)) -> layer'(x) with scaled weights and shifted bias",
    )
]


fold_batch_norm = rule_pass(
    "fold_batch_norm",
    "fold inference batch norms into the linear/conv layer before them",
    RULES,
)
