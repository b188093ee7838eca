"""Sample networks re-expressed in PyTorch, op by op, as an independent reference.

Each IR op maps to the torch.nn / torch.nn.functional call a PyTorch user
would write, with graphc's parameters copied in (and transposed where the
layouts differ: dense weights are [in, out] here, [out, in] in torch).
Evaluation semantics: dropout off, batch norm on running statistics.
"""

from __future__ import annotations

import numpy as np


def _pads(attrs, x, kernel):
    """graphc padding attribute -> (begin, end) per spatial axis, as ints."""
    spatial = x.shape[2:]
    k = kernel if isinstance(kernel, (tuple, list)) else (kernel,) * len(spatial)
    stride = attrs.get("stride") or k
    stride = stride if isinstance(stride, (tuple, list)) else (stride,) * len(spatial)
    dil = attrs.get("dilation", 1)
    dil = dil if isinstance(dil, (tuple, list)) else (dil,) * len(spatial)
    p = attrs.get("padding", 0)
    if p == "valid":
        return [(0, 0)] * len(spatial)
    if p == "same":
        out = []
        for size, kk, s, d in zip(spatial, k, stride, dil):
            o = -(-size // s)
            total = max((o - 1) * s + (kk - 1) * d + 1 - size, 0)
            out.append((total // 2, total - total // 2))
        return out
    if isinstance(p, int):
        return [(p, p)] * len(spatial)
    p = list(p)
    if len(p) == len(spatial):
        return [(q, q) for q in p]
    return list(zip(p[: len(spatial)], p[len(spatial) :]))


def _pad(F, x, pads, value=0.0):
    flat = []
    for b, e in reversed(pads):
        flat += [b, e]
    return F.pad(x, flat, value=value) if any(flat) else x


def run_graph_in_torch(graph, feeds, params, torch):
    """Evaluate a sample's graph in PyTorch; returns (env of torch tensors, param tensors)."""
    F = torch.nn.functional
    P = {
        k: torch.tensor(
            np.asarray(v), requires_grad=not graph.params[k].frozen and not graph.params[k].state
        )
        for k, v in params.items()
    }
    env = {k: torch.tensor(np.asarray(v)) for k, v in feeds.items()}
    env.update(P)
    env.update({k: torch.tensor(np.asarray(v)) for k, v in graph.constants.items()})
    for node in graph.topo_order():
        a = node.attrs
        xs = [env[v] if v else None for v in node.inputs]
        p = {name.split(".")[-1]: env[name] for name in node.inputs if name in P}
        x = xs[0]
        op = node.op
        if op == "linear":
            y = F.linear(x, p["weight"].T, p.get("bias"))
        elif op in ("relu", "tanh", "sigmoid"):
            y = getattr(torch, op)(x)
        elif op == "step":
            y = (x > a["threshold"]).to(x.dtype)
        elif op in ("add", "residual"):
            y = xs[0] + xs[1]
        elif op == "mul":
            y = xs[0] * xs[1]
        elif op == "flatten":
            y = torch.flatten(x, 1)
        elif op in ("conv1d", "conv2d", "conv3d"):
            fn = getattr(F, op)
            xp = _pad(F, x, _pads(a, x, a["kernel"]))
            y = fn(
                xp,
                p["weight"],
                p.get("bias"),
                stride=a["stride"],
                dilation=a["dilation"],
                groups=a["groups"],
            )
        elif op == "separable_conv2d":
            xp = _pad(F, x, _pads(a, x, a["kernel"]))
            d = F.conv2d(
                xp,
                p["depthwise"],
                None,
                stride=a["stride"],
                dilation=a["dilation"],
                groups=x.shape[1],
            )
            y = F.conv2d(d, p["pointwise"], p.get("bias"))
        elif op in ("max_pool2d", "avg_pool2d"):
            pads = _pads(a, x, a["kernel"])
            stride = a["stride"] or a["kernel"]
            if op == "max_pool2d":
                y = F.max_pool2d(_pad(F, x, pads, -np.inf), a["kernel"], stride)
            else:
                assert all(b == 0 and e == 0 for b, e in pads)
                y = F.avg_pool2d(x, a["kernel"], stride)
        elif op == "global_avg_pool":
            y = x.mean(dim=tuple(range(2, x.dim())))
        elif op == "batch_norm":
            y = F.batch_norm(
                x,
                p["running_mean"],
                p["running_var"],
                p.get("weight"),
                p.get("bias"),
                training=False,
                eps=a["eps"],
            )
        elif op == "dropout":
            y = x
        elif op == "cross_entropy":
            y = F.cross_entropy(x, xs[1])
        elif op == "mse":
            y = F.mse_loss(x, xs[1])
        elif op == "binary_cross_entropy":
            y = F.binary_cross_entropy_with_logits(x, xs[1])
        elif op in ("rnn", "lstm", "gru"):
            y = _recurrent(torch, op, x, p, a)
        else:
            raise NotImplementedError(f"no PyTorch translation for op '{op}'")
        env[node.outputs[0]] = y
    return env, P


def _recurrent(torch, op, x, p, a):
    """torch.nn.RNN/LSTM/GRU run functionally on graphc's parameters (transposed layouts).

    graphc keeps one summed bias (PyTorch's b_ih + b_hh) and, for the GRU, b_hn apart.
    """
    units = a["units"]
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[op]
    module = cls(x.shape[-1], units, batch_first=True).to(x.dtype)
    zero = torch.zeros_like(p["bias"])
    bias_hh = torch.cat([zero[: 2 * units], p["bias_hn"]]) if op == "gru" else zero
    weights = {
        "weight_ih_l0": p["weight_ih"].T,
        "weight_hh_l0": p["weight_hh"].T,
        "bias_ih_l0": p["bias"],
        "bias_hh_l0": bias_hh,
    }
    out, _ = torch.func.functional_call(module, weights, (x,))
    return out if a["return_sequences"] else out[:, -1]
