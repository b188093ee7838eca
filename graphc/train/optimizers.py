"""Optimizers: one small declaration each — state slots, hyperparameters, the update.

Each optimizer states its update twice, on purpose:

* `update` builds the update as ordinary graph nodes (with the Builder), so it
  is exported into the training step like every other op;
* `reference` is the textbook formula in plain NumPy, written independently,
  so tests can check the exported graph against it step by step.

Conventions (the same as PyTorch's, so results are comparable):

* `t` is the 1-based number of the update being made (the step input + 1);
* momentum keeps a velocity `v = mu*v + g` and steps `p -= lr*v` (Nesterov
  steps `p -= lr*(g + mu*v)`);
* RMSprop, AdaGrad and Adam add `eps` outside the square root, Adadelta
  inside (as in Zeiler's paper);
* AdamW decays the weights by `lr*weight_decay*p` before the Adam step
  (decoupled weight decay, Loshchilov & Hutter).

Every slot starts at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from graphc.errors import GraphError, closest


@dataclass(frozen=True)
class Optimizer:
    name: str
    slots: tuple[str, ...]  # per-parameter state, each the parameter's shape, starting at 0
    hyper: dict[str, float]  # hyperparameters and their defaults
    update: Callable  # (b, p, g, slots, lr, t, h) -> (new p, {slot: new value})
    reference: Callable  # the same in NumPy: (p, g, slots, lr, t, h) -> (new p, new slots)
    doc: str = ""
    default_lr: float = 0.01
    uses_step: bool = False  # reads the step count (bias correction)
    aliases: tuple[str, ...] = field(default_factory=tuple)


OPTIMIZERS: dict[str, Optimizer] = {}


def defopt(opt: Optimizer) -> Optimizer:
    OPTIMIZERS[opt.name] = opt
    for a in opt.aliases:
        OPTIMIZERS[a] = opt
    return opt


def get_optimizer(name: str) -> Optimizer:
    key = name.lower().replace("-", "_")
    if key not in OPTIMIZERS:
        near = closest(key, OPTIMIZERS)
        raise GraphError(
            f"unknown optimizer '{name}'",
            hint=(f"did you mean '{near}'? " if near else "")
            + "optimizers: "
            + ", ".join(optimizer_names()),
        )
    return OPTIMIZERS[key]


def optimizer_names() -> list[str]:
    return sorted({o.name for o in OPTIMIZERS.values()})


def hyperparameters(opt: Optimizer, given: dict[str, float] | None) -> dict[str, float]:
    """The optimizer's defaults overridden by `given`; unknown names are errors."""
    h = dict(opt.hyper)
    for k, v in (given or {}).items():
        if v is None:
            continue
        if k not in h:
            raise GraphError(
                f"optimizer '{opt.name}' has no hyperparameter '{k}'",
                hint="it takes: " + (", ".join(h) or "only the learning rate"),
            )
        h[k] = float(v)
    return h


# ------------------------------------------------------------------- SGD family
def _sgd(b, p, g, s, lr, t, h):
    return p - lr * g, {}


def _sgd_np(p, g, s, lr, t, h):
    return p - lr * g, {}


def _momentum(b, p, g, s, lr, t, h):
    v = s["v"] * h["momentum"] + g
    return p - lr * v, {"v": v}


def _momentum_np(p, g, s, lr, t, h):
    v = h["momentum"] * s["v"] + g
    return p - lr * v, {"v": v}


def _nesterov(b, p, g, s, lr, t, h):
    v = s["v"] * h["momentum"] + g
    return p - lr * (g + v * h["momentum"]), {"v": v}


def _nesterov_np(p, g, s, lr, t, h):
    v = h["momentum"] * s["v"] + g
    return p - lr * (g + h["momentum"] * v), {"v": v}


defopt(
    Optimizer(
        "sgd", (), {}, _sgd, _sgd_np, default_lr=0.1, doc="plain gradient descent: p -= lr * g"
    )
)
defopt(
    Optimizer(
        "momentum",
        ("v",),
        {"momentum": 0.9},
        _momentum,
        _momentum_np,
        default_lr=0.01,
        doc="heavy ball: v = mu*v + g; p -= lr * v",
    )
)
defopt(
    Optimizer(
        "nesterov",
        ("v",),
        {"momentum": 0.9},
        _nesterov,
        _nesterov_np,
        default_lr=0.01,
        doc="Nesterov momentum: v = mu*v + g; p -= lr * (g + mu*v)",
    )
)


# ------------------------------------------------------------- adaptive methods
def _rmsprop(b, p, g, s, lr, t, h):
    sq = s["sq"] * h["rho"] + b.square(g) * (1.0 - h["rho"])
    return p - lr * g / (b.sqrt(sq) + h["eps"]), {"sq": sq}


def _rmsprop_np(p, g, s, lr, t, h):
    sq = h["rho"] * s["sq"] + (1 - h["rho"]) * g**2
    return p - lr * g / (np.sqrt(sq) + h["eps"]), {"sq": sq}


def _adagrad(b, p, g, s, lr, t, h):
    acc = s["acc"] + b.square(g)
    return p - lr * g / (b.sqrt(acc) + h["eps"]), {"acc": acc}


def _adagrad_np(p, g, s, lr, t, h):
    acc = s["acc"] + g**2
    return p - lr * g / (np.sqrt(acc) + h["eps"]), {"acc": acc}


def _adadelta(b, p, g, s, lr, t, h):
    rho, eps = h["rho"], h["eps"]
    sq = s["sq"] * rho + b.square(g) * (1.0 - rho)
    dx = b.sqrt(s["dx"] + eps) / b.sqrt(sq + eps) * g
    acc_dx = s["dx"] * rho + b.square(dx) * (1.0 - rho)
    return p - lr * dx, {"sq": sq, "dx": acc_dx}


def _adadelta_np(p, g, s, lr, t, h):
    rho, eps = h["rho"], h["eps"]
    sq = rho * s["sq"] + (1 - rho) * g**2
    dx = np.sqrt(s["dx"] + eps) / np.sqrt(sq + eps) * g
    acc_dx = rho * s["dx"] + (1 - rho) * dx**2
    return p - lr * dx, {"sq": sq, "dx": acc_dx}


def shared(b, key: tuple, make: Callable):
    """A value every parameter's update uses (a scalar of lr and t): built once per step."""
    cache = b.graph.meta.setdefault("_optimizer_shared", {})
    if key not in cache or cache[key].name not in b.graph.types:
        cache[key] = make()
    return cache[key]


def _adam_core(b, p, g, s, lr, t, h):
    b1, b2 = h["beta1"], h["beta2"]
    m = s["m"] * b1 + g * (1.0 - b1)
    v = s["v"] * b2 + b.square(g) * (1.0 - b2)
    # bias corrections 1 - beta^t are scalars: built once for all parameters
    step = shared(
        b, ("adam_step", lr.name, t.name, b1), lambda: lr / (1.0 - b.pow(b.scalar(b1, like=t), t))
    )
    c2 = shared(b, ("adam_c2", t.name, b2), lambda: 1.0 - b.pow(b.scalar(b2, like=t), t))
    return m, v, p - step * m / (b.sqrt(v / c2) + h["eps"])


def _adam(b, p, g, s, lr, t, h):
    m, v, new = _adam_core(b, p, g, s, lr, t, h)
    return new, {"m": m, "v": v}


def _adamw(b, p, g, s, lr, t, h):
    decayed = p - lr * h["weight_decay"] * p
    m, v, new = _adam_core(b, decayed, g, s, lr, t, h)
    return new, {"m": m, "v": v}


def _adam_np(p, g, s, lr, t, h, decay=0.0):
    b1, b2 = h["beta1"], h["beta2"]
    p = p - lr * decay * p
    m = b1 * s["m"] + (1 - b1) * g
    v = b2 * s["v"] + (1 - b2) * g**2
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + h["eps"]), {"m": m, "v": v}


def _adamw_np(p, g, s, lr, t, h):
    return _adam_np(p, g, s, lr, t, h, decay=h["weight_decay"])


defopt(
    Optimizer(
        "rmsprop",
        ("sq",),
        {"rho": 0.99, "eps": 1e-8},
        _rmsprop,
        _rmsprop_np,
        default_lr=0.001,
        doc="s = rho*s + (1-rho)*g^2; p -= lr * g / (sqrt(s) + eps)",
    )
)
defopt(
    Optimizer(
        "adagrad",
        ("acc",),
        {"eps": 1e-10},
        _adagrad,
        _adagrad_np,
        default_lr=0.01,
        doc="s += g^2; p -= lr * g / (sqrt(s) + eps)",
    )
)
defopt(
    Optimizer(
        "adadelta",
        ("sq", "dx"),
        {"rho": 0.9, "eps": 1e-6},
        _adadelta,
        _adadelta_np,
        default_lr=1.0,
        doc="s = rho*s + (1-rho)*g^2; d = sqrt(u+eps)/sqrt(s+eps)*g; "
        "u = rho*u + (1-rho)*d^2; p -= lr * d",
    )
)
defopt(
    Optimizer(
        "adam",
        ("m", "v"),
        {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
        _adam,
        _adam_np,
        default_lr=0.001,
        uses_step=True,
        doc="m, v moving averages of g and g^2; p -= lr * m_hat / (sqrt(v_hat) + eps)",
    )
)
defopt(
    Optimizer(
        "adamw",
        ("m", "v"),
        {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01},
        _adamw,
        _adamw_np,
        default_lr=0.001,
        uses_step=True,
        doc="Adam with decoupled weight decay: p -= lr*wd*p, then the Adam step",
    )
)
