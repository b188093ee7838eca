"""Second order: which ops' gradients can be differentiated again, checked numerically.

For every differentiable op (first gradient-checked case of its test hints),
in float64 with the NumPy interpreter: loss = Σ reduce_sum(output * W);
Hessian-vector products from graphc.autodiff.hvp are compared with central
differences of the gradient along v. The set of ops where this works must be
exactly the set docs/autodiff.md lists, so the docs stay true.
"""

import re
from pathlib import Path

import numpy as np
import pytest

import graphc
from graphc.autodiff import hvp
from graphc.builder import Builder, Tensor
from graphc.errors import GraphError
from graphc.interp import evaluate
from graphc.ops import REGISTRY
from op_cases import NODE, MissingHints, build, cases_for, draw_inputs, randomize_params

DOC = Path(__file__).resolve().parent.parent / "docs" / "autodiff.md"


def _candidates():
    out = []
    for name, op in sorted(REGISTRY.items()):
        if op.random or not (op.differentiable or (op.decompose is not None and op.grad is None)):
            continue
        try:
            cases = [c for c in cases_for(op) if c.grad is True]
        except MissingHints:
            continue
        if cases and _float64_outputs(cases[0]):
            out.append((name, cases[0]))
    return out


def _float64_outputs(case) -> list[str]:
    """The case's float64 outputs, less running-statistic updates (`name:1`, …)."""
    g = build(case, "float64", symbolic_batch=False)
    node = g.nodes[NODE]
    return [o for o in node.outputs if g.type(o).dtype == "float64" and ":" not in o]


CANDIDATES = _candidates()


def _setup(case, seed=0):
    g = build(case, "float64", symbolic_batch=False)
    rng = np.random.default_rng(seed)
    params = randomize_params(g, rng)
    feeds = draw_inputs(case, g, None, rng)
    b = Builder(g)
    node = g.nodes[NODE]
    terms = []
    for o in node.outputs:
        t = g.type(o)
        if t.dtype == "float64" and ":" not in o:
            w = b.const(rng.standard_normal([int(d) for d in t.shape]), dtype="float64")
            terms.append(b.reduce_sum(Tensor(b, o) * w))
    loss = terms[0] if len(terms) == 1 else b.add_n(*terms)
    g.loss = b.identity(loss, name="loss").name
    wrt = [k for k, t in g.inputs.items() if t.dtype == "float64"]
    wrt += [p for p, v in g.params.items() if not v.frozen]
    return g, params, feeds, wrt, rng


def twice_differentiable(case) -> bool:
    g, _, _, wrt, _ = _setup(case)
    try:
        hvp(g, wrt=wrt)
    except GraphError:
        return False
    return True


def documented() -> set[str]:
    text = DOC.read_text()
    block = text.split("<!-- second-order:begin -->")[1].split("<!-- second-order:end -->")[0]
    return set(re.findall(r"`([a-z0-9_]+)`", block))


def test_docs_list_exactly_the_twice_differentiable_ops():
    found = {name for name, case in CANDIDATES if twice_differentiable(case)}
    assert found == documented()


@pytest.mark.parametrize(
    "name, case",
    [c for c in CANDIDATES if c[0] in documented()],
    ids=[c[0] for c in CANDIDATES if c[0] in documented()],
)
def test_hessian_vector_product_matches_finite_differences(name, case):
    g, params, feeds, wrt, rng = _setup(case, seed=1)
    hg = hvp(g, wrt=wrt)
    base = {**feeds, **params}
    vs = {f"{t}.v": rng.standard_normal(np.shape(base[t])) for t in wrt}
    out = evaluate(hg, {**base, **vs}, params=params, outputs=[f"{t}.hvp" for t in wrt])
    gg = graphc.grad(g, wrt=wrt)
    eps = 1e-5

    def grads(shift):
        moved = {t: base[t] + shift * vs[f"{t}.v"] for t in wrt}
        vals = {**base, **moved}
        return evaluate(
            gg, vals, params={k: vals[k] for k in params}, outputs=[f"{t}.grad" for t in wrt]
        )

    plus, minus = grads(eps), grads(-eps)
    for t in wrt:
        fd = (plus[f"{t}.grad"] - minus[f"{t}.grad"]) / (2 * eps)
        scale = max(1.0, np.abs(fd).max())
        assert np.abs(out[f"{t}.hvp"] - fd).max() / scale < 1e-5, t
