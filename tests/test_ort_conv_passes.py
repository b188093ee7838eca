"""The convolution passes against ONNX Runtime and NumPy.

Each pass alone must leave a gradient graph and a training step computing
what the unoptimized graph computes: weight gradients are checked against
the NumPy reference (`conv_weight_grad_reference`, an einsum over sliding
windows), training steps against the -O0 step run in ONNX Runtime on the
same batch, output by output.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import pytest

import graphc
from graphc.export import export
from graphc.feeds import random_feeds
from graphc.ops.conv import conv_input_grad_reference, conv_reference, conv_weight_grad_reference
from graphc.ops.pool import (
    avg_pool_grad_reference,
    avg_pool_reference,
    max_pool_grad_reference,
    max_pool_reference,
)
from graphc.passes import PIPELINES, optimize
from graphc.runtime import make_session
from graphc.train.step import StepConfig, build_step

WG = "conv_weight_grad_as_gemm"

# (layer, channels, spatial, layer attrs, the lowering the rewrite picks: None = left alone)
CASES = [
    # one group, 2-7 input channels: one kernel row's windows stacked, a GEMM per row
    ("conv2d", 4, (8, 8), {"filters": 12, "kernel": 3, "padding": 1}, "stacked"),
    ("conv2d", 4, (9, 9), {"filters": 12, "kernel": 3, "stride": 2, "padding": "same"}, "stacked"),
    ("conv2d", 4, (10, 8), {"filters": 9, "kernel": (3, 2), "stride": (2, 1)}, "stacked"),
    ("conv2d", 4, (8, 8), {"filters": 12, "kernel": 3, "dilation": 2, "padding": 2}, "stacked"),
    ("conv2d", 4, (8, 7), {"filters": 10, "kernel": 3, "padding": (1, 0, 0, 1)}, "stacked"),
    ("conv2d", 1, (12, 12), {"filters": 6, "kernel": 5}, "per_tap"),  # one channel: GEMVs
    ("conv2d", 4, (8, 8), {"filters": 6, "kernel": 1}, "stacked"),
    ("conv2d", 4, (9, 9), {"filters": 6, "kernel": 1, "stride": 2}, "stacked"),
    ("conv1d", 3, (20,), {"filters": 8, "kernel": 3, "padding": 1, "dilation": 2}, "stacked"),
    ("conv3d", 2, (4, 5, 4), {"filters": 8, "kernel": 2}, "stacked"),
    # eight or more: a GEMM per tap over channels-last copies
    ("conv2d", 8, (8, 8), {"filters": 6, "kernel": 3, "padding": 1}, "per_tap"),
    ("conv2d", 8, (9, 9), {"filters": 12, "kernel": 3, "stride": 2, "padding": "same"}, "per_tap"),
    ("conv2d", 9, (10, 8), {"filters": 5, "kernel": (3, 2), "stride": (2, 1)}, "per_tap"),
    ("conv2d", 8, (8, 8), {"filters": 12, "kernel": 3, "dilation": 2, "padding": 2}, "per_tap"),
    ("conv2d", 8, (8, 7), {"filters": 10, "kernel": 3, "padding": (1, 0, 0, 1)}, "per_tap"),
    ("conv2d", 8, (9, 9), {"filters": 6, "kernel": 1, "stride": 2}, "per_tap"),
    ("conv1d", 8, (20,), {"filters": 4, "kernel": 3, "padding": 1, "dilation": 2}, "per_tap"),
    ("conv3d", 8, (4, 5, 4), {"filters": 3, "kernel": (2, 3, 1), "stride": (1, 2, 1)}, "per_tap"),
    # groups: one-hot tap patches and a GEMM batched over the groups
    ("conv2d", 4, (8, 8), {"filters": 20, "kernel": 3, "groups": 2, "padding": 1}, "patches"),
    ("conv2d", 16, (8, 8), {"filters": 20, "kernel": 3, "groups": 2, "padding": 1}, "patches"),
    # depthwise (one input channel per group, m outputs each): window * gy, summed as GEMVs
    ("conv2d", 4, (8, 8), {"filters": 8, "kernel": 3, "groups": 4, "padding": 1}, "depthwise"),
    ("conv2d", 4, (11, 9), {"filters": 4, "kernel": 3, "groups": 4, "stride": 2}, "depthwise"),
    ("conv1d", 3, (20,), {"filters": 9, "kernel": 3, "groups": 3, "dilation": 2}, "depthwise"),
    ("conv3d", 2, (4, 5, 4), {"filters": 2, "kernel": 2, "groups": 2}, "depthwise"),
    # left alone: too few output positions, more taps than filters per group
    ("conv2d", 4, (5, 5), {"filters": 12, "kernel": 3}, None),
    ("conv2d", 8, (5, 5), {"filters": 12, "kernel": 3}, None),
    ("conv2d", 4, (8, 8), {"filters": 6, "kernel": 3, "groups": 2, "padding": 1}, None),
]


def _conv_graph(layer, channels, spatial, attrs):
    """loss = sum(conv(x) * r): dL/dw is conv_weight_grad(x, r), dL/dx conv_input_grad(r, w)."""
    b = graphc.Builder("conv")
    x = b.input("x", ("N", channels, *spatial))
    y = getattr(b, layer)(x, name="c", **attrs)
    r = b.input("r", ("N", *y.shape[1:]))
    b.minimize(b.reduce_sum(y * r, name="loss"))
    return b.graph


def _run(g, outputs, values):
    sess = make_session(export(g, outputs=outputs, params_as_inputs=True, keep_inputs=True))
    names = {i.name for i in sess.get_inputs()}
    return dict(zip(outputs, sess.run(outputs, {k: v for k, v in values.items() if k in names})))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[3]}")
def test_weight_grad_pass_matches_the_numpy_reference(case):
    layer, channels, spatial, attrs, lowering = case
    g = graphc.grad(_conv_graph(layer, channels, spatial, attrs))
    opt = optimize(g, passes=[WG])
    ops = Counter(n.op for n in opt.nodes.values())
    assert ("conv_weight_grad" not in ops) == (lowering is not None)
    k = attrs["kernel"]
    kernel = k if isinstance(k, tuple) else (k,) * len(spatial)
    taps = math.prod(kernel)
    if lowering in ("per_tap", "stacked"):  # a window slice per tap, no patch convolution
        assert ops["slice"] == taps and ops["conv"] == 1
        assert ops["matmul"] == (taps if lowering == "per_tap" else taps // kernel[-1])
    elif lowering == "depthwise":  # per tap a window, a product with gy and a GEMV
        assert ops["slice"] == ops["batch_sum"] == taps and ops["conv"] == 1
    elif lowering == "patches":  # one batched GEMM over all the taps
        assert ops["matmul"] == 1 and ops["slice"] == 0
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, channels, *spatial)).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in g.param_values().items()}
    window = {k: attrs.get(k, d) for k, d in [("stride", 1), ("padding", 0), ("dilation", 1)]}
    groups = attrs.get("groups", 1)
    y = conv_reference(x, params["c.weight"], groups=groups, **window)
    r = rng.standard_normal(y.shape).astype(np.float32)
    values = {"x": x, "r": r, **params}
    outs = ["c.weight.grad", "c.bias.grad"]
    ref = _run(g, outs, values)
    got = _run(opt, outs, values)
    want = conv_weight_grad_reference(
        x, r, kernel=params["c.weight"].shape[2:], groups=groups, **window
    )
    np.testing.assert_allclose(got["c.weight.grad"], want, rtol=1e-4, atol=1e-4)
    for k in outs:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)


CONVNET = """\
x = input(float32, [N, 3, 12, 12])
y = input(int64, [N])
stem = relu(batch_norm(conv2d(x, 16, 3, padding=1, bias=False)))
a = relu(batch_norm(conv2d(stem, 16, 3, padding=1, bias=False)))
b = batch_norm(conv2d(a, 16, 3, padding=1, bias=False))
r = relu(residual(stem, b))
d = relu(batch_norm(conv2d(r, 32, 3, stride=2, padding=1, bias=False)))
s = batch_norm(conv2d(r, 32, 1, stride=2, bias=False), affine=False, momentum=0.8)
e = relu(residual(s, conv2d(d, 32, 3, padding=2, dilation=2)))
g = relu(conv2d(e, 32, 3, padding=1, groups=2))
h = relu(separable_conv2d(g, 16, 3, padding=1, depth_multiplier=2))
p = max_pool2d(h, 2)
logits = linear(flatten(p), 5)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


@pytest.fixture(scope="module", params=["adam", "sgd"])
def convnet_step(request):
    g = graphc.parse(CONVNET)
    ts = build_step(g, StepConfig(optimizer=request.param))
    feeds = random_feeds(g, batch=6, seed=5)
    return ts, feeds, _run_step(ts, ts.graph, feeds)


def _run_step(ts, graph, feeds):
    """The step's outputs by logical name: -O2's flat buffers are unpacked."""
    step = dataclasses.replace(ts, graph=graph)
    sess = make_session(step.export(), threads=1)
    names = [o.name for o in sess.get_outputs()]
    return step.unpack(dict(zip(names, sess.run(None, feeds))), "new.")


def _assert_same(ref, out):
    assert out.keys() == ref.keys()
    assert "loss" in ref and any(k.endswith(".weight") for k in ref)  # parameters compared
    for k in sorted(ref):
        np.testing.assert_allclose(out[k], ref[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_weight_grad_pass_alone_keeps_the_training_step(convnet_step):
    ts, feeds, ref = convnet_step
    opt = optimize(ts.graph, passes=[WG])
    assert not [n for n in opt.nodes.values() if n.op == "conv_weight_grad"]
    _assert_same(ref, _run_step(ts, opt, feeds))


HOIST = "hoist_channel_scales"
CLEANUP = ["eliminate_dead_code", "fold_constants", "simplify", "eliminate_common_subexpressions"]


def _full_size_muls(g):
    """Multiplies over a whole batch of activations ([N, ...], N the batch dim)."""
    return sum(
        1 for n in g.nodes.values() if n.op == "mul" and g.types[n.outputs[0]].shape[:1] == ("N",)
    )


def test_hoisting_keeps_the_training_step_and_drops_the_normalized_tensor(convnet_step):
    ts, feeds, ref = convnet_step
    before = optimize(ts.graph, passes=["fuse_batch_norm_grad", *CLEANUP])
    after = optimize(before, passes=[HOIST, "eliminate_dead_code"])
    # 5 batch norms; x̂ = (x - mean) * (1/std) disappears from each (read by the affine
    # scale or, without affine, by the output itself: that one keeps it)
    assert _full_size_muls(before) - _full_size_muls(after) == 4
    out = _run_step(ts, after, feeds)
    _assert_same(ref, out)
    assert any(k.endswith("running_var") for k in out)  # running statistics are compared too


def test_hoisting_alone_on_the_raw_step_is_exact(convnet_step):
    ts, feeds, ref = convnet_step
    _assert_same(ref, _run_step(ts, optimize(ts.graph, passes=[HOIST]), feeds))


def test_hoisting_rules_against_numpy():
    b = graphc.Builder("hoist")
    a = b.input("a", ("N", 3, 4, 5))
    u = b.input("u", ("N", 3, 4, 5))
    f = b.input("f", (1, 3, 1, 1))
    t = b.input("t", (3, 1, 1))
    s = a * f
    b.output(b.mul(s, t, name="scaled"))
    b.output(b.reduce_sum(s * u, axes=(0, 2, 3), keepdims=True, name="summed"))
    b.output(b.reduce_sum(s * u, axes=0, keepdims=True, name="summed_n"))  # an int axis
    g = b.graph
    opt = optimize(g, passes=[HOIST, "eliminate_dead_code"])
    assert _full_size_muls(opt) == 3  # a * (f*t) and each sum's a * u; a * f is gone
    rng = np.random.default_rng(3)
    vals = {
        k: rng.standard_normal(sh).astype(np.float32)
        for k, sh in [
            ("a", (2, 3, 4, 5)),
            ("u", (2, 3, 4, 5)),
            ("f", (1, 3, 1, 1)),
            ("t", (3, 1, 1)),
        ]
    }
    got = _run(opt, g.outputs, vals)
    want = {
        g.outputs[0]: vals["a"] * vals["f"] * vals["t"],
        g.outputs[1]: (vals["a"] * vals["f"] * vals["u"]).sum(axis=(0, 2, 3), keepdims=True),
        g.outputs[2]: (vals["a"] * vals["f"] * vals["u"]).sum(axis=0, keepdims=True),
    }
    for k in g.outputs:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)


def test_o2_keeps_the_training_step(convnet_step):
    ts, feeds, ref = convnet_step
    assert WG in PIPELINES[2]
    _assert_same(ref, _run_step(ts, optimize(ts.graph, 2), feeds))


AVG = "avg_pool_as_conv"
POOLS = [
    (2, (8, 6), {"kernel": 2}, True),
    (2, (9, 7), {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": True}, True),
    (1, (11,), {"kernel": 3, "stride": 2}, True),
    (3, (4, 4, 6), {"kernel": (2, 2, 3)}, True),
    # left alone: uncounted padding, ceil mode
    (2, (9, 7), {"kernel": 3, "stride": 2, "padding": 1}, False),
    (2, (7, 7), {"kernel": 2, "ceil_mode": True}, False),
]


@pytest.mark.parametrize("case", POOLS, ids=lambda c: f"{c[0]}d-{c[2]}")
def test_avg_pool_as_conv_matches_the_numpy_reference(case):
    dims, spatial, attrs, applies = case
    b = graphc.Builder("pool")
    x = b.input("x", ("N", 3, *spatial))
    y = getattr(b, f"avg_pool{dims}d")(x, name="p", **attrs)
    r = b.input("r", ("N", *y.shape[1:]))
    b.output(y)
    b.minimize(b.reduce_sum(y * r, name="loss"))
    g = graphc.grad(b.graph, wrt=["x"])
    opt = optimize(g, passes=[AVG])
    pools = [n for n in opt.nodes.values() if "avg_pool" in n.op]
    assert (not pools) == applies
    rng = np.random.default_rng(11)
    xv = rng.standard_normal((2, 3, *spatial)).astype(np.float32)
    full = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": False, **attrs}
    want_y = avg_pool_reference(xv, **full)
    rv = rng.standard_normal(want_y.shape).astype(np.float32)
    want_dx = avg_pool_grad_reference(rv, xv, **full)
    got = _run(opt, ["p", "x.grad"], {"x": xv, "r": rv})
    np.testing.assert_allclose(got["p"], want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["x.grad"], want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "spatial, attrs, upsampled",
    [
        ((8, 6), {"kernel": 2}, True),  # tiles: gy / K repeated over each window
        ((9, 6), {"kernel": 3}, True),
        ((9, 7), {"kernel": 2}, False),  # the last row and column are in no window
        ((8, 8), {"kernel": 2, "stride": 1}, False),  # overlapping windows
    ],
)
def test_a_tiling_average_pool_gradient_is_an_upsampling(spatial, attrs, upsampled):
    b = graphc.Builder("pool")
    x = b.input("x", ("N", 3, *spatial))
    y = b.avg_pool2d(x, name="p", **attrs)
    r = b.input("r", ("N", *y.shape[1:]))
    b.minimize(b.reduce_sum(y * r, name="loss"))
    opt = optimize(graphc.grad(b.graph, wrt=["x"]), passes=[AVG])
    ops = [n.op for n in opt.nodes.values()]
    assert ("upsample_nearest" in ops) == upsampled
    assert ("conv_input_grad" in ops) != upsampled
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((2, 3, *spatial)).astype(np.float32)
    full = {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": False, **attrs}
    rv = rng.standard_normal(avg_pool_reference(xv, **full).shape).astype(np.float32)
    got = _run(opt, ["x.grad"], {"x": xv, "r": rv})
    want = avg_pool_grad_reference(rv, xv, **full)
    np.testing.assert_allclose(got["x.grad"], want, rtol=1e-5, atol=1e-6)


def test_o2_keeps_the_gradients_of_graphc_grad():
    """`compile --grad`: the parameter gradients of a conv net through the whole -O2 pipeline."""
    g = graphc.grad(graphc.parse(CONVNET))
    opt = optimize(g, 2)
    assert not [n for n in opt.nodes.values() if n.op == "conv_weight_grad"]
    rng = np.random.default_rng(2)
    values = {
        "x": rng.standard_normal((4, 3, 12, 12)).astype(np.float32),
        "y": rng.integers(0, 5, 4),
        **{k: v.astype(np.float32) for k, v in g.param_values().items()},
    }
    grads = [v for v in g.outputs if v.endswith(".grad")]
    assert len(grads) > 10
    ref, got = _run(g, grads, values), _run(opt, grads, values)
    for k in grads:
        np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=2e-5, err_msg=k)


MAXG = "max_pool_grad_by_mask"
MAX_POOLS = [
    (2, (8, 6), {"kernel": (2, 3)}, True),
    (2, (8, 8), {"kernel": 2, "stride": 2}, True),
    (1, (12,), {"kernel": 3}, True),
    (3, (4, 4, 6), {"kernel": (2, 2, 3)}, True),
    # left alone: overlapping windows, padding, a tail no window covers
    (2, (8, 8), {"kernel": 3, "stride": 2}, False),
    (2, (8, 8), {"kernel": 2, "padding": 1}, False),
    (2, (9, 8), {"kernel": 2}, False),
]


@pytest.mark.parametrize("case", MAX_POOLS, ids=lambda c: f"{c[0]}d-{c[2]}")
def test_max_pool_grad_by_mask_is_bit_identical_with_ties(case):
    dims, spatial, attrs, applies = case
    b = graphc.Builder("pool")
    x = b.input("x", ("N", 3, *spatial))
    y = getattr(b, f"max_pool{dims}d")(x, name="p", **attrs)
    r = b.input("r", ("N", *y.shape[1:]))
    b.minimize(b.reduce_sum(y * r, name="loss"))
    g = graphc.grad(b.graph, wrt=["x"])
    opt = optimize(g, passes=[MAXG, "eliminate_common_subexpressions", "eliminate_dead_code"])
    ops = [n.op for n in opt.nodes.values()]
    assert ("max_pool_grad" not in ops) == applies
    if applies:
        assert ops.count(f"max_pool{dims}d") == 1  # the backward reuses the forward's pool
    rng = np.random.default_rng(5)
    # rounded and rectified: most windows hold ties (equal maxima, all-zero windows)
    xv = np.maximum(np.round(rng.standard_normal((4, 3, *spatial))), 0).astype(np.float32)
    full = {"stride": None, "padding": 0, "ceil_mode": False, "dilation": 1, **attrs}
    rv = rng.standard_normal(max_pool_reference(xv, **full).shape).astype(np.float32)
    got = _run(opt, ["x.grad"], {"x": xv, "r": rv})["x.grad"]
    np.testing.assert_array_equal(got, max_pool_grad_reference(xv, rv, **full))
    np.testing.assert_array_equal(got, _run(g, ["x.grad"], {"x": xv, "r": rv})["x.grad"])


def test_upsample_nearest_gradient_sums_each_block():
    b = graphc.Builder("up")
    x = b.input("x", ("N", 2, 3, 2))
    u = b.upsample_nearest(x, scale=(2, 3), name="u")
    r = b.input("r", ("N", 2, 6, 6))
    b.minimize(b.reduce_sum(u * r, name="loss"))
    g = graphc.grad(b.graph, wrt=["x"])
    rng = np.random.default_rng(1)
    xv = rng.standard_normal((2, 2, 3, 2)).astype(np.float32)
    rv = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    got = _run(g, ["u", "x.grad"], {"x": xv, "r": rv})
    np.testing.assert_array_equal(got["u"], np.repeat(np.repeat(xv, 2, axis=2), 3, axis=3))
    want = rv.reshape(2, 2, 3, 2, 2, 3).sum(axis=(3, 5))
    np.testing.assert_allclose(got["x.grad"], want, rtol=1e-5, atol=1e-6)


def test_weight_grad_working_copies_live_for_their_layer_only(convnet_step):
    """The patches (K times a layer's input) and the tap GEMMs' channels-last copy of x are
    made in the backward pass, once the layer's output gradient exists, in ORT's order as
    in the graph's: the peak grows by about one layer's copy, not by all of them held from
    the forward pass on."""
    from graphc.passes import plan_memory
    from graphc.passes.cost import dim_sizes, nbytes
    from graphc.passes.memory import ort_schedule

    ts, _, _ = convnet_step
    base = optimize(ts.graph, passes=[p for p in PIPELINES[2] if p != WG])
    opt = optimize(ts.graph, 2)  # order_for_memory had moved every layer's patches forward
    sizes = dim_sizes(opt)
    patches = [n for n in opt.nodes.values() if n.op == "conv" and n.tags.get("grad")]
    producer = {v: n for n in opt.nodes.values() for v in n.outputs}
    copies = [  # x [N, C, *S] to the batch-innermost layouts, behind the ordering edge
        n
        for n in opt.nodes.values()
        if n.op == "transpose" and "_taps_" in producer[n.inputs[0]].name
    ]
    # the test needs layers of both lowerings whose copies could pile up
    assert patches and len(copies) >= 2
    largest = max(nbytes(opt.types[n.outputs[0]], sizes) for n in patches + copies)

    def peak(g, schedule):
        return plan_memory(g, schedule(g) if schedule else None, offsets=False).peak

    for schedule in (None, ort_schedule):
        # one layer's copy (and the copy a transpose may make) at a time
        assert peak(opt, schedule) <= peak(base, schedule) + 2 * largest


FULL = "conv_full_window_as_gemm"
# (layer, channels, spatial, attrs, whether the window covers the whole input unpadded)
FULL_CASES = [
    ("conv2d", 4, (5, 5), {"filters": 7, "kernel": 5}, True),  # LeNet-5's C5
    ("conv2d", 3, (3, 2), {"filters": 4, "kernel": (3, 2), "bias": False}, True),
    ("conv1d", 2, (6,), {"filters": 3, "kernel": 6, "stride": 2}, True),
    ("conv3d", 2, (2, 3, 2), {"filters": 5, "kernel": (2, 3, 2)}, True),
    ("conv2d", 4, (5, 5), {"filters": 6, "kernel": 3}, False),  # 3x3 output positions
    ("conv2d", 4, (3, 3), {"filters": 6, "kernel": 3, "padding": 1}, False),
    ("conv2d", 4, (5, 5), {"filters": 8, "kernel": 5, "groups": 2}, False),
    ("conv2d", 2, (5, 5), {"filters": 3, "kernel": 3, "dilation": 2}, False),
]


@pytest.mark.parametrize("case", FULL_CASES, ids=lambda c: f"{c[0]}-{c[3]}")
def test_a_full_window_conv_and_its_gradients_are_gemms(case):
    layer, channels, spatial, attrs, applies = case
    base = _conv_graph(layer, channels, spatial, attrs)
    g = graphc.grad(base, wrt=["x", *base.params])
    opt = optimize(g, passes=[FULL])
    convs = [n.op for n in opt.nodes.values() if n.op.startswith("conv")]
    assert (not convs) == applies, convs
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, channels, *spatial)).astype(np.float32)
    params = {k: v.astype(np.float32) for k, v in g.param_values().items()}
    window = {k: attrs.get(k, d) for k, d in [("stride", 1), ("padding", 0), ("dilation", 1)]}
    groups = attrs.get("groups", 1)
    w = params["c.weight"]
    y = conv_reference(x, w, params.get("c.bias"), groups=groups, **window)
    r = rng.standard_normal(y.shape).astype(np.float32)
    outs = ["c", "x.grad", *(f"{k}.grad" for k in sorted(params))]
    got = _run(opt, outs, {"x": x, "r": r, **params})
    np.testing.assert_allclose(got["c"], y, rtol=1e-4, atol=1e-5)
    dw = conv_weight_grad_reference(x, r, kernel=w.shape[2:], groups=groups, **window)
    np.testing.assert_allclose(got["c.weight.grad"], dw, rtol=1e-4, atol=1e-4)
    dx = conv_input_grad_reference(r, w, x, groups=groups, **window)
    np.testing.assert_allclose(got["x.grad"], dx, rtol=1e-4, atol=1e-5)


def test_full_window_pass_keeps_a_lenet_training_step():
    g = graphc.parse(
        "x = input(float32, [N, 1, 12, 12])\ny = input(int64, [N])\n"
        "c = tanh(conv2d(x, 4, 5))\np = avg_pool2d(c, 2)\n"
        "f = tanh(conv2d(p, 12, 4))\nlogits = linear(flatten(f), 3)\n"
        "loss = cross_entropy(logits, y)\noutput(logits)\nminimize(loss)\n"
    )
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=5, seed=1)
    ref = _run_step(ts, ts.graph, feeds)
    opt = optimize(ts.graph, passes=[FULL])
    assert sum(n.op.startswith("conv") for n in opt.nodes.values()) == 2  # only the 5x5 layer's
    _assert_same(ref, _run_step(ts, opt, feeds))
