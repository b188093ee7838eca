"""conv_weight_grad_as_gemm: a convolution's weight gradient as GEMMs over its taps' windows.

`conv_weight_grad` lowers to a Conv whose batch is the input channels and
whose *kernel* is the output gradient (ops/conv.py). That is exact and needs
no extra memory, but ONNX Runtime's CPU Conv runs it as one GEMM per input
channel with as many columns as the weight has taps (9 for 3x3): a skinny
GEMM over an im2col buffer of the whole image, about a third of the forward
convolution's speed. On resnet_small these Convs were 44% of the step.

One group (every sample's dense convolutions): tap GEMMs. With Q = N * P (every
output position of every image), gy becomes [O, Q] and x one padded copy with
the batch innermost, so that each tap's window is a strided Slice whose inner
blocks are whole [N, C] planes (a handful of large copies, not one per row):

    rows = reshape(transpose(gy, [O, *out, N]), [O, Q])
    C >= 8 or C = 1:  x_t = window_t(pad(transpose(x, [*in, N, C])))  # [*out, N, C]
                      dw[:, :, t] = rows @ reshape(x_t, [Q, C])       # a GEMM per tap
    2 <= C < 8:       x_t = window_t(pad(transpose(x, [C, *in, N])))  # [C, *out, N]
                      dw[:, :, r, :] = rows @ reshape(stack(x_t for t in row r), [C*kw, Q])^T

Each GEMM contracts all Q positions at once (K = 4096 deep on an 8x8 layer at
batch 64), where MLAS runs at its full rate. With 2-7 input channels the
per-tap GEMMs are too skinny and stacking one kernel row's windows pays for
its copy (stacking all K taps measured no faster and tripled lenet5's step
peak); with one channel the per-tap products are GEMVs, faster than either.
Each window is read as soon as it is made: one window (or one row's) lives
at a time.
Measured alone, one thread, batch 64 (ms, tap GEMMs / one-hot patches below /
the Conv): separable_cnn's dilated 32->32 layer 1.1 / 2.1 / 2.9, vgg_small's
16->16 32x32 layer 7.8 / 15.8 / 19.5, lenet5's 6->16 5x5 layer (stacked)
0.7 / 1.2 / 1.1. The copy of x is made only once gy exists (an ordering edge,
`recompute_barrier`), so it lives for this layer's backward alone.

Depthwise (one input channel per group, m outputs each): per tap, the
window times gy, summed over all Q positions as ones[Q] @ prod (a GEMV, see
batch_sum): separable_cnn's [64, 16, 8, 8] layer 0.89 -> 0.27 ms alone, where
ORT runs the grouped Conv group by group.

Other groups: one-hot tap patches and a GEMM batched over the groups.

    taps    = conv(reshape(x, [N*C, 1, *in]), E)   # [N*C, K, *out]: the K taps
    patches = reshape(taps, [N, C*K, *out])        # each output position reads
    dw      = sum_n gy[n] @ patches[n]^T           # per group -> [O, C/groups, *kernel]

E is a constant one-hot [K, 1, *kernel] with E[t, 0, t] = 1, so the patch
convolution copies values (x*1 plus zeros: exact) with the original window
(stride, padding, dilation). Every channel is an image of its own: as one
grouped conv (groups=C) ORT ran the patches group by group, 1.2-2.8x slower.
The patches take K times x's memory while they live (one layer at a time).
This form is skipped where it measured slower in ORT: more taps than output
channels per group (the one-hot convolution spends K multiply-adds per patch
value, more than the GEMM's O).

All forms are skipped under 16 output positions (lenet5's c5 is a dense
layer, see conv_full_window.py) and for float64 (lowered through Einsum).
Each output element is the same sum of the same products in a different
order: equal up to float rounding. Caveat of the patch form: a non-finite x
(inf or NaN) turns into NaN in the neighbouring taps' patches (0*inf).
"""

from __future__ import annotations

import math

import numpy as np

from graphc.ir import Graph, Node
from graphc.ops.conv import _conv_window
from graphc.ops.windows import geometry_error
from graphc.passes.rewrite import Match, Rule, builder_for, rule_pass
from graphc.shapes import is_static

# with 2 to 7 input channels the per-tap GEMMs are too skinny: a kernel row's windows stacked
TAP_GEMM_MIN_CHANNELS = 8


def one_hot_taps(kernel: tuple[int, ...], dtype: str) -> np.ndarray:
    """E [K, 1, *kernel]: output channel t of a single-channel conv is tap t."""
    k = math.prod(kernel)
    return np.eye(k, dtype=dtype).reshape((k, 1) + tuple(kernel))


def check(g: Graph, node: Node, ctx: dict) -> Match | str:
    x, gy = node.inputs
    xt, gt = g.types[x], g.types[gy]
    if xt.dtype != "float32":
        return "not float32 (float64 convolutions lower through Einsum)"
    if not is_static(xt.shape[1:]) or not is_static(gt.shape[1:]):
        return "channel counts or spatial sizes are not fixed"
    groups = node.attrs["groups"]
    cg, og = xt.shape[1] // groups, gt.shape[1] // groups
    taps = math.prod(g.types[node.outputs[0]].shape[2:])
    # when these fail, the measured gain turned into a loss (docs/optimizer.md)
    if math.prod(gt.shape[2:]) < 16:
        return "under 16 output positions: the GEMMs are too small"
    if groups == 1:
        return Match(node, {"taps": "gemm"})
    if cg == 1:
        return Match(node, {"taps": "depthwise"})
    if taps > og:
        return "more taps than output channels: the one-hot patch conv costs more than the GEMM"
    return Match(node)


def _is_identity_window(g: Graph, node: Node) -> bool:
    """1x1 kernel, stride 1, no padding: the patches are x itself."""
    x, gy = node.inputs
    kernel = g.types[node.outputs[0]].shape[2:]
    stride = node.attrs["stride"]
    strides = stride if isinstance(stride, tuple) else (stride,) * len(kernel)
    return (
        all(k == 1 for k in kernel)
        and all(s == 1 for s in strides)
        and g.types[x].shape[2:] == g.types[gy].shape[2:]
    )


def _windows(b, g: Graph, node: Node, channels_last: bool):
    """x's tap windows over one padded copy of x with the batch innermost.

    The copy is [*in, N, C] (channels_last) or [C, *in, N]; it is made only once
    gy exists (an ordering edge), so it lives for this layer's backward alone
    instead of from the forward pass on. Returns window(tap): one strided Slice,
    [*out, N, C] or [C, *out, N].
    """
    x, gy = node.inputs
    kernel = tuple(g.types[node.outputs[0]].shape[2:])
    out = tuple(g.types[gy].shape[2:])
    win = _conv_window(geometry_error, g.types[x], kernel, node.attrs)
    d = len(kernel)
    spatial = tuple(range(2, 2 + d))
    late = b.op("recompute_barrier", b.tensor(x), b.tensor(gy))
    copy = b.transpose(late, perm=(*spatial, 0, 1) if channels_last else (1, *spatial, 0))
    first = 0 if channels_last else 1  # the copy's first spatial axis
    if any(win.begin) or any(win.end):
        pads = [0] * (2 * (d + 2))
        pads[first : first + d] = win.begin
        pads[d + 2 + first : d + 2 + first + d] = win.end
        copy = b.pad(copy, pads=tuple(pads))
    axes = tuple(range(first, first + d))

    def window(tap):
        starts = tuple(t * dl for t, dl in zip(tap, win.dilation))
        ends = tuple(st + (n - 1) * sd + 1 for st, n, sd in zip(starts, out, win.stride))
        return b.slice(copy, starts=starts, ends=ends, axes=axes, steps=win.stride)

    return window


def _tap_gemms(g: Graph, node: Node) -> None:
    """The weight gradient as GEMMs over x's tap windows, gy as [O, Q] (Q = P*N).

    Each GEMM contracts every output position of every image at once (the module
    docstring has the forms and their measurements).
    """
    x, gy = node.inputs
    c, o = g.types[x].shape[1], g.types[gy].shape[1]
    kernel = tuple(g.types[node.outputs[0]].shape[2:])
    per_tap = c == 1 or c >= TAP_GEMM_MIN_CHANNELS
    b = builder_for(g, node, prefix=f"{node.name}_taps_")
    spatial = tuple(range(2, 2 + len(kernel)))
    rows = b.reshape(b.transpose(b.tensor(gy), perm=(1, *spatial, 0)), shape=(o, -1))  # [O, Q]
    window = _windows(b, g, node, channels_last=per_tap)
    # each window is read as soon as it is made, so one (or one kernel row) lives at a time
    parts = []
    if per_tap:
        for tap in np.ndindex(*kernel):
            prod = b.matmul(rows, b.reshape(window(tap), shape=(-1, c)))  # [O, C]
            parts.append(b.unsqueeze(prod, axes=(2,)))
        summed = b.concat(*parts, axis=2)  # [O, C, K]
    else:  # the windows of one kernel row stacked: [C*kw, Q], one GEMM per row
        kw = kernel[-1]
        for row in np.ndindex(*kernel[:-1]):
            taps = [b.unsqueeze(window(row + (t,)), axes=(1,)) for t in range(kw)]
            stacked = b.reshape(b.concat(*taps, axis=1), shape=(c * kw, -1))
            prod = b.matmul(rows, b.transpose(stacked, perm=(1, 0)))  # [O, C*kw]
            parts.append(b.reshape(prod, shape=(o, c, 1, kw)))
        summed = b.concat(*parts, axis=2)  # [O, C, rows, kw]
    node.op, node.inputs, node.attrs = "reshape", [summed.name], {"shape": (o, c) + kernel}


def _depthwise_taps(g: Graph, node: Node) -> None:
    """A depthwise conv's weight gradient: per tap, its window times gy, summed over Q.

    With one input channel per group, dw[c*m + j, 0, t] = sum_q x_t[q, c] gy[q, c*m + j]
    (m outputs per channel): an element-wise product and a sum over all N * P
    positions, as ones[Q] @ prod (a GEMV, see batch_sum).
    """
    x, gy = node.inputs
    c, o = g.types[x].shape[1], g.types[gy].shape[1]
    kernel = tuple(g.types[node.outputs[0]].shape[2:])
    out = tuple(g.types[gy].shape[2:])
    d = len(kernel)
    b = builder_for(g, node, prefix=f"{node.name}_taps_")
    spatial = tuple(range(2, 2 + d))
    grads = b.reshape(b.transpose(b.tensor(gy), perm=(*spatial, 0, 1)), shape=(*out, -1, c, o // c))
    flat = b.reshape(grads, shape=(-1, o))  # [Q, O]: its batch dim sizes every ones vector
    window = _windows(b, g, node, channels_last=True)
    parts = []
    for tap in np.ndindex(*kernel):
        prod = b.unsqueeze(window(tap), axes=(d + 2,)) * grads  # [*out, N, C, m]
        summed = b.batch_sum(b.reshape(prod, shape=(-1, o)), flat)  # [O]
        parts.append(b.unsqueeze(summed, axes=(1,)))
    stacked = b.concat(*parts, axis=1)  # [O, K]
    node.op, node.inputs, node.attrs = "reshape", [stacked.name], {"shape": (o, 1) + kernel}


def rewrite(g: Graph, m: Match) -> None:
    taps = m.values.get("taps")
    if taps:
        (_tap_gemms if taps == "gemm" else _depthwise_taps)(g, m.node)
        return
    node = m.node
    x, gy = node.inputs
    a = node.attrs
    xt, gt = g.types[x], g.types[gy]
    c, o, groups = xt.shape[1], gt.shape[1], a["groups"]
    kernel = tuple(g.types[node.outputs[0]].shape[2:])
    k = math.prod(kernel)
    cg = c // groups
    b = builder_for(g, node, prefix=f"{node.name}_gemm_")
    if _is_identity_window(g, node):
        patches = b.tensor(x)
    else:
        e = b.const(one_hot_taps(kernel, xt.dtype), name=f"{node.name}_taps")
        # the patches are K times x: made only once gy exists, they live for this layer's
        # backward alone; without the ordering edge the graph order and ORT's depth-first
        # order both ran them right after the forward (resnet_small's planned peak 3x)
        e = b.op("recompute_barrier", e, b.tensor(gy))
        window = {key: a[key] for key in ("stride", "padding", "dilation")}
        # every channel an image of its own: one 1-channel conv, not C groups
        planes = b.reshape(b.tensor(x), shape=(-1, 1) + (0,) * len(kernel))  # [N*C, 1, *in]
        taps = b.conv(planes, e, **window)  # [N*C, K, *out]
        patches = b.reshape(taps, shape=(-1, c * k) + tuple(gt.shape[2:]))  # [N, C*K, *out]
    cols = b.reshape(patches, shape=(0, groups, cg * k, -1))  # [N, g, Cg*K, P]
    rows = b.reshape(b.tensor(gy), shape=(0, groups, o // groups, -1))  # [N, g, O/g, P]
    prod = b.matmul(rows, b.transpose(cols, perm=(0, 1, 3, 2)))  # [N, g, O/g, Cg*K]
    summed = b.reduce_sum(prod, axes=(0,))
    # the matched node becomes the final reshape: its output keeps its name (it may be an output)
    node.op, node.inputs, node.attrs = "reshape", [summed.name], {"shape": (o, cg) + kernel}


RULES = [
    Rule(
        "conv_weight_grad_gemm",
        ("conv_weight_grad",),
        check,
        rewrite,
        "conv_weight_grad -> GEMMs over its taps' windows (one group) or one-hot patches",
    )
]

conv_weight_grad_as_gemm = rule_pass(
    "conv_weight_grad_as_gemm",
    "a convolution's weight gradient as GEMMs over its taps' windows "
    "(instead of a Conv with the output gradient as its kernel)",
    RULES,
)
