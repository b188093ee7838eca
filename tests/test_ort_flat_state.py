"""-O2's flat optimizer state (fuse_optimizer_update) against -O0 on ONNX Runtime.

The reference is the unoptimized step run by the same StepRunner: after
several steps (each feeding the last one's outputs back) the -O2 runner,
whose parameters and optimizer slots live in flat buffers, must hold the
same logical parameters and slots. A wrong offset, order or feedback in the
flat layout shows up as a mismatch after the second step.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest

import graphc
from graphc.feeds import random_feeds
from graphc.passes import optimize
from graphc.train import layout
from graphc.train.loop import TrainConfig, Trainer
from graphc.train.runner import Evaluator, StepRunner, first_nonfinite
from graphc.train.step import StepConfig, build_step

MLP = """\
x = input(float32, [N, 10])
y = input(int64, [N])
h1 = relu(linear(x, 12))
h2 = tanh(linear(h1, 8))
logits = linear(h2, 4)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""

BN_DROPOUT = """\
x = input(float32, [N, 2, 6, 6])
y = input(int64, [N])
c = relu(batch_norm(conv2d(x, 3, 3, padding=1, bias=False)))
f = dropout(flatten(max_pool2d(c, 2)), rate=0.3)
h = relu(batch_norm(linear(f, 8)))
logits = linear(h, 3)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""

STEPS = 4


def batches(g, n=STEPS, batch=6):
    return [random_feeds(g, batch=batch, seed=10 + i) for i in range(n)]


def runner(g, cfg, level, frozen=()):
    for name in frozen:
        g.params[name].frozen = True
    ts = build_step(g, cfg)
    ts.graph = optimize(ts.graph, level)
    return StepRunner(ts, threads=1)


def train(r, feeds_list, lr):
    return [r.step(f, lr, i) for i, f in enumerate(feeds_list)]


def assert_same_state(a, b, rtol=2e-4, atol=2e-6):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize(
    "opt", ["sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw", "adagrad", "adadelta"]
)
def test_every_optimizer_matches_o0_over_several_steps(opt):
    g = graphc.parse(MLP)
    cfg = StepConfig(optimizer=opt, lr=0.05 if opt in ("sgd", "momentum", "nesterov") else None)
    r0, r2 = runner(g, cfg, 0), runner(g, cfg, 2)
    lay = r2.ts.layout
    flat = {m for e in lay if e["buffer"].startswith("params.flat") for m, _ in e["members"]}
    if opt in ("sgd", "momentum"):  # 2-4 nodes per parameter: flat, the copies cost more
        assert not lay and r2.ts.carried == r0.ts.carried
    else:
        assert flat == set(r2.ts.params)  # every parameter of this MLP updates alike
    if lay:
        assert not set(r2.ts.carried) & flat
        groups = [e for e in lay if e["buffer"].startswith("params.flat")]
        assert len(groups) == 1 and len(lay) == 1 + len(r2.ts.optimizer.slots)
        # each buffer at the position of its first member (docs/training.md)
        first = {e["buffer"]: r2.ts.logical.index(e["members"][0][0]) for e in lay}
        assert [c for c in r2.ts.carried if c in first] == sorted(first, key=first.get)
    feeds = batches(g)
    lr = cfg.learning_rate()
    np.testing.assert_allclose(train(r2, feeds, lr), train(r0, feeds, lr), rtol=1e-4)
    s0, s2 = r0.state(), r2.state()
    assert set(s2) == set(r2.ts.logical)
    assert_same_state(s0, s2)
    # training moved the parameters: the comparison above is not of two initial states
    assert not np.allclose(s2["logits.weight"], r2.ts.init["logits.weight"])


@pytest.mark.parametrize(
    "extra",
    [
        {"l2": 1e-2},
        {"clip_norm": 0.05},
        {"clip_value": 0.01, "clip_norm": 0.1},
    ],
    ids=["l2", "clip_norm", "clip_value+norm"],
)
def test_regularized_and_clipped_updates_match_o0(extra):
    g = graphc.parse(MLP)
    cfg = StepConfig(optimizer="adam", **extra)
    r0, r2 = runner(g, cfg, 0), runner(g, cfg, 2)
    assert r2.ts.layout
    feeds = batches(g)
    np.testing.assert_allclose(train(r2, feeds, 1e-2), train(r0, feeds, 1e-2), rtol=1e-4)
    assert_same_state(r0.state(), r2.state())


def test_large_parameters_keep_their_own_update():
    g = graphc.parse("""\
x = input(float32, [N, 300])
y = input(int64, [N])
h = relu(linear(x, 256))
logits = linear(h, 3)
loss = cross_entropy(logits, y)
minimize(loss)
""")
    cfg = StepConfig(optimizer="adam")
    r0, r2 = runner(g, cfg, 0), runner(g, cfg, 2)
    big = "h_linear.weight"
    assert g.params[big].shape == (300, 256)  # 76,800 elements: over MAX_ELEMENTS
    members = {m for e in r2.ts.layout for m, _ in e["members"]}
    assert big not in members and "h_linear.bias" in members
    assert big in r2.ts.carried and f"opt.m.{big}" in r2.ts.carried
    feeds = batches(g, 2)
    np.testing.assert_allclose(train(r2, feeds, 1e-3), train(r0, feeds, 1e-3), rtol=1e-4)
    assert_same_state(r0.state(), r2.state())


def test_frozen_layers_and_batch_norm_statistics_stay_apart():
    g0, g2 = graphc.parse(BN_DROPOUT), graphc.parse(BN_DROPOUT)
    frozen = ["c_batch_norm_conv2d.weight"]
    assert frozen[0] in g0.params
    cfg = StepConfig(optimizer="nesterov", lr=0.05)  # flat (momentum is not)
    r0, r2 = runner(g0, cfg, 0, frozen), runner(g2, cfg, 2, frozen)
    ts = r2.ts
    members = {m for e in ts.layout for m, _ in e["members"]}
    assert members and not members & set(ts.stats) and frozen[0] not in members
    assert set(ts.stats) <= set(ts.carried)  # running statistics are carried by name
    feeds = batches(g0)
    np.testing.assert_allclose(train(r2, feeds, 0.05), train(r0, feeds, 0.05), rtol=1e-4)
    s0, s2 = r0.state(), r2.state()
    assert_same_state(s0, s2)
    assert not np.allclose(s2[ts.stats[0]], ts.init[ts.stats[0]])  # statistics were updated


def test_checkpoints_resume_across_optimization_levels(tmp_path):
    g = graphc.parse(MLP)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 10)).astype("float32")
    y = rng.integers(0, 4, 48)
    path = str(tmp_path / "run.npz")

    def trainer(level):
        ts = build_step(g, StepConfig(optimizer="adam", lr=1e-2))
        ts.graph = optimize(ts.graph, level)
        return Trainer(ts, threads=1)

    opts = dict(batch_size=16, verbose=0, checkpoint=path)
    t1 = trainer(1)
    t1.fit(x, y, TrainConfig(epochs=1, **opts))
    saved = np.load(path)
    assert "carried/opt.m.logits.weight" in saved.files  # logical names in the file
    t2 = trainer(2)
    assert t2.ts.layout
    t2.fit(x, y, TrainConfig(epochs=2, resume=True, **opts))
    assert not any(k.startswith("carried/params.flat") for k in np.load(path).files)
    ref = trainer(1)
    ref.fit(x, y, TrainConfig(epochs=2, **{**opts, "checkpoint": str(tmp_path / "ref.npz")}))
    assert_same_state(ref.runner.state(), t2.runner.state())
    # and back: the -O2 checkpoint resumes under -O0
    t0 = trainer(0)
    t0.fit(x, y, TrainConfig(epochs=3, resume=True, **opts))
    ref.fit(
        x,
        y,
        TrainConfig(epochs=3, resume=True, **{**opts, "checkpoint": str(tmp_path / "ref.npz")}),
    )
    assert_same_state(ref.runner.state(), t0.runner.state())
    # the model the four steps were built from was not touched by the -O2 one
    assert set(g.params) == set(graphc.parse(MLP).params)
    assert not any(k.startswith("params.flat") for k in g.params)


def test_evaluator_reads_the_flat_buffers():
    g = graphc.parse(BN_DROPOUT)
    r2 = runner(g, StepConfig(optimizer="adam", lr=1e-2), 2)
    train(r2, batches(g), 1e-2)
    feeds = random_feeds(g, batch=20, seed=99)
    ts = r2.ts
    outs = (ts.loss, ts.pred)
    on_device = Evaluator(ts, r2).run(outs, feeds, batch_size=8)
    names = {i.name for i in Evaluator(ts, r2)._session(outs).get_inputs()}
    assert any(k.startswith("params.flat") for k in names)  # no unpacked copy is bound
    plain = build_step(graphc.parse(BN_DROPOUT), StepConfig(optimizer="adam"))
    from_state = Evaluator(plain, None).run(outs, feeds, batch_size=8, state=r2.state())
    for a, b in zip(on_device, from_state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    acc = lambda logits: float(np.mean(np.argmax(logits, 1) == feeds["y"]))
    assert acc(on_device[1]) == acc(from_state[1])
    fresh = Evaluator(ts, None).run(outs, feeds)  # no runner: the initial values, packed
    ref = Evaluator(plain, None).run(outs, feeds)
    np.testing.assert_allclose(fresh[1], ref[1], rtol=1e-5, atol=1e-6)


def test_nan_diagnosis_names_the_flat_update():
    g = graphc.parse(MLP)
    r2 = runner(g, StepConfig(optimizer="adam"), 2)
    feeds = batches(g, 1)[0]
    state = r2.state()
    state["opt.v.h2_linear.bias"] = -np.ones_like(state["opt.v.h2_linear.bias"])  # sqrt(-1)
    err = first_nonfinite(r2.ts, feeds, state, 1e-3, 0)
    node = r2.ts.graph.nodes[err.node]
    assert "in the optimizer update" in err.message and node.op == "sqrt"
    assert node.tags.get("fused_update")  # the flat update, run on the packed state
    state = r2.state()
    state["logits.bias"] = state["logits.bias"] * np.nan
    err = first_nonfinite(r2.ts, feeds, state, 1e-3, 3)
    assert "'logits.bias' was already non-finite before step 3" in err.message


def test_exported_flat_step_describes_its_layout():
    g = graphc.parse(MLP)
    ts = build_step(g, StepConfig(optimizer="adam"))
    ts.graph = optimize(ts.graph, 2)
    model = ts.export()
    onnx.checker.check_model(model, full_check=True)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["graphc.train_step"])
    assert meta["flat_state"] == ts.layout and meta["carried"] == ts.carried
    assert [i.name for i in model.graph.input] == ts.inputs
    assert [o.name for o in model.graph.output] == ts.outputs
    # a user of the ONNX file packs the logical state with the metadata alone
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = batches(g, 1)[0]
    state = {k: v + 0.01 for k, v in ts.init.items()}
    packed = layout.pack(state, meta["flat_state"])
    out = dict(zip(ts.outputs, sess.run(None, {**feeds, **packed})))
    new = layout.unpack(out, meta["flat_state"], "new.")
    ref_ts = build_step(graphc.parse(MLP), StepConfig(optimizer="adam"))
    ref_sess = ort.InferenceSession(
        ref_ts.export().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    ref = dict(zip(ref_ts.outputs, ref_sess.run(None, {**feeds, **state})))
    assert_same_state(ref, new)


def test_the_layout_survives_copies_and_later_passes():
    g = graphc.parse(MLP)
    ts = build_step(g, StepConfig(optimizer="adam"))
    once = optimize(ts.graph, 2)
    again = optimize(
        once.copy(),
        passes=[
            "fuse_optimizer_update",  # a second run finds nothing new to join
            "eliminate_common_subexpressions",
            "eliminate_dead_code",
            "order_for_memory",
        ],
    )
    assert again.meta["pass_stats"][0].note.startswith("nothing fused")
    assert again.meta["flat_state"] == once.meta["flat_state"]
    assert set(again.params) == set(once.params) and "params.flat0" in again.params
    feeds = batches(g, 1)[0]
    r1, r2 = (StepRunner(dataclasses.replace(ts, graph=x), threads=1) for x in (once, again))
    np.testing.assert_allclose(r2.step(feeds, 1e-3, 0), r1.step(feeds, 1e-3, 0), rtol=1e-6)
    assert_same_state(r1.state(), r2.state(), rtol=1e-6, atol=0)


def test_pack_and_unpack_are_inverse_and_check_shapes():
    lay = [{"buffer": "params.flat0", "dtype": "float32", "members": [["a", [2, 3]], ["b", [4]]]}]
    vals = {"a": np.arange(6, dtype="float32").reshape(2, 3), "b": np.ones(4, "float32"), "c": 1}
    packed = layout.pack(vals, lay)
    assert set(packed) == {"params.flat0", "c"} and packed["params.flat0"][:6].tolist() == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    back = layout.unpack(packed, lay)
    assert set(back) == {"a", "b", "c"}
    np.testing.assert_array_equal(back["a"], vals["a"])
    assert layout.carried_names(["x", "a", "y", "b"], lay) == ["x", "params.flat0", "y"]
    with pytest.raises(graphc.GraphError, match="shape"):
        layout.pack({"a": np.zeros(6, "float32"), "b": np.ones(4, "float32")}, lay)


@pytest.mark.parametrize("level", [0, 2])
def test_device_state_is_aligned_for_vector_kernels(level):
    """Both sets of state buffers sit on 64-byte boundaries (ORT's own allocations), also
    after set_state: NumPy's memory is only 16-byte aligned, and an OrtValue made from it
    on the CPU would share it."""
    g = graphc.parse(MLP)
    r = runner(g, StepConfig(optimizer="adam"), level)
    r.set_state(r.state())
    for side in r.buffers:
        assert side and all(v.data_ptr() % 64 == 0 for v in side.values())
    before = r.state()
    r.step(batches(g, 1)[0], 0.01, 0)
    r.rollback()
    assert_same_state(before, r.state(), rtol=0, atol=0)  # filled with the values given
