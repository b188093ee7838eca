"""sum_rows_as_matmul: a sum over the batch axis as a product with a ones row.

The backward pass sums over the batch wherever a parameter was broadcast
over it: a dense layer's bias gradient (Σ over N of gy [N, C]), a
convolution's (over N, H and W), a batched weight gradient (over N of
[N, C, K]). ONNX Runtime's CPU ReduceSum over the leading axis of a
row-major tensor is slow; the same sum as the matrix product
`ones[1, N] @ x[N, Q]` runs in MLAS's GEMM. Measured alone in ONNX Runtime
1.31, one thread (ReduceSum → MatMul, µs):

    [64, 128]  5.6 → 1.5      [64, 256]  19 → 1.6      [64, 9216]  95 → 48

    sum(x, axes={0} ∪ R)  ->  sum(reshape(ones[1, N] @ reshape(x, [N, Q]), x.shape[1:]), R - 1)

Q, the size of the other axes, must be static. The axes R after the batch
(a convolution's H and W) are summed by a small ReduceSum on the already
batch-reduced tensor. The ones row is `ones_like` of x's first column, so
it needs no shape arithmetic and works for any batch size. The new nodes
take the sum's place in the node order: appended at the end, the
schedule ran every sum late and the per-image weight gradients (K times a
layer's input) stayed alive across layers (+37 % planned peak on the test
convnet); one row shared by all sums, made from a graph input, kept the
schedule but left the recomputation pass nothing to gain on a residual MLP.

Profiled in place on separable_cnn's step, its six batch sums took 370 µs
as ReduceSum and 215 µs as products (conv biases over N, H, W included), yet
the step timed in place did not move (lenet5 1.185x of -O0 with the pass,
1.180x without; separable_cnn 1.113x both): registered, not in -O2.
Left alone: integer sums, rows under 1,024 values (a dense layer's bias:
the ones row's own nodes cost what the sum saves), and sums over more than one
leading axis (a recurrent layer's batch and time): MLAS packs the whole
[P, Q] operand before a one-row product, which lost in place on
lstm_sequence's [N, 20, 128] (44 against 28 µs).
"""

from __future__ import annotations

import math

from graphc.ir import Graph, Node
from graphc.passes.manager import register
from graphc.passes.rewrite import builder_for
from graphc.shapes import is_static

FLOATS = ("float32", "float64")
# below this many values per batch row the ones row's own nodes (Slice, Shape,
# ConstantOfShape, Reshape) cost about what the faster sum saves: with its three
# bias sums ([N, <= 128]) rewritten, mlp_digits' step measured no faster
MIN_ROW = 1024


def _axes(node: Node, rank: int) -> list[int]:
    axes = node.attrs["axes"]
    if axes is None:
        return list(range(rank))
    axes = (axes,) if isinstance(axes, int) else axes
    return sorted({a % rank for a in axes})


def _plan(g: Graph, node: Node) -> list[int] | None:
    """The summed axes after the batch axis (shifted to start at 0), or None to leave it."""
    t = g.types[node.inputs[0]]
    if t.dtype not in FLOATS or t.rank < 2:
        return None
    axes = _axes(node, t.rank)
    if axes[0] != 0 or axes[1:2] == [1]:
        return None  # not over the batch, or over more than one leading axis
    rest = t.shape[1:]
    if not is_static(rest) or math.prod(rest) < MIN_ROW:
        return None
    if not is_static(g.types[node.outputs[0]].shape):
        return None
    return [a - 1 for a in axes[1:]]


@register(
    "sum_rows_as_matmul",
    "a sum over the batch axis as ones[1, N] @ x[N, Q] "
    "(ONNX Runtime's GEMM, 2-12x faster than its ReduceSum there)",
)
def sum_rows_as_matmul(g: Graph) -> Graph:
    placed: dict[str, list[str]] = {}  # rewritten node -> the nodes made for it
    for node in g.topo_order():
        if node.op != "reduce_sum":
            continue
        inner = _plan(g, node)
        if inner is None:
            continue
        made = set(g.nodes)
        x = node.inputs[0]
        rest = g.types[x].shape[1:]
        b = builder_for(g, node, prefix=f"{node.name}_rows_")
        rows = b.reshape(b.tensor(x), shape=(-1, math.prod(rest)))
        first = b.slice(rows, starts=(0,), ends=(1,), axes=(1,))  # [N, 1]
        summed = b.matmul(b.reshape(b.ones_like(first), shape=(1, -1)), rows)
        if inner:
            summed = b.reduce_sum(b.reshape(summed, shape=rest), axes=tuple(inner), keepdims=False)
        # the sum node becomes the final reshape: its output keeps its name and type
        node.op, node.inputs = "reshape", [summed.name]
        node.attrs = {"shape": tuple(g.types[node.outputs[0]].shape)}
        placed[node.name] = [k for k in g.nodes if k not in made]
    # the new nodes go where the sum was, not at the end: the schedule stays as it was
    new = {k for ks in placed.values() for k in ks}
    order = [k for name in g.nodes if name not in new for k in [*placed.get(name, ()), name]]
    g.nodes = {k: g.nodes[k] for k in order}
    g.meta["_pass_note"] = f"{len(placed)} sums rewritten"
    return g
