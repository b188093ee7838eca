"""Shape plumbing: reshape, flatten, transpose, concat, slice, pad, (un)squeeze, broadcast."""

from __future__ import annotations

import math

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import axes_of, axis_attr
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.shapes import (
    broadcast,
    dim_add,
    dim_factors,
    dim_mul,
    fmt_shape,
    is_static,
    normalize_axis,
    numel,
)


def _reshape_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    spec = list(ctx.attrs["shape"])
    if spec.count(-1) > 1:
        raise ctx.fail("reshape allows at most one -1 in the shape")
    out: list = []
    copied = set()
    for i, d in enumerate(spec):
        if d == 0:
            if i >= x.rank:
                raise ctx.fail(f"shape entry {i} is 0 (copy) but the input has rank {x.rank}")
            out.append(x.shape[i])
            copied.add(i)
        elif d == -1 or (isinstance(d, int) and d > 0):
            out.append(d)
        else:
            raise ctx.fail(f"invalid shape entry {d}", hint="use positive sizes, 0 (copy) or -1")
    # the input's other dims as an integer times symbols ('4*N' counts as 4 and N);
    # the spec's own entries are ints
    rest_int, rest_sym = dim_factors(
        dim_mul(*(d for i, d in enumerate(x.shape) if i not in copied))
    )
    known_int = math.prod(d for i, d in enumerate(out) if d != -1 and i not in copied)
    if -1 in out:
        if rest_int % max(known_int, 1):
            raise ctx.fail(
                f"cannot reshape {fmt_shape(x.shape)} to {fmt_shape(tuple(spec))}: "
                f"{numel(x.shape)} elements do not divide evenly"
            )
        out[out.index(-1)] = dim_mul(*rest_sym, rest_int // max(known_int, 1))
    elif not rest_sym and rest_int != known_int:
        raise ctx.fail(
            f"cannot reshape {fmt_shape(x.shape)} ({numel(x.shape)} elements) to "
            f"{fmt_shape(tuple(spec))} ({known_int} elements)"
        )
    return TensorType(x.dtype, tuple(out))


def _reshape_ref(x, shape):
    spec = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(spec)


defop(
    "reshape",
    attrs={"shape": Attr(tuple, doc="new shape; 0 copies a dim, -1 infers one")},
    infer=_reshape_infer,
    reference=_reshape_ref,
    lower=lambda e, n, x: e.op("Reshape", [x, e.ints(n.attrs["shape"])]),
    grad=lambda c: [c.b.reshape_like(c.g, c.x[0])],
    category="tensor",
    doc="same elements, new shape",
    aliases={0: 0},
    key_attrs=("shape",),
    test={
        "cases": [
            {"shapes": [[4, 6]], "attrs": {"shape": (0, 2, 3)}},
            {"shapes": [[2, 3, 4]], "attrs": {"shape": (0, -1)}},
            {"shapes": [[2, 3, 4]], "attrs": {"shape": (-1,)}},
            {"shapes": [[2, 6]], "attrs": {"shape": (4, 3)}, "batch": False},
        ],
        "grad": True,
    },
)


def _reshape_like_infer(ctx: InferCtx) -> TensorType:
    x, like = ctx.inputs
    if is_static(x.shape) and is_static(like.shape) and numel(x.shape) != numel(like.shape):
        raise ctx.fail(f"cannot reshape {x} to the shape of {like}")
    return TensorType(x.dtype, like.shape)


defop(
    "reshape_like",
    inputs=("x", "like"),
    infer=_reshape_like_infer,
    reference=lambda x, like: x.reshape(like.shape),
    lower=lambda e, n, x, like: e.op("Reshape", [x, e.op("Shape", [like])]),
    grad=lambda c: [c.b.reshape_like(c.g, c.x[0]), None],
    category="tensor",
    doc="x reshaped to like's (possibly symbolic) shape",
    aliases={0: 0},
    test={"cases": [{"shapes": [[4, 6], [4, 2, 3]]}], "grad": True},
)


def _flatten_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    axis = normalize_axis(ctx.attrs["axis"], x.rank + 1)
    if axis is None:
        raise ctx.fail(f"axis {ctx.attrs['axis']} is out of range for {x}")
    return TensorType(x.dtype, (dim_mul(*x.shape[:axis]), dim_mul(*x.shape[axis:])))


defop(
    "flatten",
    attrs={"axis": Attr(int, 1, doc="dims before it form rows, the rest columns")},
    infer=_flatten_infer,
    reference=lambda x, axis: x.reshape(int(np.prod(x.shape[: axis % (x.ndim + 1)])), -1),
    lower=lambda e, n, x: e.op("Flatten", [x], axis=n.attrs["axis"]),
    grad=lambda c: [c.b.reshape_like(c.g, c.x[0])],
    category="tensor",
    doc="collapse to 2-D: [N, C, H, W] -> [N, C*H*W]",
    aliases={0: 0},
    test={
        "cases": [{"shapes": [[2, 3, 4, 2]]}, {"shapes": [[2, 3, 4]], "attrs": {"axis": 2}}],
        "grad": True,
    },
)


def _transpose_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    perm = ctx.attrs["perm"] or tuple(reversed(range(x.rank)))
    if sorted(perm) != list(range(x.rank)):
        raise ctx.fail(f"perm {perm} is not a permutation of the {x.rank} axes of {x}")
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


def _transpose_grad(c):
    perm = c.attrs["perm"] or tuple(reversed(range(c.x[0].rank)))
    return [c.b.transpose(c.g, perm=tuple(int(i) for i in np.argsort(perm)))]


defop(
    "transpose",
    attrs={"perm": Attr(tuple, None, doc="axis order (reversed by default)")},
    infer=_transpose_infer,
    reference=lambda x, perm: np.transpose(x, perm),
    lower=lambda e, n, x: e.op(
        "Transpose", [x], perm=list(n.attrs["perm"]) if n.attrs["perm"] else None
    ),
    grad=_transpose_grad,
    category="tensor",
    doc="permute axes",
    key_attrs=("perm",),
    test={
        "cases": [
            {"shapes": [[2, 3, 4]], "attrs": {"perm": (0, 2, 1)}},
            {"shapes": [[2, 3, 4]]},
            {"shapes": [[4, 5]], "attrs": {"perm": (1, 0)}},
        ],
        "grad": True,
    },
)


def _concat_infer(ctx: InferCtx) -> TensorType:
    first = ctx.inputs[0]
    axis = normalize_axis(ctx.attrs["axis"], first.rank)
    if axis is None:
        raise ctx.fail(f"axis {ctx.attrs['axis']} is out of range for {first}")
    size = 0
    for t in ctx.inputs:
        if (
            t.rank != first.rank
            or t.dtype != first.dtype
            or any(a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != axis)
        ):
            raise ctx.fail(
                f"cannot concatenate {first} and {t} along axis {axis}",
                hint="all dims except the concatenation axis must match",
            )
        size = dim_add(size, t.shape[axis])
    return TensorType(first.dtype, first.shape[:axis] + (size,) + first.shape[axis + 1 :])


def _concat_grad(c):
    axis = c.attrs["axis"] % c.x[0].rank
    out, start = [], 0
    for t in c.x:
        size = t.shape[axis]
        if not isinstance(size, int) or not isinstance(start, int):
            from graphc.errors import GraphError

            raise GraphError("concat gradient needs fixed sizes along the concatenation axis")
        out.append(c.b.slice(c.g, starts=(start,), ends=(start + size,), axes=(axis,)))
        start += size
    return out


defop(
    "concat",
    inputs=("xs*",),
    attrs={"axis": axis_attr(1)},
    infer=_concat_infer,
    reference=lambda *xs, axis: np.concatenate(xs, axis=axis),
    lower=lambda e, n, *xs: e.op("Concat", list(xs), axis=n.attrs["axis"]),
    grad=_concat_grad,
    category="tensor",
    doc="join tensors along an axis",
    key_attrs=("axis",),
    test={
        "cases": [
            {"shapes": [[4, 2], [4, 3]]},
            {"shapes": [[2, 3], [2, 3], [2, 3]], "attrs": {"axis": 0}},
            {"shapes": [[2, 3, 4], [2, 3, 1]], "attrs": {"axis": -1}},
        ],
        "grad": True,
    },
)


def _split_infer(ctx: InferCtx) -> list[TensorType]:
    x = ctx.inputs[0]
    axis = normalize_axis(ctx.attrs["axis"], x.rank)
    if axis is None:
        raise ctx.fail(f"axis {ctx.attrs['axis']} is out of range for {x}")
    sizes = ctx.attrs["sizes"]
    if not sizes or any(not isinstance(k, int) or k < 1 for k in sizes):
        raise ctx.fail(f"sizes must be positive integers, got {sizes}")
    if isinstance(x.shape[axis], int) and sum(sizes) != x.shape[axis]:
        raise ctx.fail(
            f"sizes {list(sizes)} add up to {sum(sizes)}, but axis {axis} of {x} "
            f"has {x.shape[axis]}"
        )
    return [TensorType(x.dtype, x.shape[:axis] + (k,) + x.shape[axis + 1 :]) for k in sizes]


def _split_ref(x, axis, sizes):
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


def _split_lower(e, n, x):
    sizes = n.attrs["sizes"]
    if len(sizes) == 1:
        return e.op("Identity", [x])
    return e.op("Split", [x, e.ints(sizes)], outputs=len(sizes), axis=n.attrs["axis"])


def _split_grad(c):
    # one concat of the parts' gradients (zeros where a part got none): the gradient of T
    # per-step slices as T pads summed together would cost O(T^2) memory traffic
    parts = [g if g is not None else c.b.zeros_like(y) for g, y in zip(c.gy, c.y)]
    return [parts[0] if len(parts) == 1 else c.b.concat(*parts, axis=c.attrs["axis"])]


defop(
    "split",
    inputs=("x",),
    attrs={"axis": axis_attr(1), "sizes": Attr(tuple, doc="length of each part")},
    n_outputs=lambda attrs: len(attrs["sizes"]),
    infer=_split_infer,
    reference=_split_ref,
    lower=_split_lower,
    grad=_split_grad,
    category="tensor",
    doc="cut a tensor into consecutive parts along an axis (the inverse of concat)",
    key_attrs=("axis", "sizes"),
    test={
        "cases": [
            {"shapes": [[4, 5]], "attrs": {"axis": 1, "sizes": (2, 3)}},
            {"shapes": [[3, 4, 2]], "attrs": {"axis": 1, "sizes": (1, 1, 2)}},
            {"shapes": [[2, 6]], "attrs": {"axis": -1, "sizes": (6,)}},
        ],
        "grad": True,
    },
)


def _slice_norm(ctx_or_rank, attrs, shape):
    rank = len(shape)
    axes = attrs["axes"] if attrs["axes"] is not None else tuple(range(len(attrs["starts"])))
    steps = attrs["steps"] if attrs["steps"] is not None else (1,) * len(axes)
    return [a % rank for a in axes], list(attrs["starts"]), list(attrs["ends"]), list(steps)


def _slice_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    if len(ctx.attrs["starts"]) != len(ctx.attrs["ends"]):
        raise ctx.fail("starts and ends must have the same length")
    axes, starts, ends, steps = _slice_norm(ctx, ctx.attrs, x.shape)
    shape = list(x.shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        d = x.shape[a]
        if not isinstance(d, int):
            if s == 0 and e >= 2**62 and st == 1:
                continue
            raise ctx.fail(
                f"cannot slice the symbolic dim {d} (axis {a})",
                hint="slice only along dims of fixed size",
            )
        shape[a] = len(range(*slice(s, e, st).indices(d)))
    return TensorType(x.dtype, tuple(shape))


def _slice_ref(x, starts, ends, axes, steps):
    axes = axes if axes is not None else tuple(range(len(starts)))
    steps = steps if steps is not None else (1,) * len(axes)
    idx = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps):
        idx[a] = slice(s, e, st)
    return x[tuple(idx)]


def _slice_lower(e, n, x):
    a = n.attrs
    axes = a["axes"] if a["axes"] is not None else tuple(range(len(a["starts"])))
    steps = a["steps"] if a["steps"] is not None else (1,) * len(axes)
    return e.op("Slice", [x, e.ints(a["starts"]), e.ints(a["ends"]), e.ints(axes), e.ints(steps)])


def _slice_grad(c):
    from graphc.errors import GraphError

    x = c.x[0]
    axes, starts, ends, steps = _slice_norm(None, c.attrs, x.shape)
    pads = [0] * (2 * x.rank)
    for a, s, e, st in zip(axes, starts, ends, steps):
        d = x.shape[a]
        if not isinstance(d, int):
            continue
        r = range(*slice(s, e, st).indices(d))
        if st != 1:
            raise GraphError("slice gradient supports step 1 only")
        pads[a] = r.start
        pads[x.rank + a] = d - (r.stop if len(r) else r.start)
    return [c.b.pad(c.g, pads=tuple(pads))]


defop(
    "slice",
    attrs={
        "starts": Attr(tuple),
        "ends": Attr(tuple),
        "axes": Attr(tuple, None),
        "steps": Attr(tuple, None),
    },
    infer=_slice_infer,
    reference=_slice_ref,
    lower=_slice_lower,
    grad=_slice_grad,
    category="tensor",
    doc="x[starts:ends:steps] along axes",
    key_attrs=("starts", "ends"),
    test={
        "cases": [
            {"shapes": [[4, 6]], "attrs": {"starts": (1,), "ends": (4,), "axes": (1,)}},
            {
                "shapes": [[2, 5, 4]],
                "attrs": {"starts": (-3, 1), "ends": (2**62, -1), "axes": (1, 2)},
            },
            {
                "shapes": [[4, 7]],
                "attrs": {"starts": (0,), "ends": (7,), "axes": (1,), "steps": (2,)},
                "grad": "the slice gradient supports step 1 only",
            },
        ],
        "grad": True,
    },
)


def _pad_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    pads = ctx.attrs["pads"]
    if len(pads) != 2 * x.rank:
        raise ctx.fail(f"pads needs {2 * x.rank} entries (all begins, then all ends)")
    shape = tuple(dim_add(d, pads[i] + pads[i + x.rank]) for i, d in enumerate(x.shape))
    return TensorType(x.dtype, shape)


def _pad_ref(x, pads, value):
    r = x.ndim
    return np.pad(x, [(pads[i], pads[i + r]) for i in range(r)], constant_values=value)


def _pad_grad(c):
    x = c.x[0]
    r = x.rank
    pads = c.attrs["pads"]
    starts = tuple(pads[:r])
    ends = tuple(-p if p else 2**62 for p in pads[r:])
    return [c.b.slice(c.g, starts=starts, ends=ends, axes=tuple(range(r)))]


defop(
    "pad",
    attrs={"pads": Attr(tuple, doc="begins of every axis, then ends"), "value": Attr(float, 0.0)},
    infer=_pad_infer,
    reference=_pad_ref,
    lower=lambda e, n, x: e.op(
        "Pad", [x, e.ints(n.attrs["pads"]), e.scalar(n.attrs["value"], n.inputs[0])]
    ),
    grad=_pad_grad,
    category="tensor",
    doc="constant padding",
    test={
        "cases": [
            {"shapes": [[4, 5]], "attrs": {"pads": (0, 1, 0, 2), "value": 0.5}},
            {"shapes": [[2, 3, 4]], "attrs": {"pads": (0, 0, 1, 0, 2, 0)}},
        ],
        "grad": True,
    },
)


def _unsqueeze_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    axes = axes_of(ctx, ctx.attrs["axes"], x.rank + len(tuple(ctx.attrs["axes"])))
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return TensorType(x.dtype, tuple(shape))


defop(
    "unsqueeze",
    attrs={"axes": Attr(tuple)},
    infer=_unsqueeze_infer,
    reference=lambda x, axes: np.expand_dims(x, tuple(axes)),
    lower=lambda e, n, x: e.op("Unsqueeze", [x, e.ints(n.attrs["axes"])]),
    grad=lambda c: [c.b.reshape_like(c.g, c.x[0])],
    category="tensor",
    doc="insert size-1 axes",
    aliases={0: 0},
    test={
        "cases": [
            {"shapes": [[4, 5]], "attrs": {"axes": (1,)}},
            {"shapes": [[4, 5]], "attrs": {"axes": (1, 3)}},
        ],
        "grad": True,
    },
)


def _squeeze_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    axes = axes_of(ctx, ctx.attrs["axes"], x.rank)
    for a in axes:
        if x.shape[a] != 1:
            raise ctx.fail(f"axis {a} of {x} has size {x.shape[a]}, not 1")
    return TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))


defop(
    "squeeze",
    attrs={"axes": Attr(tuple)},
    infer=_squeeze_infer,
    reference=lambda x, axes: np.squeeze(x, tuple(axes)),
    lower=lambda e, n, x: e.op("Squeeze", [x, e.ints(n.attrs["axes"])]),
    grad=lambda c: [c.b.reshape_like(c.g, c.x[0])],
    category="tensor",
    doc="drop size-1 axes",
    aliases={0: 0},
    test={
        "cases": [
            {"shapes": [[4, 1, 5]], "attrs": {"axes": (1,)}},
            {"shapes": [[4, 1, 5, 1]], "attrs": {"axes": (1, -1)}},
        ],
        "grad": True,
    },
)


def _broadcast_to_infer(ctx: InferCtx) -> TensorType:
    x, like = ctx.inputs
    if broadcast(x.shape, like.shape) != tuple(like.shape):
        raise ctx.fail(f"{x} does not broadcast to the shape of {like}")
    return TensorType(x.dtype, like.shape)


defop(
    "broadcast_to",
    inputs=("x", "like"),
    infer=_broadcast_to_infer,
    reference=lambda x, like: np.broadcast_to(x, like.shape).copy(),
    lower=lambda e, n, x, like: e.op("Expand", [x, e.op("Shape", [like])]),
    grad=lambda c: [c.g, None],
    category="tensor",
    doc="x repeated to like's shape (the autodiff driver sums the gradient back)",
    test={
        "cases": [{"shapes": [[1, 5], [4, 5]]}, {"shapes": [[3, 1], [2, 3, 4]]}],
        "batch": False,
        "grad": True,
    },
)


def _one_hot_infer(ctx: InferCtx) -> TensorType:
    x = ctx.inputs[0]
    if x.dtype not in ("int64", "int32"):
        raise ctx.fail(f"labels must be integers, got {x}")
    return TensorType(ctx.attrs["dtype"], x.shape + (ctx.attrs["depth"],))


def _one_hot_ref(x, depth, dtype):
    return np.eye(depth, dtype=dtype)[x]


def label_column(e, labels: str, label_type: TensorType) -> str:
    """Integer labels as int64 with a new last axis (GatherElements indices, one-hot rows)."""
    if label_type.dtype != "int64":
        labels = e.op("Cast", [labels], to=e.onnx_dtype("int64"))
    return e.op("Unsqueeze", [labels, e.ints([label_type.rank])])


def one_hot_nodes(e, labels: str, label_type: TensorType, depth: int, dtype: str) -> str:
    """labels == arange(depth) along a new last axis, as `dtype`.

    Equal against arange rather than ONNX OneHot: ORT's OneHot has no float64
    kernel. Every lowering that needs a one-hot of some labels spells it with
    these same nodes (int64 labels, a non-negative axis, one arange constant),
    so ONNX Runtime's CSE keeps one: the training step's loss gradient and
    accuracy count share theirs."""
    hit = e.op("Equal", [label_column(e, labels, label_type), e.ints(range(depth))])
    return e.op("Cast", [hit], to=e.onnx_dtype(dtype))


def _one_hot_lower(e, n, x):
    return one_hot_nodes(e, x, e.type(n.inputs[0]), n.attrs["depth"], n.attrs["dtype"])


defop(
    "one_hot",
    attrs={"depth": Attr(int), "dtype": Attr(str, "float32")},
    infer=_one_hot_infer,
    reference=_one_hot_ref,
    lower=_one_hot_lower,
    grad=lambda c: [None],
    category="tensor",
    doc="integer labels to one-hot rows",
    test={
        "cases": [
            {"shapes": [[5]], "dtypes": ["int64"], "attrs": {"depth": 4}},
            {"shapes": [[2, 3]], "dtypes": ["int64"], "attrs": {"depth": 4, "dtype": "float64"}},
        ],
        "int_high": 4,
        "grad": "integer input",
    },
)
