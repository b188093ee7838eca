"""avg_pool_as_conv: average pooling (and its gradient) as a depthwise convolution.

When every window averages the same number of values (no padding, or
padding counted), average pooling is a depthwise convolution with the
constant kernel 1/K, and its gradient the matching transposed convolution:

    avg_pool(x)            ->  conv(x, E, groups=C)                E = 1/K [C, 1, *kernel]
    avg_pool_grad(gy, x)   ->  conv_input_grad(gy, E, x, groups=C)

ONNX Runtime runs a convolution with a constant kernel in its NCHWc
layout, 2.5x faster than its AveragePool on lenet5's [64, 6, 28, 28]
(0.18 against 0.44 ms); the gradient as one grouped ConvTranspose is a
little faster than the lowering's per-plane ConvTranspose and division
(0.27 against 0.33 ms). Each output is the same sum with each term scaled
by 1/K before rather than after summing: equal up to float rounding (exact
for a power-of-two window). Pools with uncounted padding (the divisor
changes at the borders) or ceil-mode partial windows are left alone.

When the windows tile the input (stride = kernel, no padding, every size a
multiple of the kernel) each input element is in exactly one window, and the
gradient is simpler still: `upsample_nearest(gy / K, kernel)` (ONNX Resize),
the division on the K-times smaller gy. On lenet5's two 2x2 pools this took
the step from 1.05x to 1.14x of -O0 (the grouped ConvTranspose was 0.22-0.25
ms each).
"""

from __future__ import annotations

import math

import numpy as np

from graphc.ir import Graph, Node
from graphc.ops.pool import pool_window
from graphc.ops.windows import geometry_error
from graphc.passes.rewrite import Match, Rule, builder_for, rule_pass
from graphc.shapes import is_static

FORWARD = ("avg_pool1d", "avg_pool2d", "avg_pool3d")


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    x = node.inputs[0] if node.op in FORWARD else node.inputs[1]
    xt = g.types[x]
    if xt.dtype != "float32":
        return "not float32 (ORT's CPU convolutions are float32-only)"
    if not is_static(xt.shape[1:]):
        return "channel or spatial sizes are not fixed"
    a = node.attrs
    win = pool_window(geometry_error, xt.shape[2:], a)
    if a["ceil_mode"]:
        return "ceil mode: a partial last window averages fewer values"
    if (any(win.begin) or any(win.end)) and not a["count_include_pad"]:
        return "uncounted padding: the divisor changes at the borders"
    return Match(node, {"x": x, "win": win})


def rewrite(g: Graph, m: Match) -> None:
    node, x, win = m.node, m.values["x"], m.values["win"]
    xt = g.types[x]
    c = xt.shape[1]
    kernel = tuple(win.kernel)
    if node.op not in FORWARD and win.tiles(xt.shape[2:]):
        # every element is in exactly one window: its gradient is its window's gy / K,
        # scaled on the K-times smaller gy, then repeated (ONNX Resize, nearest)
        b = builder_for(g, node, prefix=f"{node.name}_up_")
        scaled = b.tensor(node.inputs[0]) * (1.0 / math.prod(kernel))
        node.op, node.inputs, node.attrs = "upsample_nearest", [scaled.name], {"scale": kernel}
        return
    b = builder_for(g, node, prefix=f"{node.name}_conv_")
    e = b.const(
        np.full((c, 1) + kernel, 1.0 / math.prod(kernel), dtype=xt.dtype), name=f"{node.name}_mean"
    )
    attrs = {
        "stride": tuple(win.stride),
        "padding": tuple(win.begin) + tuple(win.end),
        "dilation": 1,
        "groups": c,
    }
    # the matched node becomes the convolution: its output keeps its name and type
    if node.op in FORWARD:
        node.op, node.inputs = "conv", [x, e.name]
    else:
        node.op, node.inputs = "conv_input_grad", [node.inputs[0], e.name, x]
    node.attrs = attrs


RULES = [
    Rule(
        "avg_pool_as_conv",
        (*FORWARD, "avg_pool_grad"),
        check,
        rewrite,
        "average pooling with a constant divisor -> depthwise conv with a 1/K kernel "
        "(its gradient -> the transposed conv)",
    )
]

avg_pool_as_conv = rule_pass(
    "avg_pool_as_conv",
    "average pooling and its gradient as a depthwise (transposed) convolution with a "
    "constant 1/K kernel (ORT runs it in its faster NCHWc layout)",
    RULES,
)
