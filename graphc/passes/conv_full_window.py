"""conv_full_window_as_gemm: a convolution whose window covers its whole input is a dense layer.

LeNet-5's C5 (a 5x5 convolution over a 5x5 map) has one output position: each
output is a dot product of the whole flattened input with one filter. With
no padding, no dilation and one group, the three ops of such a layer are
plain matrix products over the flattened tensors (K = C * kernel size):

    conv(x, w, b)          -> reshape(gemm(x[N, K], w[O, K], b, transB), [N, O, 1, ...])
    conv_input_grad(gy, w) -> reshape(gemm(gy[N, O], w[O, K]), x's shape)
    conv_weight_grad(x, gy)-> reshape(gemm(gy[N, O], x[N, K], transA), w's shape)

The same sums of the same products (in another order: float rounding
only). ONNX Runtime runs them as GEMMs instead of a Conv with a one-position
output, a ConvTranspose and a batch-as-channels Conv; on lenet5 those three
took about 0.5 ms of a 6.3 ms step.
"""

from __future__ import annotations

import math

from graphc.ir import Graph, Node
from graphc.ops.conv import _conv_window
from graphc.ops.windows import geometry_error
from graphc.passes.rewrite import Match, Rule, builder_for, rule_pass
from graphc.shapes import is_static

OPS = ("conv", "conv_input_grad", "conv_weight_grad")


def _input_and_weight_shapes(g: Graph, node: Node) -> tuple[tuple, tuple]:
    """(x's shape, w's shape) for any of the three ops."""
    if node.op == "conv":
        return g.types[node.inputs[0]].shape, g.types[node.inputs[1]].shape
    if node.op == "conv_input_grad":
        return g.types[node.outputs[0]].shape, g.types[node.inputs[1]].shape
    return g.types[node.inputs[0]].shape, g.types[node.outputs[0]].shape


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    xs, ws = _input_and_weight_shapes(g, node)
    if g.types[node.outputs[0]].dtype not in ("float32", "float64"):
        return "not a float convolution"
    if not is_static(xs[1:]) or not is_static(ws):
        return "channel, spatial or kernel sizes are not fixed"
    a = node.attrs
    if a["groups"] != 1:
        return "grouped: one GEMM per group would be needed"
    x = node.outputs[0] if node.op == "conv_input_grad" else node.inputs[0]
    win = _conv_window(geometry_error, g.types[x], ws[2:], a)
    if any(win.begin) or any(win.end) or any(d != 1 for d in win.dilation):
        return "padded or dilated"
    if tuple(xs[2:]) != tuple(ws[2:]):
        return "the window does not cover the whole input"
    return Match(node, {"x_shape": tuple(xs), "w_shape": tuple(ws)})


def rewrite(g: Graph, m: Match) -> None:
    node = m.node
    xs, ws = m.values["x_shape"], m.values["w_shape"]
    o, k = ws[0], math.prod(ws[1:])
    b = builder_for(g, node, prefix=f"{node.name}_gemm_")

    def rows(v: str, width: int):  # [N or O, width]: a batch of flattened rows
        return b.reshape(b.tensor(v), shape=(0, width))

    if node.op == "conv":
        x, w, *bias = node.inputs
        extra = [b.tensor(bias[0])] if bias and bias[0] else []
        out = b.gemm(rows(x, k), rows(w, k), *extra, transB=True)  # [N, O]
        shape = (0, o) + (1,) * (len(xs) - 2)
    elif node.op == "conv_input_grad":
        gy, w, _like = node.inputs
        out = b.gemm(rows(gy, o), rows(w, k))  # [N, K]
        shape = (0, *xs[1:])
    else:
        x, gy = node.inputs
        out = b.gemm(rows(gy, o), rows(x, k), transA=True)  # [O, K]
        shape = tuple(ws)
    # the matched node becomes the final reshape: its output keeps its name and type
    node.op, node.inputs, node.attrs = "reshape", [out.name], {"shape": shape}


RULES = [
    Rule(
        "conv_full_window",
        OPS,
        check,
        rewrite,
        "a convolution whose window covers its whole input (no padding, dilation or groups) "
        "-> GEMMs over the flattened tensors",
    )
]

conv_full_window_as_gemm = rule_pass(
    "conv_full_window_as_gemm",
    "a convolution whose window covers its whole input, and its gradients, as GEMMs "
    "(a dense layer over the flattened input)",
    RULES,
)
