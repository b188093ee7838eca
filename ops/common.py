"""Category helpers: most declarations are one to three lines on top of these."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.shapes import broadcast, fmt_shape, normalize_axis


def same_as_input(ctx: InferCtx) -> TensorType:
    return ctx.inputs[0]


def float_same(ctx: InferCtx) -> TensorType:
    return ctx.need_float(0)


def broadcast_infer(ctx: InferCtx) -> TensorType:
    a, b = ctx.inputs[0], ctx.inputs[1]
    if a.dtype != b.dtype:
        raise ctx.fail(
            f"inputs have different dtypes: {a} and {b}",
            hint="cast one of them (cast(x, to='float32'))",
        )
    shape = broadcast(a.shape, b.shape)
    if shape is None:
        raise ctx.fail(
            f"shapes {fmt_shape(a.shape)} and {fmt_shape(b.shape)} do not broadcast",
            hint="each dim must be equal, or 1 in one of them",
        )
    return TensorType(a.dtype, shape)


def compare_infer(ctx: InferCtx) -> TensorType:
    t = broadcast_infer(ctx)
    return TensorType("bool", t.shape)


def elementwise_flops(ctx: InferCtx, outs) -> int:
    from graphc.shapes import concrete

    return int(np.prod(concrete(outs[0].shape, default=1)))


def unary(
    name: str,
    ref: Callable,
    onnx_op: str | Callable,
    grad=None,
    *,
    category="math",
    doc="",
    attrs=None,
    infer=float_same,
    **kw,
):
    """An elementwise op of one tensor; `onnx_op` is an ONNX op name or a lowering."""
    lower = onnx_op if callable(onnx_op) else (lambda e, n, x: e.op(onnx_op, [x]))
    return defop(
        name,
        inputs=("x",),
        attrs=attrs or {},
        infer=infer,
        reference=ref,
        lower=lower,
        grad=grad,
        category=category,
        doc=doc,
        flops=elementwise_flops,
        **kw,
    )


def binary(
    name: str,
    ref: Callable,
    onnx_op: str,
    grad=None,
    *,
    category="math",
    doc="",
    infer=broadcast_infer,
    **kw,
):
    """An elementwise op of two tensors with NumPy broadcasting."""
    return defop(
        name,
        inputs=("a", "b"),
        infer=infer,
        reference=ref,
        lower=lambda e, n, a, b: e.op(onnx_op, [a, b]),
        grad=grad,
        category=category,
        doc=doc,
        flops=elementwise_flops,
        **kw,
    )


def axis_attr(default: int = -1, doc: str = "axis (negative counts from the end)") -> Attr:
    return Attr(int, default, doc=doc)


def axes_of(ctx: InferCtx, axes, rank: int) -> tuple[int, ...]:
    """Normalize an axes attribute (None means all axes)."""
    if axes is None:
        return tuple(range(rank))
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = []
    for a in axes:
        k = normalize_axis(a, rank)
        if k is None:
            raise ctx.fail(f"axis {a} is out of range for rank {rank}")
        out.append(k)
    return tuple(sorted(set(out)))


def np_dtype(t: TensorType):
    return np.dtype(t.dtype)
