"""Activation functions."""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import axis_attr, unary
from graphc.ops.registry import Attr, InferCtx, defop


def _sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


unary("relu", lambda x: np.maximum(x, 0), "Relu",
      grad=lambda c: [c.g * c.b.cast(c.b.greater(c.x[0], c.b.scalar(0.0, c.x[0])),
                                     to=c.x[0].dtype)],
      category="activations", doc="max(x, 0)", inplace={0: 0})
unary("sigmoid", _sigmoid, "Sigmoid", grad=lambda c: [c.g * c.y[0] * (1.0 - c.y[0])],
      category="activations", doc="1 / (1 + e^-x)", inplace={0: 0})
unary("tanh", np.tanh, "Tanh", grad=lambda c: [c.g * (1.0 - c.y[0] * c.y[0])],
      category="activations", doc="hyperbolic tangent", inplace={0: 0})


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


defop("softmax", attrs={"axis": axis_attr()}, infer=_axis_infer, reference=_softmax_ref,
      lower=lambda e, n, x: e.op("Softmax", [x], axis=n.attrs["axis"]), grad=_softmax_grad,
      category="activations", doc="e^x / sum(e^x) along an axis")
defop("log_softmax", attrs={"axis": axis_attr()}, infer=_axis_infer, reference=_log_softmax_ref,
      lower=lambda e, n, x: e.op("LogSoftmax", [x], axis=n.attrs["axis"]),
      grad=_log_softmax_grad, category="activations",
      doc="log(softmax(x)), computed stably")

_ = Attr
