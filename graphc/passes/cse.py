"""Common-subexpression elimination: one node per (op, inputs, attributes).

Random ops are never merged (two dropouts are two draws), and neither are
recomputed nodes with the originals they copy: the recomputation pass makes
those copies on purpose, so merging them back would undo it (they carry
`tags["recompute"]`, which is part of the key).
"""

from __future__ import annotations

from graphc.ir import Graph
from graphc.ops.registry import get_op
from graphc.passes.manager import register
from graphc.passes.rewrite import protected

COMMUTATIVE = {"add", "mul", "maximum", "minimum", "equal", "logical_and", "add_n"}
_SMALL = 64  # constants up to this many elements are merged by value


def _merge_constants(g: Graph) -> int:
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    for name, arr in g.constants.items():
        if arr.size > _SMALL:
            continue
        key = (str(arr.dtype), arr.shape, arr.tobytes())
        if key in seen:
            rename[name] = seen[key]
        else:
            seen[key] = name
    keep = protected(g)
    for n in g.nodes.values():
        n.inputs = [rename.get(v, v) if v not in keep else v for v in n.inputs]
    return len(rename)


@register(
    "eliminate_common_subexpressions",
    "merge nodes that compute the same op on the same inputs (never random or recomputed ones)",
)
def eliminate_common_subexpressions(g: Graph) -> Graph:
    merged_consts = _merge_constants(g)
    keep = protected(g)
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}  # a merged node's output -> the survivor's
    merged = 0
    for node in g.topo_order():
        # in topological order every input is final (renamed) before the node's key is taken
        if rename:
            node.inputs = [rename.get(v, v) for v in node.inputs]
        op = get_op(node.op, node.loc)
        if op.random or any(o in keep for o in node.outputs):
            continue
        ins = tuple(sorted(node.inputs)) if node.op in COMMUTATIVE else tuple(node.inputs)
        key = (node.op, ins, repr(sorted(node.attrs.items())), node.tags.get("recompute"))
        first = seen.get(key)
        if first is None:
            seen[key] = node.name
            continue
        rename.update(zip(node.outputs, g.nodes[first].outputs))
        merged += 1
    g.meta["_pass_note"] = (f"{merged} nodes merged" if merged else "") + (
        f"{', ' if merged else ''}{merged_consts} constants merged" if merged_consts else ""
    )
    return g
