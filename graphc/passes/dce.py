"""Dead-code elimination: drop nodes (and constants) no output, loss or gradient needs."""

from __future__ import annotations

from graphc.ir import Graph
from graphc.passes.manager import register
from graphc.passes.rewrite import protected


def live_values(g: Graph) -> set[str]:
    """Every value the protected values depend on."""
    producers = g.producers()
    live: set[str] = set()
    stack = list(protected(g))
    while stack:
        v = stack.pop()
        if v in live:
            continue
        live.add(v)
        if v in producers:
            stack.extend(i for i in producers[v].inputs if i)
    return live


@register("eliminate_dead_code", "remove nodes and constants nothing needed reads")
def eliminate_dead_code(g: Graph) -> Graph:
    live = live_values(g)
    dead = [k for k, n in g.nodes.items() if not any(o in live for o in n.outputs)]
    for k in dead:
        for o in g.nodes[k].outputs:
            g.types.pop(o, None)
        del g.nodes[k]
    consts = [c for c in g.constants if c not in live]
    for c in consts:
        del g.constants[c]
        g.types.pop(c, None)
    g.meta["_pass_note"] = (
        f"{len(dead)} nodes, {len(consts)} constants removed" if dead or consts else ""
    )
    return g
