"""Activation functions (elementwise, plus softmax along an axis and the PReLU/maxout layers)."""

from __future__ import annotations

import math

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import axis_attr, elementwise_flops, unary
from graphc.ops.math import erf_lower
from graphc.ops.registry import Attr, InferCtx, ParamSpec, defop
from graphc.shapes import concrete

# Hints shared by the elementwise activations: a batch of rows and an image-like tensor.
_ELEMENTWISE_TEST = {"cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4]]}], "grad": True}


def _sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows: the exponent is <= 0
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _native(e, n) -> bool:
    """Whether ORT has a kernel for the fused activation at this node's dtype.

    ONNX Runtime's CPU kernels for LeakyRelu, PRelu, Elu, Softplus, Erf and Gelu
    are float32-only; other dtypes get the same function from basic ops.
    """
    return e.type(n.inputs[0]).dtype == "float32"


def _where_positive(e, n, x, neg):
    """Where(x > 0, x, neg): the shared shape of the piecewise activations."""
    return e.op("Where", [e.op("Greater", [x, e.scalar(0.0, n.inputs[0])]), x, neg])


def _positive_mask(c, x):
    return c.b.greater(x, c.b.scalar(0.0, x))


unary(
    "relu",
    lambda x: np.maximum(x, 0),
    "Relu",
    grad=lambda c: [c.g * c.b.cast(_positive_mask(c, c.x[0]), to=c.x[0].dtype)],
    category="activations",
    doc="max(x, 0)",
    inplace={0: 0},
    test=_ELEMENTWISE_TEST,
)
unary(
    "sigmoid",
    _sigmoid,
    "Sigmoid",
    grad=lambda c: [c.g * c.y[0] * (1.0 - c.y[0])],
    category="activations",
    doc="1 / (1 + e^-x)",
    inplace={0: 0},
    test=_ELEMENTWISE_TEST,
)
unary(
    "tanh",
    np.tanh,
    "Tanh",
    grad=lambda c: [c.g * (1.0 - c.y[0] * c.y[0])],
    category="activations",
    doc="hyperbolic tangent",
    inplace={0: 0},
    test=_ELEMENTWISE_TEST,
)


# ------------------------------------------------------------ leaky relu, elu
def _leaky_relu_grad(c):
    x, alpha = c.x[0], c.attrs["alpha"]
    return [c.b.where(_positive_mask(c, x), c.g, c.g * alpha)]


def _leaky_relu_lower(e, n, x):
    alpha = float(n.attrs["alpha"])
    if _native(e, n):
        return e.op("LeakyRelu", [x], alpha=alpha)
    return _where_positive(e, n, x, e.op("Mul", [x, e.scalar(alpha, n.inputs[0])]))


unary(
    "leaky_relu",
    lambda x, alpha: np.where(x > 0, x, x * x.dtype.type(alpha)),
    _leaky_relu_lower,
    grad=_leaky_relu_grad,
    attrs={"alpha": Attr(float, 0.01, doc="slope for x < 0")},
    category="activations",
    doc="x where x > 0, else alpha * x",
    inplace={0: 0},
    key_attrs=("alpha",),
    test={
        "cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4]], "attrs": {"alpha": 0.2}}],
        "grad": True,
    },
)


def _elu_ref(x, alpha):
    a = x.dtype.type(alpha)
    return np.where(x > 0, x, a * np.expm1(np.minimum(x, 0)))


def _elu_grad(c):
    # for x <= 0, y = alpha (e^x - 1), so dy/dx = alpha e^x = y + alpha: reuse y
    x, y = c.x[0], c.y[0]
    return [c.b.where(_positive_mask(c, x), c.g, c.g * (y + c.attrs["alpha"]))]


def _elu_lower(e, n, x):
    alpha = float(n.attrs["alpha"])
    if _native(e, n):
        return e.op("Elu", [x], alpha=alpha)
    like = n.inputs[0]
    em1 = e.op("Sub", [e.op("Exp", [e.op("Min", [x, e.scalar(0.0, like)])]), e.scalar(1.0, like)])
    return _where_positive(e, n, x, e.op("Mul", [em1, e.scalar(alpha, like)]))


unary(
    "elu",
    _elu_ref,
    _elu_lower,
    grad=_elu_grad,
    attrs={"alpha": Attr(float, 1.0, doc="scale of the negative part")},
    category="activations",
    doc="x where x > 0, else alpha * (e^x - 1)",
    key_attrs=("alpha",),
    test={
        "cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4]], "attrs": {"alpha": 0.5}}],
        "grad": True,
    },
)


# -------------------------------------------------------- softplus, swish, gelu
def _softplus_ref(x):
    return np.logaddexp(x.dtype.type(0), x)  # log(1 + e^x) without overflow


def _softplus_lower(e, n, x):
    if _native(e, n):
        return e.op("Softplus", [x])
    # relu(x) + log(1 + e^-|x|): the stable form, as in the reference
    like = n.inputs[0]
    tail = e.op("Exp", [e.op("Neg", [e.op("Abs", [x])])])
    return e.op("Add", [e.op("Relu", [x]), e.op("Log", [e.op("Add", [tail, e.scalar(1.0, like)])])])


unary(
    "softplus",
    _softplus_ref,
    _softplus_lower,
    grad=lambda c: [c.g * c.b.sigmoid(c.x[0])],
    category="activations",
    doc="log(1 + e^x), a smooth relu",
    test=_ELEMENTWISE_TEST,
)


def _swish_ref(x, beta):
    return x * _sigmoid(x * x.dtype.type(beta))


def _swish_lower(e, n, x):
    beta = n.attrs["beta"]
    z = x if beta == 1.0 else e.op("Mul", [x, e.scalar(beta, n.inputs[0])])
    return e.op("Mul", [x, e.op("Sigmoid", [z])])


def _swish_decompose(b, n, x):
    beta = n.attrs["beta"]
    return x * b.sigmoid(x if beta == 1.0 else x * beta)


defop(
    "swish",
    attrs={"beta": Attr(float, 1.0, doc="sharpness; beta=1 is SiLU")},
    infer=lambda c: c.need_float(0),
    reference=_swish_ref,
    lower=_swish_lower,
    decompose=_swish_decompose,
    category="activations",
    flops=elementwise_flops,
    key_attrs=("beta",),
    doc="x * sigmoid(beta * x) (SiLU when beta = 1)",
    test={
        "cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4]], "attrs": {"beta": 1.7}}],
        "grad": True,
    },
)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_ref(x):
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def _gelu_decompose(b, n, x):
    return x * 0.5 * (1.0 + b.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_lower(e, n, x):
    if _native(e, n):
        return e.op("Gelu", [x])  # approximate="none": the erf form
    like = n.inputs[0]
    scaled = e.op("Mul", [x, e.scalar(1.0 / math.sqrt(2.0), like)])
    one_plus = e.op("Add", [erf_lower(e, n, scaled), e.scalar(1.0, like)])
    return e.op("Mul", [e.op("Mul", [x, e.scalar(0.5, like)]), one_plus])


defop(
    "gelu",
    infer=lambda c: c.need_float(0),
    reference=_gelu_ref,
    lower=_gelu_lower,
    decompose=_gelu_decompose,
    category="activations",
    flops=elementwise_flops,
    doc="x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)), the exact (erf) form, not the tanh "
    "approximation",
    test=dict(_ELEMENTWISE_TEST, tol64=1e-6),
)  # float64 goes through ORT's float32 Erf


# ------------------------------------------------------------------ softmax
def _softmax_ref(x, axis):
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _log_softmax_ref(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _softmax_grad(c):
    y, g = c.y[0], c.g
    s = c.b.reduce_sum(g * y, axes=(c.attrs["axis"],), keepdims=True)
    return [y * (g - s)]


def _log_softmax_grad(c):
    g = c.g
    s = c.b.reduce_sum(g, axes=(c.attrs["axis"],), keepdims=True)
    return [g - c.b.exp(c.y[0]) * s]


def _axis_infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    if not -x.rank <= ctx.attrs["axis"] < x.rank:
        raise ctx.fail(f"axis {ctx.attrs['axis']} is out of range for {x}")
    return x


_SOFTMAX_TEST = {
    "cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4]], "attrs": {"axis": 1}}],
    "grad": True,
}
defop(
    "softmax",
    attrs={"axis": axis_attr()},
    infer=_axis_infer,
    reference=_softmax_ref,
    lower=lambda e, n, x: e.op("Softmax", [x], axis=n.attrs["axis"]),
    grad=_softmax_grad,
    category="activations",
    doc="e^x / sum(e^x) along an axis",
    flops=elementwise_flops,
    test=_SOFTMAX_TEST,
)
defop(
    "log_softmax",
    attrs={"axis": axis_attr()},
    infer=_axis_infer,
    reference=_log_softmax_ref,
    lower=lambda e, n, x: e.op("LogSoftmax", [x], axis=n.attrs["axis"]),
    grad=_log_softmax_grad,
    category="activations",
    flops=elementwise_flops,
    doc="log(softmax(x)), computed stably",
    test=_SOFTMAX_TEST,
)


# -------------------------------------------------------------------- prelu
def _channels(ctx: InferCtx):
    x = ctx.x
    if x.rank < 2:
        raise ctx.fail(f"prelu needs [batch, channels, ...], got {x}")
    if not isinstance(x.shape[1], int):
        raise ctx.fail(f"the channel dim (axis 1) of {x} must have a fixed size")
    return (x.shape[1],)


def _prelu_infer(ctx: InferCtx) -> TensorType:
    ctx.need_float(0)
    return ctx.x


def _slope_shape(rank: int, channels: int) -> tuple[int, ...]:
    """Slopes are per channel (axis 1): [C] for [N, C], [C, 1, 1] for [N, C, H, W]."""
    return (channels,) + (1,) * (rank - 2)


def _prelu_ref(x, slope):
    s = slope.reshape(_slope_shape(x.ndim, slope.shape[0]))
    return np.where(x > 0, x, s * x)


def _prelu_lower(e, n, x, slope):
    rank = e.type(n.inputs[0]).rank
    if rank > 2:
        slope = e.op("Reshape", [slope, e.ints(_slope_shape(rank, e.type(n.inputs[1]).shape[0]))])
    if _native(e, n):
        return e.op("PRelu", [x, slope])
    return _where_positive(e, n, x, e.op("Mul", [x, slope]))


def _prelu_grad(c):
    x, slope = c.x
    b = c.b
    s = slope if x.rank == 2 else b.reshape(slope, shape=_slope_shape(x.rank, slope.shape[0]))
    pos = _positive_mask(c, x)
    zero = b.zeros_like(c.g)
    gx = b.where(pos, c.g, c.g * s) if c.needs(0) else None
    gs = None
    if c.needs(1):
        # sum over every axis but the channel axis here: the driver's un-broadcasting
        # aligns trailing axes, which is not how a per-channel slope broadcasts
        per = b.where(pos, zero, c.g * x)
        gs = b.reduce_sum(per, axes=tuple(i for i in range(x.rank) if i != 1))
    return [gx, gs]


defop(
    "prelu",
    params=(ParamSpec("slope", _channels, "constant:0.25", "vec"),),
    infer=_prelu_infer,
    reference=_prelu_ref,
    lower=_prelu_lower,
    grad=_prelu_grad,
    category="activations",
    flops=elementwise_flops,
    doc="x where x > 0, else slope * x, with a learned slope per channel (axis 1), "
    "starting at 0.25",
    test={"cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4, 4]]}], "grad": True},
)


# ------------------------------------------------------------------- maxout
def _maxout_infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    units, pieces = ctx.attrs["units"], ctx.attrs["pieces"]
    if x.rank < 2:
        raise ctx.fail(f"the input must be [batch, features] (or more dims), got {x}")
    if units < 1 or pieces < 1:
        raise ctx.fail(f"units and pieces must be positive, got {units} and {pieces}")
    return TensorType(x.dtype, x.shape[:-1] + (units,))


def _maxout_ref(x, w, b=None, *, units, pieces, bias):
    z = x @ w
    if b is not None:
        z = z + b
    return z.reshape(x.shape[:-1] + (units, pieces)).max(axis=-1)


def _maxout_decompose(b, n, x, w, bias=None):
    units, pieces = n.attrs["units"], n.attrs["pieces"]
    z = x @ w
    if bias is not None:
        z = z + bias
    # units * pieces columns, grouped per unit: column u * pieces + k is piece k of unit u
    z = b.reshape(z, shape=(0,) * (x.rank - 1) + (units, pieces))
    return b.reduce_max(z, axes=(-1,))


def _maxout_flops(ctx: InferCtx, outs) -> int:
    rows = int(np.prod(concrete(outs[0].shape[:-1], default=1)))
    cols = ctx.attrs["units"] * ctx.attrs["pieces"]
    return 2 * rows * int(ctx.inputs[1].shape[0]) * cols + rows * cols


defop(
    "maxout",
    attrs={
        "units": Attr(int, doc="output features"),
        "pieces": Attr(int, 2, doc="linear pieces per unit (k)"),
        "bias": Attr(bool, True, doc="add a learned bias"),
    },
    params=(
        ParamSpec(
            "weight", lambda c: (c.x.shape[-1], c.attrs["units"] * c.attrs["pieces"]), "he", "io"
        ),
        ParamSpec(
            "bias",
            lambda c: (c.attrs["units"] * c.attrs["pieces"],),
            "zeros",
            "vec",
            when=lambda a: a["bias"],
        ),
    ),
    infer=_maxout_infer,
    reference=_maxout_ref,
    decompose=_maxout_decompose,
    category="layers",
    flops=_maxout_flops,
    key_attrs=("units", "pieces"),
    doc="max of k linear pieces per unit: z = x @ weight + bias, y[..., u] = "
    "max_k z[..., u * pieces + k]; weight is [in, units * pieces]",
    test={
        "cases": [
            {"shapes": [[4, 5]], "attrs": {"units": 3, "pieces": 2}},
            {"shapes": [[2, 3, 4]], "attrs": {"units": 2, "pieces": 3, "bias": False}},
        ],
        "grad": True,
    },
)
