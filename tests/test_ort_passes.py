"""Passes against ONNX Runtime: the exported training step before and after every pass.

The reference is ONNX Runtime itself running the unoptimized step (-O0) on
the same random batch; each pass alone, and the whole -O2 pipeline, must
give the same loss, metrics, new parameters and optimizer state.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

import graphc
from graphc.export import export
from graphc.feeds import random_feeds
from graphc.passes import PIPELINES, optimize
from graphc.runtime import make_session
from graphc.train.step import StepConfig, build_step

MLP = """\
x = input(float32, [N, 12])
y = input(int64, [N])
h1 = relu(linear(x, 16))
h2 = tanh(linear(h1, 16))
logits = linear(h2, 5)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""

CNN = """\
x = input(float32, [N, 2, 8, 8])
y = input(int64, [N])
c = relu(batch_norm(conv2d(x, 4, 3, padding=1, bias=False)))
p = flatten(max_pool2d(c, 2))
logits = linear(p, 3)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


def run_step(ts, graph, feeds):
    """The step's outputs by logical name (flat buffers unpacked), and the exported model."""
    step = dataclasses.replace(ts, graph=graph)
    model = step.export()
    sess = make_session(model, threads=1)
    names = [o.name for o in sess.get_outputs()]
    return step.unpack(dict(zip(names, sess.run(None, feeds))), "new."), model


def assert_close(a, b, rtol=1e-4, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.fixture(scope="module", params=[("mlp", "adam"), ("mlp", "momentum"), ("cnn", "sgd")])
def step(request):
    text, opt = request.param
    g = graphc.parse(MLP if text == "mlp" else CNN)
    ts = build_step(g, StepConfig(optimizer=opt))
    feeds = random_feeds(g, batch=6, seed=3)
    ref, _ = run_step(ts, ts.graph, feeds)
    return ts, feeds, ref


@pytest.mark.parametrize("name", sorted(set(PIPELINES[2])))
def test_each_pass_keeps_the_training_step(step, name):
    ts, feeds, ref = step
    out, _ = run_step(ts, optimize(ts.graph, passes=[name]), feeds)
    assert_close(ref, out)


@pytest.mark.parametrize("level", [1, 2])
def test_pipelines_keep_the_training_step(step, level):
    ts, feeds, ref = step
    out, _ = run_step(ts, optimize(ts.graph, level), feeds)
    assert_close(ref, out)


def test_fusions_show_up_in_the_exported_model():
    g = graphc.parse(MLP)
    ts = build_step(g, StepConfig(optimizer="adam"))
    model = dataclasses.replace(ts, graph=optimize(ts.graph, 2)).export()
    ops = [n.op_type for n in model.graph.node]
    assert "GatherElements" in ops and "LogSoftmax" in ops
    assert "SoftmaxCrossEntropyLoss" not in ops  # ORT expands it into its function body
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    trans = {(a.name, a.i) for n in gemms for a in n.attribute if a.name.startswith("trans")}
    assert ("transA", 1) in trans and ("transB", 1) in trans
    assert "Transpose" not in ops


@pytest.mark.parametrize("labels,classes", [("int64", 5), ("int32", 5), ("int64", 100)])
def test_labels_one_hot_is_one_set_of_nodes_in_what_ort_runs(tmp_path, labels, classes):
    """Loss, gradient and accuracy spell the labels' one-hot alike, so ORT's CSE keeps one."""
    import onnx
    import onnxruntime as ort

    g = graphc.parse(
        MLP.replace("int64", labels).replace("linear(h2, 5)", f"linear(h2, {classes})")
    )
    ts = build_step(g, StepConfig(optimizer="adam"))
    model = dataclasses.replace(ts, graph=optimize(ts.graph, 2)).export()
    assert [n.op_type for n in model.graph.node].count("Equal") >= 2
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ran.count("Equal") == 1 and ran.count("Unsqueeze") == 1


def test_optimizer_update_fusion_runs_the_update_over_one_flat_buffer():
    g = graphc.parse(MLP)
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=6, seed=1)
    ref, m0 = run_step(ts, ts.graph, feeds)
    fused = optimize(ts.graph, passes=["eliminate_common_subexpressions", "fuse_optimizer_update"])
    out, m1 = run_step(ts, fused, feeds)
    assert_close(ref, out)
    ops = [n.op_type for n in m1.graph.node]
    # the parameters and slots stay flat across steps: only the gradients are gathered
    # (one Concat) and only the parameters split for the forward pass (one Split)
    assert ops.count("Concat") == 1 and ops.count("Split") == 1
    assert ops.count("Sqrt") == 1  # Adam's sqrt once for all six parameters
    assert [n.op_type for n in m0.graph.node].count("Sqrt") == 6
    step = dataclasses.replace(ts, graph=fused)
    assert step.carried == ["params.flat0", "opt.m.params.flat0", "opt.v.params.flat0"]
    assert [i.name for i in m1.graph.input][-3:] == step.carried
    assert step.unpack(step.pack(ts.init)).keys() == ts.init.keys()


def test_recomputed_copies_survive_onnx_runtimes_own_cse(tmp_path):
    b = graphc.Builder("deep")
    x = b.input("x", ("N", 8))
    y = b.input("y", ("N",), "int64")
    h = x
    for i in range(10):
        h = h + b.relu(b.linear(h, 8, name=f"fc{i}"))
    b.minimize(b.cross_entropy(b.linear(h, 3, name="head"), y, name="loss"))
    ts = build_step(b.graph, StepConfig(optimizer="sgd"))
    feeds = random_feeds(b.graph, batch=6, seed=2)
    ref, _ = run_step(ts, ts.graph, feeds)
    rc = optimize(ts.graph, 2, memory_budget="auto")
    layers = sum(1 for n in rc.nodes.values() if n.tags.get("recompute") and n.op == "linear")
    assert layers >= 3
    out, _model = run_step(ts, rc, feeds)
    assert_close(ref, out)
    import onnxruntime as ort

    counts = []
    # under a memory budget -O2 keeps the per-parameter update (fuse_optimizer_update skips)
    plain = optimize(ts.graph, passes=[p for p in PIPELINES[2] if p != "fuse_optimizer_update"])
    assert "flat_state" not in rc.meta
    for graph in (plain, rc):
        m = dataclasses.replace(ts, graph=graph).export()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        import onnx

        counts.append(len(onnx.load(str(tmp_path / "opt.onnx")).graph.node))
    # the recomputed forward layers are still there after ORT's optimizer ran
    assert counts[1] >= counts[0] + layers


def test_gradient_graph_export_matches_after_o2():
    g = graphc.parse(MLP)
    bg = graphc.grad(g)
    outs = [bg.loss] + list(bg.meta["grads"].values())
    feeds = random_feeds(g, batch=5, seed=4)
    res = []
    for graph in (bg, optimize(bg, 2)):
        sess = make_session(export(graph, outputs=outs), threads=1)
        res.append(dict(zip(outs, sess.run(outs, feeds))))
    assert_close(res[0], res[1])


def test_batch_norm_folds_into_the_layer_before_it_for_inference():
    g = graphc.parse("""\
x = input(float32, [N, 3, 8, 8])
c = batch_norm(conv2d(x, 4, 3, padding=1, bias=False))
f = flatten(relu(c))
z = batch_norm(linear(f, 6))
output(z)
""")
    rng = np.random.default_rng(0)
    for name, p in g.params.items():  # non-trivial statistics, or folding would be a no-op
        positive = "running_var" in name or name.endswith("c.weight")
        p.value = (rng.random(p.shape) + 0.5 if positive else rng.standard_normal(p.shape)).astype(
            "float32"
        )
    folded = optimize(g, 2)
    assert "batch_norm" not in {n.op for n in folded.nodes.values()}
    x = {"x": rng.standard_normal((5, 3, 8, 8)).astype("float32")}
    a = make_session(export(g), threads=1).run(None, x)[0]
    b = make_session(export(folded), threads=1).run(None, x)[0]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
    # a training graph keeps its batch norms: there the parameters are what is trained
    step = build_step(
        graphc.parse("""\
x = input(float32, [N, 4])
y = input(int64, [N])
logits = batch_norm(linear(x, 3))
loss = cross_entropy(logits, y)
minimize(loss)
"""),
        StepConfig(optimizer="sgd"),
    )
    assert optimize(step.graph, passes=["fold_batch_norm"]).meta["pass_stats"][0].note == ""


@pytest.mark.parametrize(
    "call",
    [
        "binary_cross_entropy(sigmoid(z), t)",
        "binary_cross_entropy(z, t, from_logits=True, reduction='sum')",
    ],
)
def test_binary_cross_entropy_backward_fuses_into_one_expression(call):
    g = graphc.parse(f"""\
x = input(float32, [N, 6])
t = input(float32, [N, 3])
z = linear(relu(linear(x, 8)), 3)
loss = {call}
minimize(loss)
""")
    ts = build_step(g, StepConfig(optimizer="adam"))
    rng = np.random.default_rng(5)
    feeds = {
        "x": rng.standard_normal((7, 6)).astype("float32"),
        "t": rng.random((7, 3)).astype("float32"),
    }
    ref, _ = run_step(ts, ts.graph, feeds)
    fused = optimize(ts.graph, 2)
    assert "binary_cross_entropy_logits_grad" in {n.op for n in fused.nodes.values()}
    assert len(fused.nodes) < len(optimize(ts.graph, 1).nodes) - 8
    out, _ = run_step(ts, fused, feeds)
    assert_close(ref, out)


def test_batch_norm_backward_in_closed_form():
    g = graphc.parse("""\
x = input(float32, [N, 2, 6, 6])
y = input(int64, [N])
c = relu(batch_norm(conv2d(x, 4, 3, padding=1, bias=False)))
f = flatten(max_pool2d(c, 2))
h = relu(batch_norm(linear(f, 8), affine=False))
logits = linear(h, 3)
loss = cross_entropy(logits, y)
minimize(loss)
""")
    ts = build_step(g, StepConfig(optimizer="momentum"))
    feeds = random_feeds(g, batch=5, seed=7)
    ref, _ = run_step(ts, ts.graph, feeds)
    fused = optimize(ts.graph, passes=["fuse_batch_norm_grad", "eliminate_dead_code"])
    assert fused.meta["pass_stats"][0].note == "batch_norm_backward x2"
    assert len(fused.nodes) < len(ts.graph.nodes) - 15
    out, _ = run_step(ts, fused, feeds)
    assert_close(ref, out)
    out2, _ = run_step(ts, optimize(ts.graph, 2), feeds)
    assert_close(ref, out2)


def test_a_hand_written_cross_entropy_with_int_axes_is_fused():
    """axes=1 / axes=0 as plain ints (the reduce ops accept them) match like tuples do."""
    b = graphc.Builder("ce")
    x = b.input("x", ("N", 6))
    t = b.input("t", ("N", 4))
    logp = b.log_softmax(b.linear(x, 4, name="fc"), axis=1)
    loss = b.reduce_mean(-b.reduce_sum(t * logp, axes=1), axes=0)
    b.minimize(loss)
    g = graphc.grad(b.graph)
    opt = optimize(g, 2)
    assert "softmax_cross_entropy" in {n.op for n in opt.nodes.values()}
    outs = [g.loss] + list(g.meta["grads"].values())
    rng = np.random.default_rng(6)
    feeds = {
        "x": rng.standard_normal((5, 6)).astype(np.float32),
        "t": np.eye(4, dtype=np.float32)[rng.integers(0, 4, 5)],
    }
    ref = make_session(export(g, outputs=outs)).run(outs, feeds)
    got = make_session(export(opt, outputs=outs)).run(outs, feeds)
    for r, o in zip(ref, got):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-6)


def test_batch_sums_become_products_with_one_shared_ones_vector(tmp_path):
    """The bias gradients' sums over the batch run as ones[N] @ gy in what ORT runs, the
    ones vector made once; narrow rows (the logits' 5) keep their ReduceSum."""
    import onnx
    import onnxruntime as ort

    g = graphc.parse(MLP.replace("linear(x, 16)", "linear(x, 40)").replace("h1, 16", "h1, 33"))
    ts = build_step(g, StepConfig(optimizer="adam"))
    feeds = random_feeds(g, batch=7, seed=2)
    ref, _ = run_step(ts, ts.graph, feeds)
    opt = optimize(ts.graph, passes=["sum_batch_as_gemv"])
    sums = [n for n in opt.nodes.values() if n.op == "batch_sum"]
    assert sorted(opt.types[n.outputs[0]].shape for n in sums) == [(33,), (40,)]
    assert {n.inputs[1] for n in sums} == {"x"}  # one source for every ones vector
    assert any(
        n.op == "reduce_sum" and opt.types[n.inputs[0]].shape == ("N", 5)
        for n in opt.nodes.values()
    )
    out, model = run_step(ts, opt, feeds)
    assert_close(ref, out)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ran = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ran.count("ConstantOfShape") == 1 and ran.count("MatMul") >= 2


CONV_RELU = """\
x = input(float32, [N, 2, 8, 8])
y = input(int64, [N])
c = relu(conv2d(x, 4, 3, padding=1))
logits = linear(flatten(c), 3)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


@pytest.mark.parametrize(
    "text,fused", [(MLP, "FusedGemm"), (CONV_RELU, "FusedConv")], ids=["dense", "conv"]
)
def test_relu_mask_reads_the_activation_so_ort_fuses_it_into_its_layer(tmp_path, text, fused):
    """relu's gradient mask compares relu(x), not x, so x has one reader and ONNX Runtime
    fuses Gemm or Conv + Relu; without the rule it cannot."""
    import onnx
    import onnxruntime as ort

    g = graphc.parse(text)
    ts = build_step(g, StepConfig(optimizer="adam"))

    def ran(graph, name):
        model = dataclasses.replace(ts, graph=graph).export()
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / name)
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return model, [n.op_type for n in onnx.load(str(tmp_path / name)).graph.node]

    model, ops = ran(optimize(ts.graph, 2), "o2.onnx")
    relu = next(n.output[0] for n in model.graph.node if n.op_type == "Relu")
    assert any(n.op_type == "Greater" and n.input[0] == relu for n in model.graph.node)
    assert "Relu" not in ops and fused in ops
    _, ops1 = ran(optimize(ts.graph, 1), "o1.onnx")  # -O1's clean-up has the rule too
    assert "Relu" not in ops1
    _, ops0 = ran(ts.graph, "o0.onnx")
    assert "Relu" in ops0  # the mask read the pre-activation: no fusion at -O0


def test_relus_gradient_is_a_masked_product_with_a_bool_mask():
    """g * cast(mask) -> masked(g, mask) for a dense layer: the same step; in the plan the
    mask stays bool until the product (autodiff's order had the float cast in the forward
    pass); the export writes Cast + Mul side by side, not a Where (slower in ORT's CPU
    kernels). A conv feature map's mask becomes a Where (no float copy of a feature map)."""
    from graphc.passes import plan_memory
    from graphc.passes.simplify import RULES

    g = graphc.parse(MLP)
    ts = build_step(g, StepConfig(optimizer="sgd"))
    ts.graph.meta["dim_sizes"] = {"N": 64}
    feeds = random_feeds(g, batch=5, seed=3)
    ref, _ = run_step(ts, ts.graph, feeds)
    opt = optimize(ts.graph, 1)
    masked = [n for n in opt.nodes.values() if n.op == "masked"]
    assert len(masked) == 1 and opt.types[masked[0].inputs[1]].dtype == "bool"
    out, model = run_step(ts, opt, feeds)
    assert_close(ref, out)
    nodes = list(model.graph.node)
    assert "Where" not in [n.op_type for n in nodes]
    # the float mask lives for one node: its Cast runs right before the Mul reading it
    adjacent = [
        (a.op_type, b.op_type) for a, b in itertools.pairwise(nodes) if a.output[0] in b.input
    ]
    assert ("Cast", "Mul") in adjacent
    at = next(i for i, r in enumerate(RULES) if r.name == "mask_multiply")
    rule = RULES.pop(at)
    try:
        without = optimize(ts.graph, 1)
    finally:
        RULES.insert(at, rule)
    assert not any(n.op == "masked" for n in without.nodes.values())
    assert plan_memory(opt).peak < plan_memory(without).peak

    conv = build_step(graphc.parse(CONV_RELU), StepConfig(optimizer="sgd"))
    ops = [n.op for n in optimize(conv.graph, 1).nodes.values()]
    assert "where" in ops and "masked" not in ops


@pytest.mark.parametrize("opt", ["adam", "adamw"])
def test_adams_bias_correction_moves_out_of_the_square_root(opt):
    """sqrt(v / (1 - b2^t)) + eps becomes sqrt(v) + eps * sqrt(1 - b2^t), the factor moved
    into the step size: one full-size pass over the flat buffer less, same update. A
    one-element parameter (the last bias) is rewritten alike and stays in the one buffer."""
    import graphc.passes.simplify as simplify

    g = graphc.parse(
        MLP.replace("logits = linear(h2, 5)", "logits = linear(h2, 1)")
        .replace("y = input(int64, [N])", "y = input(float32, [N, 1])")
        .replace("cross_entropy", "mse")
    )
    ts = build_step(g, StepConfig(optimizer=opt))
    feeds = random_feeds(g, batch=6, seed=4)
    ref, _ = run_step(ts, ts.graph, feeds)
    fused = optimize(ts.graph, 2)
    out, _ = run_step(ts, fused, feeds)
    assert_close(ref, out)
    carried = dataclasses.replace(ts, graph=fused).carried
    assert carried == ["params.flat0", "opt.m.params.flat0", "opt.v.params.flat0"]
    flat = fused.types[carried[0]].shape
    roots = [
        n for n in fused.nodes.values() if n.op == "sqrt" and fused.types[n.inputs[0]].shape == flat
    ]
    (root,) = roots
    # the square root reads the new v itself (b2 * v + (1 - b2) * g^2), not v / (1 - b2^t)
    assert fused.producers()[root.inputs[0]].op == "add"

    rule = next(r for r in simplify.RULES if r.name == "scale_out_of_sqrt")
    simplify.RULES.remove(rule)
    try:
        plain = optimize(ts.graph, 2)
    finally:
        simplify.RULES.append(rule)

    def full_size(graph):
        return sum(graph.types[n.outputs[0]].shape == flat for n in graph.nodes.values())

    assert full_size(plain) == full_size(fused) + 1
