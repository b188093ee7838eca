"""Fused ops the optimizer forms (graphc.passes): Gemm and the softmax cross-entropy kernels.

Nobody writes these in a model file; the fusion passes build them from the
primitives autodiff emits, because each maps to one standard ONNX op (or a
short stable expression) instead of a chain of small ones.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import elementwise_flops
from graphc.ops.losses import REDUCTION
from graphc.ops.registry import Attr, InferCtx, NotDifferentiable, defop
from graphc.ops.tensor import label_column, one_hot_nodes
from graphc.shapes import broadcast, fmt_shape, is_static

FUSED_BACKWARD = NotDifferentiable(
    "a backward kernel formed by fusion; differentiate the unfused graph for higher derivatives"
)

# ---------------------------------------------------------------------- gemm


def _gemm_infer(ctx: InferCtx) -> TensorType:
    a, b = ctx.need_rank(0, 2), ctx.need_rank(1, 2)
    if a.dtype != b.dtype:
        raise ctx.fail(f"inputs have different dtypes: {a} and {b}")
    m, k = (a.shape[1], a.shape[0]) if ctx.attrs["transA"] else a.shape
    k2, n = (b.shape[1], b.shape[0]) if ctx.attrs["transB"] else b.shape
    if k != k2:
        raise ctx.fail(f"inner dimensions differ: {k} vs {k2}")
    c = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    if c is not None and broadcast(c.shape, (m, n)) != (m, n):
        raise ctx.fail(f"C {fmt_shape(c.shape)} does not broadcast to {fmt_shape((m, n))}")
    return TensorType(a.dtype, (m, n))


def _gemm_ref(a, b, c=None, *, transA, transB, alpha, beta):
    y = alpha * ((a.T if transA else a) @ (b.T if transB else b))
    return (y + beta * c if c is not None else y).astype(a.dtype)


def _gemm_grad(c):
    a, b = c.x[0], c.x[1]
    ta, tb, alpha = c.attrs["transA"], c.attrs["transB"], c.attrs["alpha"]
    g = c.g
    gm = c.b.gemm
    if ta:  # A is [K, M]: dA = alpha * op(B) @ G^T
        ga = gm(b, g, transA=tb, transB=True, alpha=alpha) if c.needs(0) else None
    else:  # dA = alpha * G @ op(B)^T
        ga = gm(g, b, transB=not tb, alpha=alpha) if c.needs(0) else None
    if tb:  # B is [N, K]: dB = alpha * G^T @ op(A)
        gb = gm(g, a, transA=True, transB=ta, alpha=alpha) if c.needs(1) else None
    else:  # dB = alpha * op(A)^T @ G
        gb = gm(a, g, transA=not ta, alpha=alpha) if c.needs(1) else None
    out = [ga, gb]
    if len(c.x) > 2 and c.x[2] is not None:
        beta = c.attrs["beta"]
        out.append((g if beta == 1.0 else g * beta) if c.needs(2) else None)
    return out


def _gemm_lower(e, n, a, b, c=None):
    at = n.attrs
    return e.op(
        "Gemm",
        [a, b] + ([c] if c else []),
        transA=int(at["transA"]),
        transB=int(at["transB"]),
        alpha=float(at["alpha"]),
        beta=float(at["beta"]),
    )


def _gemm_flops(ctx: InferCtx, outs) -> int:
    from graphc.shapes import concrete

    a = ctx.inputs[0]
    k = a.shape[0] if ctx.attrs["transA"] else a.shape[1]
    k = concrete((k,), default=1)[0]
    return 2 * k * int(np.prod(concrete(outs[0].shape, default=1)))


defop(
    "gemm",
    inputs=("a", "b", "c?"),
    attrs={
        "transA": Attr(bool, False, doc="use a transposed"),
        "transB": Attr(bool, False, doc="use b transposed"),
        "alpha": Attr(float, 1.0),
        "beta": Attr(float, 1.0),
    },
    infer=_gemm_infer,
    reference=_gemm_ref,
    lower=_gemm_lower,
    grad=_gemm_grad,
    flops=_gemm_flops,
    category="math",
    key_attrs=("transA", "transB"),
    doc="alpha * op(a) @ op(b) + beta * c, op = optional transpose (formed by fuse_gemm)",
    test={
        "cases": [
            {"shapes": [[4, 3], [3, 5], [5]], "attrs": {}},
            {"shapes": [[3, 4], [5, 3]], "attrs": {"transA": True, "transB": True, "alpha": 0.5}},
            {"shapes": [[4, 3], [5, 3], [4, 5]], "attrs": {"transB": True, "beta": 2.0}},
        ],
        "batch": False,
        "grad": True,
    },
)

# ------------------------------------------------------------ batch sums


def _batch_sum_infer(ctx: InferCtx) -> TensorType:
    x, like = ctx.inputs
    if x.rank < 1 or like.rank < 1 or x.shape[0] != like.shape[0]:
        raise ctx.fail(f"x and like need the same leading (batch) dim, got {x} and {like}")
    if not is_static(x.shape[1:]):
        raise ctx.fail(f"the sizes after the batch dim must be fixed, got {x}")
    return TensorType(x.dtype, x.shape[1:])


def _batch_sum_lower(e, n, x, like):
    xt, lt = e.type(n.inputs[0]), e.type(n.inputs[1])
    if isinstance(lt.shape[0], int):
        ones = e.const(np.ones(lt.shape[0], dtype=xt.dtype))
    else:  # from like's batch size: one ConstantOfShape per `like`, which ORT's CSE shares
        size = e.op("Shape", [like], start=0, end=1)
        one = np.ones(1, dtype=xt.dtype)
        ones = e.op("ConstantOfShape", [size], value=e.tensor(one))
    if xt.rank <= 2:
        return e.op("MatMul", [ones, x])  # [N] @ [N, C]: a GEMV in MLAS
    rows = e.op("MatMul", [ones, e.op("Reshape", [x, e.ints([0, -1])])])
    return e.op("Reshape", [rows, e.ints(list(xt.shape[1:]))])


def _batch_sum_grad(c):
    g = c.b.unsqueeze(c.g, axes=(0,))
    return [c.b.broadcast_to(g, c.x[0]), None]


defop(
    "batch_sum",
    inputs=("x", "like"),
    infer=_batch_sum_infer,
    reference=lambda x, like: x.sum(axis=0).astype(x.dtype),
    lower=_batch_sum_lower,
    grad=_batch_sum_grad,
    category="math",
    doc="x summed over its leading (batch) axis as ones[N] @ x, the ones sized by like's "
    "batch dim (formed by sum_batch_as_gemv)",
    test={
        "cases": [
            {"shapes": [[4, 3], [4, 2]], "attrs": {}},
            {"shapes": [[4], [4, 5]], "attrs": {}},
            {"shapes": [[4, 2, 3], [4]], "attrs": {}},
        ],
        "batch": True,
        "grad": True,
    },
)

# ------------------------------------------------------------ masked products


def _masked_infer(ctx: InferCtx) -> TensorType:
    x, mask = ctx.inputs
    if mask.dtype != "bool":
        raise ctx.fail(f"the mask must be bool, got {mask}")
    if x.dtype not in ("float32", "float64"):
        raise ctx.fail(f"x must be float, got {x}")
    if mask.shape != x.shape:
        raise ctx.fail(f"the mask {fmt_shape(mask.shape)} differs from x {fmt_shape(x.shape)}")
    return x


def _masked_lower(e, n, x, mask):
    dtype = e.onnx_dtype(e.type(n.inputs[0]).dtype)
    return e.op("Mul", [x, e.op("Cast", [mask], to=dtype)])


defop(
    "masked",
    inputs=("x", "mask"),
    infer=_masked_infer,
    reference=lambda x, mask: x * mask.astype(x.dtype),
    lower=_masked_lower,
    grad=lambda c: [c.b.masked(c.g, c.x[1]) if c.needs(0) else None, None],
    category="math",
    doc="x * mask as x's dtype: relu's gradient with its mask kept as bool until the "
    "product (formed by simplify's mask_multiply; run as Cast + Mul, faster than Where in "
    "ONNX Runtime's CPU kernels)",
    flops=elementwise_flops,
    test={
        "cases": [{"shapes": [[4, 5], [4, 5]], "dtypes": ["float", "bool"]}],
        "grad": True,
    },
)

# ----------------------------------------------------- softmax cross-entropy


def _onehot_np(target, like):
    if target.dtype.kind in "iu":
        return np.eye(like.shape[1], dtype=like.dtype)[target]
    return target


def _log_softmax_np(x):
    s = x - x.max(axis=1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=1, keepdims=True))


def _reduce_np(v, reduction):
    return v.mean() if reduction == "mean" else v.sum() if reduction == "sum" else v


def _sce_infer(ctx: InferCtx) -> list[TensorType]:
    from graphc.ops.registry import get_op

    loss = get_op("cross_entropy").infer(ctx)
    return [loss, ctx.inputs[0]]


def _sce_ref(logits, target, reduction):
    logp = _log_softmax_np(logits)
    nll = -(_onehot_np(target, logits) * logp).sum(axis=1)
    return np.asarray(_reduce_np(nll, reduction), logits.dtype), logp.astype(logits.dtype)


def _sce_lower(e, n, logits, target):
    red = n.attrs["reduction"]
    logp = e.op("LogSoftmax", [logits], axis=1)
    if e.type(n.inputs[1]).dtype in ("int64", "int32"):
        # the label's log-probability picked by index. Not ONNX SoftmaxCrossEntropyLoss:
        # ORT runs that as its function body, eleven nodes where these are five
        rows = label_column(e, target, e.type(n.inputs[1]))
        picked = e.op("GatherElements", [logp, rows], axis=1)
        if red == "none":
            return [e.op("Neg", [e.op("Squeeze", [picked, e.ints([1])])]), logp]
        total = e.op("ReduceMean" if red == "mean" else "ReduceSum", [picked], keepdims=0)
        return [e.op("Neg", [total]), logp]
    nll = e.op("Neg", [e.op("ReduceSum", [e.op("Mul", [target, logp]), e.ints([1])], keepdims=0)])
    if red == "none":
        return [nll, logp]
    return [e.op("ReduceMean" if red == "mean" else "ReduceSum", [nll], keepdims=0), logp]


def _sce_grad(c):
    _logits, target = c.x
    out = None
    if c.gy[0] is not None:
        out = c.b.softmax_cross_entropy_grad(
            c.gy[0], c.y[1], target, reduction=c.attrs["reduction"]
        )
    if c.gy[1] is not None:  # log-probabilities used elsewhere: log_softmax's own rule
        g1 = c.gy[1]
        part = g1 - c.b.exp(c.y[1]) * c.b.reduce_sum(g1, axes=(1,), keepdims=True)
        out = part if out is None else out + part
    return [out, None]


defop(
    "softmax_cross_entropy",
    inputs=("logits", "target"),
    attrs=dict(REDUCTION),
    infer=_sce_infer,
    reference=_sce_ref,
    lower=_sce_lower,
    grad=_sce_grad,
    n_outputs=2,
    category="losses",
    doc="cross_entropy that also returns log-probabilities (formed by fuse_softmax_cross_entropy)",
    test={
        "cases": [
            {"shapes": [[4, 5], [4]], "dtypes": ["float", "int64"], "attrs": {}},
            {"shapes": [[4, 5], [4]], "dtypes": ["float", "int64"], "attrs": {"reduction": "sum"}},
            {"shapes": [[4, 5], [4]], "dtypes": ["float", "int32"], "attrs": {"reduction": "none"}},
        ],
        "int_high": 5,
        "grad": True,
    },
)


def _sce_grad_infer(ctx: InferCtx) -> TensorType:
    g, logp, _target = ctx.inputs
    want = logp.shape[:1] if ctx.attrs["reduction"] == "none" else ()
    if tuple(g.shape) != tuple(want):
        raise ctx.fail(f"the loss gradient must have shape {fmt_shape(want)}, got {g}")
    return logp


def _sce_grad_ref(g, logp, target, reduction):
    scale = g / logp.shape[0] if reduction == "mean" else g
    scale = scale[:, None] if reduction == "none" else scale
    return ((np.exp(logp) - _onehot_np(target, logp)) * scale).astype(logp.dtype)


def _sce_grad_lower(e, n, g, logp, target):
    red = n.attrs["reduction"]
    dt = e.type(n.inputs[1]).dtype
    tdt = e.type(n.inputs[2]).dtype
    if tdt in ("int64", "int32"):
        depth = int(e.type(n.inputs[1]).shape[1])
        target = one_hot_nodes(e, target, e.type(n.inputs[2]), depth, dt)
    diff = e.op("Sub", [e.op("Exp", [logp]), target])
    if red == "mean":
        rows = e.op("Cast", [e.op("Shape", [logp], start=0, end=1)], to=e.onnx_dtype(dt))
        g = e.op("Div", [g, rows])
    elif red == "none":
        g = e.op("Unsqueeze", [g, e.ints([1])])
    return e.op("Mul", [diff, g])


defop(
    "softmax_cross_entropy_grad",
    inputs=("dloss", "logp", "target"),
    attrs=dict(REDUCTION),
    infer=_sce_grad_infer,
    reference=_sce_grad_ref,
    lower=_sce_grad_lower,
    grad=FUSED_BACKWARD,
    category="losses",
    doc="d(cross_entropy)/d(logits) = (softmax - onehot) * dloss / N",
    test={
        "cases": [
            {"shapes": [[], [4, 5], [4]], "dtypes": ["float", "float", "int64"], "attrs": {}}
        ],
        "int_high": 5,
        "batch": False,
        "grad": "a backward kernel formed by fusion; the fused forward op is gradient-checked",
    },
)

# ------------------------------------------- flat buffers (optimizer-update fusion)


def _flatten_concat_infer(ctx: InferCtx) -> TensorType:
    from graphc.shapes import dim_add, numel

    dtypes = {t.dtype for t in ctx.inputs}
    if len(dtypes) != 1:
        raise ctx.fail("inputs have different dtypes: " + ", ".join(map(str, ctx.inputs)))
    total = 0
    for t in ctx.inputs:
        total = dim_add(total, numel(t.shape))
    return TensorType(ctx.inputs[0].dtype, (total,))


def _flatten_concat_lower(e, n, *xs):
    flat = [
        x if e.type(v).rank == 1 else e.op("Reshape", [x, e.ints([-1])])
        for x, v in zip(xs, n.inputs)
    ]
    return flat[0] if len(flat) == 1 else e.op("Concat", flat, axis=0)


defop(
    "flatten_concat",
    inputs=("xs*",),
    infer=_flatten_concat_infer,
    reference=lambda *xs: np.concatenate([x.reshape(-1) for x in xs]),
    lower=_flatten_concat_lower,
    grad=lambda c: [
        c.b.reshape_like(part, x)
        for part, x in zip(
            _as_list(c.b.unflatten(c.g, shapes=tuple(tuple(x.shape) for x in c.x))), c.x
        )
    ],
    category="tensor",
    doc="every input flattened and joined into one vector "
    "(the flat buffer of fuse_optimizer_update)",
    test={"cases": [{"shapes": [[2, 3], [4]], "attrs": {}}], "batch": False, "grad": True},
)


def _as_list(t):
    return list(t) if isinstance(t, (tuple, list)) else [t]


def _unflatten_infer(ctx: InferCtx) -> list[TensorType]:
    x = ctx.need_rank(0, 1)
    shapes = ctx.attrs["shapes"]
    total = sum(int(np.prod(s)) for s in shapes)
    if isinstance(x.shape[0], int) and x.shape[0] != total:
        raise ctx.fail(f"the vector has {x.shape[0]} elements, the shapes need {total}")
    return [TensorType(x.dtype, tuple(s)) for s in shapes]


def _unflatten_ref(x, shapes):
    out, start = [], 0
    for s in shapes:
        k = int(np.prod(s))
        out.append(x[start : start + k].reshape(s))
        start += k
    return tuple(out)


def _unflatten_lower(e, n, x):
    shapes = n.attrs["shapes"]
    sizes = [int(np.prod(s)) for s in shapes]
    parts = (
        [x] if len(shapes) == 1 else e.op("Split", [x, e.ints(sizes)], outputs=len(shapes), axis=0)
    )
    return [
        p if len(s) == 1 else e.op("Reshape", [p, e.ints(list(s))]) for p, s in zip(parts, shapes)
    ]


def _unflatten_grad(c):
    parts = [gy if gy is not None else c.b.zeros_like(y) for gy, y in zip(c.gy, c.y)]
    return [c.b.flatten_concat(*parts)]


defop(
    "unflatten",
    inputs=("x",),
    attrs={"shapes": Attr(tuple, doc="shape of each part")},
    n_outputs=lambda a: len(a["shapes"]),
    infer=_unflatten_infer,
    reference=_unflatten_ref,
    lower=_unflatten_lower,
    grad=_unflatten_grad,
    category="tensor",
    doc="split a vector into consecutive parts of the given static shapes",
    test={
        "cases": [{"shapes": [[10]], "attrs": {"shapes": ((2, 3), (4,))}}],
        "batch": False,
        "grad": True,
    },
)

# ----------------------------------------------------------------- recomputation


def _barrier_lower(e, n, x, after=None):
    dt = e.type(n.inputs[0])
    if not after or dt.rank == 0:
        return e.op("Or" if dt.dtype == "bool" else "Max", [x, x])
    # Where(false, first element of `after`, x): x, but only once `after` exists
    first = e.op("Slice", [e.op("Reshape", [after, e.ints([-1])]), e.ints([0]), e.ints([1])])
    if e.type(n.inputs[1]).dtype != dt.dtype:
        first = e.op("Cast", [first], to=e.onnx_dtype(dt.dtype))
    if dt.dtype == "bool":  # ORT has no bool Where: x or (first and false)
        return e.op("Or", [x, e.op("And", [first, e.const(np.asarray(False))])])
    return e.op("Where", [e.const(np.asarray(False)), first, x])


defop(
    "recompute_barrier",
    inputs=("x", "after?"),
    infer=lambda c: c.inputs[0],
    reference=lambda x, after=None: x.copy(),
    # Max(x, x) / Where(false, ., x) is x; unlike Identity, ONNX Runtime keeps it, so the
    # recomputed copies behind it are never merged back by ORT's own CSE. `after`
    # (a gradient the recomputation is for) is a pure ordering edge: ONNX has no
    # control dependencies, and ORT's depth-first order would otherwise run the
    # recomputation as early as its inputs allow, undoing the saving.
    lower=_barrier_lower,
    grad=lambda c: [c.g, None],
    category="tensor",
    doc="x unchanged, available only after `after`: where a recomputed segment starts",
    test={
        "cases": [{"shapes": [[3, 4]], "attrs": {}}, {"shapes": [[3, 4], [2, 5]], "attrs": {}}],
        "batch": False,
        "grad": True,
    },
)

# ------------------------------------------- binary cross-entropy on logits, backward


def _bce_grad_scale_np(g, z, reduction):
    per = int(np.prod(z.shape[1:])) if z.ndim > 1 else 1
    if reduction == "mean":
        return g / (per * z.shape[0])
    if reduction == "sum":
        return g / per
    return g.reshape((-1,) + (1,) * (z.ndim - 1)) / per


def _bce_grad_ref(g, z, t, reduction):
    s = 1.0 / (1.0 + np.exp(-z))
    return ((s - t) * _bce_grad_scale_np(g, z, reduction)).astype(z.dtype)


def _bce_grad_infer(ctx: InferCtx) -> TensorType:
    g, z, t = ctx.inputs
    want = z.shape[:1] if ctx.attrs["reduction"] == "none" else ()
    if tuple(g.shape) != tuple(want) or z.shape != t.shape:
        raise ctx.fail(f"expected dloss {fmt_shape(want)} and z, t of one shape; got {g}, {z}, {t}")
    return z


def _bce_grad_lower(e, n, g, z, t):
    zt = e.type(n.inputs[1])
    red = n.attrs["reduction"]
    diff = e.op("Sub", [e.op("Sigmoid", [z]), t])
    per = e.op("Cast", [e.op("Size", [z])], to=e.onnx_dtype(zt.dtype))  # N * M
    if red == "mean":
        return e.op("Mul", [diff, e.op("Div", [g, per])])
    rows = e.op("Cast", [e.op("Shape", [z], start=0, end=1)], to=e.onnx_dtype(zt.dtype))
    m = e.op("Div", [per, rows])  # elements per example
    if red == "none":
        g = e.op("Reshape", [g, e.ints([-1] + [1] * (zt.rank - 1))])
    return e.op("Mul", [diff, e.op("Div", [g, m])])


defop(
    "binary_cross_entropy_logits_grad",
    inputs=("dloss", "z", "t"),
    attrs=dict(REDUCTION),
    infer=_bce_grad_infer,
    reference=_bce_grad_ref,
    lower=_bce_grad_lower,
    grad=FUSED_BACKWARD,
    category="losses",
    doc="d(binary_cross_entropy(z, t, from_logits))/dz = (sigmoid(z) - t) * dloss / n",
    test={
        "cases": [
            {"shapes": [[], [4, 3], [4, 3]], "attrs": {}},
            {"shapes": [[4], [4, 3], [4, 3]], "attrs": {"reduction": "none"}},
        ],
        "batch": False,
        "grad": "a backward kernel formed by fusion; the unfused loss is gradient-checked",
    },
)
