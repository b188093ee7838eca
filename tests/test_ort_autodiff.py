"""Autodiff beyond single ops: second order, saliency, frozen parameters, stop-gradient."""

import numpy as np
import pytest

import graphc
from graphc.autodiff import hvp
from graphc.errors import GraphError
from graphc.export import export
from graphc.gradcheck import gradcheck, to_float64
from graphc.runtime import make_session

MLP = """\
x = input(float32, [N, 3])
y = input(int64, [N])
h = tanh(linear(x, 5))
logits = linear(h, 3)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


def feeds(rng):
    return {"x": rng.standard_normal((4, 3)), "y": rng.integers(0, 3, 4)}


def run_graph(g, outputs, values):
    sess = make_session(export(g, outputs=outputs, params_as_inputs=True, keep_inputs=True))
    names = {i.name for i in sess.get_inputs()} | {
        i.name for i in sess.get_overridable_initializers()
    }
    return dict(zip(outputs, sess.run(outputs, {k: v for k, v in values.items() if k in names})))


def test_hessian_vector_product_matches_finite_differences_of_the_gradient():
    rng = np.random.default_rng(0)
    g = to_float64(graphc.parse(MLP))
    params = g.param_values()
    data = feeds(rng)
    vs = {f"{p}.v": rng.standard_normal(v.shape) for p, v in params.items()}
    hg = hvp(g)
    out = run_graph(hg, [f"{p}.hvp" for p in params], {**params, **data, **vs})
    gg = graphc.grad(g)
    gnames = [f"{p}.grad" for p in params]
    eps = 1e-5

    def grads_at(shift):
        shifted = {p: params[p] + shift * vs[f"{p}.v"] for p in params}
        return run_graph(gg, gnames, {**shifted, **data})

    plus, minus = grads_at(eps), grads_at(-eps)
    for p in params:
        fd = (plus[f"{p}.grad"] - minus[f"{p}.grad"]) / (2 * eps)
        np.testing.assert_allclose(out[f"{p}.hvp"], fd, rtol=1e-6, atol=1e-8)


def test_saliency_gradient_with_respect_to_the_input():
    g = graphc.parse(MLP)
    b = graphc.Builder(g)
    score = b.reduce_sum(
        b.slice(b.tensor("logits"), starts=(1,), ends=(2,), axes=(1,)), name="score"
    )
    g.loss = score.name
    [r] = gradcheck(g, wrt=["x"])
    assert r.rel_error < 1e-6 and r.shape == (3, 3)


def test_frozen_parameters_get_no_gradient_and_are_not_targets():
    g = graphc.parse(MLP.replace("linear(x, 5)", "linear(x, 5, frozen=True)"))
    bg = graphc.grad(g)
    assert set(bg.meta["grads"]) == {"logits.weight", "logits.bias"}
    # the frozen layer's backward is pruned: nothing computes d(loss)/d(h)
    assert not any(n.tags.get("grad_of") == "h" for n in bg.nodes.values())


def test_stop_gradient_blocks_the_path():
    text = MLP.replace("logits = linear(h, 3)", "logits = linear(stop_gradient(h), 3)")
    g = graphc.parse(text)
    bg = graphc.grad(g)
    assert not any(n.tags.get("grad_of") == "h" for n in bg.nodes.values())
    rng = np.random.default_rng(0)
    out = run_graph(
        bg,
        ["h_linear.weight.grad", "logits.weight.grad"],
        {
            **g.param_values(),
            **{k: v.astype("float32") if v.dtype.kind == "f" else v for k, v in feeds(rng).items()},
        },
    )
    assert not out["h_linear.weight.grad"].any()
    assert out["logits.weight.grad"].any()


def test_gradient_through_step_is_a_clear_error():
    g = graphc.parse(
        "x = input(float32, [N, 2])\nt = input(float32, [N, 1])\n"
        "s = step(linear(x, 1))\nloss = mse(s, t)\nminimize(loss)\n",
        "p.gc",
    )
    with pytest.raises(GraphError) as info:
        graphc.grad(g)
    assert "step 's'" in info.value.message and info.value.loc.line == 3


def test_gradient_wrt_integer_input_is_a_clear_error():
    with pytest.raises(GraphError, match=r"'y'.*int64"):
        graphc.grad(graphc.parse(MLP), wrt=["y"])


def test_backward_graph_has_no_duplicate_forward_work():
    bg = graphc.grad(graphc.parse(MLP))
    forward_ops = [n.op for n in bg.nodes.values() if not n.tags.get("grad")]
    assert forward_ops.count("tanh") == 1  # the backward pass reuses tanh's output


def test_gradients_match_pytorch_when_installed():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    g = graphc.parse(MLP)
    params = g.param_values()
    data = feeds(rng)
    data["x"] = data["x"].astype("float32")
    out = run_graph(graphc.grad(g), [f"{p}.grad" for p in params], {**params, **data})
    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    h = torch.tanh(torch.tensor(data["x"]) @ t["h_linear.weight"] + t["h_linear.bias"])
    logits = h @ t["logits.weight"] + t["logits.bias"]
    torch.nn.functional.cross_entropy(logits, torch.tensor(data["y"])).backward()
    for k in params:
        np.testing.assert_allclose(out[f"{k}.grad"], t[k].grad.numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_with_respect_to_an_intermediate_value():
    # the lecture example: z = w1 + w2, L = w3 * z; dL/dz = w3
    g = graphc.parse(
        "w1 = input(float32, [])\nw2 = input(float32, [])\n"
        "w3 = input(float32, [])\nz = w1 + w2\nL = w3 * z\nminimize(L)\n"
    )
    from graphc.interp import evaluate

    bg = graphc.grad(g, wrt=["z", "w1", "w3"])
    out = evaluate(bg, {"w1": -2.0, "w2": 5.0, "w3": -4.0}, outputs=bg.outputs)
    assert (out["z.grad"], out["w1.grad"], out["w3.grad"]) == (-4.0, -4.0, 3.0)
