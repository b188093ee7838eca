"""Convolution and pooling gradients on ONNX Runtime (CPU, float32, one thread).

    .venv/bin/python benchmarks/bench_conv.py [--rounds 7]

Two Markdown tables (paste into benchmarks/RESULTS.md):

layers    forward and forward+backward time of one layer (loss = sum(y * r)),
          graphc on ORT vs PyTorch eager (torch.set_num_threads(1)) where torch
          is installed. Medians over interleaved rounds (the machine is shared).
lowering  the two ways graphc can lower conv's gradient primitives: the
          standard one for float32 (conv_input_grad as ConvTranspose,
          conv_weight_grad as a Conv with batch and channels swapped) vs the
          gathered-windows + Einsum form used for float64 (forced here in
          float32 to compare like with like).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import graphc.ops.conv as conv_ops
from graphc.autodiff import grad
from graphc.builder import Builder
from graphc.export import export
from graphc.ir import Graph
from graphc.runtime import make_session, run

LAYERS = [
    ("conv2d", [32, 32, 32, 32], {"filters": 64, "kernel": 3, "padding": 1}),
    ("conv2d", [32, 64, 16, 16], {"filters": 64, "kernel": 3, "padding": 1, "stride": 2}),
    ("conv2d", [32, 64, 16, 16], {"filters": 64, "kernel": 3, "padding": 1, "groups": 64}),
    ("max_pool2d", [32, 64, 32, 32], {"kernel": 2}),
    ("avg_pool2d", [32, 64, 32, 32], {"kernel": 3, "stride": 2, "padding": 1}),
]


def _timer(fn):
    """Warm up once; return a callable that times one more call (seconds)."""
    fn()

    def once():
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    return once


def _median_ms(fns, rounds):
    """Interleave the callables round by round; median milliseconds of each."""
    times = [[] for _ in fns]
    for _ in range(rounds):
        for i, f in enumerate(fns):
            times[i].append(f())
    return [1e3 * statistics.median(t) for t in times]


def _layer_graph(op, shape, attrs):
    b = Builder(Graph(op))
    x = b.input("x", ["N", *shape[1:]])
    y = b.op(op, x, name="y", **attrs)
    r = b.input("r", y.shape)
    b.output(y)
    b.minimize(b.reduce_sum(y * r, name="loss"))
    return b.graph


def _torch_step(torch, op, x, r, params, attrs):
    import torch.nn.functional as F

    if op == "conv2d":
        y = F.conv2d(
            x,
            params["y.weight"],
            params["y.bias"],
            stride=attrs.get("stride", 1),
            padding=attrs.get("padding", 0),
            groups=attrs.get("groups", 1),
        )
    elif op == "max_pool2d":
        y = F.max_pool2d(x, attrs["kernel"], attrs.get("stride"), attrs.get("padding", 0))
    else:
        y = F.avg_pool2d(
            x,
            attrs["kernel"],
            attrs.get("stride"),
            attrs.get("padding", 0),
            count_include_pad=False,
        )
    (y * r).sum().backward()


def layers(rounds: int) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        torch = None
    print("| layer | input | graphc fwd ms | graphc fwd+bwd ms | torch fwd+bwd ms |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for op, shape, attrs in LAYERS:
        g = _layer_graph(op, shape, attrs)
        step = make_session(export(grad(g, wrt=["x", *g.params])), threads=1)
        fwd = make_session(export(g, outputs=["y"]), threads=1)
        x = rng.standard_normal(shape).astype(np.float32)
        r = rng.standard_normal((shape[0], *g.type("y").shape[1:])).astype(np.float32)
        fns = [
            _timer(lambda f=fwd, x=x: run(f, {"x": x})),
            _timer(lambda s=step, x=x, r=r: run(s, {"x": x, "r": r})),
        ]
        if torch is not None:
            tx = torch.tensor(x, requires_grad=True)
            tr = torch.tensor(r)
            tp = {k: torch.tensor(v, requires_grad=True) for k, v in g.param_values().items()}
            fns.append(
                _timer(
                    lambda op=op, tx=tx, tr=tr, tp=tp, a=attrs: _torch_step(
                        torch, op, tx, tr, tp, a
                    )
                )
            )
        ms = _median_ms(fns, rounds) + ([] if torch is not None else [float("nan")])
        label = f"{op} {attrs}".replace("|", "/")
        print(f"| {label} | {shape} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} |")


def _op_session(op, shapes, attrs, einsum: bool):
    keep = conv_ops._einsum_path
    if einsum:
        conv_ops._einsum_path = lambda e, v: True
    try:
        b = Builder(Graph(op))
        ins = [b.input(f"i{k}", s) for k, s in enumerate(shapes)]
        b.output(b.op(op, *ins, name="y", **attrs))
        return make_session(export(b.graph), threads=1)
    finally:
        conv_ops._einsum_path = keep


def lowering(rounds: int) -> None:
    print(
        "| conv (x, attrs) | weight grad: Conv trick ms | weight grad: Einsum ms "
        "| input grad: ConvTranspose ms | input grad: Einsum ms |"
    )
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for x, w, gy, a in [
        ([32, 32, 32, 32], [64, 32, 3, 3], [32, 64, 32, 32], {"padding": 1}),
        ([32, 64, 16, 16], [64, 64, 3, 3], [32, 64, 8, 8], {"padding": 1, "stride": 2}),
        ([32, 64, 16, 16], [64, 1, 3, 3], [32, 64, 16, 16], {"padding": 1, "groups": 64}),
    ]:
        fns = []
        for op, shapes, attrs in (
            ("conv_weight_grad", [x, gy], dict(a, kernel=3)),
            ("conv_input_grad", [gy, w, x], a),
        ):
            feeds = {
                f"i{k}": rng.standard_normal(s).astype(np.float32) for k, s in enumerate(shapes)
            }
            for einsum in (False, True):
                sess = _op_session(op, shapes, attrs, einsum)
                names = {i.name for i in sess.get_inputs()}
                mine = {k: v for k, v in feeds.items() if k in names}
                fns.append(_timer(lambda s=sess, f=mine: run(s, f)))
        ms = _median_ms(fns, rounds)
        print(f"| {x} {a} | {ms[0]:.1f} | {ms[1]:.1f} | {ms[2]:.1f} | {ms[3]:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    layers(args.rounds)
    print()
    lowering(args.rounds)


if __name__ == "__main__":
    main()
