"""sum_rows_as_matmul against NumPy in ONNX Runtime: the sums it rewrites and those it leaves."""

from __future__ import annotations

import numpy as np
import pytest

import graphc
from graphc.export import export
from graphc.passes import optimize
from graphc.runtime import make_session

PASS = "sum_rows_as_matmul"

# (input shape after the batch, axes, keepdims, whether the rewrite applies)
CASES = [
    ((128,), (0,), False, False),  # a dense layer's bias: too small to pay
    ((1024,), (0,), False, True),
    ((16, 8, 8), (0, 2, 3), False, True),  # a convolution's bias gradient
    ((16, 8, 8), (0, 2, 3), True, True),
    ((4, 288), (0,), True, True),  # a batched weight gradient
    ((4, 288), (0, 2), False, True),
    ((1024,), None, False, False),  # a full sum: one number
    ((20, 64), (0, 1), False, False),  # batch and time: the product loses there
    ((2048,), (1,), False, False),  # not over the batch
]


def _graph(rest, axes, keepdims, *, sums=1):
    b = graphc.Builder("sums")
    x = b.input("x", ("N", *rest))
    outs = [b.reduce_sum(x * float(i + 1), axes=axes, keepdims=keepdims) for i in range(sums)]
    for o in outs:
        b.output(o)
    return b.graph


def _run(g, x):
    outs = list(g.outputs)
    sess = make_session(export(g, outputs=outs))
    return sess.run(outs, {"x": x})


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("batch", [1, 5])
def test_sum_rows_matches_numpy(case, batch):
    rest, axes, keepdims, applies = case
    g = _graph(rest, axes, keepdims)
    opt = optimize(g, passes=[PASS])
    ops = [n.op for n in opt.nodes.values()]
    assert ("matmul" in ops) == applies
    assert opt.types[opt.outputs[0]] == g.types[g.outputs[0]]
    x = np.random.default_rng(3).standard_normal((batch, *rest)).astype(np.float32)
    ref = np.sum(x, axis=axes, keepdims=keepdims)
    (got,) = _run(opt, x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_the_new_nodes_take_the_sums_place_in_the_order():
    """Appended at the end, they made the schedule run every sum late (and hold what it reads)."""
    g = _graph((16, 8, 8), (0, 2, 3), False, sums=3)
    opt = optimize(g, passes=[PASS])
    order = [n.op for n in opt.nodes.values()]
    assert order.count("matmul") == 3 and order.count("ones_like") == 3
    # each product's chain (slice, ones_like, ..., matmul) directly follows its mul
    for i, op in enumerate(order):
        if op == "mul":
            assert "matmul" in order[i + 1 : i + 8] and "mul" not in order[i + 1 : i + 8]
    x = np.random.default_rng(4).standard_normal((7, 16, 8, 8)).astype(np.float32)
    for i, got in enumerate(_run(opt, x)):
        np.testing.assert_allclose(got, (i + 1) * x.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-4)


def test_a_sum_over_a_reshaped_batch():
    b = graphc.Builder("sums")
    x = b.input("x", ("N", 3, 1024))
    b.output(b.reduce_sum(b.reshape(x * 2.0, shape=(-1, 1024)), axes=(0,)))  # over 3*N rows
    opt = optimize(b.graph, passes=[PASS])
    assert [n.op for n in opt.nodes.values()].count("matmul") == 1
    xv = np.random.default_rng(5).standard_normal((5, 3, 1024)).astype(np.float32)
    (got,) = _run(opt, xv)
    np.testing.assert_allclose(got, 2 * xv.reshape(-1, 1024).sum(axis=0), rtol=1e-5, atol=1e-4)


def test_the_pass_is_idempotent():
    once = optimize(_graph((4, 288), (0,), False), passes=[PASS])
    twice = optimize(once, passes=[PASS])
    assert [n.op for n in twice.nodes.values()] == [n.op for n in once.nodes.values()]
