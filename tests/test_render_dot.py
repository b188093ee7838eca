"""DOT structure of rendered graphs: counts, kinds, styles, clusters, values (no `dot` needed).

Expected counts are computed from the IR here, independently of the renderer's
own classification; values are checked against the lecture's numbers and a
NumPy backward pass written out by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.infer import split_inputs
from graphc.ops.registry import get_op
from graphc.render import backward_graph, to_dot
from graphc.render_memory import peak_of, timeline_svg, timeline_table
from graphc.render_model import build_view
from graphc.render_style import CATEGORY_FILLS, KIND_STYLES
from graphc.render_values import fmt_value, make_feeds, value_gradients

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


# ------------------------------------------------------------------ a tiny DOT reader
def _attrs(text: str) -> dict[str, str]:
    """key=value pairs of a DOT attribute list; values quoted "..." or HTML <...>."""
    out, i = {}, 0
    while i < len(text):
        m = re.compile(r"\s*,?\s*([A-Za-z_]+)=").match(text, i)
        if not m:
            break
        key, i = m.group(1), m.end()
        if text[i] == '"':
            j = i + 1
            while text[j] != '"' or text[j - 1] == "\\":
                j += 1
            out[key], i = text[i + 1 : j], j + 1
        elif text[i] == "<":
            depth, j = 0, i
            while True:
                depth += {"<": 1, ">": -1}.get(text[j], 0)
                j += 1
                if depth == 0:
                    break
            out[key], i = text[i + 1 : j - 1], j
        else:
            j = i
            while j < len(text) and text[j] not in ", ]":
                j += 1
            out[key], i = text[i:j], j
    return out


NODE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" \[(.*)\];$')
EDGE = re.compile(r'^\s*"((?:[^"\\]|\\.)*)" -> "((?:[^"\\]|\\.)*)"(?: \[(.*)\])?;$')


def parse_dot(text: str):
    """(nodes {id: attrs}, edges [(tail, head, attrs)], clusters [ids], rank=same groups)."""
    nodes, edges, clusters, same = {}, [], [], []
    for line in text.splitlines():
        if m := EDGE.match(line):
            edges.append((m.group(1), m.group(2), _attrs(m.group(3) or "")))
        elif m := NODE.match(line):
            nodes[m.group(1)] = _attrs(m.group(2))
        elif m := re.match(r'^\s*subgraph "cluster_(.*)" \{$', line):
            clusters.append(m.group(1))
        elif "rank=same" in line:
            same.append(re.findall(r'"([^"]*)"', line))
    return nodes, edges, clusters, same


def visible(edges):
    return [e for e in edges if e[2].get("style") != "invis"]


def edge_between(edges, a, b):
    """The drawn edge from value box a to b (gradient edges are written head first)."""
    for t, h, at in edges:
        if (t, h) == (a, b) or (at.get("dir") == "back" and (h, t) == (a, b)):
            return at
    raise AssertionError(f"no edge {a} -> {b}")


def load(name: str) -> graphc.Graph:
    return graphc.load(str(SAMPLES / name))


# ------------------------------------------------------------------ forward graph
def test_forward_mlp_counts_and_styles():
    g = load("mlp_digits.gc")
    nodes, edges, clusters, _ = parse_dot(to_dot(g))
    layers = [n for n in g.nodes.values() if get_op(n.op).active_params(n.attrs)]
    sinks = {g.loss, *g.outputs}
    assert len(nodes) - 1 == len(g.inputs) + len(layers) + len(g.nodes) + len(sinks)  # + legend
    expected_edges = sum(
        len([v for v in split_inputs(n)[0] if v]) + bool(split_inputs(n)[1])
        for n in g.nodes.values()
    ) + len(sinks)
    assert len(visible(edges)) == expected_edges
    assert sorted(clusters) == sorted(f"layer:{n.name}" for n in layers)
    # inputs and parameters differ by shape and colour; ops are filled by category
    for name in g.inputs:
        assert nodes[name]["shape"] == "ellipse"
        assert nodes[name]["fillcolor"] == KIND_STYLES["input"].fill
    for n in layers:
        box = nodes[f"params:{n.name}"]
        assert box["shape"] == "box" and box["fillcolor"] == KIND_STYLES["param"].fill
        assert nodes[n.name]["fillcolor"] == CATEGORY_FILLS["layers"][0]
        for p in split_inputs(n)[1]:
            assert p.split(".")[-1] in box["label"]
    assert "units=128" in nodes["fc1"]["label"]
    # edges carry the tensor shapes the shape inference gave
    assert "N×64" in edge_between(edges, "x", "fc1")["label"]
    assert "N×128" in edge_between(edges, "fc1", "h1")["label"]
    assert "int64 N" in edge_between(edges, "y", "loss")["label"]


def test_same_graph_same_dot_text():
    for name in ("mlp_digits.gc", "xor.gc", "resnet_small.gc"):
        a, b = load(name), load(name)
        assert to_dot(a) == to_dot(b)
        assert to_dot(backward_graph(a), mode="backward") == to_dot(
            backward_graph(b), mode="backward"
        )
        assert to_dot(a, collapse=True) == to_dot(b, collapse=True)


def test_frozen_parameters_are_dimmed():
    g = graphc.parse(
        "x = input(float32, [N, 3])\n"
        "h = linear(x, 4, frozen=True)\n"
        "out = linear(h, 2)\noutput(out)\n"
    )
    nodes, *_ = parse_dot(to_dot(g))
    assert nodes["params:h"]["fillcolor"] == KIND_STYLES["frozen"].fill
    assert "dashed" in nodes["params:h"]["style"]
    assert "(frozen)" in nodes["params:h"]["label"]
    assert nodes["params:out"]["fillcolor"] == KIND_STYLES["param"].fill


# ------------------------------------------------------------------ backward graph
def test_backward_kinds_saved_edges_and_placement():
    g = load("xor.gc")
    bg = backward_graph(g)
    nodes, edges, _, same = parse_dot(to_dot(bg, mode="backward"))
    grad_nodes = [n for n in bg.nodes.values() if n.tags.get("grad")]
    param_grads = [f"{p}.grad" for p in g.params]
    for n in grad_nodes:
        kind = "param_grad" if n.name in param_grads else "grad"
        assert nodes[n.name]["fillcolor"] == KIND_STYLES[kind].fill, n.name
    forward = {o for n in bg.nodes.values() if not n.tags.get("grad") for o in n.outputs}
    forward |= set(bg.inputs)

    def box_of(v):  # a layer's parameters share its box
        return f"params:{v.rsplit('.', 1)[0]}" if v in bg.params else v

    saved = {
        (box_of(v), n.name) for n in grad_nodes for v in n.inputs if v in forward or v in bg.params
    }
    drawn = {(t, h) for t, h, a in edges if a.get("style") == "dashed"}
    assert drawn == saved
    for _t, _h, a in edges:
        if a.get("style") == "dashed":
            assert a["constraint"] == "false"
    grad_names = {n.name for n in grad_nodes}
    for n in grad_nodes:  # gradient edges run upward, drawn in red
        for v in n.inputs:
            if v in grad_names:
                a = edge_between(edges, v, n.name)
                assert a["dir"] == "back" and a["color"] == "#dc2626"
    # every forward node with a gradient rule shares a rank with one of its gradient nodes
    for f in {n.tags["grad_of"] for n in grad_nodes if n.tags.get("grad_of") in bg.nodes}:
        mine = {n.name for n in grad_nodes if n.tags.get("grad_of") == f}
        assert any(f in grp and mine & set(grp) for grp in same), f
    # parameter gradients sit level with their parameters
    for p in g.params:
        assert any(f"{p}.grad" in grp and box_of(p) in grp for grp in same)


def test_backward_without_parameters_differentiates_inputs():
    g = load("lecture_example.gc")
    bg = backward_graph(g)
    assert set(bg.meta["grads"]) == {"w1", "w2", "w3"}
    nodes, *_ = parse_dot(to_dot(bg, mode="backward"))
    for w in ("w1", "w2", "w3"):
        assert nodes[f"{w}.grad"]["fillcolor"] == KIND_STYLES["param_grad"].fill


# ------------------------------------------------------------------ values
LECTURE = {"w1": -2.0, "w2": 5.0, "w3": -4.0}


def test_lecture_values_and_gradients_on_edges():
    """The classic numbers: z = -2 + 5 = 3, L = -4 * 3 = -12, dL/dw = (-4, -4, 3)."""
    g = load("lecture_example.gc")
    feeds = make_feeds(g, LECTURE)
    env = graphc.interp.evaluate(g, feeds)
    grads = value_gradients(g, feeds, env)
    assert {k: float(v) for k, v in grads.items()} == {
        "w1": -4.0,
        "w2": -4.0,
        "w3": 3.0,
        "z": -4.0,
        "L": 1.0,
    }
    _, edges, _, _ = parse_dot(to_dot(g, values=env, grads=grads, direction="LR"))
    expect = {
        ("w1", "z"): ("-2", "-4"),
        ("w2", "z"): ("5", "-4"),
        ("z", "L"): ("3", "-4"),
        ("w3", "L"): ("-4", "3"),
        ("L", "out:L"): ("-12", "1"),
    }
    for (a, b), (value, grad) in expect.items():
        label = edge_between(edges, a, b)["label"]
        assert f">{value}</font>" in label, label
        assert f"∂L: {grad}</font>" in label, label


def test_lecture_backward_values():
    bg = backward_graph(load("lecture_example.gc"))
    env = graphc.interp.evaluate(bg, make_feeds(bg, LECTURE))
    nodes, *_ = parse_dot(to_dot(bg, mode="backward", values=env))
    for w, want in (("w1", "-4"), ("w2", "-4"), ("w3", "3")):
        assert f">{want}</font>" in nodes[f"{w}.grad"]["label"]


def test_value_gradients_match_a_numpy_backward_pass():
    g = load("xor.gc")
    feeds = make_feeds(g, seed=3, batch=5)
    env = graphc.interp.evaluate(g, feeds)
    grads = value_gradients(g, feeds, env)
    # by hand: loss = mean(-log softmax(logits)[y]); logits = h @ W + b
    logits, y = env["logits"].astype(np.float64), feeds["y"]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dlogits = (p - np.eye(2)[y]) / len(y)
    w = env["logits.weight"].astype(np.float64)
    dh = dlogits @ w.T
    hidden = env["hidden"].astype(np.float64)
    dpre = dh * (1 - hidden**2)
    np.testing.assert_allclose(grads["logits"], dlogits, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["hidden"], dh, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["logits.weight"], hidden.T @ dlogits, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        grads["x"], dpre @ env["hidden_linear.weight"].T, rtol=1e-4, atol=1e-6
    )
    # the probes change no forward number
    assert float(env["loss"]) == pytest.approx(
        float(np.mean(-np.log(p[np.arange(5), y]))), rel=1e-5
    )


def test_value_formatting():
    assert fmt_value(np.float32(-12.0)) == "-12"
    assert fmt_value(np.array([1.0, 2.5])) == "[1, 2.5]"
    assert fmt_value(np.array([3, 1, 2], dtype=np.int64)) == "[3, 1, 2]"
    a = np.arange(10.0)
    assert fmt_value(a) == f"μ 4.5  σ {a.std():.4g}"


# ------------------------------------------------------------------ residual blocks, folding
def test_residual_blocks_of_resnet_small():
    g = load("resnet_small.gc")
    view = build_view(g)
    blocks = [c for c in view.clusters.values() if c.kind == "block"]
    assert [c.label for c in blocks] == [f"residual block {k}" for k in (1, 2, 3, 4)]
    for k, c in enumerate(blocks, start=1):
        members = {
            b.id for b in view.boxes.values() if _inside(view, b.cluster, c.id) and b.id in g.nodes
        }
        # the model file names every node of block k "r<k>..." (the shortcut included)
        assert members == {n for n in g.nodes if n.startswith(f"r{k}")}


def _inside(view, cid, target):
    while cid is not None:
        if cid == target:
            return True
        cid = view.clusters[cid].parent
    return False


def test_collapse_folds_blocks_with_parameter_counts():
    g = load("resnet_small.gc")
    nodes, edges, clusters, _ = parse_dot(to_dot(g, collapse=True))
    assert clusters == []
    for k in (1, 2, 3, 4):
        box = nodes[f"group:block:r{k}_residual"]
        count = sum(
            int(np.prod(p.shape))
            for name, p in g.params.items()
            if name.startswith(f"r{k}") and not p.state
        )
        stats = sum(
            int(np.prod(p.shape))
            for name, p in g.params.items()
            if name.startswith(f"r{k}") and p.state
        )
        label = box["label"]
        assert f"residual block {k}" in label
        total = count + stats
        shown = f"{total:,}" if total < 10_000 else f"{total / 1e3:.1f}k"
        assert f"{shown} params" in label, label
        assert "conv2d ×" in label or "conv2d" in label
    assert len(nodes) < 20
    # the four blocks form a chain
    for k in (1, 2, 3):
        edge_between(edges, f"group:block:r{k}_residual", f"group:block:r{k + 1}_residual")


def test_collapse_keeps_large_backward_graphs_small():
    bg = backward_graph(load("resnet_small.gc"))
    assert len(bg.nodes) > 300
    nodes, _edges, _, same = parse_dot(to_dot(bg, mode="backward", collapse=True))
    assert len(nodes) < 45
    grads = [k for k in nodes if k.startswith("grad:")]
    for k in (1, 2, 3, 4):
        gid = f"grad:group:block:r{k}_residual"
        assert gid in grads
        assert [f"group:block:r{k}_residual", gid] in same
        assert "∇ residual block" in nodes[gid]["label"]


# ------------------------------------------------------------------ training step, fusion
def test_training_step_kinds():
    from graphc.train.step import StepConfig, build_step

    g = load("xor.gc")
    ts = build_step(g, StepConfig(optimizer="momentum"))
    nodes, edges, clusters, _ = parse_dot(to_dot(ts.graph, mode="train"))
    for p in ts.params:
        assert nodes[f"{p}.grad"]["fillcolor"] == KIND_STYLES["param_grad"].fill
        assert nodes[f"new.{p}"]["fillcolor"] == KIND_STYLES["new_param"].fill
        assert f"update:{p}" in clusters
        slot = f"opt.v.{p}"
        assert nodes[slot]["fillcolor"] == KIND_STYLES["slot"].fill
    updates = [k for k, a in nodes.items() if a.get("fillcolor") == KIND_STYLES["update"].fill]
    assert updates, "optimizer update nodes are drawn in their own style"
    purple = [e for e in edges if e[2].get("color") == "#7c3aed"]
    assert {h for _, h, _ in purple} <= set(updates) | {f"new.{p}" for p in ts.params} | {
        f"new.opt.v.{p}" for p in ts.params
    }


def test_fused_nodes_say_what_they_fused():
    g = load("xor.gc")
    g.nodes["hidden"].tags["fused_from"] = ["linear", "tanh"]
    nodes, *_ = parse_dot(to_dot(g))
    assert "fused: linear + tanh" in nodes["hidden"]["label"]
    assert float(nodes["hidden"]["penwidth"]) > 1.5


# ------------------------------------------------------------------ memory timeline
def test_memory_timeline_marks_the_peak():
    import xml.etree.ElementTree as ET

    points = [(0, 1024), (1, 4096), (2, 6144), (3, 2048), (4, 6144), (5, 512)]
    assert peak_of(points) == (2, 6144)
    svg = timeline_svg(points)
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    (dot,) = root.findall("s:circle", ns)
    texts = ["".join(t.itertext()) for t in root.findall("s:text", ns)]
    assert "peak 6 KiB at step 2" in texts
    # the marker sits at step 2 of 0..5 and at the top of the plot
    left, width = 70, 640 - 70 - 20
    assert float(dot.get("cx")) == pytest.approx(left + 2 / 5 * width, abs=0.1)
    assert float(dot.get("cy")) == pytest.approx(36, abs=0.1)
    table = timeline_table(points)
    assert table.count('bgcolor="#b91c1c"') == 1 and table.count("<td bgcolor=") == 6


def test_optimized_graph_fusions_are_found_by_comparison():
    passes = pytest.importorskip("graphc.passes")
    from graphc.render_fusion import note_fusions

    bg = backward_graph(load("xor.gc"))
    primitives = [
        n.op
        for n in bg.nodes.values()
        if n.tags.get("expanded_from") == "loss" and not n.tags.get("grad")
    ]
    og = passes.optimize(bg, level=2)
    assert note_fusions(bg, og) >= 2
    fused = {k: n.tags["fused_from"] for k, n in og.nodes.items() if n.tags.get("fused_from")}
    if og.nodes["loss"].op != "reduce_mean":  # the softmax-cross-entropy fusion fired
        assert fused["loss"] == primitives
    gemms = [k for k, n in og.nodes.items() if n.op == "gemm"]
    assert gemms and all(fused[k] == ["transpose", "matmul"] for k in gemms)
    nodes, *_ = parse_dot(to_dot(og, mode="backward"))
    assert "fused: transpose + matmul" in nodes[gemms[0]]["label"]
    # nothing fused: nothing tagged
    assert note_fusions(bg, bg.copy()) == 0


def test_parameter_values_sit_in_the_layer_box():
    g = load("xor.gc")
    feeds = make_feeds(g, seed=1)
    env = graphc.interp.evaluate(g, feeds)
    grads = value_gradients(g, feeds, env)
    nodes, edges, *_ = parse_dot(to_dot(g, values=env, grads=grads))
    label = nodes["params:logits"]["label"]
    w = env["logits.weight"].astype(np.float64)
    assert f"weight μ {w.mean():.4g}  σ {w.std():.4g}" in label
    assert "bias [0, 0]" in label  # zeros-initialized
    assert fmt_value(grads["logits.bias"]) in label
    assert "label" not in edge_between(edges, "params:logits", "logits")
