"""fold_input_projection (graphc/passes/projection.py) on recurrent training steps, in ORT.

Reference: ONNX Runtime running the unoptimized step (-O0) on the same batch;
the pass (after the passes that form its pattern) and -O2 must give the same
loss, new parameters and optimizer state. Node counts check what the pass
claims: no [N, T, K] projection, bias add or batched weight product is left,
and the bias gradient comes out of the weight's GEMM.
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

import graphc
from graphc.feeds import random_feeds
from graphc.ir import Graph
from graphc.passes import PIPELINES, optimize
from graphc.runtime import make_session
from graphc.train.step import StepConfig, build_step
from recurrent_models import PASS_MODELS, T

MODELS = PASS_MODELS
# what forms the pattern: the recurrent gemm and the one split of the projection
BEFORE = ["fuse_gemm", "static_reshape", "merge_step_slices", "merge_step_sums"]
PASS = ["fold_input_projection", "eliminate_dead_code"]


def ops(g: Graph) -> collections.Counter:
    return collections.Counter(n.op for n in g.nodes.values())


def run_step(ts, graph, feeds):
    model = dataclasses.replace(ts, graph=graph).export()
    sess = make_session(model, threads=1)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def assert_close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def weight_products(g: Graph) -> int:
    """Batched products transpose(X) @ dZ over a sequence (a weight's gradient before the
    batch sum)."""
    producers = g.producers()
    return sum(
        n.op == "matmul"
        and g.types[n.outputs[0]].rank == 3
        and getattr(producers.get(n.inputs[0]), "op", None) == "transpose"
        for n in g.nodes.values()
    )


def time_sums(g: Graph) -> int:
    """Sums over the batch and time axes (a bias's gradient over a sequence)."""
    return sum(n.op == "reduce_sum" and n.attrs["axes"] == (0, 1) for n in g.nodes.values())


def stacks(g: Graph) -> int:
    """Concats of the T steps' pre-activation gradients into one [N, T*K] stack."""
    return sum(
        n.op == "concat" and bool(n.tags.get("grad")) and len(n.inputs) >= T
        for n in g.nodes.values()
    )


def projections(g: Graph) -> int:
    """Whole-sequence input projections: a matmul of the input x by a weight."""
    return sum(n.op == "matmul" and n.inputs[0] == "x" for n in g.nodes.values())


@pytest.fixture(scope="module", params=sorted(MODELS))
def step(request):
    g = graphc.parse(MODELS[request.param])
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=3, seed=7)
    return request.param, ts, feeds, run_step(ts, ts.graph, feeds)


def test_the_pass_keeps_the_training_step(step):
    _, ts, feeds, ref = step
    assert_close(ref, run_step(ts, optimize(ts.graph, passes=BEFORE + PASS), feeds))


def test_o2_keeps_the_training_step(step):
    _, ts, feeds, ref = step
    assert "fold_input_projection" in PIPELINES[2]
    o2 = [p for p in PIPELINES[2] if p != "fuse_optimizer_update"]  # same step interface
    assert_close(ref, run_step(ts, optimize(ts.graph, passes=o2), feeds))


def test_what_the_pass_removes(step):
    name, ts, _, _ = step
    before = optimize(ts.graph, passes=BEFORE)
    after = optimize(before, passes=PASS)
    n0, n1 = ops(before), ops(after)
    note = after.meta["pass_stats"][0].note
    # backward, every kind: each batched weight product (the recurrent layer's input
    # weight; on a sequence output also the linear layer's) and the bias's sum over N and
    # T become one 2-D gemm, the bias as its last row
    fired = weight_products(before)
    assert fired >= 1 and weight_products(after) == 0
    assert f"projection_grads x{fired}" in note
    assert n1["transpose"] == n0["transpose"] - fired
    assert time_sums(after) == time_sums(before) - 1  # (a linear layer on a sequence keeps its)
    assert projections(before) == 1
    # forward: no whole-sequence projection, bias add or split of it is left; every step's
    # forward gemm but the first contracts over [x_t, 1, h] and has no C (rnn, lstm: the
    # recurrent gemm took the slice in; gru: one gemm gives r and z summed and the
    # candidate's two parts apart, four gates wide)
    rule = "gate_projection" if name.startswith("gru") else "step_projection"
    assert projections(after) == 0 and f"{rule} x1" in note
    steps = [
        n
        for n in after.nodes.values()
        if n.op == "gemm" and not n.tags.get("grad") and after.types[n.inputs[0]].rank == 2
    ]
    assert len(steps) == T and all(not n.inputs[2:] or not n.inputs[2] for n in steps)
    widths = sorted(after.types[n.inputs[0]].shape[1] for n in steps)
    assert widths == [2 + 1] + [2 + 1 + 4] * (T - 1)  # F + ones (+ units)
    # rnn, lstm: the recurrent weight's per-step gradient GEMMs read the forward's
    # [x_t, 1, h], so they give the input weight's and the bias's gradients too: the stack
    # of the step gradients over time is gone. The GRU keeps it (its recurrent weight's
    # gradient reads the gates' recurrent parts, not the slice's gradient), and so does
    # lstm_bptt2, whose one step in reach leaves no sum of terms to join.
    assert stacks(before) == 1
    assert stacks(after) == (1 if name.startswith("gru") or name == "lstm_bptt2" else 0)
    if name.startswith("gru"):
        outs = sorted(after.types[n.outputs[0]].shape[1] for n in steps)
        assert outs == [3 * 4] + [4 * 4] * (T - 1)
        assert "add" not in {after.producers()[n.inputs[0]].op for n in steps[1:]}


def test_the_pass_is_idempotent(step):
    _, ts, _, _ = step
    once = optimize(ts.graph, passes=BEFORE + PASS)
    twice = optimize(once, passes=PASS)
    assert ops(twice) == ops(once) and twice.meta["pass_stats"][0].note == ""


def test_other_readers_of_the_slices_keep_the_projection():
    """A step slice read by more than its recurrent gemm (here also an output) is left."""
    from graphc.passes.projection import check_steps
    from graphc.passes.rewrite import protected

    g = graphc.parse(MODELS["rnn"])
    ts = build_step(g, StepConfig(optimizer="sgd"))
    before = optimize(ts.graph, passes=BEFORE)
    split = next(
        n
        for n in before.nodes.values()
        if n.op == "split" and len(n.outputs) == T and before.types[n.outputs[0]].shape[1] == 4
    )
    ctx = {"consumers": before.consumers(), "producers": before.producers()}
    ctx["protected"] = protected(before)
    assert not isinstance(check_steps(before, split, ctx), str)
    ctx["protected"] = protected(before) | {split.outputs[2]}
    assert isinstance(check_steps(before, split, ctx), str)


def test_the_sample_steps_lose_their_sequence_tensors():
    """On the bundled samples at -O2: no whole-sequence projection and no batched weight
    product is left; the step matches -O0's loss."""
    for name, left in (("rnn_sequence", 0), ("lstm_sequence", 0), ("gru_sequence", 0)):
        g = graphc.load(f"samples/{name}.gc")
        ts = build_step(g, StepConfig(optimizer="adam"))
        g2 = optimize(ts.graph, 2)
        assert projections(ts.graph) == 1 and projections(g2) == left, name
        assert weight_products(ts.graph) == 1 and weight_products(g2) == 0, name
        feeds = random_feeds(g, batch=4, seed=1)
        loss0 = run_step(ts, ts.graph, feeds)[ts.graph.loss]
        loss2 = run_step(ts, g2, feeds)[ts.graph.loss]
        np.testing.assert_allclose(loss2, loss0, rtol=1e-5, err_msg=name)


STACKED = """\
x = input(float32, [N, 5, 2])
h0 = input(float32, [N, 4])
c0 = input(float32, [N, 4])
y = input(int64, [N])
s = lstm(x, h0, c0, 4, return_sequences=True)
h = rnn(s, 3)
logits = linear(h, 3)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


def test_stacked_layers_with_an_initial_state():
    """An LSTM given h0 and c0 (every step, the first included, has a recurrent gemm) under
    an RNN reading its output sequence (whose gradient still needs the dZ stack): both
    layers are folded, and the step matches -O0."""
    g = graphc.parse(STACKED)
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=3, seed=2)
    ref = run_step(ts, ts.graph, feeds)
    o2 = optimize(ts.graph, passes=[p for p in PIPELINES[2] if p != "fuse_optimizer_update"])
    note = next(s.note for s in o2.meta["pass_stats"] if s.name == "fold_input_projection")
    assert note == "step_projection x2, projection_grads x2"
    assert weight_products(o2) == 0
    assert not any(
        n.op == "matmul"
        and o2.types[n.outputs[0]].rank == 3
        and o2.types[n.inputs[1]].rank == 2
        and "grad" not in n.tags
        for n in o2.nodes.values()
    )  # no whole-sequence projection in the forward
    assert_close(ref, run_step(ts, o2, feeds))
