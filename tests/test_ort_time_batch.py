"""reassociate_factors and batch_step_factors (graphc/passes/time_batch.py) in ORT.

Reference: ONNX Runtime running the unoptimized training step (-O0) on the
same batch. Each pass alone, both, and -O2 with them must give the same loss,
new parameters and optimizer state (reassociation changes float rounding
only, hence the tolerances). Node counts check what each pass claims, on small
unrolled loops (T = 5, 4 units) so the file stays fast.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

import graphc
from graphc.builder import Builder
from graphc.feeds import random_feeds
from graphc.interp import evaluate
from graphc.ir import Graph
from graphc.passes import PIPELINES, optimize
from graphc.passes.time_batch import backward_values
from graphc.runtime import make_session
from graphc.train.step import StepConfig, build_step
from recurrent_models import LAST, SEQ, T  # the shared small models

MODELS = {
    "rnn": LAST.format(T=T, kind="rnn", extra=""),
    "lstm": LAST.format(T=T, kind="lstm", extra=""),
    "gru": LAST.format(T=T, kind="gru", extra=""),
    "lstm_bptt2": LAST.format(T=T, kind="lstm", extra=", bptt=2"),
    "lstm_seq": SEQ.format(T=T, kind="lstm", extra=""),
    "gru_seq_bptt2": SEQ.format(T=T, kind="gru", extra=", bptt=2"),
}

MINE = ["reassociate_factors", "batch_step_factors"]


def with_passes(extra: list[str]) -> list[str]:
    """-O2 with `extra` where -O2 runs reassociate_factors (before CSE and the flat update)."""
    p = [x for x in PIPELINES[2] if x not in MINE]
    i = p.index("merge_step_sums") + 1
    return p[:i] + extra + p[i:]


def run_step(ts, graph, feeds):
    """The step's outputs by logical name (flat optimizer buffers unpacked)."""
    step = dataclasses.replace(ts, graph=graph)
    sess = make_session(step.export(), threads=1)
    names = [o.name for o in sess.get_outputs()]
    return step.unpack(dict(zip(names, sess.run(None, feeds))), "new.")


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(n.op for n in g.nodes.values())


def grad_muls(g: Graph) -> int:
    """Multiplications on the gradient's path (at least one operand carries the gradient)."""
    back = backward_values(g)
    return sum(
        1
        for n in g.nodes.values()
        if n.op == "mul" and not n.tags.get("train") and any(v in back for v in n.inputs)
    )


@pytest.fixture(scope="module", params=sorted(MODELS))
def step(request):
    g = graphc.parse(MODELS[request.param])
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=3, seed=7)
    return request.param, ts, feeds, run_step(ts, ts.graph, feeds)


@pytest.mark.parametrize(
    "passes",
    [
        ["reassociate_factors"],
        ["batch_step_factors"],
        MINE,
        with_passes([]),
        PIPELINES[2],
        with_passes(MINE),
    ],
    ids=["reassociate", "batch", "both", "O2-without", "O2", "O2+batch"],
)
def test_passes_keep_the_recurrent_training_step(step, passes):
    _, ts, feeds, ref = step
    assert_close(ref, run_step(ts, optimize(ts.graph, passes=passes), feeds))


def test_node_counts(step):
    name, ts, _, _ = step
    g0 = optimize(ts.graph, passes=with_passes([]))  # -O2 without these passes
    g1 = optimize(g0, passes=["reassociate_factors", "eliminate_dead_code"])
    g2 = optimize(g1, passes=["batch_step_factors", "eliminate_dead_code"])
    g1c = optimize(g1, passes=["eliminate_common_subexpressions", "eliminate_dead_code"])
    # the steps the gradient runs through (bptt=2 with only the last state in the loss: one)
    steps = 1 if name == "lstm_bptt2" else T
    if name.startswith("lstm"):
        # each gate's derivative chain (d * a) * b -> d * (a * b): per step, the output,
        # input and forget gates 3 -> 1 multiplication each, the two tanh' 2 -> 1 each (the
        # first step has no forget-gate chain: c_0 = 0)
        assert grad_muls(g0) - grad_muls(g1) >= 8 * steps - 2, (grad_muls(g0), grad_muls(g1))
        # the two tanh' factors o (1 - tanh(c)^2), i (1 - g^2) -> o - h tanh(c), i - (i g) g:
        # the forward's h = o tanh(c) and i g are reused, one node less each
        assert len(g1.nodes) <= len(g0.nodes) - 2 * steps, (len(g0.nodes), len(g1.nodes))
        # the gathered factors o * tanh(c), i * g and f * c_prev are the forward's own
        # products: CSE shares them
        assert len(g1c.nodes) <= len(g0.nodes) - (3 * steps - 1), (len(g0.nodes), len(g1c.nodes))
    if name.startswith("gru"):
        assert grad_muls(g0) - grad_muls(g1) >= 3 * T, (grad_muls(g0), grad_muls(g1))
        # h_t = z h_{t-1} + (1 - z) n: dz = dh h_{t-1} - dh n -> dh (h_{t-1} - n), two nodes
        # less per step (the first step has no h_{t-1} term: h_0 = 0)
        assert ops(g0)["neg"] - ops(g1)["neg"] == T - 1
        # and tanh' (1 - z)(1 - n^2) -> (1 - z) - ((1 - z) n) n, one node less per step
        assert len(g1.nodes) <= len(g0.nodes) - 3 * T + 2, (len(g0.nodes), len(g1.nodes))
    if name == "rnn":
        assert grad_muls(g1) == grad_muls(g0)  # tanh' is d * (1 - h^2): nothing to gather
    # batch_step_factors: the per-step derivative factors (1 - h^2 for the rnn) are computed
    # once over the steps stacked along the last axis
    b1, b2 = ops(g1), ops(g2)
    subs = b1["sub"] - b2["sub"]
    assert subs >= max(steps - 1, 2) and b2["concat"] > b1["concat"] and b2["split"] > b1["split"]
    if name == "rnn":
        # T (mul h*h, sub) pairs -> one stacked pair: 2T - 2 nodes less, + one concat, one split
        assert len(g2.nodes) == len(g1.nodes) - (2 * T - 2) + 2
    assert len(g2.nodes) < len(g1.nodes)


def test_gradient_graph_is_unaffected_and_forward_graph_untouched():
    g = graphc.parse(MODELS["lstm"])
    gg = graphc.grad(g)
    feeds = random_feeds(g, batch=3, seed=2)
    vals = {**g.param_values(), **feeds}
    outs = list(gg.outputs)
    ref = evaluate(gg, vals, outputs=outs)
    g2 = optimize(gg, passes=MINE)
    assert len(g2.nodes) < len(gg.nodes)
    got = evaluate(g2, vals, outputs=outs)
    assert_close(ref, got)
    # no gradient, nothing on the backward side: nothing fires on an inference graph
    fwd = optimize(g, passes=MINE)
    assert len(fwd.nodes) == len(g.nodes)


def _factor_graph(chained: bool) -> Graph:
    """Three copies of (1 - x_k * x_k) * s, as gradient nodes; `chained`: x_{k+1} is copy k."""
    b = Builder("g", tags={"grad": True})
    xs = [b.input(f"x{k}", ("N", 6)) for k in range(3)]
    s = b.const(np.float32(0.5))
    one = b.const(np.float32(1.0))
    outs = []
    for k in range(3):
        x = xs[k]
        if chained and outs:
            # a view between copies: not element-wise, so each copy is its own isomorphic
            # piece, and only the independence check keeps them apart
            x = b.reshape(outs[-1], shape=(0, 6))
        outs.append((one - x * x) * s)
    # (graph outputs are never stacked away: read them through a view)
    b.output(*(b.reshape(o, shape=(0, 6)) for o in outs))
    return b.graph


@pytest.mark.parametrize("chained", [False, True])
def test_batch_step_factors_against_numpy(chained):
    g = _factor_graph(chained)
    g2 = optimize(g, passes=["batch_step_factors", "eliminate_dead_code"])
    rng = np.random.default_rng(0)
    feeds = {f"x{k}": rng.standard_normal((4, 6)).astype(np.float32) for k in range(3)}
    want, prev = [], None
    for k in range(3):
        x = feeds[f"x{k}"] if prev is None or not chained else prev
        prev = (1 - x * x) * np.float32(0.5)
        want.append(prev)
    got = evaluate(g2, feeds, outputs=g.outputs)
    assert g2.outputs == g.outputs
    for o, w in zip(g.outputs, want):
        np.testing.assert_allclose(got[o], w, rtol=1e-6, atol=1e-7)
    # independent copies: one stacked computation; a chain cannot be computed at once
    stacked = ops(g2)["split"] == 1 and ops(g2)["mul"] == 2 and ops(g2)["sub"] == 1
    assert stacked != chained, ops(g2)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_saturated_gates_keep_the_gradients(name):
    """Large inputs saturate the gates (s, tanh near 0 or ±1), where 1 - t^2 cancels.

    The rewritten factors (o - h tanh(c) instead of o (1 - tanh(c)^2), ...) must
    stay as accurate as autodiff's form: Adam's first moment after one step is
    (1 - beta1) * gradient, compared relative to its largest entry.
    """
    g = graphc.parse(MODELS[name])
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=16, seed=3)
    feeds["x"] = feeds["x"] * 8
    ref = run_step(ts, ts.graph, feeds)
    out = run_step(ts, optimize(ts.graph, 2), feeds)
    for k in ref:
        if k.startswith("new.opt.m."):
            scale = float(np.max(np.abs(ref[k])))
            np.testing.assert_allclose(out[k], ref[k], rtol=0, atol=1e-5 * scale, err_msg=k)
