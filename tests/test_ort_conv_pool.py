"""Convolution and pooling ops against independent references.

- the NumPy references (sliding windows + einsum, `ops/conv.py`, `ops/pool.py`)
  against plain loops written here from the definitions;
- ONNX Runtime (float32) against the references, forward and gradient graphs,
  for 1-D/2-D/3-D, stride, padding (ints, begins+ends, "same"), dilation,
  groups, depthwise-separable, odd sizes that strides do not divide, ceil mode;
- gradients (the graph nodes autodiff emits, evaluated in float64) against
  central finite differences, relative error <= 1e-6; second derivatives too;
- clear errors for bad attributes;
- PyTorch's torch.nn.functional where torch is installed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from graphc.autodiff import grad, hvp
from graphc.builder import Builder
from graphc.errors import GraphError
from graphc.export import export
from graphc.interp import evaluate
from graphc.ir import Graph
from graphc.runtime import make_session, run
from graphc.shapes import eval_dim

# ------------------------------------------------------------ loop references


def _pads(spatial, kernel, stride, dilation, padding):
    """(begins, ends) from the definition of each padding form."""
    d = len(spatial)
    if padding == "valid":
        return [0] * d, [0] * d
    if padding == "same":
        begins, ends = [], []
        for n, k, s, dil in zip(spatial, kernel, stride, dilation):
            out = -(-n // s)
            total = max(0, (out - 1) * s + dil * (k - 1) + 1 - n)
            begins.append(total // 2)
            ends.append(total - total // 2)
        return begins, ends
    p = [padding] * d if isinstance(padding, int) else list(padding)
    return (p, p) if len(p) == d else (p[:d], p[d:])


def _tup(v, d):
    return [v] * d if isinstance(v, int) else list(v)


def loop_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    n, c = x.shape[:2]
    o = w.shape[0]
    spatial = x.shape[2:]
    d = len(spatial)
    k = w.shape[2:]
    s, dil = _tup(stride, d), _tup(dilation, d)
    pb, pe = _pads(spatial, k, s, dil, padding)
    out = [
        (sz + a + e - (di * (kk - 1) + 1)) // st + 1
        for sz, a, e, di, kk, st in zip(spatial, pb, pe, dil, k, s)
    ]
    y = np.zeros((n, o, *out))
    cg, og = c // groups, o // groups
    for ni, oi in itertools.product(range(n), range(o)):
        grp = oi // og
        for pos in itertools.product(*map(range, out)):
            acc = 0.0 if b is None else float(b[oi])
            for ci in range(cg):
                for tap in itertools.product(*map(range, k)):
                    idx = [p * st - a + t * di for p, st, a, t, di in zip(pos, s, pb, tap, dil)]
                    if all(0 <= i < sz for i, sz in zip(idx, spatial)):
                        acc += x[(ni, grp * cg + ci, *idx)] * w[(oi, ci, *tap)]
            y[(ni, oi, *pos)] = acc
    return y


def loop_pool(
    x, kind, kernel, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=False
):
    spatial = x.shape[2:]
    d = len(spatial)
    k = _tup(kernel, d)
    s = _tup(stride if stride is not None else kernel, d)
    dil = _tup(dilation, d)
    pb, pe = _pads(spatial, k, s, dil, padding)
    out = []
    for sz, a, e, di, kk, st in zip(spatial, pb, pe, dil, k, s):
        span = sz + a + e - (di * (kk - 1) + 1)
        o = (span + (st - 1 if ceil_mode else 0)) // st + 1
        if ceil_mode and (o - 1) * st >= sz + a:  # PyTorch: no window starts in the end pad
            o -= 1
        out.append(o)
    y = np.zeros(x.shape[:2] + tuple(out))
    for nc in itertools.product(*map(range, x.shape[:2])):
        for pos in itertools.product(*map(range, out)):
            vals, counted = [], 0
            for tap in itertools.product(*map(range, k)):
                idx = [p * st - a + t * di for p, st, a, t, di in zip(pos, s, pb, tap, dil)]
                if all(0 <= i < sz for i, sz in zip(idx, spatial)):
                    vals.append(x[(*nc, *idx)])
                if all(-a <= i < sz + e for i, sz, a, e in zip(idx, spatial, pb, pe)):
                    counted += 1
            if kind == "max":
                y[(*nc, *pos)] = max(vals)
            else:
                y[(*nc, *pos)] = sum(vals) / (counted if count_include_pad else len(vals))
    return y


# configurations: (input shape, attrs); odd sizes that the strides do not divide
CONV_CASES = [
    ([2, 3, 9], {"filters": 4, "kernel": 3}),
    ([2, 4, 10], {"filters": 6, "kernel": 3, "stride": 3, "padding": 1, "groups": 2}),
    ([1, 3, 11], {"filters": 2, "kernel": 2, "dilation": 3, "padding": "same"}),
    ([2, 3, 7, 6], {"filters": 4, "kernel": 3, "stride": 2, "padding": "same"}),
    (
        [2, 4, 7, 5],
        {"filters": 4, "kernel": (3, 2), "stride": (2, 3), "padding": (1, 0, 2, 1), "groups": 4},
    ),  # depthwise, begins+ends padding
    (
        [1, 6, 8, 7],
        {
            "filters": 9,
            "kernel": 3,
            "dilation": (2, 1),
            "padding": (2, 1),
            "groups": 3,
            "bias": False,
        },
    ),
    ([2, 2, 5, 5], {"filters": 3, "kernel": 5, "padding": "valid"}),
    (
        [1, 2, 5, 4, 6],
        {"filters": 4, "kernel": (2, 3, 2), "stride": (2, 1, 3), "padding": "same", "groups": 2},
    ),
    ([2, 3, 4, 5, 3], {"filters": 2, "kernel": 2, "dilation": (1, 2, 1), "padding": 1}),
]
POOL_CASES = [
    ("max", [2, 3, 9], {"kernel": 2}),
    ("max", [2, 2, 10], {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    # the last window would start in the end padding: dropped
    ("max", [1, 2, 5], {"kernel": 2, "stride": 3, "padding": 1, "ceil_mode": True}),
    ("max", [2, 3, 7, 6], {"kernel": 3, "stride": 2, "padding": 1}),
    (
        "max",
        [2, 2, 7, 7],
        {"kernel": (2, 3), "stride": (2, 1), "dilation": (2, 1), "ceil_mode": True},
    ),
    ("max", [1, 2, 6, 5], {"kernel": 3, "stride": 1, "padding": "same"}),
    ("max", [1, 2, 5, 4, 7], {"kernel": 2, "stride": (2, 1, 3), "padding": (1, 0, 1)}),
    ("avg", [2, 3, 9], {"kernel": 3, "stride": 2, "padding": 1}),
    ("avg", [2, 3, 9], {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": True}),
    (
        "avg",
        [1, 2, 10],
        {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": True},
    ),
    ("avg", [2, 2, 7, 6], {"kernel": 2}),
    ("avg", [2, 2, 7, 6], {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("avg", [1, 3, 6, 5], {"kernel": (3, 2), "stride": 1, "padding": "same"}),
    ("avg", [2, 3, 9], {"kernel": 2, "stride": 4}),  # gaps between windows
    (
        "avg",
        [1, 2, 5, 4, 6],
        {"kernel": 2, "stride": (1, 2, 3), "padding": (1, 0, 1), "count_include_pad": True},
    ),
]


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("shape,attrs", CONV_CASES)
def test_conv_reference_matches_loops(shape, attrs):
    from graphc.ops.conv import conv_reference

    rng = _rng(1)
    x = rng.standard_normal(shape)
    d = len(shape) - 2
    k = _tup(attrs["kernel"], d)
    groups = attrs.get("groups", 1)
    w = rng.standard_normal((attrs["filters"], shape[1] // groups, *k))
    b = rng.standard_normal(attrs["filters"]) if attrs.get("bias", True) else None
    win = {
        key: attrs.get(key, dflt)
        for key, dflt in (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1))
    }
    np.testing.assert_allclose(
        conv_reference(x, w, b, **win), loop_conv(x, w, b, **win), rtol=1e-12, atol=1e-12
    )


def _pool_attrs(kind, attrs):
    full = {"stride": None, "padding": 0, "ceil_mode": False}
    full.update({"dilation": 1} if kind == "max" else {"count_include_pad": False})
    full.update(attrs)
    return full


@pytest.mark.parametrize("kind,shape,attrs", POOL_CASES)
def test_pool_reference_matches_loops(kind, shape, attrs):
    from graphc.ops.pool import avg_pool_reference, max_pool_reference

    x = _rng(2).standard_normal(shape)
    ref = max_pool_reference if kind == "max" else avg_pool_reference
    np.testing.assert_allclose(
        ref(x, **_pool_attrs(kind, attrs)), loop_pool(x, kind, **attrs), rtol=1e-12, atol=1e-12
    )


# ------------------------------------------------------- graphs for ORT/autodiff


def _graph(op: str, shape, attrs, dtype="float32", batch="N", seed=0):
    """x -> op -> y; loss = sum(y * r) with r an input (so every output element matters)."""
    b = Builder(Graph(op, dtype=dtype, seed=seed))
    x = b.input("x", [batch, *shape[1:]] if batch else shape, dtype)
    y = b.op(op, x, name="y", **attrs)
    r = b.input("r", y.shape, dtype)
    b.output(y)
    b.minimize(b.reduce_sum(y * r, name="loss"))
    return b.graph


def _feeds(g, batch, seed):
    """x and r for a batch size: standard normal, float64."""
    rng = _rng(seed)
    shapes = {k: [batch, *t.shape[1:]] for k, t in g.inputs.items()}
    return {k: rng.standard_normal(s) for k, s in shapes.items()}


def _pool_op(kind, shape):
    return f"{kind}_pool{len(shape) - 2}d"


ORT_CASES = (
    [(f"conv{len(s) - 2}d", s, a) for s, a in CONV_CASES]
    + [(_pool_op(k, s), s, a) for k, s, a in POOL_CASES]
    + [
        (
            "separable_conv1d",
            [2, 3, 9],
            {"filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
        ),
        (
            "separable_conv2d",
            [2, 3, 7, 6],
            {
                "filters": 5,
                "kernel": 3,
                "depth_multiplier": 2,
                "dilation": 2,
                "padding": 2,
                "bias": False,
            },
        ),
        ("global_avg_pool", [2, 3, 4, 5], {}),
        ("global_max_pool", [2, 3, 7], {"keepdims": True}),
        ("global_avg_pool", [2, 2, 3, 2, 4], {"keepdims": True}),
    ]
)
IDS = [f"{op}-{i}" for i, (op, _, _) in enumerate(ORT_CASES)]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("float64", 1e-10)])
@pytest.mark.parametrize("op,shape,attrs", ORT_CASES, ids=IDS)
def test_forward_and_gradient_graph_on_ort(op, shape, attrs, dtype, tol):
    """Forward and backward graph on ONNX Runtime vs the NumPy references, same dtype.

    float32 runs ONNX's Conv/ConvTranspose/pool kernels; float64 runs the
    gathered-windows + Einsum lowering (ORT's CPU has no float64 conv kernels).
    """
    g = _graph(op, shape, attrs, dtype=dtype)
    gg = grad(g, wrt=["x", *g.params])
    sess = make_session(export(gg), threads=1)
    params = g.param_values()
    for batch in (1, shape[0] + 1):
        feeds = {k: v.astype(dtype) for k, v in _feeds(g, batch, seed=batch).items()}
        got = run(sess, feeds)
        ref = evaluate(gg, feeds, outputs=gg.outputs, params=params)
        for name in gg.outputs:
            scale = max(1.0, float(np.abs(ref[name]).max()))
            assert got[name].shape == ref[name].shape, name
            assert got[name].dtype == ref[name].dtype == np.dtype(dtype), name
            np.testing.assert_allclose(
                got[name],
                ref[name],
                rtol=tol,
                atol=tol * scale,
                err_msg=f"{op} {attrs} batch={batch} {name}",
            )


def test_float64_needs_fixed_spatial_sizes():
    b = Builder(Graph("seq", dtype="float64"))
    x = b.input("x", ["N", 2, "T"], "float64")
    b.output(b.conv1d(x, 3, 3, name="c"))
    with pytest.raises(GraphError, match="float64 windows need fixed spatial sizes"):
        export(b.graph)


# ------------------------------------------------------- finite differences


def _fd_check(g64, wrt, feeds, h=1e-6, tol=1e-6):
    """Every entry of every target: central differences of the loss vs the gradient graph."""
    gg = grad(g64, wrt=wrt)
    params = g64.param_values()
    got = evaluate(gg, feeds, params=params, outputs=[gg.meta["grads"][t] for t in wrt])

    base = {**feeds, **params}

    def loss(values):
        env = {**base, **values}
        return float(
            evaluate(
                g64,
                {k: env[k] for k in feeds},
                outputs=[g64.loss],
                params={k: env[k] for k in params},
            )[g64.loss]
        )

    for t in wrt:
        v = base[t]
        fd = np.zeros_like(v)
        for i in np.ndindex(v.shape):
            plus, minus = v.copy(), v.copy()
            plus[i] += h
            minus[i] -= h
            fd[i] = (loss({t: plus}) - loss({t: minus})) / (2 * h)
        analytic = got[gg.meta["grads"][t]]
        err = np.linalg.norm(analytic - fd) / max(np.linalg.norm(fd), 1e-12)
        assert err <= tol, f"{t}: relative error {err:.2e}"


FD_CASES = [
    ("conv1d", [2, 4, 7], {"filters": 4, "kernel": 3, "stride": 2, "padding": 1, "groups": 2}),
    (
        "conv2d",
        [2, 3, 5, 4],
        {"filters": 2, "kernel": (2, 3), "stride": (2, 1), "dilation": (1, 2), "padding": "same"},
    ),
    (
        "conv2d",
        [1, 4, 5, 5],
        {"filters": 4, "kernel": 3, "stride": 2, "groups": 4, "padding": (0, 1, 1, 0)},
    ),
    ("conv3d", [1, 2, 3, 4, 3], {"filters": 2, "kernel": 2, "stride": (1, 2, 1), "padding": 1}),
    (
        "separable_conv2d",
        [1, 2, 5, 4],
        {"filters": 3, "kernel": 3, "stride": 2, "padding": "same", "depth_multiplier": 2},
    ),
    ("max_pool2d", [2, 2, 5, 6], {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("max_pool1d", [2, 2, 9], {"kernel": 3, "stride": 1, "dilation": 2, "padding": "same"}),
    (
        "avg_pool2d",
        [1, 2, 5, 6],
        {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": True},
    ),
    ("avg_pool3d", [1, 2, 3, 4, 5], {"kernel": 2, "stride": (1, 2, 2), "padding": (1, 0, 1)}),
    ("avg_pool1d", [2, 2, 9], {"kernel": 2, "stride": 3}),
    ("global_avg_pool", [2, 3, 4, 3], {}),
    ("global_max_pool", [2, 3, 5], {}),
]


@pytest.mark.parametrize("op,shape,attrs", FD_CASES, ids=[c[0] for c in FD_CASES])
def test_gradients_match_finite_differences(op, shape, attrs):
    g64 = _graph(op, shape, attrs, dtype="float64", batch=None)
    _fd_check(g64, ["x", *g64.params], _feeds(g64, shape[0], seed=3))


HVP_CASES = [
    (
        "conv2d",
        [2, 4, 5, 4],
        {"filters": 4, "kernel": 3, "stride": 2, "padding": 1, "groups": 2},
        {"conv_input_grad", "conv_weight_grad"},
    ),
    (
        "max_pool2d",
        [2, 2, 5, 6],
        {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"max_pool_grad", "max_pool_select"},
    ),
    ("avg_pool1d", [2, 3, 9], {"kernel": 3, "stride": 2, "padding": 1}, {"avg_pool_grad"}),
]


@pytest.mark.parametrize("op,shape,attrs,grad_ops", HVP_CASES, ids=[c[0] for c in HVP_CASES])
def test_hessian_vector_products(op, shape, attrs, grad_ops):
    """loss = sum(y^2): differentiating the gradient graph runs the grad primitives' own rules."""
    b = Builder(Graph("h", dtype="float64"))
    x = b.input("x", shape, "float64")
    y = b.op(op, x, name="c", **attrs)
    b.minimize(b.reduce_sum(b.square(y), name="loss"))
    g = b.graph
    targets = ["x", *g.params]
    h = hvp(g, wrt=targets)
    assert grad_ops <= {n.op for n in h.nodes.values()}
    rng = _rng(5)
    point = {"x": rng.standard_normal(shape), **g.param_values()}
    point.update({k: rng.standard_normal(v.shape) for k, v in point.items() if k.endswith("bias")})
    v = {t: rng.standard_normal(point[t].shape) for t in targets}
    params = {t: point[t] for t in targets[1:]}
    got = evaluate(h, {"x": point["x"], **{f"{t}.v": v[t] for t in targets}}, params=params)
    first = grad(g, wrt=targets)

    def gradients(step):
        at = {t: point[t] + step * v[t] for t in targets}
        out = evaluate(first, {"x": at["x"]}, params={t: at[t] for t in targets[1:]})
        return {t: out[first.meta["grads"][t]] for t in targets}

    eps = 1e-5
    plus, minus = gradients(eps), gradients(-eps)
    for t in targets:
        fd = (plus[t] - minus[t]) / (2 * eps)
        analytic = got[h.meta["grads"][t]]
        assert np.linalg.norm(fd) > 0
        assert np.linalg.norm(analytic - fd) <= 1e-6 * np.linalg.norm(fd), t


def test_max_pool_gradient_goes_to_the_first_maximum_on_ort():
    """Ties everywhere: ORT's MaxPool Indices and the reference both pick the first maximum."""
    from graphc.ops.pool import max_pool_grad_reference

    attrs = {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    g = _graph("max_pool2d", [2, 2, 6, 7], attrs)
    gg = grad(g, wrt=["x"])
    sess = make_session(export(gg), threads=1)
    x = _rng(4).integers(0, 3, (2, 2, 6, 7)).astype(np.float32)
    r = _rng(5).standard_normal(g.type("y").shape[1:]).astype(np.float32)
    r = np.broadcast_to(r, (2, *r.shape)).copy()
    got = run(sess, {"x": x, "r": r})["x.grad"]
    ref = max_pool_grad_reference(x, r, **dict(attrs, dilation=1))
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    # every window's gradient lands on one element (overlaps add up)
    assert np.isclose(got.sum(), r.sum(), rtol=1e-5)
    # x[0, 0, 0, 0] is only in window (0, 0), which reads x[0, 0, :2, :2] and scans it first
    expected = r[0, 0, 0, 0] if x[0, 0, 0, 0] == x[0, 0, :2, :2].max() else 0.0
    assert got[0, 0, 0, 0] == pytest.approx(expected)


def test_symbolic_spatial_dims():
    """A 1-D conv over a sequence of symbolic length T: forward and gradients on ORT."""
    b = Builder(Graph("seq"))
    x = b.input("x", ["N", 4, "T"])
    y = b.conv1d(x, 6, 3, stride=2, padding=1, groups=2, name="c")
    z = b.max_pool1d(y, 2, stride=1, name="p")
    b.output(z)
    b.minimize(b.reduce_sum(b.square(z), name="loss"))
    g = b.graph
    gg = grad(g)
    sess = make_session(export(gg), threads=1)
    params = g.param_values()
    for n, t in ((2, 7), (1, 8), (3, 4)):
        xv = _rng(t).standard_normal((n, 4, t)).astype(np.float32)
        got = run(sess, {"x": xv})
        ref = evaluate(
            gg,
            {"x": xv.astype(np.float64)},
            outputs=gg.outputs,
            params={k: v.astype(np.float64) for k, v in params.items()},
        )
        assert got["p"].shape[2] == eval_dim(str(z.shape[2]), {"T": t}) == (t - 1) // 2
        for name in gg.outputs:
            np.testing.assert_allclose(
                got[name], ref[name], rtol=1e-4, atol=1e-4, err_msg=f"T={t} {name}"
            )


def test_conv_shapes_are_symbolic_in_the_batch():
    b = Builder(Graph("s"))
    x = b.input("x", ["N", 3, 32, 31])
    y = b.conv2d(x, 8, 3, stride=2, padding="same", name="c")
    p = b.max_pool2d(y, 2, name="p")
    a = b.global_avg_pool(p, name="gap")
    assert y.shape == ("N", 8, 16, 16)
    assert p.shape == ("N", 8, 8, 8)
    assert a.shape == ("N", 8)
    assert b.graph.params["c.weight"].shape == (8, 3, 3, 3)
    assert b.graph.params["c.weight"].fan == (27, 72)


def test_separable_conv_params_read_well():
    b = Builder(Graph("s"))
    x = b.input("x", ["N", 3, 8, 8])
    b.separable_conv2d(x, 16, 3, depth_multiplier=2, name="sep")
    shapes = {k: p.shape for k, p in b.graph.params.items()}
    assert shapes == {
        "sep.depthwise": (6, 1, 3, 3),
        "sep.pointwise": (16, 6, 1, 1),
        "sep.bias": (16,),
    }


# ------------------------------------------------------------------ errors

ERRORS = [
    (
        "conv2d",
        [2, 6, 8, 8],
        {"filters": 4, "kernel": 3, "groups": 4},
        "do not divide into 4 groups",
    ),
    ("conv2d", [2, 6, 8, 8], {"filters": 5, "kernel": 3, "groups": 3}, "5 output channels"),
    (
        "conv2d",
        [2, 3, 8, 8],
        {"filters": 4, "kernel": (3, 3, 3)},
        "kernel must be an int or a tuple",
    ),
    (
        "conv2d",
        [2, 3, 8, 8],
        {"filters": 4, "kernel": 3, "padding": (1, 2, 3)},
        "padding needs 1, 2 or 4",
    ),
    ("conv2d", [2, 3, 8, 8], {"filters": 4, "kernel": 3, "padding": "full"}, "'same' or 'valid'"),
    ("conv2d", [2, 3, 4, 4], {"filters": 4, "kernel": 5}, "smaller than the kernel's extent 5"),
    ("conv2d", [2, 3, 8], {"filters": 4, "kernel": 3}, "rank 4"),
    ("conv1d", [2, 3, 8], {"filters": 4, "kernel": 3, "stride": 0}, "stride must be at least 1"),
    ("max_pool2d", [2, 3, 8, 8], {"kernel": 2, "padding": 2}, "smaller than the kernel size 2"),
    ("avg_pool1d", [2, 3, 8], {"kernel": 2, "padding": "same", "ceil_mode": True}, "ceil_mode"),
    ("max_pool3d", [2, 3, 8, 8], {"kernel": 2}, "rank 5"),
    ("global_avg_pool", [2, 3], {}, "[N, C, *spatial]"),
]


@pytest.mark.parametrize("op,shape,attrs,message", ERRORS, ids=[e[3][:20] for e in ERRORS])
def test_clear_errors(op, shape, attrs, message):
    b = Builder(Graph("e"))
    x = b.input("x", shape)
    with pytest.raises(GraphError) as err:
        b.op(op, x, name="bad", **attrs)
    assert message in err.value.message
    assert "bad" in err.value.message or err.value.node == "bad"


def test_channels_must_be_fixed():
    b = Builder(Graph("e"))
    x = b.input("x", ["N", "C", 8])
    with pytest.raises(GraphError, match="channel dim"):
        b.conv1d(x, 4, 3)


# ------------------------------------------------------------------ PyTorch


TORCH_CASES = [
    (
        "conv2d",
        [2, 4, 9, 8],
        {"filters": 6, "kernel": 3, "stride": 2, "padding": 1, "dilation": 2, "groups": 2},
    ),
    ("conv1d", [2, 3, 10], {"filters": 4, "kernel": 4, "padding": "same"}),
    ("conv3d", [1, 2, 5, 4, 6], {"filters": 3, "kernel": (2, 3, 2), "stride": (1, 2, 2)}),
    ("max_pool2d", [2, 3, 7, 6], {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("max_pool1d", [2, 3, 5], {"kernel": 2, "stride": 3, "padding": 1, "ceil_mode": True}),
    (
        "avg_pool2d",
        [2, 3, 7, 6],
        {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": True},
    ),
    ("avg_pool2d", [2, 3, 7, 6], {"kernel": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
]


def _torch_forward(torch, op, x, params, attrs):
    import torch.nn.functional as F

    if op.startswith("conv"):
        fn = getattr(F, op)
        return fn(
            x,
            params["y.weight"],
            params["y.bias"],
            stride=attrs.get("stride", 1),
            padding=attrs.get("padding", 0),
            dilation=attrs.get("dilation", 1),
            groups=attrs.get("groups", 1),
        )
    fn = getattr(F, op)
    kw = {
        "kernel_size": attrs["kernel"],
        "stride": attrs.get("stride"),
        "padding": attrs.get("padding", 0),
        "ceil_mode": attrs.get("ceil_mode", False),
    }
    if op.startswith("avg"):
        kw["count_include_pad"] = attrs.get("count_include_pad", False)
    return fn(x, **kw)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("op,shape,attrs", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_matches_pytorch(op, shape, attrs):
    torch = pytest.importorskip("torch")
    g = _graph(op, shape, attrs, dtype="float64", batch=None)
    wrt = ["x", *g.params]
    gg = grad(g, wrt=wrt)
    feeds = _feeds(g, shape[0], seed=6)
    params = g.param_values()
    ours = evaluate(gg, feeds, params=params, outputs=["y", *[gg.meta["grads"][t] for t in wrt]])
    tx = torch.tensor(feeds["x"], requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    ty = _torch_forward(torch, op, tx, tp, attrs)
    (ty * torch.tensor(feeds["r"])).sum().backward()
    np.testing.assert_allclose(ours["y"], ty.detach().numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours[gg.meta["grads"]["x"]], tx.grad.numpy(), rtol=1e-10, atol=1e-10)
    for k, t in tp.items():
        np.testing.assert_allclose(
            ours[gg.meta["grads"][k]], t.grad.numpy(), rtol=1e-10, atol=1e-10, err_msg=k
        )
