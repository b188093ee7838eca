"""Convolutions: one primitive `conv(x, w, b?)` and the layers built on it.

Layout is channels-first: x is [N, C, *spatial], the weight [out, in/groups,
*kernel]. The layers (`conv1d/2d/3d`, `separable_conv1d/2d`) own their
parameters and decompose into `conv` nodes that read them, so only `conv`
carries a gradient rule and an ONNX lowering. Its gradients are two more
primitives, `conv_input_grad` (a ConvTranspose) and `conv_weight_grad` (a
Conv with batch and channels swapped); each is differentiable again, so
Hessian-vector products through convolutions work.

The window geometry (padding forms, "same", output sizes) and the NumPy
sliding-window helpers are in `windows.py`, shared with `pool.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, ParamSpec, defop
from graphc.ops.windows import (
    Fail,
    Window,
    geometry_error,
    make_window,
    onnx_unwindow,
    onnx_windows,
    tuple_of,
    unwindow,
    windows,
)
from graphc.shapes import Dim, concrete, is_static

# ------------------------------------------------------------ shape rules

CONV_ATTRS = {
    "stride": Attr((int, tuple), 1, doc="step between windows (int or one per spatial axis)"),
    "padding": Attr(
        (int, tuple, str),
        0,
        doc="int, per-axis ints, begins+ends, 'valid' or 'same' (out = ceil(in/stride))",
    ),
    "dilation": Attr((int, tuple), 1, doc="spacing between kernel taps"),
    "groups": Attr(int, 1, doc="split channels into independent groups"),
}


def _conv_window(fail: Fail, x: TensorType, kernel, attrs: dict) -> Window:
    return make_window(
        fail, x.shape[2:], kernel, attrs["stride"], attrs["padding"], attrs["dilation"]
    )


def _check_channels(ctx: InferCtx, x: TensorType, groups: int, out_ch: Dim | None = None) -> int:
    """Input channels, checked to be fixed and divisible by groups (and out channels too)."""
    c = x.shape[1]
    if not isinstance(c, int):
        raise ctx.fail(
            f"the channel dim (axis 1) must have a fixed size, got '{c}' in {x}",
            hint="convolutions are channels-first: [N, C, *spatial]",
        )
    if groups < 1:
        raise ctx.fail(f"groups must be positive, got {groups}")
    if c % groups:
        raise ctx.fail(
            f"{c} input channels do not divide into {groups} groups",
            hint=f"groups must divide the channel count {c}",
        )
    if out_ch is not None and isinstance(out_ch, int) and out_ch % groups:
        raise ctx.fail(
            f"{out_ch} output channels do not divide into {groups} groups",
            hint=f"choose filters as a multiple of groups={groups}",
        )
    return c


def _conv_infer(ctx: InferCtx) -> TensorType:
    x, w, b = (ctx.inputs + [None])[:3]
    ctx.need_float(0)
    if x.rank < 3:
        raise ctx.fail(f"the input must be [N, C, *spatial], got {x}")
    if w.rank != x.rank or w.dtype != x.dtype:
        raise ctx.fail(
            f"the weight must be [out, in/groups, *kernel] of {x.dtype} with rank {x.rank}, got {w}"
        )
    if not is_static(w.shape):
        raise ctx.fail(f"the weight's shape must be fixed, got {w}")
    groups = ctx.attrs["groups"]
    c = _check_channels(ctx, x, groups, w.shape[0])
    if w.shape[1] * groups != c:
        raise ctx.dim_mismatch(
            f"input channels vs weight in-channels x groups ({groups})", c, w.shape[1] * groups
        )
    if b is not None and (b.shape != (w.shape[0],) or b.dtype != x.dtype):
        raise ctx.fail(f"the bias must be {x.dtype}[{w.shape[0]}], got {b}")
    win = _conv_window(ctx.fail, x, w.shape[2:], ctx.attrs)
    return TensorType(x.dtype, (x.shape[0], w.shape[0]) + win.out_dims(x.shape[2:]))


def _conv_flops(ctx: InferCtx, outs) -> int:
    w = ctx.inputs[1]
    per_out = 2 * math.prod(w.shape[1:])
    return per_out * math.prod(concrete(outs[0].shape, default=1))


# ------------------------------------------------------- NumPy references


def _grouped(cols: np.ndarray, groups: int) -> np.ndarray:
    """[N, C, *out, *k] windows -> [N, g, C/g, P, K] (P output positions, K taps)."""
    n, c = cols.shape[:2]
    d = (cols.ndim - 2) // 2
    p = math.prod(cols.shape[2 : 2 + d])
    return cols.reshape(n, groups, c // groups, p, -1)


def conv_reference(x, w, b=None, *, stride, padding, dilation, groups):
    """y[n, o, p] = sum over the group's channels c and taps k of x_win[n, c, p, k] w[o, c, k]."""
    win = _conv_window(
        geometry_error,
        TensorType("float32", x.shape),
        w.shape[2:],
        {"stride": stride, "padding": padding, "dilation": dilation},
    )
    cols = windows(x, win)
    out = cols.shape[2 : 2 + x.ndim - 2]
    o = w.shape[0]
    wg = w.reshape(groups, o // groups, w.shape[1], -1)
    y = np.einsum("ngcpk,gock->ngop", _grouped(cols, groups), wg, optimize=True)
    y = y.reshape(x.shape[0], o, *out)
    if b is not None:
        y = y + b.reshape((1, o) + (1,) * len(out))
    return y.astype(x.dtype, copy=False)


def conv_input_grad_reference(gy, w, like, *, stride, padding, dilation, groups):
    """dx: every output gradient spread back over the inputs its window read."""
    win = _conv_window(
        geometry_error,
        TensorType("float32", like.shape),
        w.shape[2:],
        {"stride": stride, "padding": padding, "dilation": dilation},
    )
    n, o = gy.shape[:2]
    out = gy.shape[2:]
    wg = w.reshape(groups, o // groups, w.shape[1], -1)
    cols = np.einsum("ngop,gock->ngcpk", gy.reshape(n, groups, o // groups, -1), wg, optimize=True)
    cols = cols.reshape(n, like.shape[1], *out, *w.shape[2:])
    return unwindow(cols, win, like.shape[2:]).astype(gy.dtype, copy=False)


def conv_weight_grad_reference(x, gy, *, kernel, stride, padding, dilation, groups):
    """dw[o, c, k] = sum over the batch and output positions of gy[n, o, p] x_window[n, c, p, k]."""
    win = _conv_window(
        geometry_error,
        TensorType("float32", x.shape),
        kernel,
        {"stride": stride, "padding": padding, "dilation": dilation},
    )
    n, o = gy.shape[:2]
    cols = _grouped(windows(x, win), groups)
    dw = np.einsum("ngcpk,ngop->gock", cols, gy.reshape(n, groups, o // groups, -1), optimize=True)
    return dw.reshape(o, x.shape[1] // groups, *win.kernel).astype(x.dtype, copy=False)


# ------------------------------------------------------------ ONNX lowering


def _onnx_window_attrs(win: Window) -> dict:
    return {"strides": list(win.stride), "pads": win.onnx_pads, "dilations": list(win.dilation)}


def _einsum_path(e, value: str) -> bool:
    """ORT's CPU Conv/ConvTranspose are float32-only: float64 goes through windows + Einsum."""
    return e.type(value).dtype == "float64"


def _conv_lower(e, n, x, w, b=None):
    xt = e.type(n.inputs[0])
    win = _conv_window(geometry_error, xt, e.type(n.inputs[1]).shape[2:], n.attrs)
    if _einsum_path(e, n.inputs[0]):
        return _conv_lower_einsum(e, n, win, x, w, b)
    return e.op(
        "Conv",
        [x, w] + ([b] if b else []),
        group=n.attrs["groups"],
        kernel_shape=list(win.kernel),
        **_onnx_window_attrs(win),
    )


def _grouped_names(e, n, win: Window, w_value: str, w: str):
    """Shapes for the einsum path: (groups, out channels, in channels per group, P, K)."""
    o, cg = e.type(w_value).shape[:2]
    g = n.attrs["groups"]
    wg = e.op("Reshape", [w, e.ints([g, o // g, cg, -1])])
    return g, o, cg, wg


def _conv_lower_einsum(e, n, win: Window, x, w, b=None):
    xt = e.type(n.inputs[0])
    g, o, cg, wg = _grouped_names(e, n, win, n.inputs[1], w)
    cols = onnx_windows(e, x, xt.dtype, xt.shape[2:], win)
    out = win.out_dims(xt.shape[2:])
    cols = e.op("Reshape", [cols, e.ints([0, g, cg, math.prod(out), -1])])
    y = e.op("Einsum", [cols, wg], equation="ngcpk,gock->ngop")
    y = e.op("Reshape", [y, e.ints([0, o, *out])])
    if b:
        y = e.op("Add", [y, e.op("Reshape", [b, e.ints([o] + [1] * len(out))])])
    return y


def _conv_input_grad_einsum(e, n, win: Window, gy, w):
    lt = e.type(n.inputs[2])
    g, o, _cg, wg = _grouped_names(e, n, win, n.inputs[1], w)
    gyg = e.op("Reshape", [gy, e.ints([0, g, o // g, -1])])
    cols = e.op("Einsum", [gyg, wg], equation="ngop,gock->ngcpk")
    cols = e.op(
        "Reshape",
        [
            cols,
            e.ints([0, lt.shape[1], math.prod(win.out_dims(lt.shape[2:])), math.prod(win.kernel)]),
        ],
    )
    return onnx_unwindow(e, cols, lt.dtype, lt.shape[2:], win)


def _conv_weight_grad_einsum(e, n, win: Window, x, gy):
    xt = e.type(n.inputs[0])
    g = n.attrs["groups"]
    o = e.type(n.inputs[1]).shape[1]
    cg = xt.shape[1] // g
    out = win.out_dims(xt.shape[2:])
    cols = onnx_windows(e, x, xt.dtype, xt.shape[2:], win)
    cols = e.op("Reshape", [cols, e.ints([0, g, cg, math.prod(out), -1])])
    gyg = e.op("Reshape", [gy, e.ints([0, g, o // g, -1])])
    dw = e.op("Einsum", [cols, gyg], equation="ngcpk,ngop->gock")
    return e.op("Reshape", [dw, e.ints([o, cg, *win.kernel])])


def spatial_shape(e, value: str, head: Sequence[int]) -> str:
    """An int64 shape: `head` then value's spatial dims (constant when they are fixed)."""
    t = e.type(value)
    if is_static(t.shape[2:]):
        return e.ints(list(head) + list(t.shape[2:]))
    dims = e.op("Slice", [e.op("Shape", [value]), e.ints([2]), e.ints([t.rank])])
    return e.op("Concat", [e.ints(list(head)), dims], axis=0)


def _conv_input_grad_lower(e, n, gy, w, like):
    lt = e.type(n.inputs[2])
    kernel = e.type(n.inputs[1]).shape[2:]
    win = _conv_window(geometry_error, lt, kernel, n.attrs)
    d = len(kernel)
    spatial = lt.shape[2:]
    if _einsum_path(e, n.inputs[2]):
        return _conv_input_grad_einsum(e, n, win, gy, w)
    if is_static(spatial):
        # ConvTranspose would otherwise drop the input's tail that no window reached
        extra = [
            (sz + b + en - f) % s
            for sz, b, en, f, s in zip(spatial, win.begin, win.end, win.eff, win.stride)
        ]
        return e.op(
            "ConvTranspose",
            [gy, w],
            group=n.attrs["groups"],
            kernel_shape=list(kernel),
            output_padding=extra,
            **_onnx_window_attrs(win),
        )
    # symbolic sizes: make the output as long as it can be, then cut it to the input's size
    extra = [s - 1 for s in win.stride]
    full = e.op(
        "ConvTranspose",
        [gy, w],
        group=n.attrs["groups"],
        kernel_shape=list(kernel),
        output_padding=extra,
        **_onnx_window_attrs(win),
    )
    ends = e.op("Slice", [e.op("Shape", [like]), e.ints([2]), e.ints([2 + d])])
    return e.op("Slice", [full, e.ints([0] * d), ends, e.ints(list(range(2, 2 + d)))])


def _conv_weight_grad_lower(e, n, x, gy):
    """A Conv whose batch is the input channels and whose kernel is the output gradient.

    x [N, g*Cg, *S] -> X' [Cg, g*N, *S] and gy [N, O, *S'] -> W' [O, N, *S'], so
    Conv(X', W', group=g, strides=dilation, dilations=stride) is dw^T over
    [Cg, O, *R] with R >= kernel; slice to the kernel and swap the first axes.
    """
    xt = e.type(n.inputs[0])
    a = n.attrs
    g = a["groups"]
    cg = xt.shape[1] // g
    win = _conv_window(geometry_error, xt, a["kernel"], a)
    if _einsum_path(e, n.inputs[0]):
        return _conv_weight_grad_einsum(e, n, win, x, gy)
    d = len(win.kernel)
    sp = list(range(3, 3 + d))
    if g == 1:
        xs = e.op("Transpose", [x], perm=[1, 0] + [i - 1 for i in sp])
    else:
        x5 = e.op("Reshape", [x, spatial_shape(e, n.inputs[0], [0, g, cg])])
        xt5 = e.op("Transpose", [x5], perm=[2, 1, 0] + sp)
        xs = e.op("Reshape", [xt5, spatial_shape(e, n.inputs[0], [cg, -1])])
    ws = e.op("Transpose", [gy], perm=[1, 0] + [i - 1 for i in sp])
    full = e.op(
        "Conv",
        [xs, ws],
        group=g,
        strides=list(win.dilation),
        dilations=list(win.stride),
        pads=win.onnx_pads,
    )
    cut = e.op(
        "Slice", [full, e.ints([0] * d), e.ints(list(win.kernel)), e.ints(list(range(2, 2 + d)))]
    )
    return e.op("Transpose", [cut], perm=[1, 0] + [i - 1 for i in sp])


# --------------------------------------------------------- gradient rules


def _window_attrs(attrs: dict) -> dict:
    return {k: attrs[k] for k in CONV_ATTRS}


def _conv_grad(c):
    x, w = c.x[0], c.x[1]
    b, g = c.b, c.g
    wa = _window_attrs(c.attrs)
    gx = b.conv_input_grad(g, w, x, **wa) if c.needs(0) else None
    gw = b.conv_weight_grad(x, g, kernel=tuple(w.shape[2:]), **wa) if c.needs(1) else None
    out = [gx, gw]
    if len(c.x) > 2 and c.x[2] is not None:
        out.append(b.reduce_sum(g, axes=(0,) + tuple(range(2, g.rank))) if c.needs(2) else None)
    return out


def _conv_input_grad_grad(c):
    # dx = A_w^T gy is bilinear in (gy, w): <G, dx> = <conv(G, w), gy>
    gy, w, _like = c.x
    wa = _window_attrs(c.attrs)
    ggy = c.b.conv(c.g, w, **wa) if c.needs(0) else None
    gw = c.b.conv_weight_grad(c.g, gy, kernel=tuple(w.shape[2:]), **wa) if c.needs(1) else None
    return [ggy, gw, None]


def _conv_weight_grad_grad(c):
    # <G, dw(x, gy)> = <conv(x, G), gy>
    x, gy = c.x
    wa = _window_attrs(c.attrs)
    gx = c.b.conv_input_grad(gy, c.g, x, **wa) if c.needs(0) else None
    ggy = c.b.conv(x, c.g, **wa) if c.needs(1) else None
    return [gx, ggy]


# ------------------------------------------------------ the primitives


def _conv_input_grad_infer(ctx: InferCtx) -> TensorType:
    gy, w, like = ctx.inputs
    x_type = _conv_infer(InferCtx(ctx.op, ctx.node, [like, w], ctx.attrs, ctx.loc))
    if gy.shape[1:] != x_type.shape[1:] or gy.dtype != like.dtype:
        raise ctx.fail(f"the output gradient {gy} does not match the convolution's output {x_type}")
    return TensorType(gy.dtype, like.shape)


def _conv_weight_grad_infer(ctx: InferCtx) -> TensorType:
    x, gy = ctx.inputs
    if x.rank < 3 or gy.rank != x.rank:
        raise ctx.fail(f"x must be [N, C, *spatial] and gy of the same rank, got {x} and {gy}")
    d = x.rank - 2
    kernel = tuple_of(ctx.fail, "kernel", ctx.attrs["kernel"], d)
    groups = ctx.attrs["groups"]
    c = _check_channels(ctx, x, groups, gy.shape[1])
    w = TensorType(x.dtype, (gy.shape[1], c // groups) + kernel)
    y = _conv_infer(InferCtx(ctx.op, ctx.node, [x, w], ctx.attrs, ctx.loc))
    if gy.shape[1:] != y.shape[1:] or gy.dtype != x.dtype:
        raise ctx.fail(f"the output gradient {gy} does not match the convolution's output {y}")
    return w


def _grad_flops(ctx: InferCtx, outs) -> int:
    # the same multiply-adds as the forward convolution
    if ctx.op.name == "conv_input_grad":
        gy, w = ctx.inputs[0], ctx.inputs[1]
    else:
        gy, w = ctx.inputs[1], outs[0]
    return 2 * math.prod(w.shape[1:]) * math.prod(concrete(gy.shape, default=1))


defop(
    "conv",
    inputs=("x", "w", "b?"),
    attrs=dict(CONV_ATTRS),
    infer=_conv_infer,
    reference=conv_reference,
    lower=_conv_lower,
    grad=_conv_grad,
    flops=_conv_flops,
    category="layers",
    key_attrs=("stride", "padding", "groups"),
    doc="N-d convolution (cross-correlation) of x [N, C, *S] with w [O, C/groups, *k], "
    "plus an optional bias [O]; the layers conv1d/2d/3d decompose into it",
    test={
        "cases": [
            {
                "shapes": [[2, 4, 6, 5], [6, 2, 3, 3], [6]],
                "attrs": {"groups": 2, "stride": 2, "padding": 1},
            },
            {"shapes": [[2, 3, 7], [4, 3, 2]], "attrs": {"dilation": 2, "padding": "same"}},
            {
                "shapes": [[1, 2, 4, 3, 5], [2, 1, 2, 2, 3]],
                "attrs": {"groups": 2, "padding": (1, 0, 1)},
            },
        ],
        "batch": False,
        "grad": True,
        "tol": 1e-4,
    },
)

defop(
    "conv_input_grad",
    inputs=("gy", "w", "like"),
    attrs=dict(CONV_ATTRS),
    infer=_conv_input_grad_infer,
    reference=conv_input_grad_reference,
    lower=_conv_input_grad_lower,
    grad=_conv_input_grad_grad,
    flops=_grad_flops,
    category="gradients",
    key_attrs=("stride", "padding", "groups"),
    doc="gradient of conv with respect to its input (a transposed convolution); `like` is "
    "the input, read only for its shape",
    test={
        "cases": [
            {
                "shapes": [[2, 6, 3, 3], [6, 2, 3, 3], [2, 4, 6, 5]],
                "attrs": {"groups": 2, "stride": 2, "padding": 1},
            },
            {"shapes": [[2, 4, 3], [4, 3, 2], [2, 3, 9]], "attrs": {"stride": 3}},
            {
                "shapes": [[2, 4, 5], [4, 3, 2], [2, 3, 5]],
                "attrs": {"dilation": 2, "padding": "same"},
            },
        ],
        "batch": False,
        "grad": True,
        "tol": 1e-4,
    },
)

defop(
    "conv_weight_grad",
    inputs=("x", "gy"),
    attrs={"kernel": Attr((int, tuple), doc="kernel size of the weight"), **CONV_ATTRS},
    infer=_conv_weight_grad_infer,
    reference=conv_weight_grad_reference,
    lower=_conv_weight_grad_lower,
    grad=_conv_weight_grad_grad,
    flops=_grad_flops,
    category="gradients",
    key_attrs=("kernel", "stride", "groups"),
    doc="gradient of conv with respect to its weight: [O, C/groups, *kernel]",
    test={
        "cases": [
            {
                "shapes": [[2, 4, 6, 5], [2, 6, 3, 3]],
                "attrs": {"kernel": 3, "groups": 2, "stride": 2, "padding": 1},
            },
            {"shapes": [[2, 3, 8], [2, 4, 3]], "attrs": {"kernel": 2, "stride": 3}},
            {
                "shapes": [[2, 2, 7], [2, 4, 7]],
                "attrs": {"kernel": 3, "dilation": 2, "padding": "same"},
            },
        ],
        "grad": True,
        "tol": 1e-4,
    },
)


# ------------------------------------------------------------ the layers

LAYER_ATTRS = {
    "filters": Attr(int, doc="output channels"),
    "kernel": Attr((int, tuple), doc="kernel size (int or one per spatial axis)"),
    **CONV_ATTRS,
    "bias": Attr(bool, True, doc="add a learned bias per output channel"),
}


def _layer_checked(ctx: InferCtx, dims: int, groups: int) -> tuple[int, tuple[int, ...]]:
    """Validate a layer's input and attributes; (input channels, kernel)."""
    x = ctx.need_float(0)
    if x.rank != dims + 2:
        axes = ", ".join(["N", "C"] + ["D", "H", "W"][3 - dims :])
        raise ctx.fail(
            f"the input must be [{axes}] (rank {dims + 2}), got {x}",
            hint="convolutions are channels-first",
        )
    if ctx.attrs["filters"] < 1:
        raise ctx.fail(f"filters must be positive, got {ctx.attrs['filters']}")
    c = _check_channels(ctx, x, groups, ctx.attrs["filters"])
    return c, tuple_of(ctx.fail, "kernel", ctx.attrs["kernel"], dims)


def _conv_layer(dims: int) -> None:
    name = f"conv{dims}d"

    def weight_shape(ctx: InferCtx):
        c, k = _layer_checked(ctx, dims, ctx.attrs["groups"])
        return (ctx.attrs["filters"], c // ctx.attrs["groups"]) + k

    def reference(x, w, b=None, *, filters, kernel, stride, padding, dilation, groups, bias):
        return conv_reference(
            x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups
        )

    def decompose(b, node, x, w, bias=None):
        args = (x, w) + ((bias,) if bias is not None else ())
        return b.conv(*args, **_window_attrs(node.attrs))

    shape = [[2, 3] + [7, 6, 5][:dims]]
    defop(
        name,
        inputs=("x",),
        attrs=dict(LAYER_ATTRS),
        params=(
            ParamSpec("weight", weight_shape, "he", "oi"),
            ParamSpec(
                "bias", lambda c: (c.attrs["filters"],), "zeros", "vec", when=lambda a: a["bias"]
            ),
        ),
        infer=_conv_infer,
        reference=reference,
        decompose=decompose,
        flops=_conv_flops,
        category="layers",
        key_attrs=("filters", "kernel", "stride"),
        doc=f"{dims}-D convolution layer over [N, C, {', '.join('DHW'[3 - dims :])}]; weight "
        f"[filters, C/groups, *kernel] (He init), bias [filters]",
        test={
            "cases": [
                {
                    "shapes": shape,
                    "attrs": {"filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
                },
                {
                    "shapes": shape,
                    "attrs": {"filters": 2, "kernel": 2, "dilation": 2, "groups": 1, "bias": False},
                },
            ],
            "grad": True,
            "tol": 1e-4,
        },
    )


for _d in (1, 2, 3):
    _conv_layer(_d)


def _separable_layer(dims: int) -> None:
    name = f"separable_conv{dims}d"

    def depthwise_shape(ctx: InferCtx):
        c, k = _layer_checked(ctx, dims, 1)
        m = ctx.attrs["depth_multiplier"]
        if m < 1:
            raise ctx.fail(f"depth_multiplier must be positive, got {m}")
        return (c * m, 1) + k

    def pointwise_shape(ctx: InferCtx):
        return (ctx.attrs["filters"], ctx.x.shape[1] * ctx.attrs["depth_multiplier"]) + (1,) * dims

    def infer(ctx: InferCtx) -> TensorType:
        x, dw, pw = ctx.inputs[:3]
        a = ctx.attrs
        depth = {k: a[k] for k in ("stride", "padding", "dilation")}
        h = _conv_infer(
            InferCtx(ctx.op, ctx.node, [x, dw], dict(depth, groups=x.shape[1]), ctx.loc)
        )
        return _conv_infer(
            InferCtx(ctx.op, ctx.node, [h, pw] + ctx.inputs[3:], dict(CONV_DEFAULTS), ctx.loc)
        )

    def reference(
        x, dw, pw, b=None, *, filters, kernel, stride, padding, dilation, depth_multiplier, bias
    ):
        h = conv_reference(
            x, dw, None, stride=stride, padding=padding, dilation=dilation, groups=x.shape[1]
        )
        return conv_reference(h, pw, b, **CONV_DEFAULTS)

    def decompose(b, node, x, dw, pw, bias=None):
        a = node.attrs
        h = b.conv(
            x,
            dw,
            stride=a["stride"],
            padding=a["padding"],
            dilation=a["dilation"],
            groups=x.shape[1],
        )
        return b.conv(*((h, pw) + ((bias,) if bias is not None else ())))

    def flops(ctx: InferCtx, outs) -> int:
        _x, dw, pw = ctx.inputs[:3]
        positions = math.prod(concrete(outs[0].shape[:1] + outs[0].shape[2:], default=1))
        return 2 * positions * (math.prod(dw.shape) + math.prod(pw.shape))

    attrs = {k: v for k, v in LAYER_ATTRS.items() if k != "groups"}
    attrs["depth_multiplier"] = Attr(int, 1, doc="depthwise filters per input channel")
    attrs["bias"] = attrs.pop("bias")
    shape = [[2, 3] + [7, 6][:dims]]
    defop(
        name,
        inputs=("x",),
        attrs=attrs,
        params=(
            ParamSpec("depthwise", depthwise_shape, "he", "oi"),
            ParamSpec("pointwise", pointwise_shape, "he", "oi"),
            ParamSpec(
                "bias", lambda c: (c.attrs["filters"],), "zeros", "vec", when=lambda a: a["bias"]
            ),
        ),
        infer=infer,
        reference=reference,
        decompose=decompose,
        flops=flops,
        category="layers",
        key_attrs=("filters", "kernel", "stride"),
        doc=f"depthwise-separable {dims}-D convolution: a depthwise conv (groups = C, "
        f"depth_multiplier filters per channel, no bias) then a 1x1 conv to `filters`; "
        f"params <node>.depthwise [C*m, 1, *kernel], <node>.pointwise [filters, C*m, "
        f"1...], <node>.bias",
        test={
            "cases": [
                {"shapes": shape, "attrs": {"filters": 4, "kernel": 3, "padding": "same"}},
                {
                    "shapes": shape,
                    "attrs": {
                        "filters": 2,
                        "kernel": 2,
                        "stride": 2,
                        "depth_multiplier": 2,
                        "bias": False,
                    },
                },
            ],
            "grad": True,
            "tol": 1e-4,
        },
    )


CONV_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1}

for _d in (1, 2):
    _separable_layer(_d)
