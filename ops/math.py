"""Arithmetic, comparison, reduction and matmul primitives.

These are what gradient rules are written in, so each one's own gradient is
here too (that is what makes Hessian-vector products work).
"""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import (axes_of, binary, broadcast_infer, compare_infer,
                               elementwise_flops, same_as_input, unary)
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.shapes import broadcast, fmt_shape, numel

# ----------------------------------------------------------------- arithmetic
binary("add", np.add, "Add", grad=lambda c: [c.g, c.g], doc="a + b (broadcasting)")
binary("sub", np.subtract, "Sub", grad=lambda c: [c.g, -c.g], doc="a - b (broadcasting)")
binary("mul", np.multiply, "Mul", grad=lambda c: [c.g * c.x[1], c.g * c.x[0]],
       doc="a * b, elementwise (broadcasting)")
binary("div", lambda a, b: a / b, "Div",
       grad=lambda c: [c.g / c.x[1], -(c.g * c.y[0]) / c.x[1]], doc="a / b (broadcasting)")


def _pow_grad(c):
    a, k = c.x
    ga = c.g * k * c.b.pow(a, k - 1.0)
    gk = c.g * c.y[0] * c.b.log(a) if c.needs(1) else None
    return [ga, gk]


binary("pow", np.power, "Pow", grad=_pow_grad, doc="a ** b")
binary("maximum", np.maximum, "Max",
       grad=lambda c: [c.b.where(c.b.greater_equal(c.x[0], c.x[1]), c.g, c.b.zeros_like(c.g)),
                       c.b.where(c.b.greater_equal(c.x[0], c.x[1]), c.b.zeros_like(c.g), c.g)],
       doc="elementwise max (ties send the gradient to a)")
binary("minimum", np.minimum, "Min",
       grad=lambda c: [c.b.where(c.b.less_equal(c.x[0], c.x[1]), c.g, c.b.zeros_like(c.g)),
                       c.b.where(c.b.less_equal(c.x[0], c.x[1]), c.b.zeros_like(c.g), c.g)],
       doc="elementwise min (ties send the gradient to a)")

unary("neg", np.negative, "Neg", grad=lambda c: [-c.g], doc="-x")
unary("exp", np.exp, "Exp", grad=lambda c: [c.g * c.y[0]], doc="e ** x")
unary("log", np.log, "Log", grad=lambda c: [c.g / c.x[0]], doc="natural logarithm")
unary("sqrt", np.sqrt, "Sqrt", grad=lambda c: [c.g * 0.5 / c.y[0]], doc="square root")
unary("square", np.square, lambda e, n, x: e.op("Mul", [x, x]),
      grad=lambda c: [c.g * 2.0 * c.x[0]], doc="x * x")
unary("abs", np.abs, "Abs", grad=lambda c: [c.g * c.b.sign(c.x[0])], doc="|x|")
unary("sign", np.sign, "Sign", grad=lambda c: [None], doc="-1, 0 or 1 (zero gradient)")
unary("reciprocal", lambda x: 1.0 / x, "Reciprocal",
      grad=lambda c: [-(c.g * c.y[0] * c.y[0])], doc="1 / x")
unary("identity", lambda x: x, "Identity", grad=lambda c: [c.g], infer=same_as_input,
      doc="x unchanged", aliases={0: 0})
unary("stop_gradient", lambda x: x, "Identity", grad=lambda c: [None], infer=same_as_input,
      doc="x unchanged in the forward pass; no gradient flows back through it")


def _clip_grad(c):
    lo, hi = c.attrs["min"], c.attrs["max"]
    inside = c.b.logical_and(c.b.greater_equal(c.x[0], c.b.scalar(lo, c.x[0])),
                             c.b.less_equal(c.x[0], c.b.scalar(hi, c.x[0])))
    return [c.b.where(inside, c.g, c.b.zeros_like(c.g))]


unary("clip", lambda x, min, max: np.clip(x, min, max),
      lambda e, n, x: e.op("Clip", [x, e.scalar(n.attrs["min"], x), e.scalar(n.attrs["max"], x)]),
      grad=_clip_grad, attrs={"min": Attr(float), "max": Attr(float)},
      doc="clamp to [min, max]; gradient passes where the value was inside")


def _add_n_infer(ctx: InferCtx) -> TensorType:
    t = ctx.inputs[0]
    for u in ctx.inputs[1:]:
        if u.dtype != t.dtype or broadcast(t.shape, u.shape) != t.shape:
            raise ctx.fail(f"add_n needs equal shapes: {t} vs {u}")
    return t


defop("add_n", inputs=("xs*",), infer=_add_n_infer, reference=lambda *xs: sum(xs[1:], xs[0]),
      lower=lambda e, n, *xs: e.op("Sum", list(xs)), grad=lambda c: [c.g] * len(c.x),
      category="math", doc="sum of several tensors of one shape", flops=elementwise_flops)

# ------------------------------------------------------------- comparisons
_ZERO = lambda c: [None] * len(c.x)  # noqa: E731 - piecewise constant: zero gradient
binary("greater", np.greater, "Greater", grad=_ZERO, infer=compare_infer, doc="a > b (bool)")
binary("greater_equal", np.greater_equal, "GreaterOrEqual", grad=_ZERO, infer=compare_infer,
       doc="a >= b (bool)")
binary("less", np.less, "Less", grad=_ZERO, infer=compare_infer, doc="a < b (bool)")
binary("less_equal", np.less_equal, "LessOrEqual", grad=_ZERO, infer=compare_infer,
       doc="a <= b (bool)")
binary("equal", np.equal, "Equal", grad=_ZERO, infer=compare_infer, doc="a == b (bool)")


def _logic_infer(ctx: InferCtx) -> TensorType:
    return TensorType("bool", broadcast_infer(ctx).shape)


binary("logical_and", np.logical_and, "And", grad=_ZERO, infer=_logic_infer, doc="a and b")


def _where_infer(ctx: InferCtx) -> TensorType:
    c, a, b = ctx.inputs
    if c.dtype != "bool":
        raise ctx.fail(f"the condition must be bool, got {c}")
    if a.dtype != b.dtype:
        raise ctx.fail(f"branches have different dtypes: {a} and {b}")
    shape = broadcast(broadcast(c.shape, a.shape) or (), b.shape)
    if shape is None or broadcast(c.shape, a.shape) is None:
        raise ctx.fail("condition and branches do not broadcast: "
                       f"{fmt_shape(c.shape)}, {fmt_shape(a.shape)}, {fmt_shape(b.shape)}")
    return TensorType(a.dtype, shape)


def _where_grad(c):
    z = c.b.zeros_like(c.g)
    return [None, c.b.where(c.x[0], c.g, z), c.b.where(c.x[0], z, c.g)]


defop("where", inputs=("cond", "a", "b"), infer=_where_infer, reference=np.where,
      lower=lambda e, n, c, a, b: e.op("Where", [c, a, b]), grad=_where_grad, category="math",
      doc="a where cond holds, else b", flops=elementwise_flops)


def _cast_infer(ctx: InferCtx) -> TensorType:
    return TensorType(ctx.attrs["to"], ctx.inputs[0].shape)


def _cast_grad(c):
    src = c.x[0].dtype
    return [c.b.cast(c.g, to=src) if src.startswith("float") else None]


defop("cast", inputs=("x",), attrs={"to": Attr(str, choices=("float32", "float64", "float16",
                                                             "int64", "int32", "bool"))},
      infer=_cast_infer, reference=lambda x, to: x.astype(to),
      lower=lambda e, n, x: e.op("Cast", [x], to=e.onnx_dtype(n.attrs["to"])),
      grad=_cast_grad, category="math", doc="convert to another dtype")


def _like_infer(ctx: InferCtx) -> TensorType:
    return ctx.inputs[0]


def _const_like(value):
    def lower(e, n, x):
        shape = e.op("Shape", [x])
        t = e.tensor(np.asarray([value], dtype=e.type(n.inputs[0]).dtype))
        return e.op("ConstantOfShape", [shape], value=t)
    return lower


defop("zeros_like", infer=_like_infer, reference=np.zeros_like, lower=_const_like(0),
      grad=_ZERO, category="math", doc="zeros of x's shape and dtype")
defop("ones_like", infer=_like_infer, reference=np.ones_like, lower=_const_like(1),
      grad=_ZERO, category="math", doc="ones of x's shape and dtype")


def _numel_ratio_infer(ctx: InferCtx) -> TensorType:
    return TensorType(ctx.inputs[0].dtype, ())


def _numel_ratio_lower(e, n, a, b):
    dt = e.onnx_dtype(e.type(n.inputs[0]).dtype)
    sa = e.op("Cast", [e.op("Size", [a])], to=dt)
    sb = e.op("Cast", [e.op("Size", [b])], to=dt)
    return e.op("Div", [sa, sb])


defop("numel_ratio", inputs=("a", "b"), infer=_numel_ratio_infer,
      reference=lambda a, b: np.asarray(a.size / b.size, dtype=a.dtype), lower=_numel_ratio_lower,
      grad=_ZERO, category="math",
      doc="size(a) / size(b) as a scalar of a's dtype (mean over symbolic dims)")

# --------------------------------------------------------------- reductions
REDUCE_ATTRS = {"axes": Attr((tuple, int), None, doc="axes to reduce (all when omitted)"),
                "keepdims": Attr(bool, False, doc="keep reduced axes with size 1")}


def _reduce_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    axes = axes_of(ctx, ctx.attrs["axes"], x.rank)
    keep = ctx.attrs["keepdims"]
    shape = tuple((1 if i in axes else d) for i, d in enumerate(x.shape) if keep or i not in axes)
    return TensorType(x.dtype, shape)


def _reduce_lower(onnx_op):
    def lower(e, n, x):
        rank = e.type(n.inputs[0]).rank
        axes = n.attrs["axes"]
        axes = list(range(rank)) if axes is None else ([axes] if isinstance(axes, int) else axes)
        return e.op(onnx_op, [x, e.ints(axes)], keepdims=int(n.attrs["keepdims"]))
    return lower


def _np_axes(axes):
    return None if axes is None else (axes if isinstance(axes, int) else tuple(axes))


def _expand_back(c, g):
    """Broadcast a reduction's output gradient back over the reduced axes."""
    x = c.x[0]
    if not c.attrs["keepdims"]:
        rank = x.rank
        axes = c.attrs["axes"]
        axes = range(rank) if axes is None else ([axes] if isinstance(axes, int) else axes)
        axes = tuple(sorted(a % rank for a in axes))
        if axes:
            g = c.b.unsqueeze(g, axes=axes)
    return c.b.broadcast_to(g, x)


def _sum_grad(c):
    return [_expand_back(c, c.g)]


def _mean_grad(c):
    return [_expand_back(c, c.g) * c.b.numel_ratio(c.y[0], c.x[0])]


def _max_grad(c):
    y = _expand_back(c, c.y[0])
    mask = c.b.cast(c.b.equal(c.x[0], y), to=c.x[0].dtype)
    return [_expand_back(c, c.g) * mask]


defop("reduce_sum", attrs=dict(REDUCE_ATTRS), infer=_reduce_infer,
      reference=lambda x, axes, keepdims: np.sum(x, axis=_np_axes(axes), keepdims=keepdims),
      lower=_reduce_lower("ReduceSum"), grad=_sum_grad, category="math", doc="sum over axes",
      flops=lambda ctx, outs: elementwise_flops(ctx, [ctx.inputs[0]]))
defop("reduce_mean", attrs=dict(REDUCE_ATTRS), infer=_reduce_infer,
      reference=lambda x, axes, keepdims: np.mean(x, axis=_np_axes(axes), keepdims=keepdims),
      lower=_reduce_lower("ReduceMean"), grad=_mean_grad, category="math", doc="mean over axes",
      flops=lambda ctx, outs: elementwise_flops(ctx, [ctx.inputs[0]]))
defop("reduce_max", attrs=dict(REDUCE_ATTRS), infer=_reduce_infer,
      reference=lambda x, axes, keepdims: np.max(x, axis=_np_axes(axes), keepdims=keepdims),
      lower=_reduce_lower("ReduceMax"), grad=_max_grad, category="math", doc="max over axes",
      flops=lambda ctx, outs: elementwise_flops(ctx, [ctx.inputs[0]]))

# ------------------------------------------------------------------ matmul


def _matmul_infer(ctx: InferCtx) -> TensorType:
    a, b = ctx.inputs
    if a.dtype != b.dtype:
        raise ctx.fail(f"inputs have different dtypes: {a} and {b}")
    if a.rank < 2 or b.rank < 2:
        raise ctx.fail(f"matmul needs rank >= 2 operands, got {a} and {b}",
                       hint="reshape vectors to [1, K] or [K, 1]")
    if a.shape[-1] != b.shape[-2]:
        raise ctx.fail(f"inner dimensions differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)} "
                       f"({a.shape[-1]} vs {b.shape[-2]})",
                       hint="the last dim of a must equal the second-to-last dim of b")
    batch = broadcast(a.shape[:-2], b.shape[:-2])
    if batch is None:
        raise ctx.fail(f"batch dims do not broadcast: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)}")
    return TensorType(a.dtype, batch + (a.shape[-2], b.shape[-1]))


def _swap_last(b, t):
    perm = tuple(range(t.rank - 2)) + (t.rank - 1, t.rank - 2)
    return b.transpose(t, perm=perm)


def _matmul_grad(c):
    a, w = c.x
    ga = c.g @ _swap_last(c.b, w) if c.needs(0) else None
    gw = _swap_last(c.b, a) @ c.g if c.needs(1) else None
    return [ga, gw]


def _matmul_flops(ctx: InferCtx, outs) -> int:
    from graphc.shapes import concrete

    k = concrete((ctx.inputs[0].shape[-1],), default=1)[0]
    return 2 * k * int(np.prod(concrete(outs[0].shape, default=1)))


defop("matmul", inputs=("a", "b"), infer=_matmul_infer, reference=np.matmul,
      lower=lambda e, n, a, b: e.op("MatMul", [a, b]), grad=_matmul_grad, category="math",
      doc="matrix product (batched over leading dims)", flops=_matmul_flops)

_ = numel  # re-exported for op modules
