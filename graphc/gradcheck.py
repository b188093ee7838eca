"""Finite-difference gradient checking: symbolic gradients vs central differences in float64.

Both sides run in ONNX Runtime: the exported backward graph gives the
symbolic gradient; the exported forward graph, evaluated at θ ± h·e_i, gives
(L(θ + h e_i) - L(θ - h e_i)) / 2h for a sample of coordinates i.

The relative error of a parameter is max_i |num_i - sym_i| / max_i max(|num_i|, |sym_i|):
the worst coordinate, scaled by the gradient's magnitude, so near-zero
entries do not blow it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graphc.ir import Graph, TensorType


@dataclass
class GradCheck:
    target: str
    shape: tuple
    rel_error: float
    abs_error: float
    checked: int
    backend: str = "onnxruntime"  # or "numpy" where ORT lacks float64 kernels

    def ok(self, tol: float) -> bool:
        return self.rel_error <= tol


def to_float64(graph: Graph) -> Graph:
    """A float64 copy (inputs, constants, parameters and their values)."""
    from graphc.infer import infer

    g = graph.copy()
    g.dtype = "float64"
    g.meta.pop("_scalar_cache", None)
    g.inputs = {
        k: TensorType("float64", t.shape) if t.dtype.startswith("float") else t
        for k, t in g.inputs.items()
    }
    g.constants = {
        k: v.astype("float64") if v.dtype.kind == "f" else v for k, v in g.constants.items()
    }
    values = graph.param_values()
    for name, p in g.params.items():
        p.dtype = "float64"
        p.value = values[name].astype("float64")
    for node in g.nodes.values():
        if node.op == "cast" and node.attrs.get("to") == "float32":
            node.attrs["to"] = "float64"
        if node.attrs.get("dtype") == "float32":
            node.attrs["dtype"] = "float64"
    return infer(g)


def gradcheck(
    graph: Graph,
    feeds: dict[str, np.ndarray] | None = None,
    *,
    wrt: list[str] | None = None,
    batch: int = 3,
    coords: int = 20,
    h: float = 1e-6,
    seed: int = 0,
) -> list[GradCheck]:
    """Check every target's symbolic gradient against central differences."""
    from graphc.autodiff import grad
    from graphc.errors import GraphError
    from graphc.feeds import random_feeds

    if graph.loss is None:
        raise GraphError("gradcheck needs a loss", hint="add `minimize(loss)` to the model file")
    g = to_float64(graph)
    feeds = {
        k: (np.asarray(v, dtype="float64") if np.asarray(v).dtype.kind == "f" else v)
        for k, v in (feeds or random_feeds(g, batch, seed)).items()
    }
    if wrt is None and not any(not p.frozen for p in g.params.values()):
        # a graph of inputs only (the lecture example L = w3 * (w1 + w2)): check those
        wrt = [k for k, t in g.inputs.items() if t.dtype == "float64"]
    bg = grad(g, wrt=wrt)
    targets = list(bg.meta["grads"])
    params = {k: v for k, v in g.param_values().items()}
    values = {**params, **feeds}
    grad_fn, loss_fn, backend = _evaluators(g, bg)
    sym = grad_fn(values)
    rng = np.random.default_rng(seed)
    results = []
    for t in targets:
        base = np.asarray(values[t], dtype="float64")
        flat = base.reshape(-1)
        idx = rng.choice(flat.size, size=min(coords, flat.size), replace=False)
        num = np.empty(len(idx))
        for j, i in enumerate(idx):
            out = []
            for sign in (1.0, -1.0):
                pert = flat.copy()
                pert[i] += sign * h
                out.append(loss_fn({**values, t: pert.reshape(base.shape)}))
            num[j] = (out[0] - out[1]) / (2 * h)
        s = np.asarray(sym[bg.meta["grads"][t]]).reshape(-1)[idx]
        scale = max(np.abs(num).max(initial=0.0), np.abs(s).max(initial=0.0), 1e-300)
        err = np.abs(num - s).max(initial=0.0)
        results.append(
            GradCheck(t, tuple(base.shape), float(err / scale), float(err), len(idx), backend)
        )
    return results


def _evaluators(g: Graph, bg: Graph):
    """Run both graphs in ONNX Runtime; where it has no float64 kernel (CPU Conv, pooling),
    fall back to the NumPy interpreter over the same graphs."""
    from graphc.errors import GraphError
    from graphc.export import export
    from graphc.interp import evaluate
    from graphc.runtime import make_session

    outputs = [bg.loss] + list(bg.meta["grads"].values())
    try:
        gs = make_session(export(bg, outputs=outputs, params_as_inputs=True, keep_inputs=True))
        ls = make_session(export(g, outputs=[g.loss], params_as_inputs=True, keep_inputs=True))
    except GraphError as err:
        if "NOT_IMPLEMENTED" not in str(err):
            raise

        def grad_np(values):
            params = {k: v for k, v in values.items() if k in g.params}
            return evaluate(bg, values, params=params, outputs=outputs)

        def loss_np(values):
            params = {k: v for k, v in values.items() if k in g.params}
            return float(evaluate(g, values, params=params, outputs=[g.loss])[g.loss])

        return grad_np, loss_np, "numpy"
    g_in, l_in = _feedable(gs), _feedable(ls)

    def grad_ort(values):
        return dict(zip(outputs, gs.run(outputs, {k: v for k, v in values.items() if k in g_in})))

    def loss_ort(values):
        return float(ls.run(None, {k: v for k, v in values.items() if k in l_in})[0])

    return grad_ort, loss_ort, "onnxruntime"


def _feedable(session) -> set[str]:
    """Inputs plus overridable initializers (parameters exported as defaulted inputs)."""
    return {i.name for i in session.get_inputs()} | {
        i.name for i in session.get_overridable_initializers()
    }
