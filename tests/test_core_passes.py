"""Graph passes against the NumPy interpreter: semantics kept, idempotent, memory plan sound.

Every pass is checked the same way: evaluate the graph before and after with
`graphc.interp` (each op's NumPy reference) on random inputs and compare.
Random graphs (hypothesis) exercise the clean-up rules on shapes and
combinations nobody wrote by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
from graphc import Builder
from graphc.errors import GraphError
from graphc.interp import evaluate
from graphc.passes import PASSES, PIPELINES, optimize, plan_memory
from graphc.passes.manager import register, run_passes
from graphc.passes.memory import ort_schedule
from graphc.passes.recompute import parse_budget, recompute_graph

CLEANUP = ["eliminate_dead_code", "fold_constants", "simplify", "eliminate_common_subexpressions"]


def mlp(depth: int = 2, width: int = 6, residual: bool = False):
    b = Builder("mlp")
    x = b.input("x", ("N", width))
    y = b.input("y", ("N",), "int64")
    h = x
    for i in range(depth):
        z = b.relu(b.linear(h, width, name=f"fc{i}"))
        h = h + z if residual else z
    logits = b.linear(h, 3, name="head")
    b.minimize(b.cross_entropy(logits, y, name="loss"))
    b.output(logits)
    return b.graph


def feeds_for(g, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for k, t in g.inputs.items():
        shape = tuple(batch if isinstance(d, str) else d for d in t.shape)
        out[k] = (
            rng.integers(0, 3, shape)
            if t.dtype.startswith("int")
            else rng.standard_normal(shape).astype(t.dtype)
        )
    return out


def assert_same(before, after, feeds, rtol=1e-5, atol=1e-6):
    outs = list(before.outputs)
    a = evaluate(before, feeds, outputs=outs)
    b = evaluate(after, feeds, outputs=outs)
    for k in outs:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("name", sorted(set(PIPELINES[2]) | {"recompute"}))
def test_every_pass_keeps_the_gradient_graph_semantics(name):
    g = graphc.grad(mlp(depth=3, residual=True))
    out = optimize(g, passes=[name])
    assert_same(g, out, feeds_for(g))


def test_o2_pipeline_keeps_semantics_and_shrinks_the_backward_graph():
    g = graphc.grad(mlp(depth=3))
    out = optimize(g, 2)
    assert_same(g, out, feeds_for(g))
    assert len(out.nodes) < 0.7 * len(g.nodes)
    ops = {n.op for n in out.nodes.values()}
    assert "gemm" in ops and "softmax_cross_entropy_grad" in ops
    assert "transpose" not in ops  # every backward transpose went into a Gemm


@pytest.mark.parametrize("level", [1, 2])
def test_pipelines_are_idempotent(level):
    g = graphc.grad(mlp(depth=2))
    once = optimize(g, level)
    twice = optimize(once, level)
    assert sorted((n.op, tuple(n.inputs)) for n in twice.nodes.values()) == sorted(
        (n.op, tuple(n.inputs)) for n in once.nodes.values()
    )


def test_stats_and_dump(tmp_path, capsys):
    g = graphc.grad(mlp())
    out = optimize(g, 2, print_stats=True, dump_after="fuse_gemm", dump_dir=str(tmp_path))
    err = capsys.readouterr().err
    assert "fuse_gemm" in err and "gemm_transposed_operands" in err
    stats = {s.name: s for s in out.meta["pass_stats"]}
    assert (
        stats["fuse_softmax_cross_entropy"].after["nodes"]
        < stats["fuse_softmax_cross_entropy"].before["nodes"] + 2
    )
    dumped = list(tmp_path.iterdir())
    assert len(dumped) == 1 and "fuse_gemm" in dumped[0].name
    assert "gemm(" in dumped[0].read_text()


def test_verify_names_the_pass_that_broke_the_graph():
    @register("_test_break_graph", "drops a node other nodes read (for this test)")
    def _break(g):
        first = next(iter(g.topo_order()))
        del g.nodes[first.name]
        return g

    try:
        with pytest.raises(GraphError, match="after pass '_test_break_graph'"):
            run_passes(graphc.grad(mlp()), ["_test_break_graph"])
    finally:
        del PASSES["_test_break_graph"]


def test_unknown_pass_and_level_are_clear_errors():
    with pytest.raises(GraphError, match="did you mean 'fuse_gemm'"):
        optimize(mlp(), passes=["fuse_gem"])
    with pytest.raises(GraphError, match="-O7"):
        optimize(mlp(), 7)


# ---------------------------------------------------------------- clean-up rules
def _small():
    b = Builder("s")
    x = b.input("x", (3, 4))
    return b, x


def test_simplify_rules_fire_and_say_why_not():
    b, x = _small()
    a = b.neg(b.neg(x))  # double negation
    t = b.transpose(b.transpose(a, perm=(1, 0)), perm=(1, 0))  # transpose chain -> nothing
    m = (t * 1.0) + 0.0  # neutral elements
    r = b.reshape(b.reshape(m, shape=(12,)), shape=(3, 4))  # reshape chain -> no-op
    out = b.relu(r)
    b.output(out)
    g2 = optimize(b.graph, passes=["simplify", "eliminate_dead_code"])
    assert [n.op for n in g2.nodes.values()] == ["relu"]
    assert g2.nodes[out.name].inputs == ["x"]
    assert_same(b.graph, g2, {"x": np.arange(12.0).reshape(3, 4).astype("float32")})


def test_cse_merges_duplicates_but_never_random_or_recomputed_nodes():
    b, x = _small()
    a1, a2 = b.tanh(x), b.tanh(x)
    d1 = b.dropout(x, rate=0.5, training=True)
    d2 = b.dropout(x, rate=0.5, training=True)
    b.output(a1 + a2, d1 + d2)
    b.graph.nodes[a2.name].tags["recompute"] = True
    g = optimize(b.graph, passes=["eliminate_common_subexpressions", "eliminate_dead_code"])
    assert sum(n.op == "tanh" for n in g.nodes.values()) == 2  # recompute tag kept it
    del b.graph.nodes[a2.name].tags["recompute"]
    g = optimize(b.graph, passes=["eliminate_common_subexpressions", "eliminate_dead_code"])
    assert sum(n.op == "tanh" for n in g.nodes.values()) == 1
    assert sum(n.op.startswith("dropout") for n in g.nodes.values()) >= 2


def test_constant_folding_evaluates_constant_subgraphs():
    b, x = _small()
    c = b.const(np.full((3, 4), 2.0, "float32"))
    k = b.exp(c) * b.const(np.ones((3, 4), "float32"))
    b.output(x * k)
    g = optimize(b.graph, passes=["fold_constants", "eliminate_dead_code"])
    assert [n.op for n in g.nodes.values()] == ["mul"]
    assert_same(b.graph, g, {"x": np.ones((3, 4), "float32")})


# -------------------------------------------------------- random graphs (property)
UNARY = ["neg", "relu", "tanh", "identity", "transpose", "exp_small", "flat"]
BINARY = ["add", "sub", "mul", "matmul", "div_small"]


@st.composite
def random_graph(draw):
    b = Builder("rand")
    vals = [b.input("x", (4, 4)), b.input("y", (4, 4))]
    vals.append(b.const(np.eye(4, dtype="float32")))
    for _ in range(draw(st.integers(3, 14))):
        if draw(st.booleans()):
            op, v = draw(st.sampled_from(UNARY)), draw(st.sampled_from(vals))
            if op == "transpose":
                vals.append(b.transpose(v, perm=(1, 0)))
            elif op == "exp_small":
                vals.append(b.exp(b.tanh(v)))
            elif op == "flat":
                vals.append(b.reshape(b.reshape(v, shape=(16,)), shape=(4, 4)))
            else:
                vals.append(getattr(b, op)(v))
        else:
            op = draw(st.sampled_from(BINARY))
            u, v = draw(st.sampled_from(vals)), draw(st.sampled_from(vals))
            if op == "matmul":
                vals.append(u @ v)
            elif op == "div_small":
                vals.append(u / (b.exp(b.reduce_mean(v, axes=(1,), keepdims=True))))
            else:
                vals.append(getattr(b, op)(u, v))
    outs = draw(
        st.lists(st.sampled_from(vals[3:]), min_size=1, max_size=3, unique_by=lambda t: t.name)
    )
    b.output(*outs)
    return b.graph


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(), st.sampled_from(CLEANUP + ["fuse_gemm", "order_for_memory"]))
def test_random_graphs_keep_semantics_and_passes_are_idempotent(g, name):
    rng = np.random.default_rng(1)
    feeds = {
        "x": rng.standard_normal((4, 4)).astype("float32"),
        "y": rng.standard_normal((4, 4)).astype("float32"),
    }
    once = optimize(g, passes=[name, "eliminate_dead_code"])
    assert_same(g, once, feeds, rtol=1e-4, atol=1e-5)
    twice = optimize(once, passes=[name, "eliminate_dead_code"])
    assert len(twice.nodes) == len(once.nodes)
    plan = plan_memory(once)
    assert plan.lower_bound <= plan.peak <= plan.naive


# ----------------------------------------------------------------- memory planning
def test_memory_plan_of_a_chain_by_hand():
    b = Builder("chain")
    x = b.input("x", (256,))  # 1 KiB per tensor
    a = b.exp(x)  # step 0
    c = b.square(a)  # step 1: a dies here (square does not work in place)
    d = b.reshape(c, shape=(16, 16))  # step 2: a view of c
    e = b.neg(d)  # step 3
    b.output(e)
    plan = plan_memory(b.graph)
    by = {t.name: t for t in plan.tensors}
    assert (by[a.name].first, by[a.name].last) == (0, 1)
    assert by[d.name].view_of == c.name and by[d.name].offset is None
    assert by[c.name].last == 3  # kept alive by its view
    assert by[e.name].last == len(plan.schedule)  # an output lives to the end
    assert plan.naive == 3 * 1024  # exp, square, neg: the view takes none
    assert plan.lower_bound == 2 * 1024 and plan.peak == 2 * 1024
    assert by[e.name].offset == by[a.name].offset  # neg reuses exp's memory once it died
    assert [b for _, b in plan.timeline] == [1024, 2048, 1024, 2048]


def test_a_transpose_onnx_runtime_folds_into_its_matmul_takes_no_buffer(tmp_path):
    """The plan's assumption checked against ORT: the Transpose is gone from ORT's optimized
    model (a FusedMatMul reads the untransposed value), so it gets no buffer in the plan;
    one with a second reader stays a tensor of its own."""
    import onnx

    from graphc.export import export
    from graphc.runtime import session_options

    b = Builder("tm")
    x = b.input("x", (2, 6, 4))
    w = b.input("w", (2, 6, 3))
    a = b.exp(x)
    t = b.transpose(a, perm=(0, 2, 1))  # [2, 4, 6]: the last two axes swapped
    b.output(b.matmul(t, w))  # [2, 4, 3]
    u = b.transpose(b.neg(x), perm=(0, 2, 1))
    b.output(b.matmul(u, w))
    b.output(b.exp(u))  # a second reader: u must exist
    plan = plan_memory(b.graph)
    by = {v.name: v for v in plan.tensors}
    assert by[t.name].view_of == a.name and by[t.name].offset is None
    assert by[u.name].view_of is None and by[u.name].offset is not None

    import onnxruntime as ort

    so = session_options(1)
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(
        export(b.graph).SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("Transpose") == 1 and "FusedMatMul" in ops  # only u's transpose is left


def test_in_place_ops_take_their_inputs_memory():
    b = Builder("inplace")
    x = b.input("x", (64,))
    a = b.exp(x)
    r = b.relu(a)  # relu declares inplace={0: 0}; a dies here
    b.output(b.neg(r))
    plan = plan_memory(b.graph)
    by = {t.name: t for t in plan.tensors}
    assert by[r.name].inplace_of == a.name and by[r.name].offset == by[a.name].offset
    assert plan.inplace == 1


def test_plan_offsets_never_overlap_for_tensors_alive_together():
    g = optimize(graphc.grad(mlp(depth=4, width=8)), 2)
    g.meta["dim_sizes"] = {"N": 16}
    plan = plan_memory(g)
    placed = [t for t in plan.tensors if t.offset is not None and t.inplace_of is None]
    for i, s in enumerate(placed):
        for t in placed[i + 1 :]:
            if s.first <= t.last and t.first <= s.last:
                assert s.offset + s.size <= t.offset or t.offset + t.size <= s.offset, (s, t)
    assert plan.lower_bound <= plan.peak < plan.naive


def test_memory_aware_order_never_increases_the_live_peak():
    g = optimize(graphc.grad(mlp(depth=3, width=8)), passes=CLEANUP + ["fuse_gemm"])
    before = plan_memory(g).lower_bound
    after = plan_memory(optimize(g, passes=["order_for_memory"])).lower_bound
    assert after <= before


# ----------------------------------------------------------------- recomputation
def test_recompute_halves_the_planned_peak_of_a_deep_network_and_keeps_values():
    g = graphc.grad(mlp(depth=24, width=16, residual=True))
    g.meta["dim_sizes"] = {"N": 64}
    base = optimize(g, 2)
    out = optimize(g, 2, memory_budget="auto")
    assert (
        plan_memory(out, ort_schedule(out)).peak <= 0.5 * plan_memory(base, ort_schedule(base)).peak
    )
    assert_same(g, out, feeds_for(g, batch=4), rtol=1e-4, atol=1e-5)
    rc = [n for n in out.nodes.values() if n.tags.get("recompute")]
    assert rc and all(n.tags.get("grad") for n in rc)
    # CSE after recomputation leaves the copies alone
    again = optimize(out, passes=["eliminate_common_subexpressions", "eliminate_dead_code"])
    assert sum(1 for n in again.nodes.values() if n.tags.get("recompute")) == len(rc)


def test_recompute_respects_a_byte_budget_when_it_can():
    g = optimize(graphc.grad(mlp(depth=12, width=16, residual=True)), 2)
    g.meta["dim_sizes"] = {"N": 64}
    base = plan_memory(g, ort_schedule(g)).peak  # budgets are for what ONNX Runtime holds
    budget = int(base * 0.7)
    out = optimize(g, passes=[], memory_budget=budget)
    assert plan_memory(out, ort_schedule(out)).peak <= budget
    k = recompute_graph(g, 2)[0]
    assert any(n.tags.get("recompute") for n in k.nodes.values())


def test_parse_budget():
    assert parse_budget("auto") == "auto"
    assert parse_budget("200MB") == 200_000_000
    assert parse_budget("1.5GiB") == int(1.5 * 2**30)
    assert parse_budget("1234") == 1234
    with pytest.raises(GraphError, match="memory budget"):
        parse_budget("lots")


# ---------------------------------------------------------------------- graphc plan
def test_plan_command_prints_the_table_and_the_peak(tmp_path):
    from conftest import run_cli

    svg = tmp_path / "timeline.svg"
    r = run_cli(
        "plan",
        "samples/mlp_digits.gc",
        "--train",
        "-O2",
        "--dim",
        "N=64",
        "--limit",
        "5",
        "--timeline",
        str(svg),
        cwd=str(Path(__file__).parent.parent),
    )
    assert r.returncode == 0, r.stderr
    assert "planned peak" in r.stdout and "lower bound" in r.stdout and "naive plan" in r.stdout
    assert "fc1" in r.stdout and "more tensors" in r.stdout
    assert svg.read_text().lstrip().startswith("<")
    bad = run_cli(
        "plan", "samples/mlp_digits.gc", "--dim", "N=lots", cwd=str(Path(__file__).parent.parent)
    )
    assert bad.returncode == 2 and "NAME=SIZE" in bad.stderr


def test_ort_schedule_is_onnx_runtimes_depth_first_order():
    # ORT runs a post-order DFS from the leaves, highest node index first among
    # a node's producers: for d(b(a), c(a)) that is a, c, b, d, not the file order
    b = Builder("diamond")
    x = b.input("x", (4,))
    a = b.exp(x, name="a")
    bb = b.tanh(a, name="b")
    c = b.neg(a, name="c")
    b.output(b.add(bb, c, name="d"))
    assert [n.name for n in ort_schedule(b.graph)] == ["a", "c", "b", "d"]
    g = optimize(graphc.grad(mlp(depth=3)), 2)
    order = ort_schedule(g)
    assert sorted(n.name for n in order) == sorted(g.nodes)
    seen = set()
    producers = g.producers()
    for n in order:  # a valid topological order
        assert all(producers[v].name in seen for v in n.inputs if v in producers)
        seen.add(n.name)


def test_the_rule_driver_says_when_it_stopped_at_the_round_limit():
    from graphc.passes.rewrite import Match, Rule, apply_rules

    g = graphc.grad(mlp(depth=1))
    flips = Rule(
        "flip",
        ("relu",),
        lambda g, node, ctx: Match(node),
        lambda g, m: m.node.tags.update(flipped=not m.node.tags.get("flipped")),
        local=False,  # one firing per round: never a fixed point
    )
    report = apply_rules(g, [flips], max_rounds=3)
    assert report.unfinished and report.fired["flip"] == 3
    assert "round limit" in report.summary()
    calm = Rule("calm", ("relu",), lambda g, node, ctx: "never", lambda g, m: None)
    assert not apply_rules(g, [calm], max_rounds=3).unfinished
