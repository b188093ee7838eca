"""The editor's compiler actions as plain functions: each takes a Graph, returns a report.

They run in worker threads (the UI stays responsive) and import the stage
they need lazily, so a stage that is missing or broken makes that one action
say so instead of keeping the editor from starting.
"""

from __future__ import annotations

from pathlib import Path

from graphc import Graph, GraphError


class Unavailable(GraphError):
    """A stage the action needs is not installed or not built yet."""


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise Unavailable(f"{what} is not available: {err}") from None


def compile_onnx(graph: Graph, path: Path) -> str:
    """Export the inference graph as standard ONNX beside the model file."""
    export = _need("graphc.export", "ONNX export")
    model = export.export(graph.copy())
    export.save(model, path)
    return f"wrote {path} ({len(model.graph.node)} ONNX nodes, opset {export.OPSET})"


def render_graphviz(graph: Graph, path: Path, mode: str = "forward") -> str:
    """Render the forward (or backward) graph with graphc.render (SVG by the suffix)."""
    render = _need("graphc.render", "Graphviz rendering")
    g = backward_graph(graph) if mode == "backward" else graph.copy()
    out = render.render_file(render.to_dot(g, mode=mode), path)
    return f"rendered {out}"


def gradcheck_report(graph: Graph, tol: float = 1e-6) -> str:
    mod = _need("graphc.gradcheck", "gradcheck")
    if graph.loss is None:
        raise GraphError("gradcheck needs a loss", hint="select the loss node and press l")
    results = mod.gradcheck(graph.copy(), None, batch=3, coords=10, seed=0)
    lines = [f"{'parameter':<24} {'checked':>7}  {'rel. error':>10}  result"]
    bad = 0
    for r in results:
        ok = r.ok(tol)
        bad += not ok
        lines.append(
            f"{r.target:<24} {r.checked:>7}  {r.rel_error:>10.2e}  {'ok' if ok else 'FAIL'}"
        )
    lines.append(f"{len(results) - bad}/{len(results)} parameters within {tol:g}")
    return "\n".join(lines)


def summary_report(graph: Graph) -> str:
    """Parameters and FLOPs per node, and the totals."""
    from graphc.summary import summarize
    from graphc.tui.scene import type_text

    rows = summarize(graph)
    table = [
        (
            r.name,
            r.op,
            type_text(graph, r.name),
            f"{r.params:,}",
            "-" if r.flops is None else f"{r.flops:,}",
        )
        for r in rows
    ]
    total_p = sum(r.params for r in rows)
    total_f = sum(r.flops or 0 for r in rows)
    head = ("node", "op", "output", "params", "FLOPs")
    foot = ("total", "", "", f"{total_p:,}", f"{total_f:,}")
    w = [max(len(row[i]) for row in [head, *table, foot]) for i in range(5)]

    def line(row) -> str:
        return (
            f"{row[0]:<{w[0]}}  {row[1]:<{w[1]}}  {row[2]:<{w[2]}}  "
            f"{row[3]:>{w[3]}}  {row[4]:>{w[4]}}"
        )

    out = [
        line(head),
        *map(line, table),
        line(foot),
        "",
        "FLOPs: a multiply-add is 2; one example when the batch is symbolic.",
    ]
    return "\n".join(out)


def backward_graph(graph: Graph) -> Graph:
    if graph.loss is None:
        raise GraphError(
            "the backward view needs a loss",
            hint="select the loss node and press l (or run 'Set loss')",
        )
    from graphc.autodiff import grad

    return grad(graph.copy())


def optimized_graph(graph: Graph) -> tuple[Graph, set[str]]:
    """The -O2 pipeline over the backward graph (or the forward one without a loss),
    and the nodes it rewrote or created (fusions), to highlight."""
    passes = _need("graphc.passes", "the optimizer")
    src = backward_graph(graph) if graph.loss else graph.copy()
    out = passes.optimize(src.copy(), level=2)
    changed = {
        n.name
        for n in out.nodes.values()
        if n.name not in src.nodes or src.nodes[n.name].op != n.op
    }
    return out, changed


def memory_report(graph: Graph) -> str:
    """The memory plan of the backward graph: summary, a live-bytes timeline, live ranges."""
    passes = _need("graphc.passes", "the memory planner")
    plan_memory = getattr(passes, "plan_memory", None)
    if plan_memory is None:
        raise Unavailable("the memory planner has not landed yet")
    src = backward_graph(graph) if graph.loss else graph.copy()
    plan = plan_memory(src)
    lines = [plan.summary(), "", "live bytes per step (peak = full bar):"]
    peak = max((b for _, b in plan.timeline), default=0) or 1
    steps = plan.timeline
    stride = max(1, len(steps) // 40)
    for step, live in steps[::stride]:
        bar = "█" * max(1, round(40 * live / peak)) if live else ""
        lines.append(f"{step:>5} {bar:<40} {live:,}")
    lines += ["", plan.table(limit=80)]
    return "\n".join(lines)
