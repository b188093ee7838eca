"""fuse_gemm: matmul with transposed operands (and a bias add) -> one Gemm.

Autodiff writes a dense layer's backward as `g @ transpose(W)` and
`transpose(x) @ g`: two explicit transposes that copy whole weight and
activation matrices every step. Gemm reads its operands transposed in place
(transA / transB), and takes the bias as C. Rewrites are in place: the
matmul node becomes the gemm, so its output keeps its name and type.
"""

from __future__ import annotations

from graphc.ir import Graph, Node
from graphc.passes.rewrite import Match, Rule, rule_pass
from graphc.shapes import broadcast

_SWAP = (1, 0)


def _transposed(ctx: dict, g: Graph, v: str) -> str | None:
    """The untransposed source when `v` is a 2-D transpose, else None."""
    p = ctx["producers"].get(v)
    if p is None or p.op != "transpose" or g.types[v].rank != 2:
        return None
    if (p.attrs["perm"] or _SWAP) != _SWAP:
        return None
    return p.inputs[0]


def check_operands(g: Graph, node: Node, ctx: dict) -> Match | str:
    a, b = node.inputs[0], node.inputs[1]
    if g.types[a].rank != 2 or g.types[b].rank != 2:
        return "operands are not both 2-D (batched matmul stays a MatMul)"
    ta, tb = _transposed(ctx, g, a), _transposed(ctx, g, b)
    if ta is None and tb is None:
        return "no operand is a 2-D transpose"
    attrs = (
        dict(node.attrs)
        if node.op == "gemm"
        else {"transA": False, "transB": False, "alpha": 1.0, "beta": 1.0}
    )
    ins = list(node.inputs)
    if ta is not None:
        ins[0], attrs["transA"] = ta, not attrs["transA"]
    if tb is not None:
        ins[1], attrs["transB"] = tb, not attrs["transB"]
    return Match(node, {"inputs": ins, "attrs": attrs})


def rewrite_operands(g: Graph, m: Match) -> None:
    m.node.op = "gemm"
    m.node.inputs = m.values["inputs"]
    m.node.attrs = m.values["attrs"]


def check_bias(g: Graph, node: Node, ctx: dict) -> Match | str:
    """add(gemm-or-matmul(a, b), bias) -> gemm(a, b, bias) when the product has no other use."""
    for i in (0, 1):
        p = ctx["producers"].get(node.inputs[i])
        if p is None or p.op not in ("matmul", "gemm"):
            continue
        prod, bias = node.inputs[i], node.inputs[1 - i]
        if p.op == "gemm" and len(p.inputs) > 2 and p.inputs[2]:
            return "the gemm already has a C operand"
        if g.types[prod].rank != 2 or g.types[p.inputs[0]].rank != 2:
            return "the product is not 2-D"
        if len(ctx["consumers"].get(prod, ())) != 1 or prod in ctx["protected"]:
            return "the product has other uses"
        shape = g.types[prod].shape
        if (
            broadcast(g.types[bias].shape, shape) != shape
            or g.types[bias].dtype != g.types[prod].dtype
        ):
            return "the bias does not broadcast to the product"
        attrs = (
            dict(p.attrs)
            if p.op == "gemm"
            else {"transA": False, "transB": False, "alpha": 1.0, "beta": 1.0}
        )
        return Match(node, {"inputs": [p.inputs[0], p.inputs[1], bias], "attrs": attrs})
    return "no operand is a matmul"


RULES = [
    Rule(
        "gemm_transposed_operands",
        ("matmul", "gemm"),
        check_operands,
        rewrite_operands,
        "matmul(transpose(a), b) -> gemm(a, b, transA=1) (and transB)",
    ),
    Rule(
        "gemm_bias",
        ("add",),
        check_bias,
        rewrite_operands,
        "add(matmul(a, b), bias) -> gemm(a, b, bias)",
    ),
]


fuse_gemm = rule_pass(
    "fuse_gemm",
    "matmul with transposed operands and a bias add -> one Gemm "
    "(forward and backward of dense layers)",
    RULES,
)
