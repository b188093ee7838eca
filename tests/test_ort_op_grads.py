"""Gradient table: every differentiable op's gradient graph, run in ONNX Runtime, vs finite
differences.

For each op with a gradient rule or a decomposition, and each of its test
cases whose hint says `grad: True`, in float64:

    loss = sum_i reduce_sum(output_i * W_i)      (W_i fixed random weights)
    graphc.grad(wrt = float data inputs + trainable parameters)
    export(params_as_inputs=True) -> one ORT session giving the loss and every gradient

Each gradient is compared with central finite differences of the loss
computed by the NumPy interpreter (`graphc.interp.evaluate`, the op
references), (L(x + h e_k) - L(x - h e_k)) / 2h with h = 1e-6, on at most 30
randomly chosen coordinates k per tensor. The error measure is

    err = max_k |analytic_k - numeric_k| / max(1, max_k |numeric_k|)  <=  1e-6

(absolute for small gradients, relative for large ones). The forward pass
in ORT is checked against the same references by tests/test_ort_ops.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.builder import Builder, Tensor
from graphc.export import export
from graphc.interp import evaluate
from graphc.ops import REGISTRY
from graphc.runtime import make_session, run
from op_cases import NODE, Case, MissingHints, build, cases_for, draw_inputs, randomize_params

DTYPE = "float64"
STEP = 1e-6
MAX_COORDS = 30
MAX_ERR = 1e-6


def _differentiable(opname: str) -> bool:
    op = REGISTRY[opname]
    return op.differentiable or (op.decompose is not None and op.grad is None)


GRAD_OPS = sorted(k for k in REGISTRY if _differentiable(k))


def _loss_outputs(case: Case, g) -> list[str]:
    """The node's float outputs, less the running-statistic updates of training-mode ops."""
    node = g.nodes[NODE]
    outs = list(node.outputs)
    op = case.op
    if op.training_only and node.attrs.get("training"):
        n_state = sum(1 for p in op.active_params(node.attrs) if p.state)
        outs = outs[: len(outs) - n_state] if n_state else outs
    return [o for o in outs if g.type(o).dtype.startswith("float")]


def check_gradient(case: Case, seed: int = 0) -> dict[str, float]:
    """Build, differentiate, run and compare one case; returns the error per target."""
    g = build(case, DTYPE, symbolic_batch=False)
    coarse = {
        k: str(t) for k, t in g.inputs.items() if t.dtype.startswith("float") and t.dtype != DTYPE
    }
    assert not coarse, (
        f"{case.id}: inputs {coarse} are not {DTYPE}: write 'float' (not "
        "'float32') in the hint's dtypes so the check runs in float64"
    )
    rng = np.random.default_rng([seed, case.index])
    feeds = draw_inputs(case, g, None, rng)
    params = randomize_params(g, rng)
    b = Builder(g, prefix="loss_")
    terms = []
    for o in _loss_outputs(case, g):
        t = g.type(o)
        w = b.const(rng.standard_normal(t.shape).astype(t.dtype))
        terms.append(b.reduce_sum(Tensor(b, o) * w))
    assert terms, f"{case.id}: no float output to differentiate"
    loss = terms[0] if len(terms) == 1 else b.add_n(*terms)
    targets = [k for k, t in g.inputs.items() if t.dtype.startswith("float")]
    targets += [k for k, p in g.params.items() if not p.state and not p.frozen]
    gg = graphc.grad(g, loss=loss.name, wrt=targets)
    grads = [gg.meta["grads"][t] for t in targets]
    model = export(gg, outputs=[loss.name, *grads], params_as_inputs=True, keep_inputs=True)
    sess = make_session(model, threads=1)
    wanted = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    values = {k: v for k, v in {**feeds, **params}.items() if k in wanted}
    analytic = run(sess, values)

    def loss_at(name: str, arr: np.ndarray) -> float:
        # the NumPy interpreter: an independent forward pass, exact float64 everywhere
        out = evaluate(g, {**feeds, name: arr}, outputs=[loss.name], params={**params, name: arr})
        return float(out[loss.name])

    errors = {}
    for t, gname in zip(targets, grads):
        x0 = values[t]
        assert analytic[gname].shape == x0.shape, (
            f"{case.id}: gradient of {t} has shape {analytic[gname].shape}, not {x0.shape}"
        )
        coords = rng.choice(x0.size, size=min(MAX_COORDS, x0.size), replace=False)
        numeric = []
        for k in coords:
            up, down = x0.copy(), x0.copy()
            up.flat[k] += STEP
            down.flat[k] -= STEP
            numeric.append((loss_at(t, up) - loss_at(t, down)) / (2 * STEP))
        numeric = np.asarray(numeric)
        a = analytic[gname].reshape(-1)[coords]
        errors[t] = float(np.max(np.abs(a - numeric)) / max(1.0, float(np.max(np.abs(numeric)))))
    return errors


def _checked(opname: str) -> bool:
    try:
        return any(case.grad is True for case in cases_for(REGISTRY[opname]))
    except MissingHints:
        return True  # the test below fails it with the reason


CHECKED = [k for k in GRAD_OPS if _checked(k)]
UNCHECKED = [k for k in GRAD_OPS if k not in CHECKED]


@pytest.mark.parametrize("opname", CHECKED)
def test_op_gradient_matches_finite_differences(opname: str) -> None:
    try:
        cases = cases_for(REGISTRY[opname])
    except MissingHints as err:
        pytest.fail(str(err))
    for case in cases:
        if case.grad is not True:
            continue
        errors = check_gradient(case)
        bad = {t: e for t, e in errors.items() if not e <= MAX_ERR}
        assert not bad, f"{case.id}: gradient error above {MAX_ERR}: {bad}"


@pytest.mark.parametrize("opname", UNCHECKED)
def test_ops_without_a_gradient_check_say_why(opname: str) -> None:
    """Random, comparison and integer ops have a rule but nothing to check numerically
    (finite differences of a step function are not its gradient): each case states why."""
    for case in cases_for(REGISTRY[opname]):
        assert isinstance(case.grad, str) and len(case.grad) > 10, case.id


def test_gradient_check_catches_a_wrong_rule(monkeypatch) -> None:
    """The harness fails a deliberately wrong rule (a check that cannot fail is no check)."""
    op = REGISTRY["tanh"]
    monkeypatch.setattr(op, "grad", lambda c: [c.g * (1.0 - c.y[0])])
    errors = check_gradient(cases_for(op)[0])
    assert max(errors.values()) > 1e-2


MODEL = """
# every activation, loss and misc op of ops/activations.py and ops/losses.py in one model
x = input(float64, [N, 4])
t = input(float64, [N, 3])
y = input(int64, [N])
h1 = prelu(linear(x, 6))
h2 = maxout(h1, 5, 3)
h3 = residual(h2, gelu(linear(h2, 5)))
h4 = elu(swish(leaky_relu(h3, 0.1), 1.5), 0.7)
z = linear(softplus(h4), 3)
loss = add_n(binary_cross_entropy(z, t), multiclass_hinge(z, y), mae(z, t), hinge(z, t))
pick = argmax(z, 1)
output(pick)
minimize(loss)
"""


def test_model_of_the_new_ops_parses_prints_and_differentiates() -> None:
    g = graphc.parse(MODEL)
    assert graphc.to_text(graphc.parse(graphc.to_text(g))) == graphc.to_text(g)
    rng = np.random.default_rng(7)
    params = randomize_params(g, rng)
    feeds = {
        "x": rng.standard_normal((5, 4)),
        "t": rng.uniform(0, 1, (5, 3)),
        "y": rng.integers(0, 3, 5),
    }
    gg = graphc.grad(g)
    assert set(gg.meta["grads"]) == set(params)
    names = list(gg.meta["grads"].values())
    sess = make_session(export(gg, outputs=[g.loss, *names], params_as_inputs=True), threads=1)
    wanted = {i.name for i in sess.get_inputs() + sess.get_overridable_initializers()}
    analytic = run(sess, {k: v for k, v in {**feeds, **params}.items() if k in wanted})
    ref_loss = evaluate(g, feeds, outputs=[g.loss], params=params)[g.loss]
    # 1e-8, not 1e-12: ORT computes gelu's erf in float32 even in float64 models
    np.testing.assert_allclose(analytic[g.loss], ref_loss, rtol=1e-8)
    for p, gname in gg.meta["grads"].items():
        coords = rng.choice(params[p].size, size=min(10, params[p].size), replace=False)
        numeric = []
        for k in coords:
            vals = []
            for sign in (1, -1):
                moved = params[p].copy()
                moved.flat[k] += sign * STEP
                vals.append(
                    float(evaluate(g, feeds, outputs=[g.loss], params={**params, p: moved})[g.loss])
                )
            numeric.append((vals[0] - vals[1]) / (2 * STEP))
        a = analytic[gname].reshape(-1)[coords]
        err = np.max(np.abs(a - numeric)) / max(1.0, np.max(np.abs(numeric)))
        assert err <= MAX_ERR, f"{p}: {err}"
