"""rnn / lstm / gru: forward on both ONNX paths, BPTT and truncated BPTT gradients.

References are independent of ops/recurrent.py: a NumPy loop written per
gate (sliced weights, its own sigmoid), central finite differences of that
loop in float64, and PyTorch's nn.RNN/LSTM/GRU when torch is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from graphc.autodiff import grad
from graphc.builder import Builder
from graphc.errors import GraphError
from graphc.export import export
from graphc.interp import evaluate
from graphc.lowering import expand_composites
from graphc.runtime import make_session, run

N, T, F, U = 2, 4, 3, 4
KINDS = ("rnn", "lstm", "gru")
FUSED = {"rnn": "RNN", "lstm": "LSTM", "gru": "GRU"}
N_STATES = {"rnn": 1, "lstm": 2, "gru": 1}


# ------------------------------------------------------------ NumPy reference
def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_recurrent(kind, x, p, states=None, *, window=0, frozen=None):
    """Hidden states [N, T, U] by an explicit per-gate loop.

    With `window=k`, the state entering step t (t a positive multiple of k) is
    recorded in the returned `carried[t]`; with `frozen`, that state is
    replaced by `frozen[t]`, a constant: finite differences of that model are
    the truncated-BPTT gradient.
    """
    n, steps, _ = x.shape
    u = p["weight_hh"].shape[0]
    wi, wh, b = p["weight_ih"], p["weight_hh"], p["bias"]

    def pre(k, inp, h):  # gate k's pre-activation from its own weight columns
        cols = slice(k * u, (k + 1) * u)
        return inp @ wi[:, cols] + h @ wh[:, cols] + b[cols]

    h = np.zeros((n, u)) if states is None else states[0]
    c = np.zeros((n, u)) if states is None or len(states) < 2 else states[1]
    carried, out = {}, []
    for t in range(steps):
        if window and t and t % window == 0:
            carried[t] = (h, c)
            if frozen is not None:
                h, c = frozen[t]
        xt = x[:, t, :]
        if kind == "rnn":
            h = np.tanh(pre(0, xt, h))
        elif kind == "lstm":
            i, f, g, o = (
                _sig(pre(0, xt, h)),
                _sig(pre(1, xt, h)),
                np.tanh(pre(2, xt, h)),
                _sig(pre(3, xt, h)),
            )
            c = f * c + i * g
            h = o * np.tanh(c)
        else:
            r, z = _sig(pre(0, xt, h)), _sig(pre(1, xt, h))
            cols = slice(2 * u, 3 * u)
            n_gate = np.tanh(xt @ wi[:, cols] + b[cols] + r * (h @ wh[:, cols] + p["bias_hn"]))
            h = (1.0 - z) * n_gate + z * h
        out.append(h)
    return np.stack(out, axis=1), carried


# ------------------------------------------------------------------- helpers
def build(
    kind,
    *,
    dtype="float32",
    return_sequences=True,
    bptt=0,
    with_states=False,
    steps=T,
    seed=0,
    loss=False,
):
    """A graph `y = <kind>(x[, h0, c0])`, random params (biases nonzero), optional loss."""
    b = Builder(f"{kind}_model")
    b.graph.dtype = dtype
    x = b.input("x", ["N", steps, F], dtype=dtype)
    states = (
        [b.input(s, ["N", U], dtype=dtype) for s in ("h0", "c0")[: N_STATES[kind]]]
        if with_states
        else []
    )
    y = getattr(b, kind)(
        x, *states, units=U, return_sequences=return_sequences, bptt=bptt, name="rec"
    )
    b.output(y)
    if loss:
        r = b.input("r", ["N", steps, U] if return_sequences else ["N", U], dtype=dtype)
        b.minimize(b.reduce_sum(b.mul(y, r)))
    g = b.graph
    rng = np.random.default_rng(seed)
    for _name, prm in g.params.items():
        prm.value = (0.5 * rng.standard_normal(prm.shape)).astype(dtype)
    return g


def params_of(g):
    return {k.split(".", 1)[1]: np.array(v, np.float64) for k, v in g.param_values().items()}


def feeds_for(kind, dtype, *, with_states, steps=T, return_sequences=True, seed=1):
    rng = np.random.default_rng(seed)
    f = {"x": rng.standard_normal((N, steps, F))}
    if with_states:
        for s in ("h0", "c0")[: N_STATES[kind]]:
            f[s] = 0.5 * rng.standard_normal((N, U))
    f["r"] = rng.standard_normal((N, steps, U) if return_sequences else (N, U))
    return {k: v.astype(dtype) for k, v in f.items()}


def ort(model, feeds):
    sess = make_session(model)
    wanted = {i.name for i in sess.get_inputs()}
    return run(sess, {k: v for k, v in feeds.items() if k in wanted})


def op_types(model):
    return {n.op_type for n in model.graph.node}


def reference_output(kind, feeds, p, *, with_states, return_sequences):
    states = (
        [feeds[s].astype(np.float64) for s in ("h0", "c0")[: N_STATES[kind]]]
        if with_states
        else None
    )
    hs, _ = np_recurrent(kind, feeds["x"].astype(np.float64), p, states)
    return hs if return_sequences else hs[:, -1]


# ------------------------------------------------------------------ forward
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("with_states", [False, True])
def test_forward_fused_and_unrolled_match_numpy(kind, return_sequences, with_states):
    # bptt only changes gradients: the forward values (and the fused lowering) ignore it
    g = build(
        kind,
        return_sequences=return_sequences,
        with_states=with_states,
        bptt=2 if with_states else 0,
    )
    feeds = feeds_for(kind, "float32", with_states=with_states, return_sequences=return_sequences)
    want = reference_output(
        kind, feeds, params_of(g), with_states=with_states, return_sequences=return_sequences
    )
    assert want.shape == ((N, T, U) if return_sequences else (N, U))

    fused = export(g)
    assert FUSED[kind] in op_types(fused)  # the direct lowering, not the unrolled loop
    unrolled = export(expand_composites(g))
    assert op_types(unrolled).isdisjoint(FUSED.values())
    y_fused = ort(fused, feeds)["rec"]
    y_unrolled = ort(unrolled, feeds)["rec"]
    y_interp = evaluate(g, feeds, outputs=["rec"])["rec"]  # the op's own NumPy reference
    np.testing.assert_allclose(y_fused, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(y_unrolled, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(y_interp, want, rtol=0, atol=2e-6)
    np.testing.assert_allclose(y_fused, y_unrolled, rtol=0, atol=2e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_float64_export_runs_unrolled(kind):
    # ONNX Runtime has no float64 RNN/LSTM/GRU kernels: the lowering emits primitives
    g = build(kind, dtype="float64", with_states=True)
    feeds = feeds_for(kind, "float64", with_states=True)
    model = export(g)
    assert op_types(model).isdisjoint(FUSED.values())
    want = reference_output(kind, feeds, params_of(g), with_states=True, return_sequences=True)
    np.testing.assert_allclose(ort(model, feeds)["rec"], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_symbolic_time_exports_fused_but_cannot_unroll(kind):
    b = Builder("m")
    x = b.input("x", ["N", "T", F])
    y = getattr(b, kind)(x, units=U, return_sequences=True, name="rec")
    b.output(y)
    b.minimize(b.reduce_sum(y))
    g = b.graph
    p = params_of(g)
    sess = make_session(export(g))
    for steps in (1, 5):  # one model, any sequence length
        xv = np.random.default_rng(steps).standard_normal((N, steps, F)).astype(np.float32)
        want, _ = np_recurrent(kind, xv.astype(np.float64), p)
        np.testing.assert_allclose(run(sess, {"x": xv})["rec"], want, rtol=0, atol=2e-6)
    with pytest.raises(GraphError, match="symbolic time dim") as err:
        grad(g)
    assert "fixed" in err.value.hint and err.value.node == "rec"


def test_initialization():
    b = Builder("m")
    x = b.input("x", ["N", T, F])
    for kind in KINDS:
        getattr(b, kind)(x, units=U, name=kind)
    v = b.graph.param_values()
    bias = v["lstm.bias"]
    np.testing.assert_array_equal(bias[U : 2 * U], 1.0)  # forget gate (blocks i, f, g, o)
    np.testing.assert_array_equal(np.delete(bias, np.s_[U : 2 * U]), 0.0)
    np.testing.assert_array_equal(v["gru.bias"], 0.0)
    np.testing.assert_array_equal(v["gru.bias_hn"], 0.0)
    for kind, gates in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        w_hh = v[f"{kind}.weight_hh"]
        assert w_hh.shape == (U, gates * U)
        assert np.abs(w_hh).max() <= 1 / np.sqrt(U) and w_hh.std() > 0.1
        limit = np.sqrt(6 / (F + gates * U))  # Xavier-uniform
        assert np.abs(v[f"{kind}.weight_ih"]).max() <= limit


def test_bad_inputs_are_clear_errors():
    b = Builder("m")
    x2 = b.input("x2", ["N", F])
    with pytest.raises(GraphError, match=r"\[batch, time, features\]"):
        b.lstm(x2, units=U)
    x = b.input("x", ["N", T, F])
    h0 = b.input("h0", ["N", U])
    with pytest.raises(GraphError, match="both initial states"):
        b.lstm(x, h0, units=U)
    bad = b.input("bad", ["N", U + 1])
    with pytest.raises(GraphError, match="initial state h0"):
        b.gru(x, bad, units=U)
    with pytest.raises(GraphError, match="bptt"):
        b.rnn(x, units=U, bptt=-1)


# ------------------------------------------------------------------ gradients
def _targets(kind, with_states):
    names = ["rec.weight_ih", "rec.weight_hh", "rec.bias"] + (
        ["rec.bias_hn"] if kind == "gru" else []
    )
    return names + ["x"] + (list(("h0", "c0")[: N_STATES[kind]]) if with_states else [])


def graph_gradients(g, kind, feeds, with_states):
    targets = _targets(kind, with_states)
    gg = grad(g, wrt=targets)
    got = ort(export(gg), feeds)
    return got[gg.meta["loss"]], {t: got[gg.meta["grads"][t]] for t in targets}


def fd_gradients(kind, loss_fn, p, feeds, targets, eps=1e-6):
    """Central differences of loss_fn(params, feeds) for every target (params or inputs)."""
    out = {}
    for t in targets:
        holder, key = (p, t.split(".", 1)[1]) if "." in t else (feeds, t)
        base = holder[key]
        gr = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            old = base[i]
            base[i] = old + eps
            up = loss_fn(p, feeds)
            base[i] = old - eps
            down = loss_fn(p, feeds)
            base[i] = old
            gr[i] = (up - down) / (2 * eps)
        out[t] = gr
    return out


def rel_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-30))


def _loss_fn(kind, with_states, return_sequences, window=0, frozen=None):
    def loss(p, f):
        states = [f[s] for s in ("h0", "c0")[: N_STATES[kind]]] if with_states else None
        hs, _ = np_recurrent(kind, f["x"], p, states, window=window, frozen=frozen)
        return float(np.sum((hs if return_sequences else hs[:, -1]) * f["r"]))

    return loss


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("return_sequences,with_states", [(True, True), (False, False)])
def test_bptt_gradients_match_finite_differences(kind, return_sequences, with_states):
    g = build(
        kind, dtype="float64", return_sequences=return_sequences, with_states=with_states, loss=True
    )
    feeds = feeds_for(kind, "float64", with_states=with_states, return_sequences=return_sequences)
    loss, got = graph_gradients(g, kind, feeds, with_states)
    p = params_of(g)
    fn = _loss_fn(kind, with_states, return_sequences)
    assert loss == pytest.approx(fn(p, feeds), rel=1e-12)
    want = fd_gradients(kind, fn, p, dict(feeds), _targets(kind, with_states))
    for t, w in want.items():
        assert np.abs(w).max() > 1e-3, f"{t}: the check would be vacuous"
        assert rel_err(got[t], w) <= 1e-6, (t, rel_err(got[t], w))


def truncated_reference(kind, g, feeds, window, with_states, return_sequences=True):
    """FD gradient of the model whose carried state is a constant every `window` steps."""
    p = params_of(g)
    states = [feeds[s] for s in ("h0", "c0")[: N_STATES[kind]]] if with_states else None
    _, carried = np_recurrent(kind, feeds["x"], p, states, window=window)
    fn = _loss_fn(kind, with_states, return_sequences, window=window, frozen=carried)
    return fd_gradients(kind, fn, p, dict(feeds), _targets(kind, with_states))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("window", [1, 2, 3])
def test_truncated_bptt_matches_detached_reference(kind, window):
    with_states = kind == "lstm"  # covers the cell state and gradients into h0/c0 too
    feeds = feeds_for(kind, "float64", with_states=with_states)
    full_g = build(kind, dtype="float64", loss=True, with_states=with_states)
    trunc_g = build(kind, dtype="float64", loss=True, with_states=with_states, bptt=window)
    loss_full, full = graph_gradients(full_g, kind, feeds, with_states)
    loss_trunc, trunc = graph_gradients(trunc_g, kind, feeds, with_states)
    assert loss_trunc == pytest.approx(loss_full, rel=1e-14)  # forward values are unchanged
    want = truncated_reference(kind, trunc_g, feeds, window, with_states)
    for t, w in want.items():
        assert rel_err(trunc[t], w) <= 1e-6, (t, rel_err(trunc[t], w))
    # and truncation really changes what reaches the recurrent weights and the first steps
    assert rel_err(trunc["rec.weight_hh"], full["rec.weight_hh"]) > 1e-2
    assert rel_err(trunc["x"][:, 0], full["x"][:, 0]) > 1e-2
    # the last window's inputs see no cut between them and the loss terms after them
    last = (T - 1) // window * window
    np.testing.assert_allclose(trunc["x"][:, last:], full["x"][:, last:], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_window_as_long_as_the_sequence_is_full_bptt(kind):
    feeds = feeds_for(kind, "float64", with_states=False)
    _, full = graph_gradients(build(kind, dtype="float64", loss=True), kind, feeds, False)
    _, same = graph_gradients(build(kind, dtype="float64", loss=True, bptt=T), kind, feeds, False)
    for t in full:
        np.testing.assert_allclose(same[t], full[t], rtol=1e-13, atol=1e-15)


def test_truncated_last_state_only_gets_gradient_from_last_window():
    # return_sequences=False, bptt=2, T=4: steps 0 and 1 are cut off from the loss entirely
    feeds = feeds_for("gru", "float64", with_states=False, return_sequences=False)
    g = build("gru", dtype="float64", loss=True, return_sequences=False, bptt=2)
    _, got = graph_gradients(g, "gru", feeds, False)
    assert np.all(got["x"][:, :2] == 0.0)
    assert np.abs(got["x"][:, 2:]).min() > 0.0
    want = truncated_reference("gru", g, feeds, 2, False, return_sequences=False)
    for t, w in want.items():
        assert rel_err(got[t], w) <= 1e-6, (t, rel_err(got[t], w))


# ------------------------------------------------------------------ PyTorch
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch_with_copied_weights(kind):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    net = cls(F, U, batch_first=True).double()
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    g = build(kind, dtype="float64", loss=True, with_states=True)
    values = {
        "rec.weight_ih": sd["weight_ih_l0"].T.copy(),
        "rec.weight_hh": sd["weight_hh_l0"].T.copy(),
        "rec.bias": sd["bias_ih_l0"] + sd["bias_hh_l0"],
    }
    if kind == "gru":  # b_hn sits inside the reset gate, so it stays its own parameter
        values["rec.bias"][2 * U :] = sd["bias_ih_l0"][2 * U :]
        values["rec.bias_hn"] = sd["bias_hh_l0"][2 * U :].copy()
    for k, v in values.items():
        g.params[k].value = v
    feeds = feeds_for(kind, "float64", with_states=True)

    xt = torch.tensor(feeds["x"], requires_grad=True)
    st = [torch.tensor(feeds[s][None], requires_grad=True) for s in ("h0", "c0")[: N_STATES[kind]]]
    y, _ = net(xt, tuple(st) if kind == "lstm" else st[0])
    (y * torch.tensor(feeds["r"])).sum().backward()

    np.testing.assert_allclose(ort(export(g), feeds)["rec"], y.detach().numpy(), atol=1e-12)
    _, got = graph_gradients(g, kind, feeds, True)
    np.testing.assert_allclose(got["x"], xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["h0"], st[0].grad.numpy()[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        got["rec.weight_hh"], net.weight_hh_l0.grad.numpy().T, rtol=1e-10, atol=1e-12
    )
