"""sum_batch_as_gemv: a sum over the batch axis alone as ones[N] @ x.

The backward pass sums over the batch wherever a parameter was broadcast
over it: a dense layer's bias gradient is Σ_n gy[n] over gy [N, C]. ONNX
Runtime's CPU ReduceSum over the leading axis of a row-major tensor is slow;
the same sum as the vector-matrix product `ones[N] @ x` runs in MLAS's GEMV.
Measured alone in ONNX Runtime 1.31, one thread, net of the session's own
~4.5 µs (ReduceSum → MatMul): [64, 128] 6.1 → 0.7 µs, [64, 64] 2.7 → 0.5 µs,
[64, 10] 1.0 → 0.8 µs.

    reduce_sum(x, axes=0)  ->  batch_sum(x, like)      # lowered: ones[N] @ x

The ones vector's length is the batch size, symbolic in a training step: it
is made from `like`, the first graph input with the same leading dim, so
that every sum's ones vector is the same ConstantOfShape(Shape(like)), which
ORT's common-subexpression elimination merges into one. An earlier form of
this pass (removed) built a ones row per sum from the summed tensor itself
(Slice, Shape, ConstantOfShape, Reshapes: five nodes per sum) and measured
no gain on mlp_digits' three bias sums; with one shared vector and no
reshapes, mlp_digits' step went from 1.13x to 1.15-1.16x of -O0 (interleaved
StepRunner timing, -O2 with and without the pass). Left alone: sums over
other axes too (a convolution's bias sums over N, H and W; a recurrent
layer's over N and T: MLAS packs the whole operand before a one-row product,
which lost in place), integer sums,
keepdims, unknown sizes after the batch axis, and rows under 32 values (xor's
and perceptron's bias sums: the ones vector's own nodes cost more).
"""

from __future__ import annotations

import math

from graphc.ir import Graph, Node
from graphc.passes.rewrite import Match, Rule, reduce_axes, rule_pass
from graphc.shapes import is_static

FLOATS = ("float32", "float64")
# under this many values per row the ones vector's own two nodes cost more than the sum
# saves (xor's [N, 4] and perceptron's [N, 1] bias sums: 3-4% slower steps)
MIN_ROW = 32


def _like(g: Graph, x: str) -> str:
    """A graph input with x's leading dim (shared by every sum), else x itself."""
    batch = g.types[x].shape[0]
    for name, t in g.inputs.items():
        if t.rank >= 1 and t.shape[0] == batch:
            return name
    return x


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    x = node.inputs[0]
    t = g.types[x]
    if t.dtype not in FLOATS:
        return "not a float sum"
    if t.rank < 1 or reduce_axes(g, node) != (0,):
        return "not a sum over the leading axis alone"
    if node.attrs["keepdims"]:
        return "keeps the summed axis"
    if not is_static(t.shape[1:]):
        return "the sizes after the batch axis are not fixed"
    if math.prod(t.shape[1:]) < MIN_ROW:
        return f"rows under {MIN_ROW} values: the ones vector costs more than it saves"
    return Match(node, {"like": _like(g, x)})


def rewrite(g: Graph, m: Match) -> None:
    node = m.node
    node.op, node.inputs, node.attrs = "batch_sum", [node.inputs[0], m.values["like"]], {}


RULES = [
    Rule(
        "batch_sum",
        ("reduce_sum",),
        check,
        rewrite,
        "reduce_sum(x, axes=0) -> batch_sum(x, like): ones[N] @ x",
    )
]

sum_batch_as_gemv = rule_pass(
    "sum_batch_as_gemv",
    "a sum over the batch axis alone as ones[N] @ x (MLAS's GEMV; ORT's ReduceSum over the "
    "leading axis is slow)",
    RULES,
)
