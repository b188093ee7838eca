"""What each fused node of an optimized graph replaced, found by comparing graphs.

The fusion passes rewrite in place (a matmul becomes a gemm and keeps its
name) or add a node under a new name whose readers used to read another
value. Either way the nodes that disappeared and fed only the rewritten one
were fused into it. `note_fusions(before, after)` records their ops as
`tags["fused_from"]` on the nodes of `after`, unless a pass already did, so
`graphc render --optimized` can say "fused: transpose + matmul".
"""

from __future__ import annotations

from graphc.ir import Graph, Node


def _roots(
    f: Node,
    before: Graph,
    after_readers: dict[str, list[Node]],
    before_producers: dict[str, Node],
    removed: set[str],
) -> list[str]:
    """Nodes of `before` that `f` took the place of."""
    old = before.nodes.get(f.name)
    if old is not None:
        return [old.name] if old.op != f.op else []
    roots = []
    for o in f.outputs:
        for reader in after_readers.get(o, []):
            was = before.nodes.get(reader.name)
            if was is None or len(was.inputs) != len(reader.inputs):
                continue
            for now, then in zip(reader.inputs, was.inputs):
                p = before_producers.get(then)
                if now == o and then != o and p is not None and p.name in removed:
                    roots.append(p.name)
    return list(dict.fromkeys(roots))


def note_fusions(before: Graph, after: Graph) -> int:
    """Tag fused nodes of `after` with the ops they replaced; returns how many."""
    removed = {k for k in before.nodes if k not in after.nodes}
    if not removed:
        return 0
    producers = before.producers()
    readers = before.consumers()
    after_readers = after.consumers()
    claimed: set[str] = set()
    tagged = 0
    for f in after.topo_order():
        if f.tags.get("fused_from"):
            continue
        region = set(_roots(f, before, after_readers, producers, removed))
        if not region:
            continue
        backward = bool(f.tags.get("grad"))
        grown = True
        while grown:  # add removed nodes whose every reader is already in the region
            grown = False
            for r in sorted(removed - region - claimed):
                node = before.nodes[r]
                uses = [c for o in node.outputs for c in readers.get(o, [])]
                if not backward:  # a forward value saved for backward still fuses forward
                    uses = [c for c in uses if not c.tags.get("grad")]
                if uses and all(c.name in region for c in uses):
                    region.add(r)
                    grown = True
        ops = [n.op for k, n in before.nodes.items() if k in region]
        if len(ops) >= 2:
            f.tags["fused_from"] = ops
            claimed |= region & removed
            tagged += 1
    return tagged
