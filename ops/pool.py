"""Pooling: max and average over windows (1-D/2-D/3-D) and over all positions (global).

Channels-first like the convolutions ([N, C, *spatial]) and the same window
geometry (`windows.py`): stride defaults to the kernel, padding takes the same
forms as conv (including "same"), and `ceil_mode` rounds the output size up
the way PyTorch and ONNX do (a last window that would start in the end padding
is dropped). Average pooling divides by the number of real input elements in
each window by default (`count_include_pad=False`, ONNX's default; PyTorch's
`AvgPool` default is True): padding does not bias border averages toward zero.

Gradients are primitives: `max_pool_grad` routes each output gradient to
the position of its window's maximum (the first one on ties, as ONNX
MaxPool's Indices do; lowered as MaxPool Indices + ScatterElements add) and
`avg_pool_grad` spreads it evenly over the window (a ConvTranspose with a
ones kernel). Both are differentiable again (`max_pool_select`, a Gather at
the same Indices, is max_pool_grad's adjoint), so Hessian-vector products
work through every pool. Global pools decompose into reduce_mean / reduce_max.
"""

from __future__ import annotations

import math

import numpy as np

from graphc.errors import GraphError
from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.ops.windows import (
    Fail,
    Window,
    geometry_error,
    make_window,
    onnx_unwindow,
    onnx_windows,
    unwindow,
    windows,
)
from graphc.shapes import concrete, is_static

POOL_ATTRS = {
    "kernel": Attr((int, tuple), doc="window size (int or one per spatial axis)"),
    "stride": Attr((int, tuple), None, doc="step between windows (default: the kernel)"),
    "padding": Attr((int, tuple, str), 0, doc="int, per-axis ints, begins+ends, 'valid' or 'same'"),
    "ceil_mode": Attr(bool, False, doc="round the output size up (partial last windows)"),
}
MAX_ATTRS = {**POOL_ATTRS, "dilation": Attr((int, tuple), 1, doc="spacing between window taps")}
AVG_ATTRS = {
    **POOL_ATTRS,
    "count_include_pad": Attr(
        bool, False, doc="divide by the full window size, padding included (PyTorch's default)"
    ),
}


def pool_window(fail: Fail, spatial, attrs: dict) -> Window:
    stride = attrs["stride"] if attrs["stride"] is not None else attrs["kernel"]
    win = make_window(
        fail,
        spatial,
        attrs["kernel"],
        stride,
        attrs["padding"],
        attrs.get("dilation", 1),
        attrs["ceil_mode"],
    )
    for i, (k, b, e) in enumerate(zip(win.kernel, win.begin, win.end)):
        if b >= k or e >= k:
            # ONNX Runtime refuses such pools, and a window of padding only has no value
            raise fail(
                f"padding ({b}, {e}) on spatial axis {i} must be smaller than the kernel size {k}",
                hint="use less padding or a larger kernel",
            )
    return win


def _pool_infer(ctx: InferCtx, dims: int | None = None) -> TensorType:
    x = ctx.need_float(0)
    if dims is not None and x.rank != dims + 2:
        axes = ", ".join(["N", "C"] + ["D", "H", "W"][3 - dims :])
        raise ctx.fail(
            f"the input must be [{axes}] (rank {dims + 2}), got {x}",
            hint="pooling is channels-first",
        )
    if x.rank < 3:
        raise ctx.fail(f"the input must be [N, C, *spatial], got {x}")
    win = pool_window(ctx.fail, x.shape[2:], ctx.attrs)
    return TensorType(x.dtype, x.shape[:2] + win.out_dims(x.shape[2:]))


def _pool_flops(ctx: InferCtx, outs) -> int:
    k = ctx.attrs["kernel"]
    taps = k ** (ctx.inputs[0].rank - 2) if isinstance(k, int) else math.prod(k)
    return taps * math.prod(concrete(outs[0].shape, default=1))


def _onnx_attrs(win: Window, spatial, include_pad: bool = False) -> dict:
    """Kernel, strides, pads and ceil_mode for an ONNX pool computing exactly our windows.

    ONNX shape inference keeps a ceil-mode window that starts in the end
    padding, while ONNX Runtime (like PyTorch, and like us) drops it; so ceil
    mode is emitted natively only where no axis drops one. Elsewhere it is
    floor mode with the end padding grown to reach the last partial window,
    which pools the same elements unless the padding is counted.
    """
    pads = win.onnx_pads
    ceil = 0
    if win.ceil:
        out = win.out_dims(spatial)
        floor = Window(win.kernel, win.stride, win.dilation, win.begin, win.end).out_dims(spatial)
        raw = [
            -(-(n + b + e - f) // s) + 1
            for n, b, e, f, s in zip(spatial, win.begin, win.end, win.eff, win.stride)
        ]
        extra = win.extra_end(spatial, out)
        if list(out) == raw and list(out) != list(floor):
            ceil = 1
        elif any(extra):
            grown = [e + x for e, x in zip(win.end, extra)]
            if include_pad or any(g >= k for g, k in zip(grown, win.kernel)):
                raise GraphError(
                    "this ceil_mode pooling has no exact ONNX form: one axis drops a window "
                    "that starts in the padding while another needs a partial window",
                    hint="use ceil_mode=False with explicit end padding",
                )
            pads = list(win.begin) + grown
    return {
        "kernel_shape": list(win.kernel),
        "strides": list(win.stride),
        "pads": pads,
        "ceil_mode": ceil,
    }


def _np_window(x_shape, attrs) -> Window:
    return pool_window(geometry_error, x_shape[2:], attrs)


# ----------------------------------------------------------------- max pool


def _flat_windows(x, win, pad_value):
    cols = windows(x, win, pad_value)
    return cols.reshape(cols.shape[: x.ndim] + (-1,))


def max_pool_reference(x, **attrs):
    return _flat_windows(x, _np_window(x.shape, attrs), -np.inf).max(axis=-1)


def max_pool_grad_reference(x, gy, **attrs):
    """Each window's gradient goes to its (first) maximum."""
    win = _np_window(x.shape, attrs)
    cols = _flat_windows(x, win, -np.inf)
    first = cols.argmax(axis=-1)
    taps = np.arange(cols.shape[-1])
    routed = (taps == first[..., None]) * gy[..., None]
    return unwindow(routed.reshape(cols.shape[:-1] + win.kernel).astype(gy.dtype), win, x.shape[2:])


def _max_pool_lower(e, n, x):
    shape = e.type(n.inputs[0]).shape
    win = _np_window(shape, n.attrs)
    return e.op("MaxPool", [x], dilations=list(win.dilation), **_onnx_attrs(win, shape[2:]))


def _max_indices(e, n, x) -> str:
    """MaxPool's Indices: flat positions in the whole [N, C, *S] tensor (padding not counted)."""
    shape = e.type(n.inputs[0]).shape
    win = _np_window(shape, n.attrs)
    _, idx = e.op(
        "MaxPool",
        [x],
        outputs=2,
        dilations=list(win.dilation),
        storage_order=0,
        **_onnx_attrs(win, shape[2:]),
    )
    return idx


def _max_pool_grad_lower(e, n, x, gy):
    flat = e.ints([-1])
    idx = e.op("Reshape", [_max_indices(e, n, x), flat])
    size = e.op("Reshape", [e.op("Size", [x]), flat])
    dtype = e.type(n.inputs[0]).dtype
    zeros = e.op("ConstantOfShape", [size], value=e.tensor(np.zeros(1, dtype=dtype)))
    summed = e.op(
        "ScatterElements", [zeros, idx, e.op("Reshape", [gy, flat])], axis=0, reduction="add"
    )
    return e.op("Reshape", [summed, e.op("Shape", [x])])


def max_pool_select_reference(x, v, **attrs):
    """v read where x has each window's (first) maximum."""
    win = _np_window(x.shape, attrs)
    first = _flat_windows(x, win, -np.inf).argmax(axis=-1)
    return np.take_along_axis(_flat_windows(v, win, 0.0), first[..., None], axis=-1)[..., 0]


def _max_pool_select_lower(e, n, x, v):
    return e.op("Gather", [e.op("Reshape", [v, e.ints([-1])]), _max_indices(e, n, x)], axis=0)


def _max_pool_select_infer(ctx: InferCtx) -> TensorType:
    x, v = ctx.inputs
    if v != x:
        raise ctx.fail(f"v must match x, got {v} and {x}")
    return _pool_infer(InferCtx(ctx.op, ctx.node, [x], ctx.attrs, ctx.loc))


def _max_attrs(c) -> dict:
    return {k: c.attrs[k] for k in MAX_ATTRS}


def _max_pool_grad(c):
    return [c.b.max_pool_grad(c.x[0], c.g, **_max_attrs(c))]


# Routing by argmax is piecewise constant in x, so x gets no gradient (zero almost
# everywhere); scattering and selecting at the same positions are each other's adjoints.
def _max_pool_grad_grad(c):
    return [None, c.b.max_pool_select(c.x[0], c.g, **_max_attrs(c))]


def _max_pool_select_grad(c):
    return [None, c.b.max_pool_grad(c.x[0], c.g, **_max_attrs(c))]


def _max_pool_grad_infer(ctx: InferCtx) -> TensorType:
    x, gy = ctx.inputs
    y = _pool_infer(InferCtx(ctx.op, ctx.node, [x], ctx.attrs, ctx.loc))
    if gy.shape != y.shape or gy.dtype != x.dtype:
        raise ctx.fail(f"the output gradient {gy} does not match the pool's output {y}")
    return x


# ----------------------------------------------------------------- avg pool


def avg_divisor(spatial, win: Window, include_pad: bool) -> np.ndarray:
    """How many elements each window averages: [*out], a product of per-axis counts."""
    out = win.out_dims(spatial)
    counts = []
    for n, o, k, s, d, b, e in zip(
        spatial, out, win.kernel, win.stride, win.dilation, win.begin, win.end
    ):
        taps = np.arange(o)[:, None] * s - b + np.arange(k)[None, :] * d
        lo, hi = (-b, n + e) if include_pad else (0, n)
        counts.append(((taps >= lo) & (taps < hi)).sum(axis=1))
    div = counts[0]
    for c in counts[1:]:
        div = np.multiply.outer(div, c)
    return div


def avg_pool_reference(x, **attrs):
    win = _np_window(x.shape, attrs)
    total = _flat_windows(x, win, 0.0).sum(axis=-1)
    div = avg_divisor(x.shape[2:], win, attrs["count_include_pad"])
    return (total / div).astype(x.dtype)


def avg_pool_grad_reference(gy, like, **attrs):
    """Each window's gradient, divided by its divisor, spread over its elements."""
    win = _np_window(like.shape, attrs)
    share = gy / avg_divisor(like.shape[2:], win, attrs["count_include_pad"])
    cols = np.broadcast_to(
        share.reshape(share.shape + (1,) * len(win.kernel)), share.shape + win.kernel
    )
    return unwindow(cols.astype(gy.dtype), win, like.shape[2:])


def _avg_pool_lower(e, n, x):
    xt = e.type(n.inputs[0])
    shape = xt.shape
    win = _np_window(shape, n.attrs)
    include = n.attrs["count_include_pad"]
    if xt.dtype == "float64":  # ORT's CPU AveragePool is float32-only: sum gathered windows
        div = avg_divisor(shape[2:], win, include).astype(xt.dtype)
        cols = onnx_windows(e, x, xt.dtype, shape[2:], win)
        total = e.op("ReduceSum", [cols, e.ints([3])], keepdims=0)
        mean = e.op("Div", [total, e.const(div.reshape(-1))])
        return e.op("Reshape", [mean, e.ints([0, 0, *div.shape])])
    return e.op(
        "AveragePool", [x], count_include_pad=int(include), **_onnx_attrs(win, shape[2:], include)
    )


def _avg_pool_grad_lower(e, n, gy, like):
    """gy / divisor, one channel at a time through a ConvTranspose with a ones kernel."""
    lt = e.type(n.inputs[1])
    spatial = lt.shape[2:]
    win = _np_window(lt.shape, n.attrs)
    d = len(spatial)
    dtype = lt.dtype
    div = avg_divisor(spatial, win, n.attrs["count_include_pad"]).astype(dtype)
    share = e.op("Div", [gy, e.const(div)])
    out = win.out_dims(spatial)
    if dtype == "float64":  # ORT's CPU ConvTranspose is float32-only: scatter the shares
        col = e.op("Reshape", [share, e.ints([0, 0, -1, 1])])
        cols = e.op("Expand", [col, e.ints([1, 1, 1, math.prod(win.kernel)])])
        return onnx_unwindow(e, cols, dtype, spatial, win)
    planes = e.op("Reshape", [share, e.ints([-1, 1, *out])])
    ones = e.const(np.ones((1, 1, *win.kernel), dtype=dtype))
    # no end padding: ceil-mode windows may reach past it; cut or pad to the input after
    spread = e.op(
        "ConvTranspose",
        [planes, ones],
        kernel_shape=list(win.kernel),
        strides=list(win.stride),
        pads=list(win.begin) + [0] * d,
    )
    got = [(o - 1) * s + f - b for o, s, f, b in zip(out, win.stride, win.eff, win.begin)]
    if any(g > sz for g, sz in zip(got, spatial)):
        spread = e.op(
            "Slice", [spread, e.ints([0] * d), e.ints(list(spatial)), e.ints(list(range(2, 2 + d)))]
        )
    short = [max(0, sz - g) for g, sz in zip(got, spatial)]
    if any(short):
        spread = e.op("Pad", [spread, e.ints([0] * (d + 2) + [0, 0] + short)])
    return e.op("Reshape", [spread, e.op("Shape", [like])])


def _avg_pool_grad(c):
    return [c.b.avg_pool_grad(c.g, c.x[0], **{k: c.attrs[k] for k in AVG_ATTRS})]


def _avg_pool_grad_infer(ctx: InferCtx) -> TensorType:
    gy, like = ctx.inputs
    if not is_static(like.shape[2:]):
        raise ctx.fail(
            f"the average-pool gradient needs fixed spatial sizes, got {like}",
            hint="declare the input's spatial dims as numbers",
        )
    y = _pool_infer(InferCtx(ctx.op, ctx.node, [like], ctx.attrs, ctx.loc))
    if gy.shape != y.shape or gy.dtype != like.dtype:
        raise ctx.fail(f"the output gradient {gy} does not match the pool's output {y}")
    return like


def _avg_pool_grad_grad(c):
    # linear in gy: the adjoint of spreading is averaging again
    return [c.b.op(f"avg_pool{c.x[1].rank - 2}d", c.g, **c.attrs), None]


# ------------------------------------------------------------ the declarations

_SHAPES = {1: [2, 3, 9], 2: [2, 3, 7, 6], 3: [2, 2, 5, 4, 6]}


def _declare(dims: int) -> None:
    shape = [_SHAPES[dims]]
    defop(
        f"max_pool{dims}d",
        attrs=dict(MAX_ATTRS),
        infer=lambda ctx: _pool_infer(ctx, dims),
        reference=max_pool_reference,
        lower=_max_pool_lower,
        grad=_max_pool_grad,
        flops=_pool_flops,
        category="pooling",
        key_attrs=("kernel", "stride"),
        doc=f"{dims}-D max pooling over [N, C, {', '.join('DHW'[3 - dims :])}]; stride "
        f"defaults to the kernel",
        test={
            "cases": [
                {"shapes": shape, "attrs": {"kernel": 2}},
                {"shapes": shape, "attrs": {"kernel": 3, "stride": 2, "padding": 1}},
                {
                    "shapes": shape,
                    "attrs": {"kernel": 2, "stride": 2, "ceil_mode": True, "dilation": 2},
                },
                {"shapes": shape, "attrs": {"kernel": 3, "stride": 1, "padding": "same"}},
            ],
            "grad": True,
        },
    )
    defop(
        f"avg_pool{dims}d",
        attrs=dict(AVG_ATTRS),
        infer=lambda ctx: _pool_infer(ctx, dims),
        reference=avg_pool_reference,
        lower=_avg_pool_lower,
        grad=_avg_pool_grad,
        flops=_pool_flops,
        category="pooling",
        key_attrs=("kernel", "stride"),
        doc=f"{dims}-D average pooling over [N, C, {', '.join('DHW'[3 - dims :])}]; stride "
        f"defaults to the kernel; padding is not counted unless count_include_pad",
        test={
            "cases": [
                {"shapes": shape, "attrs": {"kernel": 2}},
                {"shapes": shape, "attrs": {"kernel": 3, "stride": 2, "padding": 1}},
                {
                    "shapes": shape,
                    "attrs": {
                        "kernel": 3,
                        "stride": 2,
                        "padding": 1,
                        "count_include_pad": True,
                        "ceil_mode": True,
                    },
                },
                {"shapes": shape, "attrs": {"kernel": 2, "stride": 1, "padding": "same"}},
            ],
            "grad": True,
        },
    )


for _d in (1, 2, 3):
    _declare(_d)

defop(
    "max_pool_grad",
    inputs=("x", "gy"),
    attrs=dict(MAX_ATTRS),
    infer=_max_pool_grad_infer,
    reference=max_pool_grad_reference,
    lower=_max_pool_grad_lower,
    grad=_max_pool_grad_grad,
    flops=lambda ctx, outs: _pool_flops(ctx, [ctx.inputs[1]]),
    category="gradients",
    key_attrs=("kernel", "stride"),
    doc="gradient of max pooling: gy routed to each window's first maximum in x",
    test={
        "cases": [
            {
                "shapes": [[2, 3, 7, 6], [2, 3, 4, 3]],
                "attrs": {"kernel": 3, "stride": 2, "padding": 1},
            },
            {
                "shapes": [[2, 2, 9], [2, 2, 4]],
                "attrs": {"kernel": 2, "ceil_mode": True, "dilation": 2, "stride": 2},
            },
        ],
        "grad": True,
    },
)

defop(
    "max_pool_select",
    inputs=("x", "v"),
    attrs=dict(MAX_ATTRS),
    infer=_max_pool_select_infer,
    reference=max_pool_select_reference,
    lower=_max_pool_select_lower,
    grad=_max_pool_select_grad,
    flops=lambda ctx, outs: _pool_flops(ctx, outs),
    category="gradients",
    key_attrs=("kernel", "stride"),
    doc="v at each pooling window's first maximum of x (the adjoint of max_pool_grad; "
    "appears in second derivatives of max pooling)",
    test={
        "cases": [
            {
                "shapes": [[2, 3, 7, 6], [2, 3, 7, 6]],
                "attrs": {"kernel": 3, "stride": 2, "padding": 1},
            },
            {
                "shapes": [[2, 2, 9], [2, 2, 9]],
                "attrs": {"kernel": 2, "ceil_mode": True, "dilation": 2, "stride": 2},
            },
        ],
        "grad": True,
    },
)

defop(
    "avg_pool_grad",
    inputs=("gy", "like"),
    attrs=dict(AVG_ATTRS),
    infer=_avg_pool_grad_infer,
    reference=avg_pool_grad_reference,
    lower=_avg_pool_grad_lower,
    grad=_avg_pool_grad_grad,
    flops=lambda ctx, outs: _pool_flops(ctx, [ctx.inputs[0]]),
    category="gradients",
    key_attrs=("kernel", "stride"),
    doc="gradient of average pooling: gy / window count spread over each window; `like` "
    "is the pool's input, read only for its shape",
    test={
        "cases": [
            {
                "shapes": [[2, 3, 4, 3], [2, 3, 7, 6]],
                "attrs": {"kernel": 3, "stride": 2, "padding": 1},
            },
            {
                "shapes": [[2, 2, 5], [2, 2, 9]],
                "attrs": {
                    "kernel": 3,
                    "stride": 2,
                    "padding": 1,
                    "ceil_mode": True,
                    "count_include_pad": True,
                },
            },
            {"shapes": [[2, 2, 2, 3], [2, 2, 5, 7]], "attrs": {"kernel": 2}},
        ],
        "grad": True,
    },
)


# ------------------------------------------------------------- global pools


def _global_infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    if x.rank < 3:
        raise ctx.fail(
            f"the input must be [N, C, *spatial], got {x}",
            hint="global pooling averages over every axis after the channels",
        )
    tail = (1,) * (x.rank - 2) if ctx.attrs["keepdims"] else ()
    return TensorType(x.dtype, x.shape[:2] + tail)


def _global(name: str, onnx_op: str, reduce_op: str, np_fn, doc: str) -> None:
    def lower(e, n, x):
        xt = e.type(n.inputs[0])
        if xt.dtype == "float64":  # ONNX Runtime's CPU Global*Pool kernels are float32-only
            y = e.op(reduce_op, [x, e.ints(list(range(2, xt.rank)))], keepdims=1)
        else:
            y = e.op(onnx_op, [x])
        return y if n.attrs["keepdims"] else e.op("Flatten", [y], axis=1)

    def decompose(b, node, x):
        method = "reduce_mean" if reduce_op == "ReduceMean" else "reduce_max"
        return b.op(method, x, axes=tuple(range(2, x.rank)), keepdims=node.attrs["keepdims"])

    defop(
        name,
        attrs={
            "keepdims": Attr(
                bool, False, doc="keep the spatial axes as size 1 ([N, C, 1, 1]) instead of [N, C]"
            )
        },
        infer=_global_infer,
        reference=lambda x, keepdims: np_fn(x, axis=tuple(range(2, x.ndim)), keepdims=keepdims),
        lower=lower,
        decompose=decompose,
        flops=lambda ctx, outs: math.prod(concrete(ctx.inputs[0].shape, default=1)),
        category="pooling",
        key_attrs=("keepdims",),
        doc=doc,
        test={
            "cases": [
                {"shapes": [[2, 3, 4, 5]]},
                {"shapes": [[2, 3, 7]]},
                {"shapes": [[2, 2, 3, 2, 4]], "attrs": {"keepdims": True}},
            ],
            "grad": True,
        },
    )


_global(
    "global_avg_pool",
    "GlobalAveragePool",
    "ReduceMean",
    np.mean,
    "mean over every spatial position: [N, C, *S] -> [N, C] (keepdims: [N, C, 1, ...]); "
    "the usual bridge from conv features to a linear classifier",
)
_global(
    "global_max_pool",
    "GlobalMaxPool",
    "ReduceMax",
    np.max,
    "max over every spatial position: [N, C, *S] -> [N, C] (keepdims: [N, C, 1, ...]); "
    "tied maxima each receive the full gradient (reduce_max's rule)",
)
