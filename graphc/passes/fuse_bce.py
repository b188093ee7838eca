"""fuse_binary_cross_entropy: the backward of binary cross-entropy on logits -> one expression.

`binary_cross_entropy` decomposes (on logits z, target t) into the stable
relu(z) - z*t + softplus(-|z|), averaged per example and over the batch; the
forward is already stable. Its gradient as autodiff writes it is about fifteen
nodes on z's shape (the relu mask, sign of z, softplus's sigmoid, three
partial gradients and their sum). They are all one expression,
(sigmoid(z) - t) * dloss / n, which this rule puts in their place.

The loss's nodes are found by their tags (`expanded_from`, `expanded_op`),
the gradient leaving them by the autodiff tags (`grad_of`). Like the
softmax rule it must run before constant folding hides the loss's seed.
"""

from __future__ import annotations

from graphc.ir import Graph, Node, TensorType
from graphc.passes.rewrite import Match, Rule, grad_boundary, replace_uses, rule_pass, tagged

STABLE_FORM = {"relu", "mul", "sub", "abs", "neg", "softplus", "add"}


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    if node.tags.get("grad") or node.tags.get("expanded_op") != "binary_cross_entropy":
        return "not the final node of a decomposed binary_cross_entropy"
    if node.name != node.tags.get("expanded_from"):
        return "not the node that produces the loss value"
    region = [n for n in tagged(g, ctx, "expanded_from", node.name) if not n.tags.get("grad")]
    ops = {n.op for n in region}
    if not ops >= STABLE_FORM:
        return "not the logits form relu(z) - z*t + softplus(-|z|)"
    absn = next(n for n in region if n.op == "abs")
    z = absn.inputs[0]
    mul = next((n for n in region if n.op == "mul" and z in n.inputs), None)
    if mul is None:
        return "no z * t product"
    t = mul.inputs[1] if mul.inputs[0] == z else mul.inputs[0]
    if g.types[t] != g.types[z]:
        return "the target does not have the logits' shape"
    if node.op in ("reduce_mean", "reduce_sum") and node.attrs["axes"] is None:
        reduction = "mean" if node.op == "reduce_mean" else "sum"
    else:
        reduction = "none"
    if any(
        n.op == "binary_cross_entropy_logits_grad" for n in tagged(g, ctx, "grad_of", node.name)
    ):
        return "already fused"
    back = grad_boundary(g, ctx, region)
    if not back.nodes:
        return "no backward pass"
    seeds = {v for v in back.reads if g.types[v].shape == g.types[node.outputs[0]].shape}
    if len(seeds) != 1:
        return "cannot tell the loss's incoming gradient (run before fold_constants)"
    exits = back.exits
    if len(exits) != 1 or g.types[next(iter(exits))] != g.types[z]:
        return "the gradient leaves the loss in more than one value"
    return Match(
        node, {"z": z, "t": t, "reduction": reduction, "seed": seeds.pop(), "dz": exits.pop()}
    )


def rewrite(g: Graph, m: Match) -> None:
    v = m.values
    name = g.unique_name(f"d_{m.node.name}_binary_cross_entropy_grad")
    g.add_node(
        Node(
            name,
            "binary_cross_entropy_logits_grad",
            [v["seed"], v["z"], v["t"]],
            [name],
            {"reduction": v["reduction"]},
            m.node.loc,
            tags={"grad": True, "grad_of": m.node.name},
        )
    )
    g.types[name] = TensorType(g.types[v["z"]].dtype, g.types[v["z"]].shape)
    replace_uses(g, v["dz"], name)


RULES = [
    Rule(
        "binary_cross_entropy_logits",
        ("reduce_mean", "reduce_sum", "add"),
        check,
        rewrite,
        "the gradient of relu(z) - z*t + softplus(-|z|) -> (sigmoid(z) - t) * g / n",
        local=False,
    )
]


fuse_binary_cross_entropy = rule_pass(
    "fuse_binary_cross_entropy",
    "binary cross-entropy on logits: its backward as one (sigmoid(z) - t) * g / n",
    RULES,
)
