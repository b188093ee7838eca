"""Random composed graphs: symbolic gradients vs finite differences (Hypothesis)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc
from graphc.gradcheck import gradcheck

SMOOTH = ["tanh", "sigmoid", "softplus", "swish", "elu", "exp_small", "square", "softmax"]


@st.composite
def random_networks(draw):
    """A DAG of dense layers, smooth activations, sums and products, ending in a loss."""
    width = draw(st.integers(1, 4))
    lines = [f"x = input(float32, [N, {width}])"]
    widths = {"x": width}
    for i in range(draw(st.integers(1, 6))):
        src = draw(st.sampled_from(sorted(widths)))
        name = f"v{i}"
        kind = draw(st.sampled_from(["dense", "act", "act", "join"]))
        if kind == "dense":
            units = draw(st.integers(1, 4))
            lines.append(f"{name} = linear({src}, {units})")
            widths[name] = units
        elif kind == "act":
            act = draw(st.sampled_from(SMOOTH))
            expr = f"exp(0.3 * {src})" if act == "exp_small" else f"{act}({src})"
            lines.append(f"{name} = {expr}")
            widths[name] = widths[src]
        else:
            other = draw(st.sampled_from(sorted(k for k, w in widths.items() if w == widths[src])))
            op = draw(st.sampled_from(["+", "*", "-"]))
            lines.append(f"{name} = {src} {op} {other}")
            widths[name] = widths[src]
    last = f"v{len(lines) - 2}" if len(lines) > 1 else "x"
    classes = draw(st.integers(2, 3))
    if draw(st.booleans()):
        lines += [
            "y = input(int64, [N])",
            f"logits = linear({last}, {classes})",
            "loss = cross_entropy(logits, y)",
        ]
    else:
        lines += ["t = input(float32, [N, 1])", f"pred = linear({last}, 1)", "loss = mse(pred, t)"]
    lines.append("minimize(loss)")
    return "\n".join(lines) + "\n"


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(random_networks())
def test_random_network_gradients(text):
    g = graphc.parse(text)
    for r in gradcheck(g, batch=3, coords=6):
        assert r.rel_error < 1e-6, (r.target, r.rel_error, text)
