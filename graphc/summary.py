"""Per-node summary: output type, parameter count and FLOPs (for `check` and the editor)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from graphc.infer import split_inputs
from graphc.ir import Graph, TensorType
from graphc.ops.registry import InferCtx, get_op


@dataclass
class NodeSummary:
    name: str
    op: str
    inputs: list[str]
    output: TensorType
    params: int
    flops: int | None


def node_params(graph: Graph, node) -> int:
    _, params = split_inputs(node)
    total = 0
    for p in params:
        shape = graph.params[p].shape
        total += math.prod(d for d in shape if isinstance(d, int))
    return total


def node_flops(graph: Graph, node) -> int | None:
    op = get_op(node.op, node.loc)
    if op.flops is None:
        return None
    data, params = split_inputs(node)
    types = [graph.types.get(v) if v else None for v in data + params]
    ctx = InferCtx(op, node.name, types, node.attrs, node.loc)
    outs = [graph.types[o] for o in node.outputs]
    return int(op.flops(ctx, outs))


def summarize(graph: Graph) -> list[NodeSummary]:
    rows = []
    for node in graph.topo_order():
        data, _ = split_inputs(node)
        rows.append(
            NodeSummary(
                node.name,
                node.op,
                [v for v in data if v],
                graph.types[node.outputs[0]],
                node_params(graph, node),
                node_flops(graph, node),
            )
        )
    return rows


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}{unit}"
    return f"{int(n)}{unit}"


def format_table(graph: Graph, *, batch: int = 1) -> str:
    """The `graphc check` table. FLOPs count multiply-adds as 2, at the given batch size."""
    from graphc.shapes import concrete

    rows = summarize(graph)
    sizes = {d: batch for t in graph.inputs.values() for d in t.shape if isinstance(d, str)}
    g = graph
    if sizes:
        g = graph.copy()
        g.inputs = {k: TensorType(t.dtype, concrete(t.shape, sizes)) for k, t in g.inputs.items()}
        from graphc.infer import infer

        infer(g)
    flop_rows = {r.name: r.flops for r in summarize(g)}
    header = ("node", "op", "output", "params", "FLOPs")
    body = []
    for r in rows:
        f = flop_rows.get(r.name)
        body.append(
            (
                r.name,
                r.op,
                str(r.output),
                f"{r.params:,}" if r.params else "-",
                human(f) if f else "-",
            )
        )
    total_p = sum(r.params for r in rows)
    total_f = sum(f or 0 for f in flop_rows.values())
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), "  ".join("-" * w for w in widths)]
    out += [line.format(*b) for b in body]
    out.append("  ".join("-" * w for w in widths))
    out.append(line.format("total", f"{len(rows)} nodes", "", f"{total_p:,}", human(total_f)))
    note = f"FLOPs per example (batch {batch}); multiply-add counts as 2" if sizes else "FLOPs"
    return "\n".join(out) + f"\n{note}"
