"""Loss functions. Each reduces over the batch (mean by default) to a scalar.

Losses are composites: the decomposition into primitives gives the gradient
for free, and the optimizer's fusion passes re-form the stable fused kernels.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, defop
from graphc.shapes import fmt_shape

REDUCTION = {"reduction": Attr(str, "mean", choices=("mean", "sum", "none"),
                               doc="how per-example losses combine")}


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
        raise ctx.fail(f"prediction and target differ: {p} vs {t}",
                       hint="the target must have the prediction's shape and dtype")
    if ctx.attrs["reduction"] == "none":
        return TensorType(p.dtype, p.shape[:1])
    return TensorType(p.dtype, ())


def _per_example(b, elementwise):
    """Mean over every axis but the batch axis."""
    if elementwise.rank <= 1:
        return elementwise
    return b.reduce_mean(elementwise, axes=tuple(range(1, elementwise.rank)))


def _per_example_np(v):
    return v.reshape(v.shape[0], -1).mean(axis=1) if v.ndim > 1 else v


defop("mse", inputs=("pred", "target"), attrs=dict(REDUCTION), infer=_pair_infer,
      reference=lambda p, t, reduction: np.asarray(
          _reduce_np(_per_example_np((p - t) ** 2), reduction), p.dtype),
      decompose=lambda b, n, p, t: _reduce(b, _per_example(b, b.square(p - t)),
                                           n.attrs["reduction"]),
      category="losses", doc="mean squared error")


def _cross_entropy_infer(ctx: InferCtx) -> TensorType:
    logits, target = ctx.inputs
    ctx.need_float(0)
    if logits.rank != 2:
        raise ctx.fail(f"logits must be [batch, classes], got {logits}")
    if target.dtype in ("int64", "int32"):
        if target.shape != logits.shape[:1]:
            raise ctx.fail(f"integer labels must be [batch], got {fmt_shape(target.shape)} for "
                           f"logits {fmt_shape(logits.shape)}")
    elif target.shape != logits.shape or target.dtype != logits.dtype:
        raise ctx.fail(f"one-hot/probability targets must match the logits: {target} vs {logits}",
                       hint="or pass integer class labels of shape [batch]")
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


defop("cross_entropy", inputs=("logits", "target"), attrs=dict(REDUCTION),
      infer=_cross_entropy_infer, reference=_cross_entropy_ref, decompose=_cross_entropy_decompose,
      category="losses",
      doc="softmax cross-entropy from logits; target is integer labels [N] or one-hot [N, C]",
      test={"int_labels": True})
