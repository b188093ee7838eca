"""Loss functions. Each reduces over the batch (mean by default) to a scalar.

Losses are composites: the decomposition into primitives gives the gradient
for free, and the optimizer's fusion passes re-form the stable fused kernels.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.shapes import fmt_shape

REDUCTION = {
    "reduction": Attr(
        str, "mean", choices=("mean", "sum", "none"), doc="how per-example losses combine"
    )
}


def _reduce(b, per_example, reduction):
    if reduction == "mean":
        return b.reduce_mean(per_example)
    if reduction == "sum":
        return b.reduce_sum(per_example)
    return per_example


def _reduce_np(v, reduction):
    return v.mean() if reduction == "mean" else v.sum() if reduction == "sum" else v


def _pair_infer(ctx: InferCtx) -> TensorType:
    p, t = ctx.inputs
    ctx.need_float(0)
    if p.shape != t.shape or p.dtype != t.dtype:
        raise ctx.fail(
            f"prediction and target differ: {p} vs {t}",
            hint="the target must have the prediction's shape and dtype",
        )
    if ctx.attrs["reduction"] == "none":
        return TensorType(p.dtype, p.shape[:1])
    return TensorType(p.dtype, ())


_PAIR_TEST = {
    "cases": [
        {"shapes": [[4, 3], [4, 3]]},
        {"shapes": [[4], [4]], "attrs": {"reduction": "sum"}},
        {"shapes": [[2, 3, 2], [2, 3, 2]], "attrs": {"reduction": "none"}},
    ],
    "grad": True,
}


def _per_example(b, elementwise):
    """Mean over every axis but the batch axis."""
    if elementwise.rank <= 1:
        return elementwise
    return b.reduce_mean(elementwise, axes=tuple(range(1, elementwise.rank)))


def _per_example_np(v):
    return v.reshape(v.shape[0], -1).mean(axis=1) if v.ndim > 1 else v


defop(
    "mse",
    inputs=("pred", "target"),
    attrs=dict(REDUCTION),
    infer=_pair_infer,
    reference=lambda p, t, reduction: np.asarray(
        _reduce_np(_per_example_np((p - t) ** 2), reduction), p.dtype
    ),
    decompose=lambda b, n, p, t: _reduce(b, _per_example(b, b.square(p - t)), n.attrs["reduction"]),
    category="losses",
    doc="mean squared error",
    test=_PAIR_TEST,
)


defop(
    "mae",
    inputs=("pred", "target"),
    attrs=dict(REDUCTION),
    infer=_pair_infer,
    reference=lambda p, t, reduction: np.asarray(
        _reduce_np(_per_example_np(np.abs(p - t)), reduction), p.dtype
    ),
    decompose=lambda b, n, p, t: _reduce(b, _per_example(b, b.abs(p - t)), n.attrs["reduction"]),
    category="losses",
    doc="mean absolute error",
    test=_PAIR_TEST,
)


def _cross_entropy_infer(ctx: InferCtx) -> TensorType:
    logits, target = ctx.inputs
    ctx.need_float(0)
    if logits.rank != 2:
        raise ctx.fail(f"logits must be [batch, classes], got {logits}")
    if target.dtype in ("int64", "int32"):
        if target.shape != logits.shape[:1]:
            raise ctx.fail(
                f"integer labels must be [batch], got {fmt_shape(target.shape)} for "
                f"logits {fmt_shape(logits.shape)}"
            )
    elif target.shape != logits.shape or target.dtype != logits.dtype:
        raise ctx.fail(
            f"one-hot/probability targets must match the logits: {target} vs {logits}",
            hint="or pass integer class labels of shape [batch]",
        )
    out = logits.shape[:1] if ctx.attrs["reduction"] == "none" else ()
    return TensorType(logits.dtype, out)


def _cross_entropy_ref(logits, target, reduction):
    s = logits - logits.max(axis=1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    if target.dtype.kind in "iu":
        target = np.eye(logits.shape[1], dtype=logits.dtype)[target]
    return np.asarray(_reduce_np(-(target * logp).sum(axis=1), reduction), logits.dtype)


def _cross_entropy_decompose(b, n, logits, target):
    logp = b.log_softmax(logits, axis=1)
    if target.dtype in ("int64", "int32"):
        target = b.one_hot(target, depth=logits.shape[1], dtype=logits.dtype)
    nll = -b.reduce_sum(target * logp, axes=(1,))
    return _reduce(b, nll, n.attrs["reduction"])


defop(
    "cross_entropy",
    inputs=("logits", "target"),
    attrs=dict(REDUCTION),
    infer=_cross_entropy_infer,
    reference=_cross_entropy_ref,
    decompose=_cross_entropy_decompose,
    category="losses",
    doc="softmax cross-entropy from logits; target is integer labels [N] or one-hot [N, C]",
    test={
        "cases": [
            {"shapes": [[4, 3], [4]], "dtypes": ["float", "int64"]},
            {"shapes": [[4, 3], [4, 3]], "attrs": {"reduction": "none"}},
            {"shapes": [[4, 3], [4]], "dtypes": ["float", "int64"], "attrs": {"reduction": "sum"}},
        ],
        "int_high": 3,
        "grad": True,
    },
)


# ------------------------------------------------------------ binary cross-entropy
# Clipping keeps log() finite when a probability reaches 0 or 1 (float32/float64).
PROB_EPS = 1e-7


def _bce_ref(p, t, from_logits, reduction):
    if from_logits:
        # max(z, 0) - z t + log(1 + e^-|z|): never exponentiates a positive number
        v = np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))
    else:
        q = np.clip(p, PROB_EPS, 1 - PROB_EPS)
        v = -(t * np.log(q) + (1 - t) * np.log(1 - q))
    return np.asarray(_reduce_np(_per_example_np(v), reduction), p.dtype)


def _bce_decompose(b, n, p, t):
    if n.attrs["from_logits"]:
        v = b.relu(p) - p * t + b.softplus(-b.abs(p))
    else:
        q = b.clip(p, min=PROB_EPS, max=1 - PROB_EPS)
        v = -(t * b.log(q) + (1.0 - t) * b.log(1.0 - q))
    return _reduce(b, _per_example(b, v), n.attrs["reduction"])


defop(
    "binary_cross_entropy",
    inputs=("pred", "target"),
    attrs={
        "from_logits": Attr(bool, True, doc="pred is a logit (True) or a probability"),
        **REDUCTION,
    },
    infer=_pair_infer,
    reference=_bce_ref,
    decompose=_bce_decompose,
    category="losses",
    key_attrs=("from_logits",),
    doc="binary cross-entropy, target in [0, 1]; from logits z: max(z, 0) - z t + "
    "log(1 + e^-|z|); from probabilities p: -(t log p + (1 - t) log(1 - p)) with p "
    f"clipped to [{PROB_EPS}, 1 - {PROB_EPS}]",
    test={
        "cases": [
            {"shapes": [[4, 3], [4, 3]], "ranges": [None, [0.0, 1.0]]},
            {"shapes": [[4], [4]], "ranges": [None, [0.0, 1.0]], "attrs": {"reduction": "none"}},
            {
                "shapes": [[4, 3], [4, 3]],
                "ranges": [[0.05, 0.95], [0.0, 1.0]],
                "attrs": {"from_logits": False},
            },
            {
                "shapes": [[2, 3, 2], [2, 3, 2]],
                "ranges": [[0.05, 0.95], [0.0, 1.0]],
                "attrs": {"from_logits": False, "reduction": "sum"},
            },
        ],
        "grad": True,
    },
)


# ------------------------------------------------------------------------ hinge
def _hinge_ref(p, t, reduction):
    v = np.maximum(0, 1 - t * p)
    return np.asarray(_reduce_np(_per_example_np(v), reduction), p.dtype)


defop(
    "hinge",
    inputs=("pred", "target"),
    attrs=dict(REDUCTION),
    infer=_pair_infer,
    reference=_hinge_ref,
    decompose=lambda b, n, p, t: _reduce(
        b, _per_example(b, b.relu(1.0 - t * p)), n.attrs["reduction"]
    ),
    category="losses",
    doc="binary hinge loss max(0, 1 - t * pred) for targets t in {-1, +1} (not {0, 1}: "
    "map labels with 2 t - 1)",
    test={
        "cases": [
            {"shapes": [[4, 3], [4, 3]]},
            {"shapes": [[4], [4]], "attrs": {"reduction": "none"}},
        ],
        "grad": True,
    },
)


def _multiclass_hinge_infer(ctx: InferCtx) -> TensorType:
    scores, labels = ctx.inputs
    ctx.need_float(0)
    if scores.rank != 2:
        raise ctx.fail(f"scores must be [batch, classes], got {scores}")
    if labels.dtype not in ("int64", "int32") or labels.shape != scores.shape[:1]:
        raise ctx.fail(
            f"labels must be integer class indices of shape [batch], got {labels} "
            f"for scores {fmt_shape(scores.shape)}"
        )
    return TensorType(scores.dtype, scores.shape[:1] if ctx.attrs["reduction"] == "none" else ())


def _multiclass_hinge_ref(s, y, margin, reduction):
    rows = np.arange(s.shape[0])
    m = np.maximum(0, margin + s - s[rows, y][:, None])
    m[rows, y] = 0
    return np.asarray(_reduce_np(m.sum(axis=1), reduction), s.dtype)


def _multiclass_hinge_decompose(b, n, s, y):
    hot = b.one_hot(y, depth=s.shape[1], dtype=s.dtype)
    true_score = b.reduce_sum(s * hot, axes=(1,), keepdims=True)
    margins = b.relu(s - true_score + n.attrs["margin"]) * (1.0 - hot)
    return _reduce(b, b.reduce_sum(margins, axes=(1,)), n.attrs["reduction"])


defop(
    "multiclass_hinge",
    inputs=("scores", "labels"),
    attrs={
        "margin": Attr(float, 1.0, doc="required gap between the true and other scores"),
        **REDUCTION,
    },
    infer=_multiclass_hinge_infer,
    reference=_multiclass_hinge_ref,
    decompose=_multiclass_hinge_decompose,
    category="losses",
    doc="multiclass SVM (Weston-Watkins) loss from integer labels y: "
    "sum over j != y of max(0, margin + s_j - s_y)",
    test={
        "cases": [
            {"shapes": [[4, 3], [4]], "dtypes": ["float", "int64"]},
            {
                "shapes": [[4, 5], [4]],
                "dtypes": ["float", "int64"],
                "attrs": {"reduction": "none", "margin": 0.5},
            },
        ],
        "int_high": 3,
        "grad": True,
    },
)
