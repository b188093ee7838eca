"""The model-file language: errors with locations, and parse/print round trips."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc
from graphc.errors import GraphError

XOR = """\
# XOR
x = input(float32, [N, 2])
y = input(int64, [N])  # labels

# hidden layer
h = tanh(linear(x, 4, init="xavier"))
logits = linear(h, 2, bias=False)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


def error_of(text: str) -> GraphError:
    with pytest.raises(GraphError) as info:
        graphc.parse(text, "m.gc")
    return info.value


@pytest.mark.parametrize(
    "text, message, line, col",
    [
        ("x = input(float32, [N 2])\n", "syntax error", 1, 21),
        ("x = input(float32, [N, 2])\nh = lienar(x, 3)\n", "unknown op 'lienar'", 2, 5),
        ("x = input(float32, [N, 2])\nh = linear(x, '64')\n", "must be int, got str", 2, 15),
        (
            "x = input(float32, [N, 3])\nw = input(float32, [4, 5])\nh = matmul(x, w)\n",
            "inner dimensions differ",
            3,
            5,
        ),
        ("x = input(float32, [N, 2])\nh = relu(z)\n", "undefined name 'z'", 2, 10),
        ("x = input(float32, [N, 2])\nx = relu(x)\n", "duplicate name 'x'", 2, 1),
        ("a = relu(b)\nb = relu(a)\n", "cycle", 2, 5),
        ("x = __import__('os')\n", "'__import__' is not allowed", 1, 5),
        ("x = input(float32, [N, 2])\ny = os.system('ls')\n", "attribute access", 2, 5),
        ("import os\n", "imports", 1, 1),
        ("f = lambda: 0\n", "lambdas", 1, 5),
        ("for i in []:\n    pass\n", "loops", 1, 1),
        ("x = input(float32, [N, 2])\nh = relu(x, x)\n", "too many tensor inputs", 2, 5),
        (
            "x = input(float32, [N, 2])\nh = linear(x, 3, unitz=4)\n",
            "unknown attribute 'unitz'",
            2,
            5,
        ),
    ],
)
def test_error_has_message_and_location(text, message, line, col):
    err = error_of(text)
    assert message in err.message
    assert (err.loc.line, err.loc.col + 1) == (line, col)
    shown = err.format()
    assert shown.startswith(f"m.gc:{line}:{col}: error:")
    assert text.splitlines()[line - 1] in shown  # the offending source line is quoted


def test_typo_hints_closest_name():
    assert (
        "did you mean 'linear'" in error_of("x = input(float32, [N, 2])\nh = lienar(x, 3)\n").hint
    )
    assert (
        "did you mean 'hidden'"
        in error_of("x = input(float32, [N, 2])\nhidden = relu(x)\no = relu(hiden)\n").hint
    )
    assert (
        "did you mean 'units'"
        in error_of("x = input(float32, [N, 2])\nh = linear(x, 3, unitz=4)\n").hint
    )


def test_missing_file():
    with pytest.raises(GraphError, match="no such file"):
        graphc.load("does/not/exist.gc")


def test_nested_calls_get_stable_names_and_params():
    g = graphc.parse(XOR, "xor.gc")
    assert list(g.nodes) == ["h_linear", "h", "logits", "loss"]
    assert set(g.params) == {"h_linear.weight", "h_linear.bias", "logits.weight"}
    assert g.params["h_linear.weight"].shape == (2, 4)
    assert g.types["logits"].shape == ("N", 2)
    assert g.outputs == ["logits"] and g.loss == "loss"


def test_operators_and_forward_references():
    g = graphc.parse(
        "o = a * (b + c)\na = input(float32, [])\nb = input(float32, [])\n"
        "c = input(float32, [])\noutput(o)\n"
    )
    from graphc.interp import evaluate

    out = evaluate(g, {"a": np.float32(2), "b": np.float32(3), "c": np.float32(4)})["o"]
    assert out == pytest.approx(14.0)


def test_printer_round_trip_keeps_comments():
    g = graphc.parse(XOR, "xor.gc")
    text = graphc.to_text(g)
    assert "# XOR" in text and "# hidden layer" in text and "# labels" in text
    g2 = graphc.parse(text)
    assert graphc.to_text(g2) == text
    assert_same_graph(g, g2)


def assert_same_graph(a, b):
    assert list(a.inputs.items()) == list(b.inputs.items())
    assert [(n.name, n.op, n.inputs, n.outputs, n.attrs) for n in a.nodes.values()] == [
        (n.name, n.op, n.inputs, n.outputs, n.attrs) for n in b.nodes.values()
    ]
    assert a.types == b.types
    assert a.outputs == b.outputs and a.loss == b.loss
    assert {k: v.shape for k, v in a.params.items()} == {k: v.shape for k, v in b.params.items()}
    for k in a.constants:
        np.testing.assert_array_equal(a.constants[k], b.constants[k])


UNARY = ["relu", "tanh", "sigmoid", "exp", "neg", "softmax", "identity"]


@st.composite
def random_models(draw):
    """Random well-typed model files: chains and joins of unary, binary and dense ops."""
    width = draw(st.integers(1, 6))
    lines = [f"# random model\nx = input(float32, [N, {width}])"]
    values = {"x": width}
    for i in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "linear", "comment"]))
        src = draw(st.sampled_from(sorted(values)))
        name = f"v{i}"
        if kind == "comment":
            lines.append(f"# note {i}")
            continue
        if kind == "unary":
            lines.append(f"{name} = {draw(st.sampled_from(UNARY))}({src})")
            values[name] = values[src]
        elif kind == "binary":
            same = sorted(k for k, w in values.items() if w == values[src])
            other = draw(st.sampled_from(same))
            op = draw(st.sampled_from(["add", "mul", "sub", "+", "*"]))
            expr = f"{src} {op} {other}" if op in "+*" else f"{op}({src}, {other})"
            lines.append(f"{name} = {expr}")
            values[name] = values[src]
        else:
            units = draw(st.integers(1, 5))
            bias = draw(st.booleans())
            nested = draw(st.booleans())
            call = f"linear({src}, {units}{'' if bias else ', bias=False'})"
            lines.append(f"{name} = relu({call})" if nested else f"{name} = {call}")
            values[name] = units
    last = sorted(values, key=lambda k: (len(k), k))[-1]
    lines.append(f"output({last})")
    return "\n".join(lines) + "\n"


@settings(max_examples=60, deadline=None, derandomize=True)
@given(random_models())
def test_parse_print_parse_round_trip(text):
    g1 = graphc.parse(text)
    printed = graphc.to_text(g1)
    g2 = graphc.parse(printed)
    assert_same_graph(g1, g2)
    assert graphc.to_text(g2) == printed  # idempotent


def test_builder_mirrors_file_language():
    b = graphc.Builder("xor")
    x = b.input("x", ["N", 2])
    y = b.input("y", ["N"], "int64")
    h = b.tanh(b.linear(x, 4, init="xavier", name="h_linear"), name="h")
    logits = b.linear(h, 2, bias=False, name="logits")
    b.cross_entropy(logits, y, name="loss")
    b.output(logits)
    b.minimize("loss")
    g = graphc.parse(XOR)
    assert [(n.name, n.op, n.inputs, n.attrs) for n in b.graph.nodes.values()] == [
        (n.name, n.op, n.inputs, n.attrs) for n in g.nodes.values()
    ]


def test_the_op_family_example_in_the_docs_parses():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "model-files.md").read_text()
    block = doc.split("## One example per op family")[1].split("```python")[1].split("```")[0]
    g = graphc.parse(block, "model-files.md")
    assert g.types["block"].shape == ("N", 16, 16, 16)
    assert g.types["h_all"].shape == ("N", 10, 64)
    assert g.types["right"].shape == ("N", 5)
