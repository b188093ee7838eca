"""fuse_batch_norm_grad: a training batch norm's backward pass in closed form.

Autodiff through the decomposed batch norm (mean, x - mean, square, mean,
sqrt, divide, scale, shift) writes about fifteen full-size nodes per layer
(both branches of the division, the square, two broadcasts back over the
batch, their sums). With x̂ the normalized input, s1 = Σ gy and s2 = Σ gy·x̂
over the statistics axes and n elements per channel, the same gradient is

    dx = (gy - x̂ · s2/n - s1/n) · gamma / std,   dgamma = s2,   dbeta = s1

five full-size nodes and two reductions. The layer's nodes are found by their
tags (`expanded_from`, `expanded_op="batch_norm"`), its gradient nodes by
`grad_of`; the forward pass is left as it is. Like the loss fusions it runs
before the clean-up passes rewrite the decomposition.
"""

from __future__ import annotations

from graphc.builder import Builder
from graphc.ir import Graph, Node
from graphc.passes.rewrite import Match, Rule, grad_boundary, replace_uses, rule_pass, tagged


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    if (
        node.tags.get("grad")
        or node.tags.get("expanded_op") != "batch_norm"
        or node.name != node.tags.get("expanded_from")
    ):
        return "not the output node of a decomposed batch norm"
    region = [n for n in tagged(g, ctx, "expanded_from", node.name) if not n.tags.get("grad")]
    made = {o for n in region for o in n.outputs}
    means = [n for n in region if n.op == "reduce_mean" and n.inputs[0] not in made]
    divs = [
        n for n in region if n.op == "div" and g.types[n.outputs[0]] == g.types[node.outputs[0]]
    ]
    if len(means) != 1 or len(divs) != 1:
        return "not the training-mode decomposition (mean, x - mean, ... / std)"
    x, axes = means[0].inputs[0], means[0].attrs["axes"]
    xhat, std = divs[0].outputs[0], divs[0].inputs[1]
    scale = [n for n in region if n.op == "mul" and xhat in n.inputs]
    gamma = None
    if scale:
        gamma = scale[0].inputs[1] if scale[0].inputs[0] == xhat else scale[0].inputs[0]
    if tagged(g, ctx, "bn_fused", node.name):
        return "already fused"
    back = grad_boundary(g, ctx, region)
    if not back.nodes:
        return "no backward pass"
    outside = {v for n in region for v in n.inputs if v and v not in made}
    seeds = back.reads - outside
    if len(seeds) != 1 or g.types[next(iter(seeds))] != g.types[node.outputs[0]]:
        return "the backward reads gradients other than the output's"
    exits, gnames = back.exits, {n.name for n in back.nodes}
    dx = [v for v in exits if g.types[v] == g.types[x]]
    rest = [v for v in exits if v not in dx]
    if len(dx) != 1 or len(rest) > 2:
        return "the gradient leaves the layer in unexpected values"
    params = {}
    for v in rest:  # dgamma (it multiplies by x̂ on the way) or dbeta, shaped [C]
        if g.types[v].rank != 1:
            return "a parameter gradient is not a per-channel vector"
        params[v] = "gamma" if _reads(ctx, v, xhat, gnames) else "beta"
    return Match(
        node,
        {
            "x": x,
            "axes": axes,
            "xhat": xhat,
            "std": std,
            "gamma": gamma,
            "seed": next(iter(seeds)),
            "dx": dx[0],
            "params": params,
        },
    )


def rewrite(g: Graph, m: Match) -> None:
    v = m.values
    b = Builder(
        g,
        prefix=f"d_{m.node.name}_bn_",
        tags={"grad": True, "grad_of": m.node.name, "bn_fused": m.node.name},
    )
    b.loc = m.node.loc
    t = b.tensor
    gy, xhat, std = t(v["seed"]), t(v["xhat"]), t(v["std"])
    axes = v["axes"]
    s1 = b.reduce_sum(gy, axes=axes, keepdims=True)
    s2 = b.reduce_sum(gy * xhat, axes=axes, keepdims=True)
    n = b.numel_ratio(t(v["x"]), s1)  # elements per channel (symbolic batch allowed)
    k = b.reciprocal(std) if v["gamma"] is None else t(v["gamma"]) / std
    dx = (gy - (xhat * (s2 / n) + s1 / n)) * k
    replace_uses(g, v["dx"], dx.name)
    for old, which in v["params"].items():
        new = b.reshape(s2 if which == "gamma" else s1, shape=(-1,))
        replace_uses(g, old, new.name)


def _reads(ctx: dict, value: str, target: str, within: set[str]) -> bool:
    """Whether computing `value` inside the gradient nodes `within` reads `target`."""
    seen, stack = set(), [value]
    while stack:
        v = stack.pop()
        p = ctx["producers"].get(v)
        if v in seen or p is None or p.name not in within:
            continue
        seen.add(v)
        if target in p.inputs:
            return True
        stack.extend(i for i in p.inputs if i)
    return False


RULES = [
    Rule(
        "batch_norm_backward",
        ("add", "div"),
        check,
        rewrite,
        "autodiff of the decomposed batch norm -> the closed-form gradient",
        local=False,
    )
]


fuse_batch_norm_grad = rule_pass(
    "fuse_batch_norm_grad",
    "a training batch norm's backward in closed form "
    "(five full-size nodes instead of about fifteen)",
    RULES,
)
