"""Time per training step: graphc's ONNX step vs. PyTorch eager, same network, data, threads.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 200] [--optimizer sgd]
        [--profile] [--only digits_mlp,large_mlp,lenet5,lstm] [-O 0,2] [--auto] [--json FILE]

Each model runs in one process, side by side: graphc's StepRunner (the state
stays in OrtValues; each step binds the batch and runs) and a PyTorch eager
loop (zero_grad, forward, loss, backward, optimizer.step, loss.item()). The
reported time is the median over --steps steps after warm-up. GFLOP/s counts
the multiply-adds of the network's matmuls and convolutions (x2 for FLOPs)
times 3 for the training step (forward, input gradient, weight gradient),
against the best NumPy float32 matmul rate measured on this machine with the
same thread count. With --profile, ONNX Runtime's profiler names the kernels
that take the time. PyTorch is optional: without it only graphc is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


# ------------------------------------------------------------- the networks
def graph_of(name: str):
    import graphc
    from graphc import Builder

    if name == "digits_mlp":
        return graphc.load(os.path.join(ROOT, "samples/mlp_digits.gc"))
    if name == "lenet5":
        return graphc.load(os.path.join(ROOT, "samples/lenet5.gc"))
    if name == "lstm":
        return graphc.load(os.path.join(ROOT, "samples/lstm_sequence.gc"))
    if name == "large_mlp":
        b = Builder("large_mlp")
        x = b.input("x", ["N", 784])
        y = b.input("y", ["N"], dtype="int64")
        h = b.relu(b.linear(x, 1024, name="fc1"))
        h = b.relu(b.linear(h, 1024, name="fc2"))
        logits = b.linear(h, 10, name="fc3")
        b.output(logits)
        b.minimize(b.cross_entropy(logits, y, name="loss"))
        return b.graph
    raise KeyError(name)


BATCH = {"digits_mlp": 64, "large_mlp": 256, "lenet5": 64, "lstm": 64}


def batch_of(name: str, rng):
    n = BATCH[name]
    if name == "digits_mlp":
        return {"x": rng.random((n, 64), np.float32), "y": rng.integers(0, 10, n)}
    if name == "large_mlp":
        return {"x": rng.random((n, 784), np.float32), "y": rng.integers(0, 10, n)}
    if name == "lenet5":
        return {"x": rng.random((n, 1, 32, 32), np.float32), "y": rng.integers(0, 10, n)}
    if name == "lstm":
        return {"x": rng.random((n, 20, 2), np.float32), "target": rng.random((n, 1), np.float32)}
    raise KeyError(name)


def train_flops(name: str) -> float:
    """FLOPs of one training step's matmuls/convolutions (3x the forward pass)."""
    n = BATCH[name]
    if name == "digits_mlp":
        macs = 64 * 128 + 128 * 64 + 64 * 10
    elif name == "large_mlp":
        macs = 784 * 1024 + 1024 * 1024 + 1024 * 10
    elif name == "lenet5":
        macs = 6 * 28 * 28 * 25 + 16 * 10 * 10 * 6 * 25 + 120 * 16 * 25 + 120 * 84 + 84 * 10
    elif name == "lstm":
        macs = 20 * (2 * 128 + 32 * 128) + 32
    else:
        raise KeyError(name)
    return 3 * 2 * macs * n


def torch_model(name: str):
    import torch
    from torch import nn

    if name == "digits_mlp":
        return nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
        ), nn.CrossEntropyLoss()
    if name == "large_mlp":
        return nn.Sequential(
            nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
        ), nn.CrossEntropyLoss()
    if name == "lenet5":
        return nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5),
            nn.Tanh(),
            nn.Flatten(),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, 10),
        ), nn.CrossEntropyLoss()
    if name == "lstm":

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(2, 32, batch_first=True)
                self.head = nn.Linear(32, 1)

            def forward(self, x):
                out, _ = self.lstm(x)
                return self.head(out[:, -1])

        _ = torch
        return Net(), nn.MSELoss()
    raise KeyError(name)


# ------------------------------------------------------------------ timing
def median_time(fn, steps: int, warmup: int) -> float:
    """Median wall time of fn over `steps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def graphc_stepper(name, optimizer, threads, profile_dir=None, level=None):
    """A function running one graphc training step, and its StepRunner."""
    from graphc.train.runner import StepRunner
    from graphc.train.step import StepConfig, build_step

    ts = build_step(graph_of(name), StepConfig(optimizer, lr=1e-3))
    if level is not None:
        from graphc.passes import optimize

        ts.graph = optimize(ts.graph, level)
    runner = StepRunner(ts, "cpu", threads, profile=profile_dir)
    feeds = batch_of(name, np.random.default_rng(0))
    k = [0]

    def step():
        runner.step(feeds, 1e-3, k[0])
        k[0] += 1

    return step, runner


def torch_stepper(name, optimizer, threads):
    import torch

    torch.set_num_threads(threads)
    model, loss_fn = torch_model(name)
    opt = {
        "sgd": lambda p: torch.optim.SGD(p, lr=1e-3),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
        "momentum": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9),
    }[optimizer](model.parameters())
    feeds = batch_of(name, np.random.default_rng(0))
    x = torch.from_numpy(feeds["x"])
    y = torch.from_numpy(feeds["y"] if "y" in feeds else feeds["target"])

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        loss.item()

    return step


def interleaved(fns: dict, steps: int, warmup: int, rounds: int = 5) -> dict[str, float]:
    """Median step time of each function, timed in alternating blocks.

    The machine is shared: alternating blocks expose every contender to the
    same background load, so the ratio holds even when absolute times drift.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per = max(1, steps // rounds)
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(per):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def top_kernels(profile_path: str, k: int = 5) -> list[tuple[str, float]]:
    """Share of kernel time per ONNX op type from ORT's profile (JSON trace)."""
    with open(profile_path) as f:
        events = json.load(f)
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e.get("dur", 0)
    os.unlink(profile_path)
    total = sum(per_op.values()) or 1.0
    return [(op, d / total) for op, d in sorted(per_op.items(), key=lambda kv: -kv[1])[:k]]


def numpy_peak(threads: int, repeats: int = 3) -> float:
    """Best float32 matmul GFLOP/s over a few sizes and repeats (NumPy's BLAS)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    best = 0.0
    ctx = threadpool_limits(threads) if threadpool_limits else _Null()
    with ctx:
        for _ in range(repeats):
            for n in (512, 1024, 2048):
                a = np.random.default_rng(0).random((n, n), np.float32)
                b = np.random.default_rng(1).random((n, n), np.float32)
                t = median_time(lambda a=a, b=b: a @ b, 5 if n == 2048 else 20, 2)
                best = max(best, 2 * n**3 / t / 1e9)
    return best


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "momentum", "adam"))
    ap.add_argument("--only", default="digits_mlp,large_mlp,lenet5,lstm")
    ap.add_argument("--profile", action="store_true", help="list the top ORT kernels")
    ap.add_argument(
        "-O",
        dest="levels",
        default="0,2",
        help="graphc pass pipeline levels to time, comma-separated (default 0,2)",
    )
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    ap.add_argument(
        "--auto",
        action="store_true",
        help="also time graphc with threads='auto' (1 or --threads intra-op "
        "threads, whichever the first step measures faster)",
    )
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    levels = [int(v) for v in args.levels.split(",")]
    peak = numpy_peak(args.threads)
    print(f"NumPy float32 matmul peak: {peak:.1f} GFLOP/s ({args.threads} threads)")
    if not have_torch:
        print("PyTorch is not installed: graphc is timed alone")
    rows = []
    for name in args.only.split(","):
        steps = args.steps if name != "large_mlp" else max(20, args.steps // 4)
        fns = {}
        runners = {}
        for level in levels:
            fns[f"O{level}"], _ = graphc_stepper(name, args.optimizer, args.threads, None, level)
        if args.auto:  # the runner picks 1 or all threads by timing the first step
            fns["auto"], runners["auto"] = graphc_stepper(
                name, args.optimizer, "auto", None, levels[0]
            )
        if have_torch:
            fns["torch"] = torch_stepper(name, args.optimizer, args.threads)
        t = interleaved(fns, steps, args.warmup)
        peak = max(peak, numpy_peak(args.threads, 1))  # re-measured: the load drifts
        kernels = None
        if args.profile:
            step, runner = graphc_stepper(
                name, args.optimizer, args.threads, os.path.join("/tmp", f"ort_{name}"), levels[-1]
            )
            for _ in range(args.warmup + 20):
                step()
            kernels = top_kernels(runner.session.end_profiling())
        for key in [k for k in fns if k != "torch"]:
            t_g, t_t = t[key], t.get("torch")
            gf = train_flops(name) / t_g / 1e9
            level = key if key == "auto" else int(key[1:])
            if key == "auto":
                key = f"auto ({runners['auto'].threads} thr)"
            rows.append(
                {
                    "model": name,
                    "batch": BATCH[name],
                    "level": level,
                    "graphc_ms": t_g * 1e3,
                    "torch_ms": None if t_t is None else t_t * 1e3,
                    "speedup": None if t_t is None else t_t / t_g,
                    "gflops": gf,
                    "kernels": kernels,
                }
            )
            sp = "" if t_t is None else f"  torch {t_t * 1e3:8.3f} ms  speedup x{t_t / t_g:5.2f}"
            print(
                f"{name:11s} batch {BATCH[name]:3d} {key:>14s}  graphc {t_g * 1e3:8.3f} ms{sp}"
                f"  {gf:6.1f} GFLOP/s",
                flush=True,
            )
        if kernels:
            print("    top kernels: " + ", ".join(f"{op} {100 * s:.0f}%" for op, s in kernels))
    print(f"NumPy float32 matmul peak (best of all measurements): {peak:.1f} GFLOP/s")
    for r in rows:
        r["peak_fraction"] = r["gflops"] / peak
        print(f"  {r['model']:11s} {r['level']!s:>4s}: {100 * r['peak_fraction']:5.1f}% of peak")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "peak_gflops": peak,
                    "threads": args.threads,
                    "optimizer": args.optimizer,
                    "rows": rows,
                },
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
