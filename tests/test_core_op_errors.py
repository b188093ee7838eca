"""Asking for gradients that do not exist gives a GraphError that names the culprit."""

from __future__ import annotations

import pytest

import graphc
from graphc.builder import Builder
from graphc.errors import GraphError


def _classifier(b: Builder):
    x = b.input("x", ["N", 3])
    return x, b.linear(x, 4, name="fc")


def test_gradient_through_step_names_the_node() -> None:
    b = Builder("perceptron")
    _, h = _classifier(b)
    gate = b.step(h, name="gate")
    b.minimize(b.reduce_mean(b.linear(gate, 1, name="out")))
    with pytest.raises(GraphError) as info:
        graphc.grad(b.graph)
    err = info.value
    assert err.node == "gate"
    assert "step 'gate'" in err.message
    assert "stop_gradient" in (err.hint or "")


def test_gradient_through_argmax_names_the_node() -> None:
    b = Builder("argmax")
    _, h = _classifier(b)
    pick = b.argmax(h, axis=1, name="pick")
    # the only way back to fc is through the integer index, made float by a cast
    b.minimize(b.reduce_sum(b.cast(pick, to="float32", name="as_float")))
    with pytest.raises(GraphError) as info:
        graphc.grad(b.graph)
    assert info.value.node == "pick"
    assert "argmax 'pick'" in info.value.message


def test_gradient_through_a_float_to_int_cast_names_the_cast() -> None:
    b = Builder("cast")
    _, h = _classifier(b)
    rounded = b.cast(h, to="int64", name="rounded")
    b.minimize(b.reduce_sum(b.cast(rounded, to="float32")))
    with pytest.raises(GraphError) as info:
        graphc.grad(b.graph)
    assert info.value.node == "rounded"
    assert "piecewise constant" in info.value.message


def test_argmax_used_beside_the_loss_is_fine() -> None:
    """An accuracy metric next to the loss needs no gradient: no error."""
    b = Builder("metric")
    _, h = _classifier(b)
    y = b.input("y", ["N"], dtype="int64")
    hit = b.cast(b.equal(b.argmax(h, axis=1), y), to="float32")
    b.output(b.reduce_mean(hit, name="accuracy"))
    b.minimize(b.cross_entropy(h, y))
    g = graphc.grad(b.graph)
    assert set(g.meta["grads"]) == {"fc.weight", "fc.bias"}


def test_gradient_wrt_an_integer_input_is_a_clear_error() -> None:
    b = Builder("labels")
    _, h = _classifier(b)
    y = b.input("y", ["N"], dtype="int64")
    b.minimize(b.cross_entropy(h, y))
    with pytest.raises(GraphError) as info:
        graphc.grad(b.graph, wrt=["y"])
    assert info.value.node == "y"
    assert "int64" in info.value.message and "not a float" in info.value.message


def test_residual_shape_mismatch_says_how_to_fix_it() -> None:
    b = Builder("res")
    x = b.input("x", ["N", 3])
    with pytest.raises(GraphError) as info:
        b.residual(x, b.linear(x, 4, name="f"), name="skip")
    assert info.value.node == "skip"
    assert "project" in (info.value.hint or "")


def test_upsampling_float64_with_symbolic_sizes_is_a_clear_error() -> None:
    """ONNX Resize is float32 here; the other dtypes need fixed sizes, said at build time
    (it used to be a ValueError from the exporter)."""
    b = Builder("u")
    x = b.input("x", ["N", 2, "H", "W"], dtype="float64")
    with pytest.raises(GraphError, match="fixed spatial sizes") as info:
        b.op("upsample_nearest", x, scale=2, name="up")
    assert info.value.node == "up" and info.value.hint
