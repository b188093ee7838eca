"""Nearest-neighbour upsampling by integer factors: each value repeated over a block.

The optimizer's tiled max-pool backward (graphc/passes/max_pool_grad.py)
spreads per-window values back over their windows with it; ONNX Resize in
nearest mode does it in one fast copy (an Expand of a [.., S, 1, ..] view is
20x slower in ONNX Runtime). Its gradient sums each block back: an average
pool over the block times its size.
"""

from __future__ import annotations

import math

import numpy as np

from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.ops.windows import tuple_of
from graphc.shapes import dim_mul, is_static


def _infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    if x.rank < 3:
        raise ctx.fail(f"the input must be [N, C, *spatial], got {x}")
    if x.dtype != "float32" and not is_static(x.shape[2:]):
        raise ctx.fail(
            f"upsample_nearest of {x.dtype} needs fixed spatial sizes, got {x}",
            hint="give the input fixed spatial sizes, or use float32 (ONNX Resize)",
        )
    scale = tuple_of(ctx.fail, "scale", ctx.attrs["scale"], x.rank - 2)
    spatial = tuple(dim_mul(d, s) for d, s in zip(x.shape[2:], scale))
    return TensorType(x.dtype, x.shape[:2] + spatial)


def _reference(x, *, scale):
    for i, s in enumerate(tuple_of(None, "scale", scale, x.ndim - 2)):
        x = np.repeat(x, s, axis=2 + i)
    return x


def _lower(e, n, x):
    t = e.type(n.inputs[0])
    d = t.rank - 2
    scale = tuple_of(None, "scale", n.attrs["scale"], d)
    if t.dtype == "float32":
        scales = e.const(np.array([1.0, 1.0, *scale], dtype=np.float32))
        return e.op(
            "Resize",
            [x, "", scales],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )
    # other dtypes (fixed spatial sizes, _infer checks): a [N, C, S1, 1, S2, 1, ...]
    # view expanded over the blocks
    spatial = t.shape[2:]
    view = [0, 0] + [v for s in spatial for v in (s, 1)]
    full = [1, 1] + [v for s, k in zip(spatial, scale) for v in (s, k)]
    blocks = e.op("Expand", [e.op("Reshape", [x, e.ints(view)]), e.ints(full)])
    out = [0, 0] + [s * k for s, k in zip(spatial, scale)]
    return e.op("Reshape", [blocks, e.ints(out)])


def _grad(c):
    x = c.x[0]
    scale = tuple_of(None, "scale", c.attrs["scale"], x.rank - 2)
    summed = c.b.op(f"avg_pool{x.rank - 2}d", c.g, kernel=scale) * float(math.prod(scale))
    return [summed]


defop(
    "upsample_nearest",
    attrs={"scale": Attr((int, tuple), doc="repeat factor (int or one per spatial axis)")},
    infer=_infer,
    reference=_reference,
    lower=_lower,
    grad=_grad,
    category="tensor",
    key_attrs=("scale",),
    doc="nearest-neighbour upsampling of [N, C, *S] by integer factors: every value "
    "repeated over a block of `scale` (ONNX Resize, nearest)",
    test={
        "cases": [
            {"shapes": [[2, 3, 4, 5]], "attrs": {"scale": 2}},
            {"shapes": [[2, 2, 3]], "attrs": {"scale": 3}},
            {"shapes": [[1, 2, 2, 3, 2]], "attrs": {"scale": (1, 2, 2)}},
        ],
        "grad": True,
    },
)
