"""fuse_softmax_cross_entropy: the decomposed cross-entropy and its gradient -> two kernels.

`cross_entropy` is a composite: log_softmax, one_hot, mul, reduce_sum, neg,
reduce_mean, and autodiff turns that into about ten more nodes on [N, C]
tensors (unsqueeze, broadcast, mul by the one-hot, the log_softmax rule).
This rule puts the forward back as one `softmax_cross_entropy` (LogSoftmax
and, for integer labels, the label's log-probability picked by GatherElements;
ONNX SoftmaxCrossEntropyLoss would be the obvious lowering, but ONNX Runtime
runs it as its eleven-node function body) and the backward as one stable
expression, (exp(logp) - onehot) * dloss / N, that reuses those
log-probabilities instead of recomputing a softmax.

It must run before fold_constants: folding turns the loss's seed gradient
into anonymous constants, and the rule needs the seed to find the chain.
"""

from __future__ import annotations

from graphc.ir import Graph, Node, TensorType
from graphc.passes.rewrite import (
    Match,
    Rule,
    grad_boundary,
    reduce_axes,
    replace_uses,
    rule_pass,
    tagged,
)


def _forward_users(ctx: dict, v: str) -> list[Node]:
    return [n for n in ctx["consumers"].get(v, ()) if not n.tags.get("grad")]


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    logits = node.inputs[0]
    if g.types[logits].rank != 2 or node.attrs["axis"] not in (1, -1):
        return "not a log_softmax over the classes of [N, C] logits"
    users = _forward_users(ctx, node.outputs[0])
    if len(users) != 1 or users[0].op != "mul" or node.outputs[0] in ctx["protected"]:
        return "the log-probabilities have uses other than one mul by the target"
    mul = users[0]
    target = mul.inputs[0] if mul.inputs[1] == node.outputs[0] else mul.inputs[1]
    if g.types[target] != g.types[logits]:
        return "the target is not one-hot / probabilities of the logits' shape"
    onehot = ctx["producers"].get(target)
    if (
        onehot is not None
        and onehot.op == "one_hot"
        and onehot.attrs["depth"] == g.types[logits].shape[1]
    ):
        target = onehot.inputs[0]
    chain = [node, mul]
    nxt = _forward_users(ctx, mul.outputs[0])
    if (
        len(nxt) != 1
        or nxt[0].op != "reduce_sum"
        or reduce_axes(g, nxt[0]) != (1,)
        or nxt[0].attrs["keepdims"]
    ):
        return "the product is not summed over the classes"
    chain.append(nxt[0])
    nxt = _forward_users(ctx, nxt[0].outputs[0])
    if len(nxt) != 1 or nxt[0].op != "neg":
        return "the class sum is not negated"
    chain.append(nxt[0])
    final, reduction = nxt[0], "none"
    nxt = _forward_users(ctx, final.outputs[0])
    if (
        len(nxt) == 1
        and nxt[0].op in ("reduce_mean", "reduce_sum")
        and reduce_axes(g, nxt[0]) == (0,)
        and not nxt[0].attrs["keepdims"]
    ):
        final, reduction = nxt[0], "mean" if nxt[0].op == "reduce_mean" else "sum"
        chain.append(final)
    for n in chain[:-1]:
        if n.outputs[0] in ctx["protected"]:
            return f"the intermediate '{n.name}' is a graph output"
    # the backward: log_softmax's rule produced d(logits); the loss's seed feeds the chain
    dlogits = [n for n in tagged(g, ctx, "grad_of", node.name) if n.op == "sub"]
    seed = None
    if dlogits:
        reads = grad_boundary(g, ctx, chain).reads
        cands = {v for v in reads if g.types[v].shape == g.types[final.outputs[0]].shape}
        if len(cands) != 1:
            return "cannot tell the loss's incoming gradient (run before fold_constants)"
        seed = cands.pop()
    return Match(
        node,
        {
            "logits": logits,
            "target": target,
            "final": final,
            "reduction": reduction,
            "dlogits": dlogits[0].outputs[0] if dlogits else None,
            "seed": seed,
        },
    )


def rewrite(g: Graph, m: Match) -> None:
    v = m.values
    final: Node = v["final"]
    logp = f"{final.name}:1"
    if logp in g.value_names():
        logp = g.unique_name(f"{final.name}_logp")
    final.op = "softmax_cross_entropy"
    final.inputs = [v["logits"], v["target"]]
    final.attrs = {"reduction": v["reduction"]}
    final.outputs = [final.outputs[0], logp]
    g.types[logp] = g.types[m.node.outputs[0]]
    replace_uses(g, m.node.outputs[0], logp)
    if v["dlogits"] is None:
        return
    name = g.unique_name(f"d_{final.name}_softmax_cross_entropy_grad")
    g.add_node(
        Node(
            name,
            "softmax_cross_entropy_grad",
            [v["seed"], logp, v["target"]],
            [name],
            {"reduction": v["reduction"]},
            final.loc,
            tags={"grad": True, "grad_of": final.name},
        )
    )
    g.types[name] = TensorType(g.types[logp].dtype, g.types[logp].shape)
    replace_uses(g, v["dlogits"], name)


RULES = [
    Rule(
        "softmax_cross_entropy",
        ("log_softmax",),
        check,
        rewrite,
        "log_softmax, one_hot, mul, sum, neg, mean and their gradients -> "
        "softmax_cross_entropy + softmax_cross_entropy_grad",
        local=False,
    )
]


fuse_softmax_cross_entropy = rule_pass(
    "fuse_softmax_cross_entropy",
    "decomposed cross-entropy forward and backward -> one stable kernel each",
    RULES,
)
