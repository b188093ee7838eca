"""Dense layers and the perceptron."""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import elementwise_flops
from graphc.ops.registry import Attr, InferCtx, NotDifferentiable, ParamSpec, defop
from graphc.shapes import concrete


def _linear_infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    if x.rank < 2:
        raise ctx.fail(f"the input must be [batch, features] (or more dims), got {x}")
    units = ctx.attrs["units"]
    if units < 1:
        raise ctx.fail(f"units must be positive, got {units}")
    w = ctx.inputs[1]
    if w.shape[0] != x.shape[-1]:
        raise ctx.dim_mismatch("input features vs weight rows", x.shape[-1], w.shape[0])
    return TensorType(x.dtype, x.shape[:-1] + (units,))


def _linear_ref(x, w, b=None, *, units, bias, **_):
    y = x @ w
    return y + b if b is not None else y


def _linear_lower(e, n, x, w, b=None):
    if e.type(n.inputs[0]).rank == 2:
        return e.op("Gemm", [x, w] + ([b] if b else []))
    y = e.op("MatMul", [x, w])
    return e.op("Add", [y, b]) if b else y


def _linear_grad(c):
    x, w = c.x[0], c.x[1]
    b = c.b
    g = c.g
    wt = b.transpose(w, perm=(1, 0))
    gx = g @ wt if c.needs(0) else None
    if x.rank == 2:
        gw = b.transpose(x, perm=(1, 0)) @ g if c.needs(1) else None
    else:
        x2 = b.reshape(x, shape=(-1, x.shape[-1]))
        g2 = b.reshape(g, shape=(-1, g.shape[-1]))
        gw = b.transpose(x2, perm=(1, 0)) @ g2 if c.needs(1) else None
    out = [gx, gw]
    if len(c.x) > 2:
        out.append(b.reduce_sum(g, axes=tuple(range(x.rank - 1))) if c.needs(2) else None)
    return out


def _linear_flops(ctx: InferCtx, outs) -> int:
    rows = int(np.prod(concrete(outs[0].shape[:-1], default=1)))
    return 2 * rows * int(ctx.inputs[1].shape[0]) * ctx.attrs["units"]


defop(
    "linear",
    inputs=("x",),
    attrs={
        "units": Attr(int, doc="output features"),
        "bias": Attr(bool, True, doc="add a learned bias"),
    },
    params=(
        ParamSpec("weight", lambda c: (c.x.shape[-1], c.attrs["units"]), "he", "io"),
        ParamSpec("bias", lambda c: (c.attrs["units"],), "zeros", "vec", when=lambda a: a["bias"]),
    ),
    infer=_linear_infer,
    reference=_linear_ref,
    lower=_linear_lower,
    grad=_linear_grad,
    category="layers",
    flops=_linear_flops,
    key_attrs=("units",),
    doc="dense layer: y = x @ weight + bias; weight is [in, units]",
    test={
        "cases": [
            {"shapes": [[4, 5]], "attrs": {"units": 3}},
            {"shapes": [[2, 3, 4]], "attrs": {"units": 2, "bias": False}},
        ],
        "grad": True,
    },
)

defop(
    "step",
    inputs=("x",),
    attrs={"threshold": Attr(float, 0.0)},
    infer=lambda c: c.need_float(0),
    reference=lambda x, threshold: (x > threshold).astype(x.dtype),
    lower=lambda e, n, x: e.op(
        "Cast",
        [e.op("Greater", [x, e.scalar(n.attrs["threshold"], x)])],
        to=e.onnx_dtype(e.type(n.inputs[0]).dtype),
    ),
    grad=NotDifferentiable(
        "the perceptron step is flat almost everywhere, so its gradient carries no signal"
    ),
    category="activations",
    doc="perceptron step: 1 where x > threshold, else 0",
    flops=elementwise_flops,
    key_attrs=("threshold",),
    test={
        "cases": [{"shapes": [[4, 5]]}, {"shapes": [[4, 5]], "attrs": {"threshold": 0.3}}],
        "grad": "not differentiable (the perceptron step)",
    },
)
