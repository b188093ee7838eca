"""Shape rules of the activation, loss and misc ops on symbolic batch dims (NumPy only)."""

from __future__ import annotations

import numpy as np
import pytest

from graphc.builder import Builder
from graphc.errors import GraphError
from graphc.interp import evaluate
from graphc.ir import TensorType


def test_maxout_shapes_and_params() -> None:
    b = Builder("m")
    x = b.input("x", ["N", 5])
    y = b.maxout(x, 3, pieces=4, name="mx")
    assert y.type == TensorType("float32", ("N", 3))
    assert b.graph.params["mx.weight"].shape == (5, 12)
    assert b.graph.params["mx.bias"].shape == (12,)


def test_maxout_takes_the_max_of_each_units_pieces() -> None:
    b = Builder("m")
    x = b.input("x", ["N", 2])
    b.output(b.maxout(x, 2, pieces=3, name="mx"))
    w = np.arange(12, dtype=np.float32).reshape(2, 6) - 6.0
    bias = np.zeros(6, np.float32)
    xv = np.array([[1.0, -1.0]], np.float32)
    z = xv @ w  # columns 0..2 are unit 0's pieces, 3..5 unit 1's
    out = evaluate(b.graph, {"x": xv}, params={"mx.weight": w, "mx.bias": bias})["mx"]
    np.testing.assert_array_equal(out, [[z[0, :3].max(), z[0, 3:].max()]])


def test_prelu_slope_is_per_channel_and_starts_at_a_quarter() -> None:
    b = Builder("p")
    x = b.input("x", ["N", 3, 4, 4])
    b.prelu(x, name="act")
    slope = b.graph.params["act.slope"]
    assert slope.shape == (3,) and not slope.state and not slope.frozen
    np.testing.assert_array_equal(b.graph.param_values()["act.slope"], [0.25] * 3)


def test_prelu_needs_a_fixed_channel_dim() -> None:
    b = Builder("p")
    x = b.input("x", ["N", "C"])
    with pytest.raises(GraphError, match="fixed size"):
        b.prelu(x, name="act")


@pytest.mark.parametrize("loss", ["mse", "mae", "binary_cross_entropy", "hinge"])
def test_pair_losses_reduce_to_a_scalar_or_per_example(loss: str) -> None:
    b = Builder("l")
    p, t = b.input("p", ["N", 3]), b.input("t", ["N", 3])
    assert getattr(b, loss)(p, t).type.shape == ()
    assert getattr(b, loss)(p, t, reduction="none").type.shape == ("N",)
    with pytest.raises(GraphError, match="differ"):
        getattr(b, loss)(p, b.input(f"bad_{loss}", ["N", 4]))


def test_multiclass_hinge_wants_integer_labels() -> None:
    b = Builder("l")
    s = b.input("s", ["N", 4])
    assert b.multiclass_hinge(s, b.input("y", ["N"], "int64")).type.shape == ()
    with pytest.raises(GraphError, match="integer class indices"):
        b.multiclass_hinge(s, b.input("f", ["N"]))


def test_argmax_is_int64_and_drops_the_axis() -> None:
    b = Builder("a")
    x = b.input("x", ["N", 3, 5])
    assert b.argmax(x, axis=1).type == TensorType("int64", ("N", 5))
    assert b.argmax(x, axis=-1, keepdims=True).type == TensorType("int64", ("N", 3, 1))
    with pytest.raises(GraphError, match="out of range"):
        b.argmax(x, axis=3)


def test_binary_cross_entropy_from_logits_is_stable() -> None:
    """Huge logits give finite losses equal to the limit (no exp overflow)."""
    b = Builder("bce")
    z, t = b.input("z", ["N"], "float64"), b.input("t", ["N"], "float64")
    b.output(b.binary_cross_entropy(z, t, reduction="none", name="l"))
    out = evaluate(b.graph, {"z": np.array([800.0, -800.0]), "t": np.array([0.0, 0.0])})["l"]
    np.testing.assert_allclose(out, [800.0, 0.0])


def test_reshape_sees_the_integer_factor_inside_a_symbolic_dim() -> None:
    """[N, 4, 3] -> [4N, 3] -> [N, 12]: the 4 inside '4*N' divides out again."""
    b = Builder("r")
    x = b.input("x", ["N", 4, 3])
    flat = b.reshape(x, shape=(-1, 3))
    back = b.reshape(flat, shape=(-1, 12))
    assert flat.type.shape == ("4*N", 3)
    assert back.type.shape == ("N", 12)
    b.output(back)
    xv = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    np.testing.assert_array_equal(evaluate(b.graph, {"x": xv})[back.name], xv.reshape(2, 12))


def test_size_estimates_evaluate_dim_expressions_with_default_sizes() -> None:
    from collections import defaultdict

    from graphc.passes.cost import nbytes
    from graphc.shapes import dim_factors, dim_mul

    assert dim_factors("4*N") == (4, ["N"])
    assert dim_mul("4*N") == "4*N"  # one factor keeps its spelling (not "(4*N)")
    assert dim_factors("2*(3*N)*T") == (6, ["N", "T"])
    sizes = defaultdict(lambda: 32)  # what the planner uses when no size was given
    assert nbytes(TensorType("float32", ("16*N", 9)), sizes) == 16 * 32 * 9 * 4


def test_symbolic_products_have_one_spelling() -> None:
    """flatten -> reshape -> flatten reaches [4*N, 3] like one flatten does, so the two add."""
    from graphc.shapes import dim_factors, dim_mul

    assert dim_mul("2*N", 2) == "4*N" and dim_mul(3, "2*N", "T") == "6*N*T"
    # only a product at the top level is split: sums and floor divisions stay whole
    assert dim_factors("(T+1)//2") == (1, ["(T+1)//2"])
    assert dim_factors("4*T//2") == (1, ["4*T//2"])
    assert dim_factors("(N-2)*3") == (3, ["N-2"])
    b = Builder("r")
    x = b.input("x", ["N", 2, 2, 3])
    once = b.flatten(x, axis=3)
    twice = b.flatten(b.reshape(b.flatten(x, axis=2), shape=(0, 2, 3)), axis=2)
    assert once.type.shape == twice.type.shape == ("4*N", 3)
    total = once + twice
    b.output(total)
    xv = np.arange(24, dtype=np.float32).reshape(2, 2, 2, 3)
    np.testing.assert_array_equal(evaluate(b.graph, {"x": xv})[total.name], 2 * xv.reshape(8, 3))
