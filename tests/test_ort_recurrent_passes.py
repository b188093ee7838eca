"""The unrolled-loop passes (graphc/passes/unroll.py) on recurrent training steps, in ORT.

Reference: ONNX Runtime running the unoptimized step (-O0) on the same batch;
each pass alone, and the -O2 pipeline, must give the same loss, new
parameters and optimizer state. Node counts check that each pass does what it
claims (one gemm for the recurrent weight's gradient instead of T - 1, no
per-step squeeze or Shape). Small sizes (T = 5, 4 units) keep it fast.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

import graphc
from graphc.builder import Builder
from graphc.export import export
from graphc.feeds import random_feeds
from graphc.interp import evaluate
from graphc.ir import Graph
from graphc.passes import PIPELINES, optimize
from graphc.passes.unroll import reshape_spec
from graphc.runtime import make_session
from graphc.train.step import StepConfig, build_step
from recurrent_models import LAST, PASS_MODELS, T  # the shared small models

MINE = ["static_reshape", "merge_step_slices", "merge_step_sums"]


MODELS = PASS_MODELS

# every variant of -O2 minus the flat optimizer update, whose step interface may differ
O2_SAME_OUTPUTS = [p for p in PIPELINES[2] if p != "fuse_optimizer_update"]


def run_step(ts, graph, feeds):
    model = dataclasses.replace(ts, graph=graph).export()
    sess = make_session(model, threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds))), model


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


def onnx_ops(model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph.node)


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(n.op for n in g.nodes.values())


@pytest.fixture(scope="module", params=sorted(MODELS))
def step(request):
    g = graphc.parse(MODELS[request.param])
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=3, seed=5)
    ref, model = run_step(ts, ts.graph, feeds)
    return request.param, ts, feeds, ref, model


@pytest.mark.parametrize(
    "passes",
    [
        ["static_reshape"],
        ["merge_step_slices"],
        ["merge_step_sums"],
        ["merge_step_slices", "merge_step_sums"],
        ["fuse_gemm", "batch_weight_grads"],
        ["merge_step_slices", "fuse_gemm", "batch_weight_grads"],  # reuses the dz stack
    ],
    ids=lambda p: "+".join(p),
)
def test_each_pass_keeps_the_recurrent_training_step(step, passes):
    _, ts, feeds, ref, _ = step
    out, _ = run_step(ts, optimize(ts.graph, passes=passes), feeds)
    assert_close(ref, out)


def test_o2_keeps_the_recurrent_training_step(step):
    _, ts, feeds, ref, model0 = step
    g2 = optimize(ts.graph, passes=O2_SAME_OUTPUTS)
    out, model2 = run_step(ts, g2, feeds)
    assert_close(ref, out)
    # -O2 runs the unroll passes: no per-step Squeeze or Shape is left in the step (the
    # loss gradient may keep one Shape)
    assert all(p in PIPELINES[2] for p in MINE)
    before, after = onnx_ops(model0), onnx_ops(model2)
    assert before["Squeeze"] >= T - 1 and before["Shape"] >= T - 1, before
    # (a step no gradient reaches under bptt keeps its zeros_like, whose Shape stays)
    assert after["Squeeze"] == 0, after
    assert after["Shape"] <= before["Shape"] - ops(ts.graph)["reshape_like"], after
    assert len(model2.graph.node) < len(model0.graph.node) - 2 * T


def test_node_counts_of_each_pass(step):
    name, ts, _, _, _ = step
    g0 = ts.graph
    n0 = ops(g0)
    g = optimize(g0, passes=["static_reshape"])
    assert ops(g)["reshape_like"] == 0 and n0["reshape_like"] >= 1
    g = optimize(g0, passes=["merge_step_slices", "eliminate_dead_code"])
    # T squeezes -> one reshape; T per-step unsqueezes (reshape_like) -> one reshape
    assert ops(g)["squeeze"] == 0 and n0["squeeze"] == T
    saved = (T - 1) + (T - 1 if n0["zeros_like"] == 0 else 0)
    assert len(g.nodes) <= len(g0.nodes) - saved, (len(g0.nodes), len(g.nodes))
    g1 = optimize(g0, passes=["fuse_gemm"])
    g2 = optimize(g1, passes=["batch_weight_grads", "eliminate_dead_code"])
    # the recurrent weight's gradient: one gemm over all steps instead of T - 1
    removed = ops(g1)["gemm"] - ops(g2)["gemm"]
    # (bptt=2 with only the last state in the loss: one step's product, nothing to batch)
    expected = 0 if name == "lstm_bptt2" else T - 2
    assert removed == expected, (ops(g1)["gemm"], ops(g2)["gemm"])
    # after merge_step_slices the b_t are already stacked (rnn, lstm): only the a_t are copied
    g1 = optimize(g0, passes=["merge_step_slices", "fuse_gemm"])
    g2 = optimize(g1, passes=["batch_weight_grads", "eliminate_dead_code"])
    assert ops(g1)["gemm"] - ops(g2)["gemm"] == expected
    if name in ("rnn", "lstm"):
        assert ops(g2)["concat"] == ops(g1)["concat"] + 1
    # gru: the per-step bias_hn gradients, T reduce_sums -> one
    g = optimize(g0, passes=["merge_step_sums", "eliminate_dead_code"])
    if name.startswith("gru"):
        assert ops(g0)["reduce_sum"] - ops(g)["reduce_sum"] == T - 1
        assert ops(g)["add_n"] == ops(g0)["add_n"] + 1  # the sum now runs before the reduction
        # each step's input-gate gradient concat is inlined into the stack over time
        a = optimize(g0, passes=["merge_step_slices", "eliminate_dead_code"])
        b = optimize(a, passes=["merge_step_sums", "eliminate_dead_code"])
        assert ops(a)["concat"] - ops(b)["concat"] == T


def test_gradient_graph_and_forward_graph_are_unaffected():
    g = graphc.parse(MODELS["lstm"])
    gg = graphc.grad(g)
    params = g.param_values()
    feeds = random_feeds(g, batch=3, seed=2)
    outs = list(gg.outputs)

    def run(graph):
        sess = make_session(export(graph, outputs=outs, params_as_inputs=True, keep_inputs=True))
        names = {i.name for i in sess.get_inputs()}
        vals = {k: v for k, v in {**params, **feeds}.items() if k in names}
        return dict(zip(outs, sess.run(outs, vals)))

    ref = run(gg)
    for passes in (MINE, ["fuse_gemm", "batch_weight_grads"], PIPELINES[2]):
        assert_close(ref, run(optimize(gg, passes=passes)))
    # the inference forward keeps its ONNX LSTM lowering: nothing for the passes to do
    fwd = optimize(g, 2)
    assert ops(fwd)["lstm"] == 1 and ops(fwd)["squeeze"] == 0


def _builder_graph(shape, k, width_ops=True) -> Graph:
    """x -> split into unit slices along k -> squeeze -> tanh -> unsqueeze -> concat along k."""
    b = Builder("g")
    x = b.input("x", shape)
    parts = b.split(x, axis=k, sizes=(1,) * shape[k])
    ys = [b.unsqueeze(b.tanh(b.squeeze(p, axes=(k,))), axes=(k,)) for p in parts]
    b.output(b.concat(*ys, axis=k))
    return b.graph


@pytest.mark.parametrize(
    "shape,k,fires",
    [(("N", 4, 3), 1, True), (("N", 3, 2, 5), 1, True), (("N", 4, 3), 2, False)],
)
def test_merge_step_slices_against_numpy(shape, k, fires):
    g = _builder_graph(shape, k)
    g2 = optimize(g, passes=["merge_step_slices", "eliminate_dead_code"])
    x = np.random.default_rng(0).standard_normal((2, *shape[1:])).astype(np.float32)
    out = g.outputs[0]
    np.testing.assert_allclose(evaluate(g2, {"x": x}, outputs=[out])[out], np.tanh(x), rtol=1e-6)
    assert (ops(g2)["squeeze"] == 0) == fires
    assert (ops(g2)["unsqueeze"] == 0) == fires


def test_reshape_spec():
    assert reshape_spec(("N", 1, 8), ("N", 8)) == (0, 8)
    assert reshape_spec(("N", 8), ("N", 1, 8)) == (0, 1, 8)
    assert reshape_spec(("N", "T", 8), ("N", 8, "T")) == (0, 8, -1)  # one unknown: inferred
    assert reshape_spec(("N", "T"), ("T", "N")) is None  # two: -1 can stand for only one
    assert reshape_spec(("A", "B"), ("B", "A", "C")) is None  # two dims it cannot write
    assert reshape_spec((3, 0), (0, 3)) is None  # a literal 0 would mean "copy"


def test_each_rewrite_fires_once_per_site():
    """The split is rewritten once (a leftover squeeze once re-matched it every round, up
    to the driver's 200-round limit, which made -O2 quadratic in T), and the per-step
    rewrites next to the T-output split do not wait for one round each."""
    g = graphc.parse(LAST.format(T=12, kind="lstm", extra=""))
    ts = build_step(g, StepConfig(optimizer="adam"))
    out = optimize(ts.graph, passes=["static_reshape", "merge_step_slices"])
    notes = {s.name: s.note for s in out.meta["pass_stats"]}
    assert "split_squeeze x1" in notes["merge_step_slices"].split(", ")
    assert notes["static_reshape"] == "static_reshape x12"
    again = optimize(out, passes=["merge_step_slices"]).meta["pass_stats"][0]
    assert "split_squeeze" not in again.note
