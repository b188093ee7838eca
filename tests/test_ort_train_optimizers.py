"""Each optimizer's update in the exported training step equals its textbook formula.

The model is linear regression (`linear` + `mse`), whose gradient NumPy
computes in closed form, so the reference run needs nothing from graphc but
the optimizer's NumPy formula; PyTorch's optimizers, when installed, check
those formulas in turn. The step runs several times on ONNX Runtime with its
outputs fed back as inputs (the runner's double buffering).
"""

from __future__ import annotations

import numpy as np
import pytest

from graphc import Builder
from graphc.train.optimizers import OPTIMIZERS, get_optimizer, hyperparameters, optimizer_names
from graphc.train.runner import StepRunner
from graphc.train.step import StepConfig, build_step

STEPS = 6
TOL = 1e-6
# non-default hyperparameters, so a formula that ignores one would be caught
HYPER = {
    "momentum": {"momentum": 0.8},
    "nesterov": {"momentum": 0.7},
    "rmsprop": {"rho": 0.9, "eps": 1e-6},
    "adagrad": {"eps": 1e-8},
    "adadelta": {"rho": 0.95, "eps": 1e-5},
    "adam": {"beta1": 0.8, "beta2": 0.95, "eps": 1e-6},
    "adamw": {"beta1": 0.85, "beta2": 0.99, "eps": 1e-7, "weight_decay": 0.1},
}
LRS = {
    "sgd": 0.1,
    "momentum": 0.05,
    "nesterov": 0.05,
    "rmsprop": 0.01,
    "adagrad": 0.1,
    "adadelta": 1.0,
    "adam": 0.02,
    "adamw": 0.02,
}


def linreg(dtype="float64"):
    b = Builder("linreg")
    x = b.input("x", ["N", 4], dtype)
    t = b.input("t", ["N", 3], dtype)
    pred = b.linear(x, 3, name="fc")
    b.output(pred)
    b.minimize(b.mse(pred, t, name="loss"))
    return b.graph


def batches(n_steps, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(8, 4)).astype(dtype), rng.normal(size=(8, 3)).astype(dtype))
        for _ in range(n_steps)
    ]


def grads_np(w, b, x, t, l1=0.0, l2=0.0):
    """d/dW, d/db of mean((xW + b - t)^2) + l1*sum|W| + l2*sum W^2 (closed form)."""
    r = x @ w + b - t
    scale = 2.0 / r.size
    gw = scale * x.T @ r + l1 * np.sign(w) + 2 * l2 * w
    return gw, scale * r.sum(0)


def run_step(name, cfg, dtype="float64", lr_of=None):
    ts = build_step(linreg(dtype), cfg)
    runner = StepRunner(ts, threads=1)
    states, losses = [], []
    for k, (x, t) in enumerate(batches(STEPS, dtype)):
        lr = lr_of(k) if lr_of else cfg.learning_rate()
        losses.append(runner.step({"x": x, "t": t}, lr, k))
        states.append(runner.state())
    return ts, states, losses


def run_reference(name, ts, hyper, lr, dtype="float64", l1=0.0, l2=0.0, clip=None):
    opt = get_optimizer(name)
    p = {k: ts.init[k].astype(np.float64) for k in ts.params}
    slots = {k: {s: np.zeros_like(p[k]) for s in opt.slots} for k in ts.params}
    out = []
    for k, (x, t) in enumerate(batches(STEPS, dtype)):
        gw, gb = grads_np(
            p["fc.weight"], p["fc.bias"], x.astype(np.float64), t.astype(np.float64), l1, l2
        )
        g = {"fc.weight": gw, "fc.bias": gb}
        if clip is not None:
            g = clip(g)
        for name_ in ts.params:
            p[name_], slots[name_] = opt.reference(
                p[name_], g[name_], slots[name_], lr, k + 1, hyper
            )
        out.append(
            ({k_: v.copy() for k_, v in p.items()}, {k_: dict(v) for k_, v in slots.items()})
        )
    return out


@pytest.mark.parametrize("name", optimizer_names())
def test_update_matches_numpy_formula(name):
    hyper = HYPER.get(name, {})
    cfg = StepConfig(optimizer=name, lr=LRS[name], hyper=hyper)
    ts, states, _ = run_step(name, cfg)
    ref = run_reference(name, ts, hyperparameters(get_optimizer(name), hyper), LRS[name])
    for k, (state, (p_ref, s_ref)) in enumerate(zip(states, ref)):
        for pname in ts.params:
            np.testing.assert_allclose(
                state[pname],
                p_ref[pname],
                rtol=0,
                atol=TOL,
                err_msg=f"{name} step {k + 1}: {pname}",
            )
            for slot in get_optimizer(name).slots:
                np.testing.assert_allclose(
                    state[f"opt.{slot}.{pname}"],
                    s_ref[pname][slot],
                    rtol=0,
                    atol=TOL,
                    err_msg=f"{name} step {k + 1}: slot {slot}",
                )
    # the parameters really moved (a step that returned its inputs would pass trivially)
    assert np.abs(states[-1]["fc.weight"] - ts.init["fc.weight"]).max() > 1e-3


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_float32_step_close_to_formula(name):
    cfg = StepConfig(optimizer=name, lr=LRS[name])
    ts, states, _ = run_step(name, cfg, dtype="float32")
    ref = run_reference(
        name, ts, hyperparameters(get_optimizer(name), {}), LRS[name], dtype="float32"
    )
    for state, (p_ref, _) in zip(states, ref):
        np.testing.assert_allclose(state["fc.weight"], p_ref["fc.weight"], rtol=0, atol=1e-5)


def test_regularization_and_clipping():
    l1, l2, cv, cn = 0.01, 0.05, 0.3, 0.5

    def clip(g):
        g = {k: np.clip(v, -cv, cv) for k, v in g.items()}
        norm = np.sqrt(sum((v**2).sum() for v in g.values()))
        return {k: v * (cn / max(norm, cn)) for k, v in g.items()}

    cfg = StepConfig(optimizer="sgd", lr=0.1, l1=l1, l2=l2, clip_value=cv, clip_norm=cn)
    ts, states, losses = run_step("sgd", cfg)
    assert ts.metrics == ["penalty", "grad_norm"]
    ref = run_reference("sgd", ts, {}, 0.1, l1=l1, l2=l2, clip=clip)
    for state, (p_ref, _) in zip(states, ref):
        for pname in ts.params:
            np.testing.assert_allclose(state[pname], p_ref[pname], rtol=0, atol=TOL)
    # the penalty output is the L1 + L2 term of the weights the step started from
    w0 = ts.init["fc.weight"]
    assert losses[0][1] == pytest.approx(l1 * np.abs(w0).sum() + l2 * (w0**2).sum(), rel=1e-9)


def test_learning_rate_is_an_input():
    """A schedule changes lr per step without rebuilding the step."""
    lrs = [0.1, 0.05, 0.2, 0.0, 0.1, 0.01]
    cfg = StepConfig(optimizer="sgd")
    ts, states, _ = run_step("sgd", cfg, lr_of=lambda k: lrs[k])
    p = {k: ts.init[k].astype(np.float64) for k in ts.params}
    for k, (x, t) in enumerate(batches(STEPS)):
        gw, gb = grads_np(p["fc.weight"], p["fc.bias"], x, t)
        p = {"fc.weight": p["fc.weight"] - lrs[k] * gw, "fc.bias": p["fc.bias"] - lrs[k] * gb}
        np.testing.assert_allclose(states[k]["fc.weight"], p["fc.weight"], atol=TOL, rtol=0)
    np.testing.assert_array_equal(states[3]["fc.weight"], states[2]["fc.weight"])  # lr 0


TORCH = {
    "sgd": lambda ps, lr, h: ("SGD", {"lr": lr}),
    "momentum": lambda ps, lr, h: ("SGD", {"lr": lr, "momentum": h["momentum"]}),
    "nesterov": lambda ps, lr, h: ("SGD", {"lr": lr, "momentum": h["momentum"], "nesterov": True}),
    "rmsprop": lambda ps, lr, h: ("RMSprop", {"lr": lr, "alpha": h["rho"], "eps": h["eps"]}),
    "adagrad": lambda ps, lr, h: ("Adagrad", {"lr": lr, "eps": h["eps"]}),
    "adadelta": lambda ps, lr, h: ("Adadelta", {"lr": lr, "rho": h["rho"], "eps": h["eps"]}),
    "adam": lambda ps, lr, h: (
        "Adam",
        {"lr": lr, "betas": (h["beta1"], h["beta2"]), "eps": h["eps"]},
    ),
    "adamw": lambda ps, lr, h: (
        "AdamW",
        {
            "lr": lr,
            "betas": (h["beta1"], h["beta2"]),
            "eps": h["eps"],
            "weight_decay": h["weight_decay"],
        },
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH))
def test_numpy_formula_matches_pytorch(name):
    """The NumPy formulas themselves agree with torch.optim (an independent implementation)."""
    torch = pytest.importorskip("torch")
    hyper = hyperparameters(get_optimizer(name), HYPER.get(name, {}))
    rng = np.random.default_rng(1)
    p0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(STEPS)]
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    cls, kw = TORCH[name]([p], LRS[name], hyper)
    opt = getattr(torch.optim, cls)([p], **kw)
    ref = get_optimizer(name)
    q, slots = p0.copy(), {s: np.zeros_like(p0) for s in ref.slots}
    for k, g in enumerate(grads):
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        q, slots = ref.reference(q, g, slots, LRS[name], k + 1, hyper)
        np.testing.assert_allclose(
            q, p.detach().numpy(), rtol=0, atol=1e-12, err_msg=f"{name} step {k + 1}"
        )


def test_every_optimizer_is_declared_once():
    assert set(optimizer_names()) == {
        "sgd",
        "momentum",
        "nesterov",
        "rmsprop",
        "adagrad",
        "adadelta",
        "adam",
        "adamw",
    }
    assert all(OPTIMIZERS[n].name == n for n in optimizer_names())
