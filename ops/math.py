"""Arithmetic, comparison, reduction and matmul primitives.

These are what gradient rules are written in, so each one's own gradient is
here too (that is what makes Hessian-vector products work).
"""

from __future__ import annotations

import math

import numpy as np

from graphc.errors import GraphError
from graphc.ir import TensorType
from graphc.ops.common import (
    axes_of,
    binary,
    broadcast_infer,
    compare_infer,
    elementwise_flops,
    same_as_input,
    unary,
)
from graphc.ops.registry import Attr, InferCtx, NotDifferentiable, defop
from graphc.shapes import broadcast, fmt_shape, numel

# Test hints (see tests/op_cases.py). Broadcasting cases keep the batch fixed, since
# the table varies axis 0 of every input together.
_BINARY_TEST = {
    "cases": [
        {"shapes": [[4, 5], [4, 5]]},
        {"shapes": [[2, 3, 4], [4]], "batch": False},
        {"shapes": [[4, 1], [1, 5]], "batch": False},
    ],
    "grad": True,
}
_POSITIVE_BINARY_TEST = dict(_BINARY_TEST, positive=True)
_UNARY_TEST = {"cases": [{"shapes": [[4, 5]]}, {"shapes": [[2, 3, 4]]}], "grad": True}
_POSITIVE_UNARY_TEST = dict(_UNARY_TEST, positive=True)
_COMPARE_TEST = {
    "cases": [
        {"shapes": [[4, 5], [4, 5]]},
        {"shapes": [[4, 5], [4, 5]], "dtypes": ["int64", "int64"]},
        {"shapes": [[2, 3, 4], [4]], "batch": False},
    ],
    "int_high": 3,
    "grad": "bool output: no gradient flows through a comparison",
}

# ----------------------------------------------------------------- arithmetic
binary(
    "add", np.add, "Add", grad=lambda c: [c.g, c.g], doc="a + b (broadcasting)", test=_BINARY_TEST
)
binary(
    "sub",
    np.subtract,
    "Sub",
    grad=lambda c: [c.g, -c.g],
    doc="a - b (broadcasting)",
    test=_BINARY_TEST,
)
binary(
    "mul",
    np.multiply,
    "Mul",
    grad=lambda c: [c.g * c.x[1], c.g * c.x[0]],
    doc="a * b, elementwise (broadcasting)",
    test=_BINARY_TEST,
)
binary(
    "div",
    lambda a, b: a / b,
    "Div",
    grad=lambda c: [c.g / c.x[1], -(c.g * c.y[0]) / c.x[1]],
    doc="a / b (broadcasting)",
    test=_POSITIVE_BINARY_TEST,
)


def _pow_grad(c):
    a, k = c.x
    ga = c.g * k * c.b.pow(a, k - 1.0)
    gk = c.g * c.y[0] * c.b.log(a) if c.needs(1) else None
    return [ga, gk]


binary(
    "pow",
    np.power,
    "Pow",
    grad=_pow_grad,
    doc="a ** b (a > 0 for a gradient wrt b)",
    test=_POSITIVE_BINARY_TEST,
)
binary(
    "maximum",
    np.maximum,
    "Max",
    grad=lambda c: [
        c.b.where(c.b.greater_equal(c.x[0], c.x[1]), c.g, c.b.zeros_like(c.g)),
        c.b.where(c.b.greater_equal(c.x[0], c.x[1]), c.b.zeros_like(c.g), c.g),
    ],
    doc="elementwise max (ties send the gradient to a)",
    test=_BINARY_TEST,
)
binary(
    "minimum",
    np.minimum,
    "Min",
    grad=lambda c: [
        c.b.where(c.b.less_equal(c.x[0], c.x[1]), c.g, c.b.zeros_like(c.g)),
        c.b.where(c.b.less_equal(c.x[0], c.x[1]), c.b.zeros_like(c.g), c.g),
    ],
    doc="elementwise min (ties send the gradient to a)",
    test=_BINARY_TEST,
)

unary("neg", np.negative, "Neg", grad=lambda c: [-c.g], doc="-x", test=_UNARY_TEST)
unary("exp", np.exp, "Exp", grad=lambda c: [c.g * c.y[0]], doc="e ** x", test=_UNARY_TEST)
unary(
    "log",
    np.log,
    "Log",
    grad=lambda c: [c.g / c.x[0]],
    doc="natural logarithm",
    test=_POSITIVE_UNARY_TEST,
)
unary(
    "sqrt",
    np.sqrt,
    "Sqrt",
    grad=lambda c: [c.g * 0.5 / c.y[0]],
    doc="square root",
    test=_POSITIVE_UNARY_TEST,
)
unary(
    "square",
    np.square,
    lambda e, n, x: e.op("Mul", [x, x]),
    grad=lambda c: [c.g * 2.0 * c.x[0]],
    doc="x * x",
    test=_UNARY_TEST,
)
unary("abs", np.abs, "Abs", grad=lambda c: [c.g * c.b.sign(c.x[0])], doc="|x|", test=_UNARY_TEST)
unary(
    "sign",
    np.sign,
    "Sign",
    grad=lambda c: [None],
    doc="-1, 0 or 1 (zero gradient)",
    test=_UNARY_TEST,
)
unary(
    "reciprocal",
    lambda x: 1.0 / x,
    "Reciprocal",
    grad=lambda c: [-(c.g * c.y[0] * c.y[0])],
    doc="1 / x",
    test=_POSITIVE_UNARY_TEST,
)
unary(
    "identity",
    lambda x: x,
    "Identity",
    grad=lambda c: [c.g],
    infer=same_as_input,
    doc="x unchanged",
    aliases={0: 0},
    test=_UNARY_TEST,
)
unary(
    "stop_gradient",
    lambda x: x,
    "Identity",
    grad=lambda c: [None],
    infer=same_as_input,
    doc="x unchanged in the forward pass; no gradient flows back through it",
    test=dict(_UNARY_TEST, grad="its gradient is zero by design (finite differences are not)"),
)


def _clip_grad(c):
    lo, hi = c.attrs["min"], c.attrs["max"]
    inside = c.b.logical_and(
        c.b.greater_equal(c.x[0], c.b.scalar(lo, c.x[0])),
        c.b.less_equal(c.x[0], c.b.scalar(hi, c.x[0])),
    )
    return [c.b.where(inside, c.g, c.b.zeros_like(c.g))]


unary(
    "clip",
    lambda x, min, max: np.clip(x, min, max),
    lambda e, n, x: e.op("Clip", [x, e.scalar(n.attrs["min"], x), e.scalar(n.attrs["max"], x)]),
    grad=_clip_grad,
    attrs={"min": Attr(float), "max": Attr(float)},
    doc="clamp to [min, max]; gradient passes where the value was inside",
    test={"cases": [{"shapes": [[4, 5]], "attrs": {"min": -0.5, "max": 0.7}}], "grad": True},
)


def _add_n_infer(ctx: InferCtx) -> TensorType:
    t = ctx.inputs[0]
    for u in ctx.inputs[1:]:
        if u.dtype != t.dtype or broadcast(t.shape, u.shape) != t.shape:
            raise ctx.fail(f"add_n needs equal shapes: {t} vs {u}")
    return t


defop(
    "add_n",
    inputs=("xs*",),
    infer=_add_n_infer,
    reference=lambda *xs: sum(xs[1:], xs[0]),
    lower=lambda e, n, *xs: e.op("Sum", list(xs)),
    grad=lambda c: [c.g] * len(c.x),
    category="math",
    doc="sum of several tensors of one shape",
    flops=elementwise_flops,
    test={"cases": [{"shapes": [[4, 5], [4, 5], [4, 5]]}, {"shapes": [[2, 3]]}], "grad": True},
)

# ------------------------------------------------------------- comparisons
_ZERO = lambda c: [None] * len(c.x)  # piecewise constant: zero gradient
binary(
    "greater",
    np.greater,
    "Greater",
    grad=_ZERO,
    infer=compare_infer,
    doc="a > b (bool)",
    test=_COMPARE_TEST,
)
binary(
    "greater_equal",
    np.greater_equal,
    "GreaterOrEqual",
    grad=_ZERO,
    infer=compare_infer,
    doc="a >= b (bool)",
    test=_COMPARE_TEST,
)
binary(
    "less", np.less, "Less", grad=_ZERO, infer=compare_infer, doc="a < b (bool)", test=_COMPARE_TEST
)
binary(
    "less_equal",
    np.less_equal,
    "LessOrEqual",
    grad=_ZERO,
    infer=compare_infer,
    doc="a <= b (bool)",
    test=_COMPARE_TEST,
)
binary(
    "equal",
    np.equal,
    "Equal",
    grad=_ZERO,
    infer=compare_infer,
    doc="a == b (bool)",
    test=_COMPARE_TEST,
)


def _logic_infer(ctx: InferCtx) -> TensorType:
    return TensorType("bool", broadcast_infer(ctx).shape)


binary(
    "logical_and",
    np.logical_and,
    "And",
    grad=_ZERO,
    infer=_logic_infer,
    doc="a and b",
    test={
        "cases": [{"shapes": [[4, 5], [4, 5]], "dtypes": ["bool", "bool"]}],
        "grad": "bool inputs and output",
    },
)


def _where_infer(ctx: InferCtx) -> TensorType:
    c, a, b = ctx.inputs
    if c.dtype != "bool":
        raise ctx.fail(f"the condition must be bool, got {c}")
    if a.dtype != b.dtype:
        raise ctx.fail(f"branches have different dtypes: {a} and {b}")
    shape = broadcast(broadcast(c.shape, a.shape) or (), b.shape)
    if shape is None or broadcast(c.shape, a.shape) is None:
        raise ctx.fail(
            "condition and branches do not broadcast: "
            f"{fmt_shape(c.shape)}, {fmt_shape(a.shape)}, {fmt_shape(b.shape)}"
        )
    return TensorType(a.dtype, shape)


def _where_grad(c):
    z = c.b.zeros_like(c.g)
    return [None, c.b.where(c.x[0], c.g, z), c.b.where(c.x[0], z, c.g)]


defop(
    "where",
    inputs=("cond", "a", "b"),
    infer=_where_infer,
    reference=np.where,
    lower=lambda e, n, c, a, b: e.op("Where", [c, a, b]),
    grad=_where_grad,
    category="math",
    doc="a where cond holds, else b",
    flops=elementwise_flops,
    test={
        "cases": [
            {"shapes": [[4, 5], [4, 5], [4, 5]], "dtypes": ["bool", "float", "float"]},
            {"shapes": [[4, 1], [4, 5], [5]], "dtypes": ["bool", "float", "float"], "batch": False},
        ],
        "grad": True,
    },
)


def _cast_infer(ctx: InferCtx) -> TensorType:
    return TensorType(ctx.attrs["to"], ctx.inputs[0].shape)


def _cast_grad(c):
    src, dst = c.x[0].dtype, c.attrs["to"]
    if src.startswith("float") and dst.startswith("float"):
        return [c.b.cast(c.g, to=src)]
    if src.startswith("float") and dst.startswith("int"):
        # reached only when a gradient flows back into this integer value (see below)
        raise GraphError(
            f"a cast from {src} to {dst} is piecewise constant: no gradient flows through it"
        )
    if src.startswith("int") and c.needs(0):
        # An integer value that depends on a differentiated target came from a float
        # through argmax or a cast: pass a (meaningless) integer gradient on, so the op
        # that produced it reports that it is not differentiable, by name.
        return [c.b.cast(c.g, to=src)]
    return [None]


defop(
    "cast",
    inputs=("x",),
    attrs={"to": Attr(str, choices=("float32", "float64", "float16", "int64", "int32", "bool"))},
    infer=_cast_infer,
    reference=lambda x, to: x.astype(to),
    lower=lambda e, n, x: e.op("Cast", [x], to=e.onnx_dtype(n.attrs["to"])),
    grad=_cast_grad,
    category="math",
    doc="convert to another dtype",
    test={
        "cases": [
            {"shapes": [[4, 5]], "attrs": {"to": "float64"}},
            {"shapes": [[4, 5]], "attrs": {"to": "int64"}, "grad": "integer output"},
            {
                "shapes": [[4, 5]],
                "attrs": {"to": "float32"},
                "grad": "a float32 round trip is too coarse for a 1e-6 gradient check",
            },
            {
                "shapes": [[4, 5]],
                "attrs": {"to": "float16"},
                "grad": "float16 is too coarse for a 1e-6 gradient check",
            },
            {
                "shapes": [[4, 5]],
                "dtypes": ["int64"],
                "attrs": {"to": "float32"},
                "grad": "integer input",
            },
            {
                "shapes": [[4, 5]],
                "dtypes": ["bool"],
                "attrs": {"to": "float32"},
                "grad": "bool input",
            },
        ],
        "int_high": 5,
        "grad": True,
    },
)


def _like_infer(ctx: InferCtx) -> TensorType:
    return ctx.inputs[0]


def _const_like(value):
    def lower(e, n, x):
        shape = e.op("Shape", [x])
        t = e.tensor(np.asarray([value], dtype=e.type(n.inputs[0]).dtype))
        return e.op("ConstantOfShape", [shape], value=t)

    return lower


defop(
    "zeros_like",
    infer=_like_infer,
    reference=np.zeros_like,
    lower=_const_like(0),
    grad=_ZERO,
    category="math",
    doc="zeros of x's shape and dtype",
    test=_UNARY_TEST,
)
defop(
    "ones_like",
    infer=_like_infer,
    reference=np.ones_like,
    lower=_const_like(1),
    grad=_ZERO,
    category="math",
    doc="ones of x's shape and dtype",
    test=_UNARY_TEST,
)


def _numel_ratio_infer(ctx: InferCtx) -> TensorType:
    return TensorType(ctx.inputs[0].dtype, ())


def _numel_ratio_lower(e, n, a, b):
    dt = e.onnx_dtype(e.type(n.inputs[0]).dtype)
    sa = e.op("Cast", [e.op("Size", [a])], to=dt)
    sb = e.op("Cast", [e.op("Size", [b])], to=dt)
    return e.op("Div", [sa, sb])


defop(
    "numel_ratio",
    inputs=("a", "b"),
    infer=_numel_ratio_infer,
    reference=lambda a, b: np.asarray(a.size / b.size, dtype=a.dtype),
    lower=_numel_ratio_lower,
    grad=_ZERO,
    category="math",
    doc="size(a) / size(b) as a scalar of a's dtype (mean over symbolic dims)",
    test={"cases": [{"shapes": [[4, 5], [4]]}, {"shapes": [[2, 3], [2, 3, 4]]}], "grad": True},
)

# --------------------------------------------------------------- reductions
_REDUCE_TEST = {
    "cases": [
        {"shapes": [[4, 5]]},
        {"shapes": [[2, 3, 4]], "attrs": {"axes": (1,)}},
        {"shapes": [[2, 3, 4]], "attrs": {"axes": (0, 2), "keepdims": True}},
        {"shapes": [[4, 5]], "attrs": {"axes": -1}},
    ],
    "grad": True,
}
REDUCE_ATTRS = {
    "axes": Attr((tuple, int), None, doc="axes to reduce (all when omitted)"),
    "keepdims": Attr(bool, False, doc="keep reduced axes with size 1"),
}


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


for _name, _np_fn, _onnx_op, _grad, _what in (
    ("reduce_sum", np.sum, "ReduceSum", _sum_grad, "sum"),
    ("reduce_mean", np.mean, "ReduceMean", _mean_grad, "mean"),
    ("reduce_max", np.max, "ReduceMax", _max_grad, "max"),
):
    defop(
        _name,
        attrs=dict(REDUCE_ATTRS),
        infer=_reduce_infer,
        reference=lambda x, axes, keepdims, _f=_np_fn: _f(
            x, axis=_np_axes(axes), keepdims=keepdims
        ),
        lower=_reduce_lower(_onnx_op),
        grad=_grad,
        category="math",
        doc=f"{_what} over axes",
        test=_REDUCE_TEST,
        flops=lambda ctx, outs: elementwise_flops(ctx, [ctx.inputs[0]]),
    )
del _name, _np_fn, _onnx_op, _grad, _what  # the loop's names are not the module's

# ------------------------------------------------------------------ matmul


def _matmul_infer(ctx: InferCtx) -> TensorType:
    a, b = ctx.inputs
    if a.dtype != b.dtype:
        raise ctx.fail(f"inputs have different dtypes: {a} and {b}")
    if a.rank < 2 or b.rank < 2:
        raise ctx.fail(
            f"matmul needs rank >= 2 operands, got {a} and {b}",
            hint="reshape vectors to [1, K] or [K, 1]",
        )
    if a.shape[-1] != b.shape[-2]:
        raise ctx.fail(
            f"inner dimensions differ: {fmt_shape(a.shape)} @ {fmt_shape(b.shape)} "
            f"({a.shape[-1]} vs {b.shape[-2]})",
            hint="the last dim of a must equal the second-to-last dim of b",
        )
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


defop(
    "matmul",
    inputs=("a", "b"),
    infer=_matmul_infer,
    reference=np.matmul,
    lower=lambda e, n, a, b: e.op("MatMul", [a, b]),
    grad=_matmul_grad,
    category="math",
    doc="matrix product (batched over leading dims)",
    flops=_matmul_flops,
    test={
        "cases": [
            {"shapes": [[2, 3, 4], [2, 4, 5]]},
            {"shapes": [[3, 4], [4, 5]], "batch": False},
            {"shapes": [[2, 3, 4], [4, 2]], "batch": False},
        ],
        "grad": True,
    },
)

# ---------------------------------------------------------------- misc
_erf = np.vectorize(math.erf, otypes=[np.float64])  # NumPy has no erf; tests only need small arrays


def erf_lower(e, n, x):
    """ONNX Erf; ORT's CPU kernel is float32-only, so other dtypes go through float32
    (relative error about 1e-7 in float64 models)."""
    dtype = e.type(n.inputs[0]).dtype
    if dtype == "float32":
        return e.op("Erf", [x])
    y = e.op("Erf", [e.op("Cast", [x], to=e.onnx_dtype("float32"))])
    return e.op("Cast", [y], to=e.onnx_dtype(dtype))


unary(
    "erf",
    lambda x: _erf(x).astype(x.dtype),
    erf_lower,
    grad=lambda c: [c.g * (2.0 / math.sqrt(math.pi)) * c.b.exp(-c.b.square(c.x[0]))],
    doc="the error function (used by the exact gelu)",
    test=dict(_UNARY_TEST, tol64=1e-6),
)  # float64 goes through ORT's float32 Erf


def _argmax_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    (axis,) = axes_of(ctx, ctx.attrs["axis"], x.rank)
    keep = ctx.attrs["keepdims"]
    shape = tuple(1 if i == axis else d for i, d in enumerate(x.shape) if keep or i != axis)
    return TensorType("int64", shape)


def _argmax_ref(x, axis, keepdims):
    i = np.argmax(x, axis=axis)  # the first maximum, as ONNX's select_last_index=0
    return (np.expand_dims(i, axis) if keepdims else i).astype(np.int64)


defop(
    "argmax",
    attrs={
        "axis": Attr(int, -1, doc="axis to search"),
        "keepdims": Attr(bool, False, doc="keep the axis with size 1"),
    },
    infer=_argmax_infer,
    reference=_argmax_ref,
    lower=lambda e, n, x: e.op(
        "ArgMax", [x], axis=n.attrs["axis"], keepdims=int(n.attrs["keepdims"])
    ),
    grad=NotDifferentiable("argmax returns integer indices; it is piecewise constant"),
    category="math",
    key_attrs=("axis",),
    doc="index of the largest value along an axis (int64)",
    test={
        "cases": [
            {"shapes": [[4, 5]]},
            {"shapes": [[2, 3, 4]], "attrs": {"axis": 1}},
            {"shapes": [[4, 5]], "attrs": {"axis": 0, "keepdims": True}},
        ],
        "grad": "integer output",
    },
)


def _residual_infer(ctx: InferCtx) -> TensorType:
    x, fx = ctx.inputs
    if x != fx:
        raise ctx.fail(
            f"the block output {fx} does not match its input {x}",
            hint="a residual connection adds tensors of one shape; project x first "
            "(a linear layer or a 1x1 conv) when the block changes it",
        )
    return x


defop(
    "residual",
    inputs=("x", "fx"),
    infer=_residual_infer,
    reference=np.add,
    lower=lambda e, n, x, fx: e.op("Add", [x, fx]),
    grad=lambda c: [c.g, c.g],
    category="math",
    flops=elementwise_flops,
    inplace={0: 1},
    doc="x + f(x): an add kept as its own op so renders and the editor show the skip connection",
    test={
        "cases": [{"shapes": [[4, 5], [4, 5]]}, {"shapes": [[2, 3, 4], [2, 3, 4]]}],
        "grad": True,
    },
)

_ = numel  # re-exported for op modules
