"""Recurrent layers: rnn (Elman, tanh), lstm and gru over a batch-first sequence.

Layout and semantics (shared by the three ops):

- input `x` is **batch first**, `[N, T, F]` (batch, time steps, features);
  the output is `[N, units]` (the last hidden state) or, with
  `return_sequences=True`, `[N, T, units]` (every step's hidden state).
- the initial state is zero unless given: `rnn(x, h0)`, `gru(x, h0)`,
  `lstm(x, h0, c0)` with `h0`/`c0` of shape `[N, units]`.
- parameters: `<node>.weight_ih` `[F, G*units]`, `<node>.weight_hh`
  `[units, G*units]`, `<node>.bias` `[G*units]`, gate blocks side by side
  along the last axis (G = 1 for rnn, 4 for lstm, 3 for gru). The gate
  order and the equations are PyTorch's:

      rnn:  h' = tanh(x Wih + h Whh + b)
      lstm: i, f, g, o = x Wih + h Whh + b      (blocks in this order)
            c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c')
      gru:  r, z, n blocks;  r = sigmoid(x Wir + h Whr + br),  z likewise,
            n = tanh(x Win + bn + r * (h Whn + bias_hn));  h' = (1 - z) * n + z * h

  A single bias stands for PyTorch's `b_ih + b_hh` (they only ever appear
  summed), except that the gru keeps `<node>.bias_hn` `[units]` (PyTorch's
  `b_hn`) apart because it is multiplied by the reset gate.
- initialization: `weight_ih` Xavier-uniform; `weight_hh` uniform in
  +-1/sqrt(units) (PyTorch's default), whose spectral radius starts near
  0.58, so the recurrence neither explodes nor dies at step one; biases
  zero, except the LSTM forget-gate block, which starts at 1.0 so the cell
  remembers by default early in training (Gers et al. 2000; Jozefowicz et
  al. 2015). `init=` on the layer replaces both weight initializers.

How they run:

- for training the ops are composites: `decompose` unrolls the sequence
  into primitives (one matmul for every step's input projection, then per
  step a slice, a matmul, gates, elementwise math), so autodiff yields
  backpropagation through time with no rule of its own. Unrolling needs a
  fixed T.
- `bptt=k` (k > 0) is truncated BPTT: the state carried from step t-1 into
  step t is wrapped in `stop_gradient` whenever t is a positive multiple of
  k. The sequence is cut into windows [0, k), [k, 2k), ...; the forward
  values are unchanged, but a gradient reaching step t flows back through
  the recurrence only to the start of t's window (at most k steps,
  including t). Weights still get gradient from every step; an `h0`/`c0`
  input gets gradient only from the first window, and with
  `return_sequences=False` only the last window's steps get any (the loss
  sees only the last state). `bptt=0` is full BPTT.
- for inference export each op has a direct lowering to ONNX RNN/LSTM/GRU
  (`expand_composites(keep_lowerable=True)` keeps it): the weights are
  transposed and their gate blocks reordered to ONNX's order (LSTM i,o,f,c;
  GRU z,r,h with linear_before_reset=1, which is PyTorch's formulation).
  ONNX Runtime has no float64 kernels for these ops, so float64 nodes lower
  to the unrolled primitives instead.
"""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphError
from graphc.ir import TensorType
from graphc.ops.registry import Attr, InferCtx, ParamSpec, defop, get_op
from graphc.shapes import concrete, fmt_shape

ATTRS = {
    "units": Attr(int, doc="hidden state size"),
    "return_sequences": Attr(
        bool, False, doc="True: every step's state [N, T, units]; False: the last one [N, units]"
    ),
    "bptt": Attr(
        int, 0, doc="truncated BPTT window in steps (0: full backpropagation through time)"
    ),
}

# ONNX's gate order as indices into ours (PyTorch's)
_ONNX_GATES = {"rnn": (0,), "lstm": (0, 3, 1, 2), "gru": (1, 0, 2)}
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_STATES = {"rnn": 1, "lstm": 2, "gru": 1}


def _params(kind: str) -> tuple[ParamSpec, ...]:
    g = _GATES[kind]
    specs = (
        ParamSpec("weight_ih", lambda c: (c.x.shape[-1], g * c.attrs["units"]), "xavier", "io"),
        # "uniform" is +-1/sqrt(fan_in) = +-1/sqrt(units) here (fan_in is the first dim)
        ParamSpec("weight_hh", lambda c: (c.attrs["units"], g * c.attrs["units"]), "uniform", "io"),
        ParamSpec(
            "bias",
            lambda c: (g * c.attrs["units"],),
            "blocks:0,1,0,0" if kind == "lstm" else "zeros",
            "vec",
        ),
    )
    if kind == "gru":
        specs += (ParamSpec("bias_hn", lambda c: (c.attrs["units"],), "zeros", "vec"),)
    return specs


# ------------------------------------------------------------------ shapes
def _infer(kind: str):
    def infer(ctx: InferCtx) -> TensorType:
        x = ctx.need_float(0)
        if x.rank != 3:
            raise ctx.fail(
                f"the input must be [batch, time, features], got {x}",
                hint="recurrent layers are batch first: x is [N, T, F]",
            )
        units = ctx.attrs["units"]
        if units < 1:
            raise ctx.fail(f"units must be positive, got {units}")
        if ctx.attrs["bptt"] < 0:
            raise ctx.fail(
                f"bptt must be 0 (full BPTT) or a positive window, got {ctx.attrs['bptt']}"
            )
        states = ctx.inputs[1 : 1 + _STATES[kind]]
        given = [s is not None for s in states]
        if any(given) and not all(given):
            raise ctx.fail("give both initial states h0 and c0, or neither (zeros)")
        for name, s in zip(("h0", "c0"), states):
            if s is None:
                continue
            if (
                s.dtype != x.dtype
                or s.rank != 2
                or s.shape[1] != units
                or (
                    isinstance(s.shape[0], int)
                    and isinstance(x.shape[0], int)
                    and s.shape[0] != x.shape[0]
                )
            ):
                raise ctx.fail(
                    f"initial state {name} must be [N, units] = "
                    f"{fmt_shape((x.shape[0], units))} {x.dtype}, got {s}"
                )
        if ctx.attrs["return_sequences"]:
            return TensorType(x.dtype, (x.shape[0], x.shape[1], units))
        return TensorType(x.dtype, (x.shape[0], units))

    return infer


def _flops(kind: str):
    def flops(ctx: InferCtx, outs) -> int:
        n, t, f = concrete(ctx.x.shape, default=1)
        u, g = ctx.attrs["units"], _GATES[kind]
        return n * t * (2 * (f + u) * g * u + 6 * g * u)

    return flops


# --------------------------------------------------------------- reference
def _sigmoid(v):
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def _split(rest: tuple, kind: str):
    """(states or None, params) from the reference's positional arrays."""
    n_params = len(_params(kind))
    if len(rest) == n_params:
        return None, rest
    return rest[:-n_params], rest[-n_params:]


def _reference(kind: str):
    def ref(x, *rest, units, return_sequences, bptt):
        states, (w_ih, w_hh, b, *extra) = _split(rest, kind)
        n, steps, _ = x.shape
        h = np.zeros((n, units), x.dtype) if states is None else states[0]
        c = None if kind != "lstm" else (np.zeros_like(h) if states is None else states[1])
        hs = []
        for t in range(steps):
            a = x[:, t] @ w_ih + b
            r = h @ w_hh
            if kind == "rnn":
                h = np.tanh(a + r)
            elif kind == "lstm":
                i, f, g, o = np.split(a + r, 4, axis=1)
                c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
                h = _sigmoid(o) * np.tanh(c)
            else:
                ar, az, an = np.split(a, 3, axis=1)
                rr, rz, rn = np.split(r, 3, axis=1)
                reset, update = _sigmoid(ar + rr), _sigmoid(az + rz)
                cand = np.tanh(an + reset * (rn + extra[0]))
                h = (1.0 - update) * cand + update * h
            hs.append(h)
        out = np.stack(hs, axis=1) if return_sequences else h
        return out.astype(x.dtype)

    return ref


# ------------------------------------------------------------- unrolling
def _cell(kind: str, b, xw, state, w_hh, bias_hn, units: int):
    """One step from the projected input `xw` [N, G*units]; `state` None means zeros."""
    cache: dict[str, tuple] = {}

    def gate(v, k):
        # one split per pre-activation: its gradient is a single concat of the gates'
        if v.name not in cache:
            cache[v.name] = b.split(v, axis=1, sizes=(units,) * _GATES[kind])
        return cache[v.name][k]

    rec = None if state is None else state[0] @ w_hh
    if kind == "rnn":
        return (b.tanh(xw if rec is None else xw + rec),)
    if kind == "lstm":
        z = xw if rec is None else xw + rec
        i, f, g, o = (gate(z, k) for k in range(4))
        ig = b.sigmoid(i) * b.tanh(g)
        c = ig if state is None else b.sigmoid(f) * state[1] + ig
        return (b.sigmoid(o) * b.tanh(c), c)
    # gru: the reset gate scales the whole recurrent term of the candidate, bias included
    if rec is None:
        reset, update = b.sigmoid(gate(xw, 0)), b.sigmoid(gate(xw, 1))
        cand = b.tanh(gate(xw, 2) + reset * bias_hn)
        return ((1.0 - update) * cand,)
    reset = b.sigmoid(gate(xw, 0) + gate(rec, 0))
    update = b.sigmoid(gate(xw, 1) + gate(rec, 1))
    cand = b.tanh(gate(xw, 2) + reset * (gate(rec, 2) + bias_hn))
    return ((1.0 - update) * cand + update * state[0],)


def _decompose(kind: str):
    def decompose(b, node, x, *rest):
        n_states = _STATES[kind]
        states, params = rest[:n_states], rest[n_states:]
        w_ih, w_hh, bias = params[:3]
        bias_hn = params[3] if kind == "gru" else None
        steps = x.shape[1]
        if not isinstance(steps, int):
            raise GraphError(
                f"{kind} '{node.name}': cannot unroll over the symbolic time dim {steps!r}",
                loc=node.loc,
                node=node.name,
                hint="training (and float64 export) unrolls the sequence, so it needs a fixed "
                "T: declare the input as [N, 20, F], or pad/bucket sequences to fixed "
                "lengths",
            )
        units, window = node.attrs["units"], node.attrs["bptt"]
        # every step's input projection in one matmul: [N, T, F] @ [F, G*units]
        xw_all = b.matmul(x, w_ih) + bias
        state = None if states[0] is None else tuple(states)
        per_step = b.split(xw_all, axis=1, sizes=(1,) * steps) if steps > 1 else (xw_all,)
        hs = []
        for t in range(steps):
            xw = b.squeeze(per_step[t], axes=(1,))
            if window and t and t % window == 0 and state is not None:
                # truncated BPTT: the carried state is a constant to the backward pass
                state = tuple(b.stop_gradient(s) for s in state)
            state = _cell(kind, b, xw, state, w_hh, bias_hn, units)
            hs.append(state[0])
        if not node.attrs["return_sequences"]:
            return hs[-1]
        seq = [b.unsqueeze(h, axes=(1,)) for h in hs]
        return seq[0] if len(seq) == 1 else b.concat(*seq, axis=1)

    return decompose


# ------------------------------------------------------------ ONNX lowering
def _lower(kind: str):
    # Measured on ORT CPU, one thread: the fused LSTM/GRU match or beat the unrolled form
    # (up to 6x at batch 1, T=200); ORT's plain RNN kernel is 3-4x slower than unrolled at
    # batch 32-64 but is kept: one op for any T (symbolic T cannot be unrolled), and the
    # same ONNX serves cuDNN on CUDA.
    def lower(e, node, x, *rest):
        dtype = e.type(node.inputs[0]).dtype
        if dtype == "float64":
            return _lower_unrolled(e, node, [x, *rest])
        n_states = _STATES[kind]
        states, params = rest[:n_states], rest[n_states:]
        w_ih, w_hh, bias = params[:3]
        units = node.attrs["units"]
        order = _ONNX_GATES[kind]
        idx = e.ints([k * units + j for k in order for j in range(units)])

        def onnx_weight(w):  # ours [in, G*units] -> ONNX [1, G*units, in], gates reordered
            if order != tuple(range(len(order))):
                w = e.op("Gather", [w, idx], axis=1)
            return e.op("Unsqueeze", [e.op("Transpose", [w], perm=[1, 0]), e.ints([0])])

        gb = bias if kind == "rnn" else e.op("Gather", [bias, idx], axis=0)
        zeros = e.const(np.zeros(_GATES[kind] * units, dtype=dtype))
        if kind == "gru":  # recurrent bias in ONNX order (z, r, h): only h's is nonzero
            rb = e.op("Concat", [e.const(np.zeros(2 * units, dtype=dtype)), params[3]], axis=0)
        else:
            rb = zeros
        b_onnx = e.op("Unsqueeze", [e.op("Concat", [gb, rb], axis=0), e.ints([0])])
        init = [e.op("Unsqueeze", [s, e.ints([0])]) if s else "" for s in states]
        # ONNX Runtime only implements the time-major layout (layout=0)
        xt = e.op("Transpose", [x], perm=[1, 0, 2])
        ins = [xt, onnx_weight(w_ih), onnx_weight(w_hh), b_onnx, "", *init]
        extra = {"linear_before_reset": 1} if kind == "gru" else {}
        y, y_h = e.op(kind.upper(), ins, outputs=2, hidden_size=units, **extra)
        if node.attrs["return_sequences"]:  # Y is [T, 1, N, units]
            return e.op("Transpose", [e.op("Squeeze", [y, e.ints([1])])], perm=[1, 0, 2])
        return e.op("Squeeze", [y_h, e.ints([0])])  # Y_h is [1, N, units]

    return lower


def _lower_unrolled(e, node, names: list[str]) -> str:
    """Emit the node's decomposition, primitive by primitive, into the ONNX graph."""
    from graphc.builder import Builder, Tensor  # ops import the builder only when lowering
    from graphc.ir import Graph

    dtype = e.type(node.inputs[0]).dtype
    mini = Graph(f"{node.name}__unrolled", dtype=dtype)
    for v, name in zip(node.inputs, names):
        if v:
            mini.inputs[name] = mini.types[name] = e.type(v)
    b = Builder(mini, prefix=f"{node.name}__")
    b.loc = node.loc
    out = get_op(node.op).decompose(b, node, *[Tensor(b, n) if n else None for n in names])
    outer_graph, outer_node = e.graph, e.node
    alias = {k: e.const(v) for k, v in mini.constants.items()}
    e.graph = mini
    try:
        for inner in mini.topo_order():
            e.node = inner
            res = get_op(inner.op).lower(e, inner, *[alias.get(v, v) for v in inner.inputs])
            res = [res] if isinstance(res, str) else list(res)
            alias.update(zip(inner.outputs, res))
    finally:
        e.graph, e.node = outer_graph, outer_node
    return alias.get(out.name, out.name)


# ---------------------------------------------------------------- the ops
_DOCS = {
    "rnn": "Elman RNN, h' = tanh(x Wih + h Whh + b), over x [N, T, F] (batch first)",
    "lstm": "LSTM over x [N, T, F] (batch first); gate blocks i, f, g, o (PyTorch order)",
    "gru": "GRU over x [N, T, F] (batch first); gate blocks r, z, n, PyTorch's formulation "
    "(reset applied after the recurrent matmul)",
}


def _test_cases(kind: str) -> dict:
    states = [[2, 3]] * _STATES[kind]
    return {
        "cases": [
            {"shapes": [[2, 4, 3]], "attrs": {"units": 4}},
            {"shapes": [[2, 3, 2], *states], "attrs": {"units": 3, "return_sequences": True}},
            {
                "shapes": [[2, 3, 2]],
                "attrs": {"units": 3, "return_sequences": True, "bptt": 2},
                "grad": "truncated BPTT is by design not the gradient of the forward function; "
                "tests/test_ort_recurrent.py checks it against a detached reference",
            },
        ],
        "grad": True,
    }


for _kind in ("rnn", "lstm", "gru"):
    defop(
        _kind,
        inputs=("x", "h0?", "c0?") if _kind == "lstm" else ("x", "h0?"),
        attrs=dict(ATTRS),
        params=_params(_kind),
        infer=_infer(_kind),
        reference=_reference(_kind),
        decompose=_decompose(_kind),
        lower=_lower(_kind),
        flops=_flops(_kind),
        category="layers",
        key_attrs=("units", "return_sequences"),
        doc=_DOCS[_kind] + "; out [N, units], or [N, T, units] with return_sequences; "
        "bptt=k truncates backpropagation to k-step windows",
        test=_test_cases(_kind),
    )
