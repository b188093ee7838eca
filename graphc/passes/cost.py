"""Cost estimates over a graph: bytes of each value and FLOPs of each node.

Symbolic dims (`N`, `T`) are replaced by concrete sizes: `graph.meta["dim_sizes"]`
when a command set it (e.g. the batch size of `graphc train`), else a default.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from graphc.infer import split_inputs
from graphc.ir import Graph, Node, TensorType
from graphc.ops.registry import InferCtx, get_op
from graphc.shapes import concrete

DEFAULT_DIM = 32


def dim_sizes(graph: Graph, default: int = DEFAULT_DIM) -> dict[str, int]:
    """Concrete sizes for symbolic dims (a mapping that answers `default` for unknown names)."""
    sizes = defaultdict(lambda: default)
    sizes.update(graph.meta.get("dim_sizes", {}))
    return sizes


_NUMEL: dict[tuple, int] = {}  # (shape, explicit sizes) -> elements; shapes repeat a lot
_FLOPS: dict[tuple, int] = {}


def _sizes_key(sizes) -> tuple:
    return tuple(sorted(sizes.items())) + (
        getattr(sizes, "default_factory", None) and sizes.default_factory(),
    )


def numel_of(t: TensorType, sizes: dict[str, int]) -> int:
    key = (t.shape, _sizes_key(sizes))
    n = _NUMEL.get(key)
    if n is None:
        n = _NUMEL[key] = int(
            np.prod(concrete(t.shape, sizes, default=DEFAULT_DIM), dtype=np.int64)
        )
    return n


def nbytes(t: TensorType, sizes: dict[str, int]) -> int:
    return numel_of(t, sizes) * np.dtype(t.dtype).itemsize


def node_flops(graph: Graph, node: Node, sizes: dict[str, int] | None = None) -> int:
    op = get_op(node.op, node.loc)
    if op.flops is None:
        return 0
    sizes = sizes if sizes is not None else dim_sizes(graph)
    ins = tuple(graph.types.get(v) if v else None for v in node.inputs)
    outs = tuple(graph.types.get(o) for o in node.outputs)
    key = (node.op, repr(sorted(node.attrs.items())), ins, outs, _sizes_key(sizes))
    f = _FLOPS.get(key)
    if f is None:
        f = _FLOPS[key] = _flops(op, node, ins, outs, sizes)
    return f


def _flops(op, node: Node, ins, outs, sizes) -> int:
    def fix(t: TensorType | None) -> TensorType | None:
        return None if t is None else TensorType(t.dtype, concrete(t.shape, sizes, DEFAULT_DIM))

    data, params = split_inputs(node)
    k = len(data)
    types = [fix(t) for t in ins[:k]] + [fix(t) for t in ins[k : k + len(params)]]
    ctx = InferCtx(op, node.name, types, node.attrs, node.loc)
    try:
        return int(op.flops(ctx, [fix(t) for t in outs]))
    except Exception:  # an estimate only: an op whose rule needs static dims counts 0
        return 0


def totals(graph: Graph) -> dict[str, int]:
    """Node count, bytes of every node output, FLOPs of every node."""
    sizes = dim_sizes(graph)
    b = sum(
        nbytes(graph.types[o], sizes)
        for n in graph.nodes.values()
        for o in n.outputs
        if o in graph.types
    )
    f = sum(node_flops(graph, n, sizes) for n in graph.nodes.values())
    return {"nodes": len(graph.nodes), "bytes": b, "flops": f}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_count(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"
