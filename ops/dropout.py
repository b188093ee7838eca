"""Dropout, with a counter-based random mask that ONNX Runtime and NumPy agree on bit for bit.

ONNX's Dropout and RandomUniformLike draw from a generator hidden in the
session: with a fixed `seed` attribute every step gets the same mask, without
one the stream depends on the session and cannot be replayed. So the mask
here is a pure function of (element index, seed, stream), computed with
standard int64 ops (Range, Mul, Div, BitwiseAnd, BitwiseXor, GreaterOrEqual;
ONNX Runtime's CPU provider has all of them, the tests run them; on CUDA any
without a kernel falls back to the CPU): the training-step builder feeds the
step count as `seed`, a resumed run draws exactly the masks it would have
drawn, and the NumPy reference reproduces ORT's mask exactly, so tests compare
values, not statistics.

The hash keeps every value below 2**31, so products of two of them stay below
2**62 and never overflow int64 (no reliance on wrap-around, which ONNX leaves
unspecified). Each round is a bijection on [0, 2**31): xor with a right shift
(spelled as division by a power of two, since ONNX BitShift is unsigned-only)
and multiplication by an odd constant modulo 2**31 (a bit mask), in the style
of the well-known 32-bit integer hash by Thomas Mueller. The mask is
h(h(i) ^ h(h(seed) ^ stream)) >= rate * 2**31 for the row-major element index
i; tensors of 2**31 elements or more repeat the index pattern.
"""

from __future__ import annotations

import zlib

import numpy as np

from graphc.errors import GraphError
from graphc.ir import TensorType
from graphc.ops.common import elementwise_flops
from graphc.ops.registry import Attr, InferCtx, defop

MOD = 2**31
_MUL1 = 0x45D9F3B  # odd, < 2**31: multiplication by it permutes [0, 2**31)
_MUL2 = 0x2C1B3C6D
_ROUNDS = ((16, _MUL1), (15, _MUL2))


def stream_of(node_name: str) -> int:
    """The default stream id of a dropout node: a hash of its name, in [0, 2**31)."""
    return zlib.crc32(node_name.encode()) & (MOD - 1)


def threshold(rate: float) -> int:
    """Hash values below this are dropped: P(drop) = threshold / 2**31 = rate (to 2**-31)."""
    return round(rate * MOD)


def mix_np(x: np.ndarray) -> np.ndarray:
    """One application of the hash to int64 values in [0, 2**31)."""
    x = np.asarray(x, dtype=np.int64)
    for shift, mul in _ROUNDS:
        x = x ^ (x >> shift)
        x = (x * mul) % MOD
    return x ^ (x >> 16)


def keep_mask_np(
    shape: tuple[int, ...], seed: int | np.ndarray, stream: int, rate: float
) -> np.ndarray:
    """The boolean keep-mask that `dropout_mask` computes, in NumPy."""
    idx = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape) % MOD
    s = np.asarray(seed, dtype=np.int64).reshape(()) % MOD
    c = mix_np(mix_np(s) ^ np.int64(stream))
    return mix_np(mix_np(idx) ^ c) >= threshold(rate)


def _low31(e, x: str) -> str:
    """x mod 2**31 (floor mod, also for negative x: two's complement makes it a bit mask)."""
    return e.op("BitwiseAnd", [x, e.const(np.asarray(MOD - 1, np.int64))])


def _mix_onnx(e, x: str) -> str:
    for shift, mul in _ROUNDS:
        x = e.op("BitwiseXor", [x, e.op("Div", [x, e.const(np.asarray(2**shift, np.int64))])])
        x = _low31(e, e.op("Mul", [x, e.const(np.asarray(mul, np.int64))]))
    return e.op("BitwiseXor", [x, e.op("Div", [x, e.const(np.asarray(2**16, np.int64))])])


def _scale(rate: float) -> float:
    return 1.0 / (1.0 - rate)


def _resolved_stream(attrs: dict) -> int:
    stream = attrs["stream"]
    if stream is None:
        raise GraphError(
            "dropout stream id is unset; infer the graph first",
            hint="graphc.infer.infer(graph) derives it from the node name",
        )
    return stream


def _check_rate(ctx: InferCtx) -> None:
    rate = ctx.attrs["rate"]
    if not 0.0 <= rate < 1.0:
        raise ctx.fail(
            f"rate must be in [0, 1), got {rate}",
            hint="rate is the fraction of units dropped; 0.1 to 0.5 are usual",
        )
    stream = ctx.attrs["stream"]
    if stream is not None and not 0 <= stream < MOD:
        raise ctx.fail(f"stream must be in [0, 2**31), got {stream}")


def _check_seed(ctx: InferCtx) -> None:
    seed = ctx.inputs[1] if len(ctx.inputs) > 1 else None
    if seed is None:
        return
    if seed.dtype not in ("int64", "int32") or seed.shape not in ((), (1,)):
        raise ctx.fail(
            f"the seed must be an int64 scalar, got {seed}",
            hint="feed the step count (the training-step builder does this)",
        )


def _seed_onnx(e, node, seed: str) -> str:
    if not seed:
        return e.const(np.asarray(0, np.int64))
    if e.type(node.inputs[1]).dtype != "int64":
        seed = e.op("Cast", [seed], to=e.onnx_dtype("int64"))
    return e.op("Reshape", [seed, e.ints([])])  # [1] -> scalar, as in keep_mask_np


# ----------------------------------------------------------- the mask itself


def _resolve_stream(ctx: InferCtx) -> None:
    if ctx.attrs["stream"] is None:
        # Reference implementations see attributes, not node names, so the
        # per-node stream is fixed here, once, for every stage to read: two
        # dropout layers fed the same seed then draw independent masks.
        ctx.attrs["stream"] = stream_of(ctx.node)


def _mask_infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    _check_rate(ctx)
    _check_seed(ctx)
    _resolve_stream(ctx)
    return x


def _mask_ref(like, seed=0, *, rate, stream, rng=None):
    keep = keep_mask_np(like.shape, seed, _resolved_stream({"stream": stream}), rate)
    return keep.astype(like.dtype) * like.dtype.type(_scale(rate))


def _mask_lower(e, node, like, seed=""):
    a = node.attrs
    zero, one = e.const(np.asarray(0, np.int64)), e.const(np.asarray(1, np.int64))
    idx = e.op("Range", [zero, e.op("Size", [like]), one])
    idx = _low31(e, e.op("Reshape", [idx, e.op("Shape", [like])]))
    s = _low31(e, _seed_onnx(e, node, seed))
    c = _mix_onnx(
        e, e.op("BitwiseXor", [_mix_onnx(e, s), e.const(np.asarray(_resolved_stream(a), np.int64))])
    )
    h = _mix_onnx(e, e.op("BitwiseXor", [_mix_onnx(e, idx), c]))
    keep = e.op("GreaterOrEqual", [h, e.const(np.asarray(threshold(a["rate"]), np.int64))])
    dt = e.type(node.inputs[0]).dtype
    return e.op(
        "Mul",
        [e.op("Cast", [keep], to=e.onnx_dtype(dt)), e.const(np.asarray(_scale(a["rate"]), dt))],
    )


defop(
    "dropout_mask",
    inputs=("like", "seed?"),
    attrs={
        "rate": Attr(float, 0.5, doc="probability that an element is 0"),
        "stream": Attr(
            int,
            None,
            doc="stream id in [0, 2**31): masks with different "
            "streams are independent; default: a hash of the "
            "node name, fixed when the node is inferred",
            implied=lambda name: stream_of(name),
        ),
    },
    infer=_mask_infer,
    reference=_mask_ref,
    lower=_mask_lower,
    grad=lambda c: [None, None],
    random=True,
    category="random",
    flops=lambda ctx, outs: 30 * elementwise_flops(ctx, outs),
    key_attrs=("rate",),
    doc="inverted-dropout mask of like's shape: 1/(1-rate) where kept, 0 where dropped; a "
    "pure function of (element index, seed, stream) (counter-based, reproducible); "
    "no gradient flows to like (only its shape is read)",
    test={
        "cases": [{"shapes": [[8, 5]], "attrs": {"rate": 0.3, "stream": 7}}],
        "grad": "a random mask: piecewise constant, zero gradient",
    },
)

# -------------------------------------------------------------------- dropout


def _dropout_infer(ctx: InferCtx) -> TensorType:
    x = ctx.need_float(0)
    _check_rate(ctx)
    _check_seed(ctx)
    _resolve_stream(ctx)
    return x


def _dropout_ref(x, seed=0, *, rate, training, stream, rng=None):
    if not training or rate == 0.0:
        return x
    return x * _mask_ref(x, seed, rate=rate, stream=stream)


def _dropout_decompose(b, node, x, seed=None):
    a = node.attrs
    if not a["training"] or a["rate"] == 0.0:
        return x
    args = [x] if seed is None else [x, seed]
    return x * b.dropout_mask(*args, rate=a["rate"], stream=_resolved_stream(a))


defop(
    "dropout",
    inputs=("x", "seed?"),
    attrs={
        "rate": Attr(float, 0.5, doc="fraction of units dropped in training"),
        "training": Attr(bool, False, doc="drop and rescale (training) or pass through"),
        "stream": Attr(
            int,
            None,
            doc="mask stream id in [0, 2**31); default: a hash of "
            "the node name, fixed when the node is inferred",
            implied=lambda name: stream_of(name),
        ),
    },
    infer=_dropout_infer,
    reference=_dropout_ref,
    decompose=_dropout_decompose,
    training_only=True,
    random=True,
    category="regularization",
    flops=lambda ctx, outs: (31 if ctx.attrs["training"] else 0) * elementwise_flops(ctx, outs),
    key_attrs=("rate",),
    doc="inverted dropout: in training, each element is zeroed with probability `rate` and "
    "the rest scaled by 1/(1-rate); in evaluation, the identity. The mask is a "
    "counter-based hash of (element index, seed, stream): feed the step count as the "
    "optional int64 `seed` input for a fresh, replayable mask every step (without it the "
    "seed is 0 and every step draws the same mask). The gradient is multiplied by the "
    "same mask.",
    test={
        "cases": [
            {"shapes": [[8, 6]], "attrs": {"rate": 0.25}},
            {"shapes": [[8, 6]], "attrs": {"rate": 0.25, "training": True}},
            {"shapes": [[4, 3, 5]], "attrs": {"rate": 0.5, "training": True}},
        ],
        "grad": True,
    },
)
