"""Normalization layers: batch, layer, instance and group norm.

Each is a composite: `decompose` spells it in primitives (reduce_mean, sub,
mul, div, sqrt, reshape), so autodiff differentiates through the batch
statistics without a hand-written rule. Batch, layer and instance norm also
have a direct lowering to the fused ONNX op, which export prefers; group norm
is lowered through its decomposition because ONNX GroupNormalization changed
meaning between opsets 18 and 21 (per-group vs per-channel affine).

Statistics use the biased variance (mean of squared deviations), as every
framework does for the normalization itself.
"""

from __future__ import annotations

import numpy as np

from graphc.ir import TensorType
from graphc.ops.common import elementwise_flops
from graphc.ops.registry import Attr, InferCtx, ParamSpec, defop
from graphc.shapes import fmt_shape

EPS = {"eps": Attr(float, 1e-5, doc="added to the variance before the square root")}
AFFINE = {"affine": Attr(bool, True, doc="learn a per-feature scale (weight) and shift (bias)")}


def _affine_specs(shape_fn) -> tuple[ParamSpec, ParamSpec]:
    return (
        ParamSpec("weight", shape_fn, "ones", "vec", when=lambda a: a["affine"]),
        ParamSpec("bias", shape_fn, "zeros", "vec", when=lambda a: a["affine"]),
    )


def _split_affine(params, affine: bool):
    """(weight, bias, rest) from a node's parameter inputs (weight/bias absent without affine)."""
    params = list(params)
    if affine:
        return params[0], params[1], params[2:]
    return None, None, params


def _check_common(ctx: InferCtx, min_rank: int, what: str) -> TensorType:
    x = ctx.need_float(0)
    if x.rank < min_rank:
        raise ctx.fail(f"the input must be {what}, got {x} (rank {x.rank})")
    if ctx.attrs["eps"] <= 0:
        raise ctx.fail(
            f"eps must be positive, got {ctx.attrs['eps']}",
            hint="a small value such as 1e-5 keeps the square root away from 0",
        )
    return x


def _channels(ctx: InferCtx) -> int:
    # parameter shapes are read before the shape rule runs, so check the rank here too
    if ctx.x.rank < 2:
        raise ctx.fail(
            f"the input must be [N, C] or [N, C, *spatial], got {ctx.x} (rank {ctx.x.rank})"
        )
    c = ctx.x.shape[1]
    if not isinstance(c, int):
        raise ctx.fail(
            f"the channel dim (axis 1) of {ctx.x} must be a fixed size, got '{c}'",
            hint="per-channel parameters need a known channel count",
        )
    return c


def _per_channel_np(v: np.ndarray, rank: int) -> np.ndarray:
    """A [C] vector shaped to broadcast over [N, C, *spatial]."""
    return v.reshape((-1,) + (1,) * (rank - 2))


def _per_channel(b, v, rank: int):
    return v if rank == 2 else b.reshape(v, shape=(-1,) + (1,) * (rank - 2))


def _normalize(b, x, axes: tuple[int, ...], eps: float):
    """(x - mean) / sqrt(var + eps) over `axes`, plus the batch mean and biased variance."""
    mean = b.reduce_mean(x, axes=axes, keepdims=True)
    xc = x - mean
    var = b.reduce_mean(b.square(xc), axes=axes, keepdims=True)
    return xc / b.sqrt(var + eps), mean, var


def _normalize_np(x: np.ndarray, axes: tuple[int, ...], eps: float):
    mean = x.mean(axis=axes, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    return xc / np.sqrt(var + eps), mean, var


def _norm_flops(per_element: int):
    return lambda ctx, outs: per_element * elementwise_flops(ctx, outs[:1])


# ---------------------------------------------------------------- batch norm
# Running statistics follow the Keras/ONNX convention:
#     running = momentum * running + (1 - momentum) * batch_statistic
# so momentum=0.9 keeps 90% of the old value (PyTorch's momentum=0.1 is the
# same update). The running variance is updated with the *unbiased* batch
# variance (n / (n - 1) times the biased one, n = elements per channel), as
# PyTorch does; the normalization itself uses the biased variance.


def _per_channel_shape(ctx: InferCtx) -> tuple[int]:
    return (_channels(ctx),)


def _bn_params() -> tuple[ParamSpec, ...]:
    return (
        *_affine_specs(_per_channel_shape),
        ParamSpec("running_mean", _per_channel_shape, "zeros", "vec", state=True),
        ParamSpec("running_var", _per_channel_shape, "ones", "vec", state=True),
    )


def _bn_infer(ctx: InferCtx):
    x = _check_common(ctx, 2, "[N, C] or [N, C, *spatial]")
    m = ctx.attrs["momentum"]
    if not 0.0 <= m <= 1.0:
        raise ctx.fail(
            f"momentum must be in [0, 1], got {m}",
            hint="running = momentum * running + (1 - momentum) * batch; "
            "0.9 or 0.99 are usual (PyTorch's 0.1 is 0.9 here)",
        )
    if ctx.attrs["training"]:
        stat = TensorType(x.dtype, (_channels(ctx),))
        return [x, stat, stat]
    return x


def _stat_axes(rank: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, rank))


def _unbiased_factor_np(x: np.ndarray) -> float:
    n = x.size // x.shape[1]
    return n / max(n - 1, 1)


def _bn_ref(x, *params, momentum, eps, training, affine):
    w, b, (rm, rv) = _split_affine(params, affine)
    r = x.ndim
    if training:
        y, mean, var = _normalize_np(x, _stat_axes(r), eps)
        mean, var = mean.reshape(-1), var.reshape(-1)
    else:
        y = (x - _per_channel_np(rm, r)) / np.sqrt(_per_channel_np(rv, r) + eps)
    if affine:
        y = y * _per_channel_np(w, r) + _per_channel_np(b, r)
    y = y.astype(x.dtype)
    if not training:
        return y
    new_rm = momentum * rm + (1.0 - momentum) * mean
    new_rv = momentum * rv + (1.0 - momentum) * (var * _unbiased_factor_np(x))
    return y, new_rm.astype(x.dtype), new_rv.astype(x.dtype)


def _bn_decompose(b, node, x, *params):
    a = node.attrs
    w, bias, (rm, rv) = _split_affine(params, a["affine"])
    r = x.rank
    if a["training"]:
        y, mean, var = _normalize(b, x, _stat_axes(r), a["eps"])
    else:
        y = (x - _per_channel(b, rm, r)) / b.sqrt(_per_channel(b, rv, r) + a["eps"])
    if a["affine"]:
        y = y * _per_channel(b, w, r) + _per_channel(b, bias, r)
    if not a["training"]:
        return y
    mean_c = b.reshape_like(mean, rm)
    var_c = b.reshape_like(var, rv)
    n = b.numel_ratio(x, rm)  # elements per channel, also for a symbolic batch size
    unbiased = var_c * (n / b.maximum(n - 1.0, b.ones_like(n)))
    m = a["momentum"]
    return [y, rm * m + mean_c * (1.0 - m), rv * m + unbiased * (1.0 - m)]


def _bn_lower(e, node, x, *params):
    a = node.attrs
    w, bias, (rm, rv) = _split_affine(params, a["affine"])
    r = e.type(node.inputs[0]).rank
    c = e.type(node.inputs[-1]).shape[0]
    if not a["affine"]:
        dt = e.type(node.inputs[0]).dtype
        w, bias = e.const(np.ones(c, dt)), e.const(np.zeros(c, dt))
    if not a["training"]:
        return e.op("BatchNormalization", [x, w, bias, rm, rv], epsilon=a["eps"])
    # ONNX's own training mode updates the running variance with the biased
    # variance; ours is unbiased, so the training form is spelled out.
    axes = e.ints(_stat_axes(r))
    mean = e.op("ReduceMean", [x, axes], keepdims=1)
    xc = e.op("Sub", [x, mean])
    var = e.op("ReduceMean", [e.op("Mul", [xc, xc]), axes], keepdims=1)
    std = e.op("Sqrt", [e.op("Add", [var, e.scalar(a["eps"], x)])])
    y = e.op("Div", [xc, std])
    if a["affine"]:
        shape = e.ints((c,) + (1,) * (r - 2))
        y = e.op(
            "Add", [e.op("Mul", [y, e.op("Reshape", [w, shape])]), e.op("Reshape", [bias, shape])]
        )
    flat = e.ints((c,))
    mean_c = e.op("Reshape", [mean, flat])
    var_c = e.op("Reshape", [var, flat])
    dt = e.onnx_dtype(e.type(node.inputs[0]).dtype)
    n = e.op(
        "Div", [e.op("Cast", [e.op("Size", [x])], to=dt), e.op("Cast", [e.op("Size", [rm])], to=dt)]
    )
    one = e.scalar(1.0, x)
    factor = e.op("Div", [n, e.op("Max", [e.op("Sub", [n, one]), one])])
    m, keep = e.scalar(a["momentum"], x), e.scalar(1.0 - a["momentum"], x)

    def update(old, new):
        return e.op("Add", [e.op("Mul", [old, m]), e.op("Mul", [new, keep])])

    return [y, update(rm, mean_c), update(rv, e.op("Mul", [var_c, factor]))]


defop(
    "batch_norm",
    inputs=("x",),
    attrs={
        "momentum": Attr(float, 0.9, doc="running = momentum*running + (1-momentum)*batch"),
        **EPS,
        "training": Attr(bool, False, doc="batch statistics and running-stat update"),
        **AFFINE,
    },
    params=_bn_params(),
    infer=_bn_infer,
    reference=_bn_ref,
    decompose=_bn_decompose,
    lower=_bn_lower,
    n_outputs=lambda attrs: 3 if attrs["training"] else 1,
    training_only=True,
    category="normalization",
    flops=_norm_flops(4),
    key_attrs=("momentum",),
    doc="batch normalization over every axis but 1 ([N, C] or [N, C, *spatial]). "
    "Evaluation uses the running statistics; training uses the batch mean and biased "
    "variance and also returns the new running mean and variance (outputs :1, :2), "
    "updated Keras-style: running = momentum*running + (1-momentum)*batch, with the "
    "unbiased batch variance for the running variance (as PyTorch).",
    test={
        "cases": [
            {"shapes": [[6, 3]], "attrs": {}},
            {"shapes": [[4, 3, 5, 5]], "attrs": {"momentum": 0.8}},
            {"shapes": [[6, 3]], "attrs": {"training": True}},
            {"shapes": [[4, 2, 3, 3]], "attrs": {"training": True, "affine": False}},
        ],
        "grad": True,
    },
)

# ---------------------------------------------------------------- layer norm


def _ln_axis(axis: int, rank: int) -> int | None:
    return axis + rank if -rank <= axis < 0 else (axis if 0 <= axis < rank else None)


def _ln_shape(ctx: InferCtx):
    x = ctx.x
    axis = _ln_axis(ctx.attrs["axis"], x.rank)
    if axis is None:
        raise ctx.fail(f"axis {ctx.attrs['axis']} is out of range for {x}")
    shape = tuple(x.shape[axis:])
    if not all(isinstance(d, int) for d in shape):
        raise ctx.fail(
            f"the normalized dims {fmt_shape(shape)} of {x} must be fixed sizes",
            hint="weight and bias span them; normalize only over fixed-size dims",
        )
    return shape


def _ln_infer(ctx: InferCtx):
    x = _check_common(ctx, 1, "at least rank 1")
    _ln_shape(ctx)
    return x


def _ln_ref(x, *params, axis, eps, affine):
    w, b, _ = _split_affine(params, affine)
    axes = tuple(range(axis % x.ndim, x.ndim))
    y, _, _ = _normalize_np(x, axes, eps)
    if affine:
        y = y * w + b
    return y.astype(x.dtype)


def _ln_decompose(b, node, x, *params):
    a = node.attrs
    w, bias, _ = _split_affine(params, a["affine"])
    y, _, _ = _normalize(b, x, tuple(range(a["axis"] % x.rank, x.rank)), a["eps"])
    return y * w + bias if a["affine"] else y


def _ln_lower(e, node, x, *params):
    a = node.attrs
    t = e.type(node.inputs[0])
    w, bias, _ = _split_affine(params, a["affine"])
    if t.dtype != "float32":
        # ORT computes LayerNormalization's statistics in float32 (stash_type)
        # whatever the input type, which loses float64 precision: use primitives.
        return _lower_normalize(e, x, tuple(range(a["axis"] % t.rank, t.rank)), a["eps"], w, bias)
    if not a["affine"]:
        shape = t.shape[a["axis"] % t.rank :]
        w = e.const(np.ones(shape, t.dtype))
        bias = e.const(np.zeros(shape, t.dtype))
    return e.op("LayerNormalization", [x, w, bias], axis=a["axis"], epsilon=a["eps"])


def _lower_normalize(e, x, axes, eps, w=None, bias=None, param_shape=None):
    """(x - mean) / sqrt(var + eps) [* w + bias] in ONNX primitives."""
    ax = e.ints(axes)
    mean = e.op("ReduceMean", [x, ax], keepdims=1)
    xc = e.op("Sub", [x, mean])
    var = e.op("ReduceMean", [e.op("Mul", [xc, xc]), ax], keepdims=1)
    y = e.op("Div", [xc, e.op("Sqrt", [e.op("Add", [var, e.scalar(eps, x)])])])
    if w:
        if param_shape is not None:
            w = e.op("Reshape", [w, e.ints(param_shape)])
            bias = e.op("Reshape", [bias, e.ints(param_shape)])
        y = e.op("Add", [e.op("Mul", [y, w]), bias])
    return y


defop(
    "layer_norm",
    inputs=("x",),
    attrs={
        "axis": Attr(int, -1, doc="normalize over dims axis..last (-1: the last dim)"),
        **EPS,
        **AFFINE,
    },
    params=_affine_specs(_ln_shape),
    infer=_ln_infer,
    reference=_ln_ref,
    decompose=_ln_decompose,
    lower=_ln_lower,
    category="normalization",
    flops=_norm_flops(6),
    key_attrs=("axis",),
    doc="layer normalization: each sample normalized over dims axis..last, then scaled and "
    "shifted by weight/bias of those dims' shape",
    test={
        "cases": [
            {"shapes": [[4, 6]], "attrs": {}},
            {"shapes": [[2, 3, 4]], "attrs": {"axis": -2}},
            {"shapes": [[3, 5]], "attrs": {"affine": False, "eps": 1e-3}},
        ],
        "grad": True,
    },
)

# ------------------------------------------------------------- instance norm


def _in_infer(ctx: InferCtx):
    x = _check_common(ctx, 3, "[N, C, *spatial] with at least one spatial dim")
    _channels(ctx)
    return x


def _in_ref(x, *params, eps, affine):
    w, b, _ = _split_affine(params, affine)
    y, _, _ = _normalize_np(x, tuple(range(2, x.ndim)), eps)
    if affine:
        y = y * _per_channel_np(w, x.ndim) + _per_channel_np(b, x.ndim)
    return y.astype(x.dtype)


def _in_decompose(b, node, x, *params):
    a = node.attrs
    w, bias, _ = _split_affine(params, a["affine"])
    y, _, _ = _normalize(b, x, tuple(range(2, x.rank)), a["eps"])
    if a["affine"]:
        y = y * _per_channel(b, w, x.rank) + _per_channel(b, bias, x.rank)
    return y


def _in_lower(e, node, x, *params):
    a = node.attrs
    t = e.type(node.inputs[0])
    w, bias, _ = _split_affine(params, a["affine"])
    if t.dtype != "float32":
        # ORT's InstanceNormalization kernel is float32 (and float16 on CUDA) only
        return _lower_normalize(
            e,
            x,
            tuple(range(2, t.rank)),
            a["eps"],
            w,
            bias,
            param_shape=(-1,) + (1,) * (t.rank - 2),
        )
    if not a["affine"]:
        c = t.shape[1]
        w, bias = e.const(np.ones(c, t.dtype)), e.const(np.zeros(c, t.dtype))
    return e.op("InstanceNormalization", [x, w, bias], epsilon=a["eps"])


defop(
    "instance_norm",
    inputs=("x",),
    attrs={**EPS, **AFFINE},
    params=_affine_specs(_per_channel_shape),
    infer=_in_infer,
    reference=_in_ref,
    decompose=_in_decompose,
    lower=_in_lower,
    category="normalization",
    flops=_norm_flops(6),
    doc="instance normalization: each (sample, channel) normalized over its spatial dims; "
    "per-channel weight/bias",
    test={
        "cases": [
            {"shapes": [[2, 3, 4, 4]], "attrs": {}},
            {"shapes": [[3, 2, 5]], "attrs": {"affine": False}},
        ],
        "grad": True,
    },
)

# ---------------------------------------------------------------- group norm


def _gn_infer(ctx: InferCtx):
    x = _check_common(ctx, 2, "[N, C] or [N, C, *spatial]")
    c, g = _channels(ctx), ctx.attrs["groups"]
    if g < 1 or c % g:
        raise ctx.fail(
            f"groups={g} must be a positive divisor of the {c} channels of {x}",
            hint="divisors of "
            + str(c)
            + ": "
            + ", ".join(str(d) for d in range(1, c + 1) if c % d == 0),
        )
    return x


def _gn_ref(x, *params, groups, eps, affine):
    w, b, _ = _split_affine(params, affine)
    xg = x.reshape(x.shape[0], groups, -1)
    y, _, _ = _normalize_np(xg, (2,), eps)
    y = y.reshape(x.shape)
    if affine:
        y = y * _per_channel_np(w, x.ndim) + _per_channel_np(b, x.ndim)
    return y.astype(x.dtype)


def _gn_decompose(b, node, x, *params):
    a = node.attrs
    w, bias, _ = _split_affine(params, a["affine"])
    xg = b.reshape(x, shape=(0, a["groups"], -1))
    y, _, _ = _normalize(b, xg, (2,), a["eps"])
    y = b.reshape_like(y, x)
    if a["affine"]:
        y = y * _per_channel(b, w, x.rank) + _per_channel(b, bias, x.rank)
    return y


defop(
    "group_norm",
    inputs=("x",),
    attrs={"groups": Attr(int, doc="number of channel groups (divides C)"), **EPS, **AFFINE},
    params=_affine_specs(_per_channel_shape),
    infer=_gn_infer,
    reference=_gn_ref,
    decompose=_gn_decompose,
    category="normalization",
    flops=_norm_flops(6),
    key_attrs=("groups",),
    doc="group normalization: channels split into `groups`, each (sample, group) normalized "
    "over its channels and spatial dims; per-channel weight/bias (groups=C is instance "
    "norm, groups=1 is layer norm over C and spatial dims)",
    test={
        "cases": [
            {"shapes": [[2, 6, 3, 3]], "attrs": {"groups": 3}},
            {"shapes": [[4, 4]], "attrs": {"groups": 2, "affine": False}},
        ],
        "grad": True,
    },
)
