"""What the graph optimizer buys, measured on the training step in ONNX Runtime.

    .venv/bin/python benchmarks/bench_passes.py [--quick] [--only step|memory|recompute|compile]
        [--samples NAME ...]

Sections (each printed as a Markdown table; paste into benchmarks/RESULTS.md):

step       -O2 vs -O0 (and -O1) training-step time per sample, Adam, ORT_ENABLE_ALL
           for both, one intra-op thread, timed through graphc's StepRunner (the
           path `graphc train` takes: IOBinding, parameters and optimizer state
           kept in OrtValues between steps), three sessions per level made in
           turn (two sessions of one model differ by up to 5-8%); rounds
           interleave the sessions and the speedup is the median of per-round
           ratios of the levels' mean times (the machine is shared).
           `--samples NAME ...` limits it to some samples.
memory     planned peak vs a naive plan vs the liveness lower bound, and the
           planner's estimate vs the peak measured while ORT runs the step.
recompute  a deep residual MLP: measured peak and step time, -O2 vs -O2 with
           --memory-budget auto.
compile    parse -> grad -> train step -> passes -> ONNX for ResNet-50-sized and
           unrolled-LSTM training graphs at several sizes.

Measured peak: each model runs in a fresh subprocess with ORT's CPU arena
and memory patterns off, so every tensor is its own allocation, freed after
its last use, and glibc's mmap threshold fixed at 64 KiB, so big blocks go
back to the system when freed. After one warm-up step, the peak of the
second step is the process's resident high-water mark (VmHWM, reset through
/proc/self/clear_refs just before it) minus the resident size at that moment
(inputs, parameters and the session already resident). It includes ORT's
kernel workspaces (im2col buffers of Conv, GEMM packing), which the plan does
not model, the step's outputs (new parameters and optimizer state) and
allocator rounding; blocks under 64 KiB come from the heap and are not seen
reliably.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import graphc
from graphc.feeds import random_feeds
from graphc.passes import optimize, plan_memory
from graphc.passes.cost import fmt_bytes
from graphc.passes.memory import ort_schedule
from graphc.train.step import StepConfig, build_step

SAMPLE_BATCH = 64
INSTANCES = 3  # sessions per -O level in the step section (see interleave)


def session(model, threads=1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def step_model(ts, graph):
    return dataclasses.replace(ts, graph=graph).export()


def interleave(run: dict, rounds: int, budget_s: float, max_reps: int) -> dict:
    """Median seconds per call of each variant, and its median per-round ratio to the first.

    `run[(variant, i)](n)` makes n calls on instance i of a variant (a key that is not a
    tuple is instance 0 of itself). Each round runs every instance once, every other round
    in reverse order: a slot's position in the round (what ran just before it, a burst of
    load early or late in the round) must not favour a variant; in a fixed order the last
    slot measured 2-3% faster. A variant's time in a round is the mean over its instances:
    two sessions of one model differ by up to 5-8% (where their buffers landed), so one
    instance per variant can decide a comparison by itself.
    """
    keys = [k if isinstance(k, tuple) else (k, 0) for k in run]
    run = dict(zip(keys, run.values()))
    t0 = time.perf_counter()
    run[keys[0]](1)
    one = max(time.perf_counter() - t0, 1e-5)
    reps = max(1, min(max_reps, int(budget_s / len(run) / rounds / one)))
    variants = list(dict.fromkeys(k[0] for k in keys))
    per = {v: [] for v in variants}
    for i in range(rounds):
        took = {v: [] for v in variants}
        for k in keys if i % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            run[k](reps)
            took[k[0]].append((time.perf_counter() - t0) / reps)
        for v in variants:
            per[v].append(statistics.mean(took[v]))
    first = variants[0]
    return {
        v: (statistics.median(t), statistics.median(b / x for b, x in zip(per[first], t)))
        for v, t in per.items()
    }


def time_variants(sessions: dict, feeds, rounds: int, budget_s: float = 1.0) -> dict:
    """interleave over InferenceSessions (plain session.run)."""
    for s in sessions.values():
        s.run(None, feeds)

    def runner(s):
        def run(n):
            for _ in range(n):
                s.run(None, feeds)

        return run

    return interleave({k: runner(s) for k, s in sessions.items()}, rounds, budget_s, 200)


def samples_with_loss():
    out = []
    for path in sorted((ROOT / "samples").glob("*.gc")):
        try:
            g = graphc.load(str(path))
        except graphc.GraphError:
            continue
        if g.loss is None:
            continue
        try:
            build_step(g, StepConfig(optimizer="adam"))
        except graphc.GraphError:  # e.g. a sample whose layers are all frozen
            continue
        out.append((path.stem, g))
    return out


# ----------------------------------------------------------------------- step
def time_runners(runners: dict, feeds, rounds: int, budget_s: float) -> dict:
    """interleave over StepRunners: the training path (IOBinding, state on device).

    Keys as for `interleave`. Each runner keeps training from where its last timed step
    left it; Adam on random data keeps every value finite over a few thousand steps.
    """
    lr = {k: r.ts.config.learning_rate() for k, r in runners.items()}
    count = dict.fromkeys(runners, 0)

    def steps(k, n):
        r = runners[k]
        for _ in range(n):
            r.step(feeds, lr[k], count[k])
            count[k] += 1

    for k in runners:
        steps(k, 3)  # warm-up (and the first-run allocations)
    run = {k: (lambda n, k=k: steps(k, n)) for k in runners}
    return interleave(run, rounds, budget_s, 300)


def check_same_step(name: str, runners: dict, feeds) -> None:
    """One step from the same start: every variant's loss and new state must match -O0's."""
    ref_key = next(iter(runners))
    out = {}
    for k, r in runners.items():
        loss = r.step(feeds, r.ts.config.learning_rate(), 0)
        out[k] = (loss, r.state())
        r.rollback()  # back to the initial state
    ref_loss, ref_state = out[ref_key]
    for k, (loss, state) in out.items():
        np.testing.assert_allclose(loss, ref_loss, rtol=2e-3, atol=1e-4, err_msg=f"{name} {k}")
        assert state.keys() == ref_state.keys(), (name, k)
        for v in state:
            np.testing.assert_allclose(
                state[v], ref_state[v], rtol=2e-3, atol=1e-4, err_msg=f"{name} {k} {v}"
            )


def bench_step(quick: bool, only: list[str] | None = None) -> str:
    from graphc.train.runner import StepRunner

    rows = [
        (
            "| sample | step nodes -O0 → -O2 | ONNX nodes -O0 → -O2 | -O0 ms | -O1 ms | -O2 ms "
            "| -O1 speedup | -O2 speedup |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in samples_with_loss():
        if only and name not in only:
            continue
        ts = build_step(g, StepConfig(optimizer="adam"))
        feeds = random_feeds(g, batch=SAMPLE_BATCH, seed=0)
        steps = {lvl: dataclasses.replace(ts, graph=optimize(ts.graph, lvl)) for lvl in (0, 1, 2)}
        # INSTANCES sessions per level, made in turn (0, 1, 2, 0, 1, 2, ...)
        runners = {
            (lvl, i): StepRunner(s, threads=1) for i in range(INSTANCES) for lvl, s in steps.items()
        }
        # a benchmark of a wrong program is worthless
        check_same_step(name, {lvl: runners[lvl, 0] for lvl in steps}, feeds)
        t = time_runners(runners, feeds, rounds=5 if quick else 31, budget_s=3.0 if quick else 20.0)
        onnx_nodes = {lvl: len(s.export().graph.node) for lvl, s in steps.items() if lvl != 1}
        rows.append(
            f"| {name} | {len(steps[0].graph.nodes)} → {len(steps[2].graph.nodes)} | "
            f"{onnx_nodes[0]} → {onnx_nodes[2]} | "
            f"{t[0][0] * 1e3:.3f} | {t[1][0] * 1e3:.3f} | {t[2][0] * 1e3:.3f} | "
            f"{t[1][1]:.2f}× | {t[2][1]:.2f}× |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


# --------------------------------------------------------------------- memory
def measure_peak(model, feeds) -> int:
    """Peak bytes ORT allocates while running one step (fresh subprocess; see module doc)."""
    with tempfile.TemporaryDirectory() as d:
        mp, fp = Path(d) / "m.onnx", Path(d) / "f.npz"
        mp.write_bytes(model.SerializeToString())
        np.savez(fp, **feeds)
        # a fixed mmap threshold: every block >= 64 KiB is its own mapping, returned to the
        # system when freed, so the resident size follows what is live (glibc's dynamic
        # threshold would serve big tensors from a heap that only grows)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
        out = subprocess.run(
            [sys.executable, __file__, "--measure-peak", str(mp), str(fp)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def _measure_peak_child(model_path: str, feeds_path: str) -> None:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = 1
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.log_severity_level = 3
    s = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(feeds_path))

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(key)

    s.run(None, feeds)  # warm-up: one-time allocations (thread pool, kernel caches) first
    # reset the high-water mark (Linux >= 4.0), so it covers this one step only
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss = status("VmRSS")
    s.run(None, feeds)
    hwm = status("VmHWM")
    print(json.dumps({"peak": hwm - rss, "rss": rss, "hwm": hwm}))


def bench_memory(quick: bool) -> str:
    rows = [
        (
            "| sample (batch 256) | naive plan | planned peak | lower bound | planned / naive "
            "| planned peak, ORT's order | measured ORT peak | ORT-order plan / measured |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, g in samples_with_loss():
        ts = build_step(g, StepConfig(optimizer="adam"))
        ts.graph.meta["dim_sizes"] = {
            d: 256 for t in g.inputs.values() for d in t.shape if isinstance(d, str)
        }
        graph = optimize(ts.graph, 2)
        plan = plan_memory(graph)
        ort_plan = plan_memory(graph, ort_schedule(graph))
        feeds = random_feeds(g, batch=256, seed=0)
        peak = measure_peak(step_model(ts, graph), feeds)
        rows.append(
            f"| {name} | {fmt_bytes(plan.naive)} | {fmt_bytes(plan.peak)} | "
            f"{fmt_bytes(plan.lower_bound)} | {plan.peak / plan.naive:.2f} | "
            f"{fmt_bytes(ort_plan.peak)} | "
            + (  # below the mmap threshold the heap hides what is live (module doc)
                f"{fmt_bytes(peak)} | {ort_plan.peak / peak:.2f} |"
                if peak >= 64 << 10
                else "below resolution | — |"
            )
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


# ------------------------------------------------------------------ recompute
def residual_mlp(depth: int, width: int, classes: int = 10):
    b = graphc.Builder(f"resmlp{depth}")
    x = b.input("x", ("N", width))
    y = b.input("y", ("N",), "int64")
    h = x
    for i in range(depth):
        h = h + b.relu(b.linear(h, width, name=f"fc{i}"))
    b.minimize(b.cross_entropy(b.linear(h, classes, name="head"), y, name="loss"))
    return b.graph


def bench_recompute(quick: bool) -> str:
    depth, width, batch = (32, 256, 512) if quick else (64, 512, 1024)
    g = residual_mlp(depth, width)
    ts = build_step(g, StepConfig(optimizer="sgd"))
    ts.graph.meta["dim_sizes"] = {"N": batch}  # the planner sizes the batch dim with it
    base = optimize(ts.graph, 2)
    rc = optimize(ts.graph, 2, memory_budget="auto")
    feeds = random_feeds(g, batch=batch, seed=0)
    models = {"-O2": step_model(ts, base), "-O2 --memory-budget auto": step_model(ts, rc)}
    peaks = {
        k: statistics.median(measure_peak(m, feeds) for _ in range(3)) for k, m in models.items()
    }
    sess = {k: session(m) for k, m in models.items()}
    t = time_variants(sess, feeds, rounds=5 if quick else 9, budget_s=3.0 if quick else 12.0)
    plans = {
        "-O2": plan_memory(base, ort_schedule(base)),
        "-O2 --memory-budget auto": plan_memory(rc, ort_schedule(rc)),
    }
    rows = [
        (
            f"Residual MLP, {depth} blocks of linear({width}) + relu + skip, batch {batch}, "
            f"SGD; {rc.meta.get('recompute_segments')} segments."
        ),
        "",
        (
            "| variant | planned peak (ORT's order) | measured ORT peak | step ms "
            "| step time vs -O2 |"
        ),
        "|---|---|---|---|---|",
    ]
    for k in models:
        rows.append(
            f"| {k} | {fmt_bytes(plans[k].peak)} | {fmt_bytes(peaks[k])} | "
            f"{t[k][0] * 1e3:.1f} | {1 / t[k][1]:.2f}× |"
        )
    a, b = peaks["-O2"], peaks["-O2 --memory-budget auto"]
    rows.append("")
    rows.append(
        f"Measured peak reduced by {100 * (1 - b / a):.0f}% at "
        f"{100 * (1 / t['-O2 --memory-budget auto'][1] - 1):+.0f}% step time."
    )
    return "\n".join(rows)


# -------------------------------------------------------------------- compile
def resnet_text(blocks=(3, 4, 6, 3), size=64) -> str:
    """ResNet-50's bottleneck layout (He et al. 2016) as model-file text."""
    lines = [
        f"x = input(float32, [N, 3, {size}, {size}])",
        "y = input(int64, [N])",
        "s = relu(batch_norm(conv2d(x, 64, 7, stride=2, padding=3, bias=False)))",
        "h0 = max_pool2d(s, 3, stride=2, padding=1)",
    ]
    h, k, width = "h0", 0, 64
    for stage, n in enumerate(blocks):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            k += 1
            lines += [
                f"a{k} = relu(batch_norm(conv2d({h}, {width}, 1, bias=False)))",
                (
                    f"b{k} = relu(batch_norm(conv2d(a{k}, {width}, 3, stride={stride}, padding=1, "
                    "bias=False)))"
                ),
                f"c{k} = batch_norm(conv2d(b{k}, {width * 4}, 1, bias=False))",
            ]
            if i == 0:
                lines.append(
                    f"p{k} = batch_norm(conv2d({h}, {width * 4}, 1, stride={stride}, bias=False))"
                )
                lines.append(f"h{k} = relu(residual(p{k}, c{k}))")
            else:
                lines.append(f"h{k} = relu(residual({h}, c{k}))")
            h = f"h{k}"
        width *= 2
    lines += [
        f"logits = linear(global_avg_pool({h}), 1000)",
        "loss = cross_entropy(logits, y)",
        "output(logits)",
        "minimize(loss)",
    ]
    return "\n".join(lines) + "\n"


def lstm_text(steps: int) -> str:
    return (
        f"x = input(float32, [N, {steps}, 16])\ntarget = input(float32, [N, 1])\n"
        "h = lstm(x, 64)\nprediction = linear(h, 1)\nloss = mse(prediction, target)\n"
        "output(prediction)\nminimize(loss)\n"
    )


def compile_times(text: str) -> dict:
    t = {}
    t0 = time.perf_counter()
    g = graphc.parse(text)
    t["parse"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ts = build_step(g, StepConfig(optimizer="adam"))  # grad + optimizer update
    t["grad + step"] = time.perf_counter() - t0
    n_nodes = len(ts.graph.nodes)
    t0 = time.perf_counter()
    opt = optimize(ts.graph, 2)
    t["passes -O2"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = step_model(ts, opt)
    t["ONNX"] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    t["nodes"] = n_nodes
    t["onnx nodes"] = len(model.graph.node)
    return t


def bench_compile(quick: bool) -> str:
    cases = [
        ("ResNet (2,2,2,2)", resnet_text((1, 1, 1, 1) if quick else (2, 2, 2, 2))),
        ("ResNet-50 (3,4,6,3)", resnet_text((3, 4, 6, 3))),
    ]
    cases += [(f"LSTM, {t} steps", lstm_text(t)) for t in ((25, 50) if quick else (50, 100, 200))]
    if quick:
        cases = cases[:1] + cases[2:]
    cols = ["nodes", "onnx nodes", "parse", "grad + step", "passes -O2", "ONNX", "total"]
    rows = [
        "| training graph | " + " | ".join(cols) + " | s per 1000 nodes |",
        "|---" * (len(cols) + 2) + "|",
    ]
    for name, text in cases:
        t = compile_times(text)
        cells = [str(t[c]) if "nodes" in c else f"{t[c]:.2f} s" for c in cols]
        rows.append(
            f"| {name} | " + " | ".join(cells) + f" | {t['total'] / t['nodes'] * 1e3:.2f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--measure-peak":
        _measure_peak_child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    ap.add_argument("--only", choices=["step", "memory", "recompute", "compile"], action="append")
    ap.add_argument("--samples", nargs="+", metavar="NAME", help="step section: only these samples")
    args = ap.parse_args()
    import onnxruntime

    print(
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    for name, fn in (
        ("step", bench_step),
        ("memory", bench_memory),
        ("recompute", bench_recompute),
        ("compile", bench_compile),
    ):
        if args.only and name not in args.only:
            continue
        print(f"\n## {name}\n", flush=True)
        print(fn(args.quick, args.samples) if name == "step" else fn(args.quick), flush=True)


if __name__ == "__main__":
    main()
