"""The pass manager: named passes `Graph -> Graph`, explicit pipelines, verification, stats.

Every pass gets its own copy of the graph, so a failing pass never leaves a
half-rewritten graph behind, and the graph is verified after each one: a
pass that breaks an invariant is reported by name, not three stages later.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from graphc.errors import GraphError, closest
from graphc.ir import Graph
from graphc.passes import cost


@dataclass
class Pass:
    name: str
    fn: Callable[[Graph], Graph]
    doc: str


PASSES: dict[str, Pass] = {}


def register(name: str, doc: str):
    """Decorator: register `fn(graph) -> graph` as a named pass."""

    def deco(fn: Callable[[Graph], Graph]) -> Callable[[Graph], Graph]:
        if name in PASSES:
            raise ValueError(f"pass '{name}' registered twice")
        PASSES[name] = Pass(name, fn, doc)
        return fn

    return deco


CLEANUP = [
    "eliminate_dead_code",
    "fold_constants",
    "simplify",
    "eliminate_common_subexpressions",
    "eliminate_dead_code",
]

# What each pass buys on top of ONNX Runtime's own optimizations is measured by
# benchmarks/bench_passes.py (docs/optimizer.md).
PIPELINES: dict[int, list[str]] = {
    0: [],
    1: list(CLEANUP),
    # the fusions that read autodiff's structure run before the clean-up rewrites it
    2: [
        "fuse_softmax_cross_entropy",
        "fuse_binary_cross_entropy",
        "fuse_batch_norm_grad",
        "fold_batch_norm",
        "conv_full_window_as_gemm",
        "conv_weight_grad_as_gemm",
        "avg_pool_as_conv",
        "max_pool_grad_by_mask",
        *CLEANUP,
        "hoist_channel_scales",
        "fuse_gemm",
        "static_reshape",
        "merge_step_slices",
        "merge_step_sums",
        "fold_input_projection",
        "reassociate_factors",
        "simplify",
        "eliminate_common_subexpressions",
        "sum_batch_as_gemv",
        "fuse_optimizer_update",
        "simplify",  # the flat update's divisions by a scalar become multiplications
        "eliminate_dead_code",
        "order_for_memory",
    ],
}


@dataclass
class PassStats:
    name: str
    seconds: float
    before: dict[str, int]
    after: dict[str, int]
    note: str = ""

    @property
    def removed(self) -> int:
        return self.before["nodes"] - self.after["nodes"]


@dataclass
class PipelineResult:
    stats: list[PassStats] = field(default_factory=list)

    def table(self) -> str:
        head = (
            f"{'pass':34} {'nodes':>13} {'Δ':>5} {'bytes before→after':>23} "
            f"{'FLOPs before→after':>21} {'ms':>7}  what"
        )
        lines = [head, "-" * len(head)]
        for s in self.stats:
            b, a = s.before, s.after
            lines.append(
                f"{s.name:34} {b['nodes']:>6}→{a['nodes']:<6} {a['nodes'] - b['nodes']:>+5} "
                f"{cost.fmt_bytes(b['bytes']):>11}→{cost.fmt_bytes(a['bytes']):<11} "
                f"{cost.fmt_count(b['flops']):>10}→{cost.fmt_count(a['flops']):<10} "
                f"{s.seconds * 1e3:>7.1f}  {s.note}"
            )
        return "\n".join(lines)


def verify(g: Graph, after: str = "") -> None:
    """Check the IR invariants: acyclic, every input defined, types agree with inference."""
    from graphc.infer import infer_node
    from graphc.ops.registry import get_op

    where = f" after pass '{after}'" if after else ""

    def fail(msg: str, node: str | None = None) -> GraphError:
        return GraphError(
            f"invalid graph{where}: {msg}",
            node=node,
            hint="this is a graphc bug in that pass; run with -O0 to work around",
        )

    g.topo_order()
    defined = set(g.inputs) | set(g.params) | set(g.constants)
    for n in g.nodes.values():
        get_op(n.op, n.loc)
        for v in n.outputs:
            if v in defined:
                raise fail(f"value '{v}' is defined twice", n.name)
            defined.add(v)
    for n in g.nodes.values():
        for v in n.inputs:
            if v and v not in defined:
                raise fail(f"node '{n.name}' reads '{v}', which nothing defines", n.name)
    wanted = list(g.outputs) + ([g.loss] if g.loss else [])
    for v in wanted:
        if v not in defined:
            raise fail(f"output '{v}' is no longer defined", v)
    probe = g.copy()
    for n in probe.topo_order():
        old = [g.types.get(o) for o in n.outputs]
        try:
            new = infer_node(probe, n)
        except GraphError as err:
            raise fail(f"node '{n.name}' no longer type-checks: {err.message}", n.name) from None
        if any(o is not None and o != w for o, w in zip(old, new)):
            raise fail(f"node '{n.name}' has type {old} but infers {new}", n.name)


def pipeline(level: int) -> list[str]:
    if level not in PIPELINES:
        raise GraphError(f"unknown optimization level -O{level}", hint="use -O0, -O1 or -O2")
    return list(PIPELINES[level])


def get_pass(name: str) -> Pass:
    if name not in PASSES:
        near = closest(name, PASSES)
        raise GraphError(
            f"unknown pass '{name}'",
            hint=f"did you mean '{near}'?" if near else "passes: " + ", ".join(sorted(PASSES)),
        )
    return PASSES[name]


def run_passes(
    graph: Graph,
    names: Sequence[str],
    *,
    check: bool = True,
    dump_after: Sequence[str] = (),
    dump_dir: str = ".",
    result: PipelineResult | None = None,
) -> Graph:
    """Run passes in order on copies of the graph, verifying after each."""
    import gc

    # the passes make and drop millions of small objects that reference counting frees;
    # the cyclic collector's full scans over the live graphs made long pipelines on big
    # graphs superlinear (LSTM T=200: 8.9 s with it, 5.7 s without)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run_passes(graph, names, check, dump_after, dump_dir, result)
    finally:
        if was_enabled:
            gc.enable()


def _run_passes(graph, names, check, dump_after, dump_dir, result) -> Graph:
    passes = [get_pass(n) for n in names]
    for name in dump_after:
        get_pass(name)
    result = result if result is not None else PipelineResult()
    g = graph
    if check:
        verify(g)
    before = cost.totals(g) if passes else {}
    for i, p in enumerate(passes):
        work = g.copy()
        t0 = time.perf_counter()
        out = p.fn(work)
        dt = time.perf_counter() - t0
        if check:
            verify(out, p.name)
        note = out.meta.pop("_pass_note", "")
        after = cost.totals(out)
        result.stats.append(PassStats(p.name, dt, before, after, note))
        before = after  # the next pass starts from this graph
        if p.name in dump_after:
            dump(out, Path(dump_dir) / f"{graph.name}.{i + 1:02d}-{p.name}.gc")
        g = out
    return g


def dump(g: Graph, path: Path) -> None:
    """Write an intermediate graph as model-file text (a plain listing if the printer refuses)."""
    from graphc.fileio import atomic_write_text

    try:
        from graphc.printer import print_graph

        text = print_graph(g)
    except Exception:  # the printer may not handle pass-made names; the listing always works
        text = listing(g)
    atomic_write_text(path, text)
    print(f"graphc: wrote {path}", file=sys.stderr)


def listing(g: Graph) -> str:
    """One line per node: `out = op(inputs) {attrs}  # type` (for dumps and debugging)."""
    lines = [f"# graph {g.name}: {len(g.nodes)} nodes"]
    for k, t in g.inputs.items():
        lines.append(f"input {k}: {t}")
    for n in g.topo_order():
        attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items())
        outs = ", ".join(n.outputs)
        types = ", ".join(str(g.types.get(o)) for o in n.outputs)
        tags = " ".join(f"{k}={v}" for k, v in n.tags.items() if k != "grad")
        lines.append(
            f"{outs} = {n.op}({', '.join(n.inputs)}{', ' if attrs else ''}{attrs})"
            f"  # {types}{'  ' + tags if tags else ''}"
        )
    lines.append("output " + ", ".join(g.outputs))
    if g.loss:
        lines.append(f"minimize {g.loss}")
    return "\n".join(lines) + "\n"
