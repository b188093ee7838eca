"""hoist_channel_scales: multiply by a per-channel factor once, on the small side.

A tensor scaled by a small broadcast factor, `s = a * f` (f [1, C, 1, 1]
against a [N, C, H, W]), is often read only to be scaled again or summed:

    (a * f) * t             ->  a * (f * t)          t small too
    sum((a * f) * u, axes)  ->  sum(a * u, axes) * f f constant along the axes

Each rewrite turns a full-size multiply into a per-channel one, and when
every reader of `s` is rewritten `s` itself disappears. The training batch
norm is the case that pays: its normalized input x̂ = (x - mean) * (1/std)
is read by the affine scale (x̂ * gamma), and by the closed-form backward
(fuse_batch_norm_grad: Σ gy·x̂ and x̂ · s2/n); after the rewrites x̂ is never
materialized (one full-size pass and one full-size buffer less per layer),
the forward is (x - mean) * (gamma/std) + beta. The statistics keep their
centered form (mean of (x - mean)²), so the numerics are the unoptimized
graph's up to the order of the multiplications.

The rules are generic: they look only at shapes (static factors that
broadcast against a larger operand) and run after the clean-up, which turns
division by a per-channel value into multiplication by its reciprocal.
"""

from __future__ import annotations

from graphc.ir import Graph, Node
from graphc.passes.rewrite import Match, Rule, builder_for, reduce_axes, rule_pass
from graphc.shapes import broadcast, is_static


def _aligned(shape: tuple, rank: int) -> tuple:
    return (1,) * (rank - len(shape)) + tuple(shape)


def _is_factor(g: Graph, f: str, of: str) -> bool:
    """f is a static broadcast factor strictly smaller than `of` (size 1 where `of` is longer)."""
    ft, ot = g.types[f], g.types[of]
    if not is_static(ft.shape) or ft.rank > ot.rank or ft.dtype != ot.dtype:
        return False
    fs = _aligned(ft.shape, ot.rank)
    if any(d != 1 and d != o for d, o in zip(fs, ot.shape)):
        return False
    return any(d == 1 and o != 1 for d, o in zip(fs, ot.shape))


def _scaled(g: Graph, ctx: dict, v: str) -> tuple[str, str] | None:
    """(a, f) when v = a * f with f a broadcast factor of the product, else None."""
    p = ctx["producers"].get(v)
    if p is None or p.op != "mul" or v in ctx["protected"]:
        return None
    for i in (0, 1):
        a, f = p.inputs[i], p.inputs[1 - i]
        if _is_factor(g, f, v) and g.types[a] == g.types[v]:
            return a, f
    return None


def check_mul(g: Graph, node: Node, ctx: dict) -> Match | str:
    """(a * f) * t -> a * (f * t) with f, t both small factors."""
    out = node.outputs[0]
    for i in (0, 1):
        s, t = node.inputs[i], node.inputs[1 - i]
        found = _scaled(g, ctx, s)
        if found is None or not _is_factor(g, t, out):
            continue
        a, f = found
        if g.types[a] != g.types[out]:
            continue
        return Match(node, {"a": a, "f": f, "t": t})
    return "no operand is a scaled tensor times a second small factor"


def rewrite_mul(g: Graph, m: Match) -> None:
    v = m.values
    b = builder_for(g, m.node, prefix=f"{m.node.name}_hoist_")
    ft = b.tensor(v["f"]) * b.tensor(v["t"])
    m.node.inputs = [v["a"], ft.name]


def check_sum(g: Graph, node: Node, ctx: dict) -> Match | str:
    """sum((a * f) * u, axes, keepdims) -> sum(a * u, axes, keepdims) * f, f constant on axes."""
    if not node.attrs["keepdims"] or node.attrs["axes"] is None:
        return "not a keepdims reduction over given axes"
    p = ctx["producers"].get(node.inputs[0])
    if (
        p is None
        or p.op != "mul"
        or len(ctx["consumers"].get(p.outputs[0], ())) != 1
        or p.outputs[0] in ctx["protected"]
    ):
        return "the summand is not a product read only here"
    prod = p.outputs[0]
    rank = g.types[prod].rank
    axes = reduce_axes(g, node)
    out = node.outputs[0]
    for i in (0, 1):
        s, u = p.inputs[i], p.inputs[1 - i]
        found = _scaled(g, ctx, s)
        if found is None:
            continue
        a, f = found
        fs = _aligned(g.types[f].shape, rank)
        if any(fs[ax] != 1 for ax in axes):
            continue
        if (
            g.types[a] != g.types[s]
            or broadcast(g.types[u].shape, g.types[a].shape) != g.types[prod].shape
        ):
            continue
        if broadcast(g.types[out].shape, fs) != g.types[out].shape:
            continue
        return Match(node, {"a": a, "f": f, "u": u, "prod": p})
    return "the product has no factor constant along the summed axes"


def rewrite_sum(g: Graph, m: Match) -> None:
    v = m.values
    b = builder_for(g, m.node, prefix=f"{m.node.name}_hoist_")
    unscaled = b.tensor(v["a"]) * b.tensor(v["u"])
    summed = b.reduce_sum(unscaled, axes=m.node.attrs["axes"], keepdims=True)
    # the matched node becomes the scaling: its output keeps its name
    m.node.op, m.node.inputs, m.node.attrs = "mul", [summed.name, v["f"]], {}


RULES = [
    Rule(
        "hoist_scale_mul",
        ("mul",),
        check_mul,
        rewrite_mul,
        "(a * f) * t -> a * (f * t) for small broadcast factors f, t",
    ),
    Rule(
        "hoist_scale_sum",
        ("reduce_sum",),
        check_sum,
        rewrite_sum,
        "sum((a * f) * u) -> sum(a * u) * f when f is constant along the summed axes",
    ),
]

hoist_channel_scales = rule_pass(
    "hoist_channel_scales",
    "move per-channel factors off full-size tensors: (a*f)*t -> a*(f*t), "
    "sum((a*f)*u) -> sum(a*u)*f (the batch norm's x̂ is never materialized)",
    RULES,
)
