"""Normalization layers and dropout: ONNX Runtime vs NumPy, in evaluation and training.

- forward: ORT equals the NumPy reference in both modes (float32 and float64,
  symbolic batch), and the fused ONNX ops are used where they exist;
- batch norm's running statistics follow the documented update, checked
  against a formula written out here (not the op's own reference);
- gradients in training mode (through the batch statistics) equal central
  finite differences of the NumPy forward in float64;
- PyTorch (when installed) agrees on forward values, gradients and the running
  statistics;
- dropout: evaluation is the identity, the training mask drops about `rate`,
  scales the rest by 1/(1-rate), is the same mask in the gradient, is equal
  for equal seeds and different for different seeds/layers, and ORT's mask is
  the NumPy hash's mask bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphc.autodiff import grad
from graphc.builder import Builder
from graphc.errors import GraphError
from graphc.export import export
from graphc.interp import evaluate
from graphc.ir import Graph
from graphc.lowering import expand_composites
from graphc.ops.dropout import keep_mask_np, stream_of
from graphc.runtime import make_session, run

NORM_CASES = [
    ("batch_norm", (6, 4), {}),
    ("batch_norm", (5, 3, 4, 4), {"momentum": 0.8}),
    ("batch_norm", (4, 3, 5), {"affine": False}),
    ("layer_norm", (4, 6), {}),
    ("layer_norm", (3, 2, 4, 5), {"axis": -2}),
    ("layer_norm", (4, 7), {"affine": False, "eps": 1e-3}),
    ("instance_norm", (3, 4, 5, 5), {}),
    ("instance_norm", (2, 3, 6), {"affine": False}),
    ("group_norm", (3, 6, 4, 4), {"groups": 3}),
    ("group_norm", (4, 8), {"groups": 2}),
    ("group_norm", (2, 4, 5), {"groups": 4, "affine": False}),
]


def _build(op: str, shape, attrs: dict, dtype: str, *, symbolic: bool = True):
    """One normalization node `n` on input `x` (batch dim symbolic); returns (graph, outputs)."""
    b = Builder(Graph("t", dtype=dtype))
    x = b.input("x", ("N",) + tuple(shape[1:]) if symbolic else shape, dtype)
    outs = b.op(op, x, name="n", **attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    b.output(*outs)
    return b, outs


def _set_params(g: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Non-trivial parameter values (ones and zeros would hide a swapped weight and bias)."""
    out = {}
    for name, p in g.params.items():
        if name.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, p.shape)
        else:
            v = rng.normal(0.0, 0.7, p.shape) + (1.0 if name.endswith("weight") else 0.0)
        p.value = out[name] = v.astype(p.dtype)
    return out


def _ort(model, feeds: dict) -> dict[str, np.ndarray]:
    sess = make_session(model, threads=1)
    # parameters exported as inputs with defaults are "overridable initializers" to ORT
    wanted = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    return run(sess, {k: v for k, v in feeds.items() if k in wanted})


# ----------------------------------------------------------------- forward


# only batch norm behaves differently in training
FORWARD_CASES = [(op, shape, attrs, False) for op, shape, attrs in NORM_CASES] + [
    (op, shape, attrs, True) for op, shape, attrs in NORM_CASES if op == "batch_norm"
]


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
@pytest.mark.parametrize("op,shape,attrs,training", FORWARD_CASES)
def test_forward_matches_reference(op, shape, attrs, training, dtype, tol):
    attrs = dict(attrs, training=True) if training else attrs
    b, _outs = _build(op, shape, attrs, dtype)
    g = b.graph
    rng = np.random.default_rng(1)
    params = _set_params(g, rng)
    x = rng.normal(1.0, 2.0, shape).astype(dtype)
    got = _ort(export(g, params_as_inputs=True), {"x": x, **params})
    ref = evaluate(g, {"x": x}, outputs=g.outputs, params=params)
    assert len(g.outputs) == (3 if training else 1)
    for name in g.outputs:
        assert got[name].dtype == np.dtype(dtype) and got[name].shape == ref[name].shape
        np.testing.assert_allclose(got[name], ref[name], rtol=tol, atol=tol, err_msg=name)
    y = got["n"].astype(np.float64)
    if not attrs.get("affine", True) and op != "batch_norm":
        # independent of the reference: the normalized groups have mean 0
        axes = {
            "layer_norm": tuple(range(attrs.get("axis", -1) % len(shape), len(shape))),
            "instance_norm": tuple(range(2, len(shape))),
        }.get(op)
        if axes is not None:
            np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-5)


@pytest.mark.parametrize("op,shape,attrs,training", FORWARD_CASES)
def test_decomposition_matches_fused_lowering(op, shape, attrs, training):
    """The primitives autodiff differentiates compute what the exported fused op computes."""
    attrs = dict(attrs, training=True) if training else attrs
    b, _outs = _build(op, shape, attrs, "float64")
    g = b.graph
    rng = np.random.default_rng(10)
    params = _set_params(g, rng)
    feeds = {"x": rng.normal(1.0, 2.0, shape), **params}
    expanded = expand_composites(g)
    assert not any(n.op == op for n in expanded.nodes.values())
    fused = _ort(export(g, params_as_inputs=True), feeds)
    prims = _ort(export(expanded, params_as_inputs=True), feeds)
    for name in g.outputs:
        np.testing.assert_allclose(prims[name], fused[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_eval_and_training_batch_norm_differ_and_eval_uses_running_stats():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, (8, 3)).astype(np.float64)
    results = {}
    for training in (False, True):
        b, _outs = _build("batch_norm", x.shape, {"training": training}, "float64")
        g = b.graph
        rm, rv = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
        g.params["n.running_mean"].value, g.params["n.running_var"].value = rm, rv
        results[training] = _ort(export(g), {"x": x})["n"]
    # weight 1, bias 0 (initial values): eval is (x - running_mean) / sqrt(running_var + eps)
    np.testing.assert_allclose(results[False], (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-12)
    # training normalizes with the batch statistics instead
    want = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5)
    np.testing.assert_allclose(results[True], want, rtol=1e-10, atol=1e-12)


def test_fused_onnx_ops_are_used_where_they_exist():
    def op_types(op, shape, attrs, dtype="float32"):
        b, _ = _build(op, shape, attrs, dtype)
        return {n.op_type for n in export(b.graph).graph.node}

    assert "BatchNormalization" in op_types("batch_norm", (4, 3, 2, 2), {})
    assert "BatchNormalization" not in op_types("batch_norm", (4, 3), {"training": True})
    assert "LayerNormalization" in op_types("layer_norm", (4, 6), {})
    assert "InstanceNormalization" in op_types("instance_norm", (2, 3, 4), {})
    # group norm goes through primitives (GroupNormalization changed meaning across opsets)
    assert "GroupNormalization" not in op_types("group_norm", (2, 4, 3), {"groups": 2})


# ------------------------------------------------------- running statistics


@pytest.mark.parametrize("shape", [(7, 3), (4, 3, 5, 2)])
def test_running_statistics_update(shape):
    """running = momentum * running + (1 - momentum) * batch; unbiased variance for the var."""
    momentum = 0.7
    b, (_y, new_mean, new_var) = _build(
        "batch_norm", shape, {"training": True, "momentum": momentum}, "float64"
    )
    g = b.graph
    rng = np.random.default_rng(3)
    params = _set_params(g, rng)
    x = rng.normal(2.0, 3.0, shape)
    got = _ort(export(g, params_as_inputs=True), {"x": x, **params})
    per_channel = np.moveaxis(x, 1, 0).reshape(shape[1], -1)
    mean, var = per_channel.mean(axis=1), per_channel.var(axis=1, ddof=1)
    want_mean = momentum * params["n.running_mean"] + (1 - momentum) * mean
    want_var = momentum * params["n.running_var"] + (1 - momentum) * var
    np.testing.assert_allclose(got[new_mean.name], want_mean, rtol=1e-12)
    np.testing.assert_allclose(got[new_var.name], want_var, rtol=1e-12)
    assert (new_mean.name, new_var.name) == ("n:1", "n:2")


def test_running_statistics_with_a_single_value_per_channel_stay_finite():
    # n = 1: the unbiased variance is undefined; the factor n/max(n-1, 1) keeps it at 0
    b, _outs = _build("batch_norm", (1, 2), {"training": True}, "float64")
    got = _ort(export(b.graph), {"x": np.array([[1.0, 2.0]])})
    assert all(np.isfinite(v).all() for v in got.values())
    np.testing.assert_allclose(got["n:2"], 0.9 * np.ones(2))


# ---------------------------------------------------------------- gradients


def _fd_check(
    g: Graph,
    loss: str,
    feeds: dict,
    params: dict,
    wrt: list[str],
    h: float = 1e-5,
    rtol: float = 1e-6,
) -> None:
    """Autodiff (run in ORT) vs central finite differences of the NumPy forward."""
    gg = grad(g, loss, wrt=wrt)
    got = _ort(export(gg, params_as_inputs=True), {**feeds, **params})
    values = {**feeds, **params}

    def f(vals):
        p = {k: v for k, v in vals.items() if k in params}
        fe = {k: v for k, v in vals.items() if k in feeds}
        return float(evaluate(g, fe, outputs=[loss], params=p)[loss])

    for target in wrt:
        base = values[target]
        num = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            for sign in (1, -1):
                v = base.copy()
                v[i] += sign * h
                num[i] += sign * f({**values, target: v}) / (2 * h)
        ana = got[gg.meta["grads"][target]]
        err = np.linalg.norm(ana - num) / max(np.linalg.norm(num), np.linalg.norm(ana), 1e-12)
        assert err <= rtol, f"d{loss}/d{target}: relative error {err:.2e}\n{ana}\n{num}"


GRAD_CASES = [
    ("batch_norm", (5, 3), {"training": True}),
    ("batch_norm", (3, 2, 3, 2), {"training": True, "momentum": 0.5}),
    ("batch_norm", (4, 3), {}),
    ("layer_norm", (3, 5), {}),
    ("layer_norm", (2, 3, 4), {"axis": -2}),
    ("instance_norm", (2, 3, 4), {}),
    ("group_norm", (2, 6, 3), {"groups": 3}),
    ("group_norm", (3, 4), {"groups": 2, "affine": False}),
]


@pytest.mark.parametrize("op,shape,attrs", GRAD_CASES)
def test_gradients_match_finite_differences(op, shape, attrs):
    b, outs = _build(op, shape, attrs, "float64", symbolic=False)
    rng = np.random.default_rng(4)
    weights = b.const(rng.normal(size=shape))  # a sum of y would have zero gradient wrt x
    loss = b.reduce_sum(b.square(outs[0]) * weights)
    b.minimize(loss)
    g = b.graph
    params = _set_params(g, rng)
    trainable = [k for k, p in g.params.items() if not p.state]
    _fd_check(g, loss.name, {"x": rng.normal(0.5, 1.5, shape)}, params, ["x", *trainable])


def test_running_statistics_are_not_gradient_targets():
    b, outs = _build("batch_norm", (4, 3), {"training": True}, "float64")
    b.minimize(b.reduce_sum(b.square(outs[0])))
    gg = grad(b.graph)
    assert set(gg.meta["grads"]) == {"n.weight", "n.bias"}


# -------------------------------------------------------------- vs PyTorch


@pytest.mark.parametrize(
    "op,shape,attrs",
    [
        ("batch_norm", (6, 3, 4), {"training": True, "momentum": 0.9}),
        ("batch_norm", (6, 3, 2, 2), {}),
        ("layer_norm", (4, 3, 5), {"axis": -2}),
        ("instance_norm", (3, 4, 5, 2), {}),
        ("group_norm", (3, 6, 5), {"groups": 2}),
    ],
)
def test_matches_pytorch(op, shape, attrs):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    b, outs = _build(op, shape, attrs, "float64", symbolic=False)
    rng = np.random.default_rng(5)
    r = rng.normal(size=shape)
    loss = b.reduce_sum(outs[0] * b.const(r))
    b.minimize(loss)
    g = b.graph
    params = _set_params(g, rng)
    x = rng.normal(1.0, 2.0, shape)
    wrt = ["x", "n.weight", "n.bias"]
    gg = grad(g, loss.name, wrt=wrt)
    got = _ort(export(gg, params_as_inputs=True), {"x": x, **params})

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(params["n.weight"], requires_grad=True)
    tb = torch.tensor(params["n.bias"], requires_grad=True)
    eps = 1e-5
    if op == "batch_norm":
        rm = torch.tensor(params["n.running_mean"])
        rv = torch.tensor(params["n.running_var"])
        # PyTorch's momentum weighs the batch statistic: ours 0.9 is its 0.1
        ty = F.batch_norm(
            tx, rm, rv, tw, tb, training=attrs.get("training", False), momentum=0.1, eps=eps
        )
    elif op == "layer_norm":
        k = -attrs["axis"]
        ty = F.layer_norm(tx, shape[-k:], tw, tb, eps)
    elif op == "instance_norm":
        ty = F.instance_norm(tx, weight=tw, bias=tb, eps=eps)
    else:
        ty = F.group_norm(tx, attrs["groups"], tw, tb, eps)
    (ty * torch.tensor(r)).sum().backward()
    np.testing.assert_allclose(got["n"], ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    for name, t in zip(wrt, (tx, tw, tb)):
        np.testing.assert_allclose(
            got[gg.meta["grads"][name]], t.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=name
        )
    if op == "batch_norm" and attrs.get("training"):
        np.testing.assert_allclose(got["n:1"], rm.numpy(), rtol=1e-12)  # updated in place
        np.testing.assert_allclose(got["n:2"], rv.numpy(), rtol=1e-12)


# ------------------------------------------------------------------- dropout


def _dropout_graph(
    shape,
    rate: float,
    training: bool,
    *,
    seed_input: bool = True,
    dtype: str = "float32",
    seed_dtype: str = "int64",
    layers: int = 1,
):
    b = Builder(Graph("d", dtype=dtype))
    x = b.input("x", shape, dtype)
    args = [x]
    if seed_input:
        args.append(b.input("seed", (), seed_dtype))
    outs = [b.dropout(*args, rate, training=training, name=f"drop{i}") for i in range(layers)]
    b.output(*outs)
    return b, outs


def test_dropout_eval_is_identity():
    b, (y,) = _dropout_graph((16, 8), 0.5, training=False)
    x = np.random.default_rng(6).normal(size=(16, 8)).astype(np.float32)
    got = _ort(export(b.graph), {"x": x, "seed": np.array(3)})
    np.testing.assert_array_equal(got[y.name], x)
    assert {n.op_type for n in export(b.graph).graph.node} == {"Identity"}


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_training_rate_scaling_and_exact_mask(rate):
    shape = (200, 100)
    b, (y,) = _dropout_graph(shape, rate, training=True)
    x = np.random.default_rng(7).uniform(1.0, 2.0, shape).astype(np.float32)  # never 0
    out = _ort(export(b.graph), {"x": x, "seed": np.array(11)})[y.name]
    dropped = out == 0
    n = dropped.size
    # binomial: 5 standard deviations
    assert abs(dropped.mean() - rate) <= 5 * np.sqrt(rate * (1 - rate) / n)
    scale = np.float32(1.0 / (1.0 - rate))
    np.testing.assert_array_equal(out[~dropped], x[~dropped] * scale)
    # the counter-based hash, recomputed in NumPy, gives the very same mask
    keep = keep_mask_np(shape, 11, stream_of("drop0"), rate)
    np.testing.assert_array_equal(~dropped, keep)


def test_dropout_masks_per_seed_and_per_layer():
    shape = (32, 64)
    b, (y0, y1) = _dropout_graph(shape, 0.5, training=True, layers=2)
    sess_model = export(b.graph)
    x = np.ones(shape, np.float32)
    a = _ort(sess_model, {"x": x, "seed": np.array(1)})
    again = _ort(sess_model, {"x": x, "seed": np.array(1)})
    other = _ort(sess_model, {"x": x, "seed": np.array(2)})
    np.testing.assert_array_equal(a[y0.name], again[y0.name])  # same seed, same mask
    # independent masks agree on about half of the elements
    for u, v in ((a[y0.name], other[y0.name]), (a[y0.name], a[y1.name])):
        agree = np.mean((u == 0) == (v == 0))
        assert 0.4 < agree < 0.6, agree
    assert b.graph.nodes["drop0"].attrs["stream"] != b.graph.nodes["drop1"].attrs["stream"]


def test_dropout_explicit_stream_and_the_mask_op():
    b = Builder(Graph("d"))
    x = b.input("x", (6, 5))
    s = b.input("seed", (), "int64")
    y = b.dropout(x, s, 0.5, training=True, stream=1234, name="d")
    m = b.dropout_mask(x, s, 0.5, name="m")  # default stream: from its own name
    b.output(y, m)
    assert b.graph.nodes["m"].attrs["stream"] == stream_of("m")
    got = _ort(export(b.graph), {"x": np.ones((6, 5), np.float32), "seed": np.array(4)})
    np.testing.assert_array_equal(got["d"] != 0, keep_mask_np((6, 5), 4, 1234, 0.5))
    np.testing.assert_array_equal(got["m"], 2.0 * keep_mask_np((6, 5), 4, stream_of("m"), 0.5))


def test_dropout_seed_edge_cases_match_numpy():
    shape = (6, 7)
    x = np.ones(shape, np.float32)
    for seed, dtype in ((-5, "int64"), (2**40 + 3, "int64"), (9, "int32")):
        b, (y,) = _dropout_graph(shape, 0.3, training=True, seed_dtype=dtype)
        got = _ort(export(b.graph), {"x": x, "seed": np.array(seed, dtype)})[y.name]
        want = keep_mask_np(shape, seed, stream_of("drop0"), 0.3)
        np.testing.assert_array_equal(got != 0, want, err_msg=f"seed {seed} ({dtype})")
    # no seed input: seed 0, the same mask on every run
    b, (y,) = _dropout_graph(shape, 0.3, training=True, seed_input=False)
    got = _ort(export(b.graph), {"x": x})[y.name]
    np.testing.assert_array_equal(got != 0, keep_mask_np(shape, 0, stream_of("drop0"), 0.3))


def test_dropout_gradient_uses_the_same_mask():
    shape = (10, 12)
    rate = 0.4
    b, (y,) = _dropout_graph(shape, rate, training=True, dtype="float64")
    rng = np.random.default_rng(8)
    w = rng.normal(size=shape)
    loss = b.reduce_sum(b.square(y) * b.const(w))
    b.minimize(loss)
    g = b.graph
    gg = grad(g, loss.name, wrt=["x"])
    x = rng.normal(size=shape)
    feeds = {"x": x, "seed": np.array(21)}
    got = _ort(export(gg), feeds)
    mask = keep_mask_np(shape, 21, stream_of("drop0"), rate) / (1.0 - rate)
    np.testing.assert_allclose(got[y.name], x * mask, rtol=1e-15)
    # d/dx sum(w * (x m)^2) = 2 w x m^2: zero exactly where the forward dropped
    np.testing.assert_allclose(got["x.grad"], 2 * w * x * mask * mask, rtol=1e-12)
    _fd_check(g, loss.name, feeds, {}, ["x"])


def test_dropout_reference_matches_ort_in_the_interpreter():
    b, (y,) = _dropout_graph((5, 9), 0.5, training=True)
    x = np.random.default_rng(9).normal(size=(5, 9)).astype(np.float32)
    feeds = {"x": x, "seed": np.array(77)}
    np.testing.assert_array_equal(
        _ort(export(b.graph), feeds)[y.name], evaluate(b.graph, feeds, outputs=[y.name])[y.name]
    )


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "op,shape,attrs,dtype,match",
    [
        ("batch_norm", (4, 3), {"momentum": 1.5}, "float32", "momentum must be in"),
        ("batch_norm", (4,), {}, "float32", r"\[N, C\]"),
        ("batch_norm", (4, 3), {"eps": 0.0}, "float32", "eps must be positive"),
        ("batch_norm", (4, 3), {}, "int64", "float tensor"),
        ("batch_norm", (4, 3), {"momentun": 0.9}, "float32", "unknown attribute 'momentun'"),
        ("layer_norm", (4, 3), {"axis": 2}, "float32", "out of range"),
        ("instance_norm", (4, 3), {}, "float32", "spatial"),
        ("group_norm", (4, 6, 2), {"groups": 4}, "float32", "divisor of the 6 channels"),
        ("group_norm", (4, 6, 2), {}, "float32", "needs the attribute 'groups'"),
        ("dropout", (4, 3), {"rate": 1.0}, "float32", r"rate must be in \[0, 1\)"),
    ],
)
def test_clear_errors(op, shape, attrs, dtype, match):
    b = Builder(Graph("e"))
    x = b.input("x", shape, dtype)
    with pytest.raises(GraphError, match=match) as err:
        b.op(op, x, name="bad", **attrs)
    assert (
        "bad" in str(err.value)
        or "unknown attribute" in str(err.value)
        or "needs" in str(err.value)
    )


def test_symbolic_channels_and_bad_seed_are_clear_errors():
    b = Builder(Graph("e"))
    x = b.input("x", ("N", "C"))
    with pytest.raises(GraphError, match="channel dim"):
        b.batch_norm(x, name="bn")
    x2 = b.input("x2", ("N", 4))
    s = b.input("s", (), "float32")
    with pytest.raises(GraphError, match="int64 scalar"):
        b.dropout(x2, s, 0.5, name="d")


# ------------------------------------------------------ in the training step


def test_training_step_updates_running_stats_and_replays_dropout_masks():
    """The step builder switches both ops to training; `step` seeds dropout reproducibly."""
    from graphc.train.step import StepConfig, build_step

    b = Builder("m")
    x = b.input("x", ("N", 4))
    y = b.input("y", ("N",), dtype="int64")
    h = b.batch_norm(b.linear(x, 8, name="fc1"), name="bn1")
    logits = b.linear(b.dropout(b.relu(h), 0.5, name="drop1"), 3, name="fc2")
    b.output(logits)
    b.minimize(b.cross_entropy(logits, y))
    step = build_step(b.graph, StepConfig(optimizer="sgd", lr=0.1))
    assert step.stats == ["bn1.running_mean", "bn1.running_var"]
    sess = make_session(step.export(), threads=1)
    rng = np.random.default_rng(12)
    feeds = {
        "x": rng.normal(size=(16, 4)).astype(np.float32),
        "y": rng.integers(0, 3, 16),
        "lr": np.array(0.1, np.float32),
    }
    wanted = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    assert {"step", "lr"} <= wanted

    def at(k):
        return run(sess, {n: v for n, v in {**feeds, "step": np.array(k)}.items() if n in wanted})

    first, again, second = at(0), at(0), at(1)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)  # bit for bit
    assert first["loss"] != second["loss"]  # a new mask at the next step
    # the new running statistics are those of fc1's output on this batch
    params = b.graph.param_values()
    z = feeds["x"].astype(np.float64) @ params["fc1.weight"] + params["fc1.bias"]
    np.testing.assert_allclose(first["new.bn1.running_mean"], 0.1 * z.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        first["new.bn1.running_var"], 0.9 + 0.1 * z.var(0, ddof=1), rtol=1e-4
    )


MLP = """\
x = input(float32, [N, 64])
y = input(int64, [N])
h1 = dropout(relu(batch_norm(linear(x, 32))), rate=0.3)
h2 = dropout(relu(layer_norm(linear(h1, 32))), rate=0.3)
logits = linear(h2, 10)
output(logits)
loss = cross_entropy(logits, y)
minimize(loss)
"""


def test_interrupted_training_resumes_bit_for_bit(tmp_path):
    """Dropout masks are a function of the step, so a resumed run repeats them exactly."""
    import onnx

    from conftest import run_cli

    model = tmp_path / "mlp.gc"
    model.write_text(MLP)
    common = [
        "train",
        str(model),
        "--data",
        "digits",
        "--epochs",
        "2",
        "--seed",
        "0",
        "--threads",
        "1",
        "--lr",
        "0.01",
        "-q",
    ]
    ck = str(tmp_path / "ck.npz")
    runs = [
        common + ["-o", str(tmp_path / "full.onnx")],
        common + ["--max-steps", "30", "--checkpoint", ck, "-o", str(tmp_path / "part.onnx")],
        common + ["--checkpoint", ck, "--resume", "-o", str(tmp_path / "resumed.onnx")],
    ]
    for args in runs:
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr

    def weights(name):
        m = onnx.load(str(tmp_path / name))
        return {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}

    full, part, resumed = weights("full.onnx"), weights("part.onnx"), weights("resumed.onnx")
    stats = [k for k in full if "running" in k]
    assert len(stats) == 2
    assert resumed.keys() == full.keys()
    for k in full:  # every weight and running statistic, bit for bit
        np.testing.assert_array_equal(resumed[k], full[k], err_msg=k)
    assert not np.array_equal(part[stats[0]], full[stats[0]])  # the interrupted run did stop


def test_hessian_vector_product_through_the_normalizations():
    """Decompositions are made of differentiable primitives, so second order works too."""
    from graphc.autodiff import hvp

    b = Builder(Graph("h", dtype="float64"))
    x = b.input("x", (6, 4), "float64")
    h = b.batch_norm(b.linear(x, 6, name="fc1"), training=True, name="bn")[0]
    h = b.group_norm(b.tanh(h), 3, name="gn")
    h = b.layer_norm(b.tanh(h), name="ln")
    loss = b.reduce_sum(b.square(b.linear(h, 2, name="fc2")))
    b.minimize(loss)
    g = b.graph
    rng = np.random.default_rng(13)
    params = _set_params(g, rng)
    trained = [k for k, p in g.params.items() if not p.state]
    feeds = {"x": rng.normal(size=(6, 4))}
    vs = {f"{p}.v": rng.normal(size=params[p].shape) for p in trained}
    hg = hvp(g)
    out = _ort(
        export(hg, outputs=[f"{p}.hvp" for p in trained], params_as_inputs=True),
        {**feeds, **params, **vs},
    )
    gg = grad(g)
    eps = 1e-5

    def grads_at(shift):
        shifted = {
            p: params[p] + shift * vs[f"{p}.v"] if p in trained else params[p] for p in params
        }
        return _ort(export(gg, params_as_inputs=True), {**feeds, **shifted})

    plus, minus = grads_at(eps), grads_at(-eps)
    for p in trained:
        fd = (plus[f"{p}.grad"] - minus[f"{p}.grad"]) / (2 * eps)
        if p == "fc1.bias":
            # batch norm subtracts the batch mean: the bias before it has no effect at all
            np.testing.assert_allclose(plus[f"{p}.grad"], 0.0, atol=1e-9)
        else:
            assert np.abs(fd).max() > 1e-3, p  # a curvature worth comparing
        np.testing.assert_allclose(out[f"{p}.hvp"], fd, rtol=1e-6, atol=1e-8, err_msg=p)
