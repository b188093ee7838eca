"""Find residual blocks in a forward graph, for clusters and `render --collapse`.

A residual block is defined by its join, an `add` (or `residual`) node J
with two data inputs. Let s be the latest value (in topological order) from
which both inputs of J are computed: the fork. J closes a residual block when

* one input of J is s itself (an identity shortcut) or is computed from s
  by at most `MAX_SHORTCUT` nodes (a projection shortcut: 1x1 conv + norm), and
* the other input is computed from s by at least one node (the residual branch).

The block is every forward node on a path from s to J, J included, and
the parameters those nodes own, plus an activation that alone reads J
(the ReLU after the addition in ResNet). Blocks that would partly overlap an earlier
block are dropped, so blocks nest and clusters stay a tree. Joins inside an
expanded composite (LSTM cell arithmetic) are not blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from graphc.infer import split_inputs
from graphc.ir import Graph, Node

JOIN_OPS = ("add", "residual")
MAX_SHORTCUT = 2  # nodes on a projection shortcut (conv 1x1 + batch norm)


@dataclass
class Block:
    join: str  # the add node closing the block
    fork: str  # the value both branches start from
    nodes: list[str]  # forward nodes in the block, graph order, join last


def _data_inputs(node: Node, graph: Graph) -> list[str]:
    data, _params = split_inputs(node)
    return [v for v in data if v and v not in graph.params and v not in graph.constants]


def find_residual_blocks(graph: Graph, nodes: list[Node]) -> list[Block]:
    """Residual blocks among `nodes` (forward nodes in topological order)."""
    producers = {o: n for n in nodes for o in n.outputs}
    position = {n.name: i for i, n in enumerate(nodes)}
    # ancestors[v]: data values v is computed from (itself included), with the
    # number of nodes on the shortest path from each one
    dist: dict[str, dict[str, int]] = {}
    for v in graph.inputs:
        dist[v] = {v: 0}
    for n in nodes:
        # the primitives of one expanded composite count as one node: its last one
        # (which carries the composite's name) is the step
        comp = n.tags.get("expanded_from")
        step = 0 if comp and n.name != comp else 1
        merged: dict[str, int] = {}
        for v in _data_inputs(n, graph):
            for a, d in dist.get(v, {v: 0}).items():
                if d + step < merged.get(a, 1 << 30):
                    merged[a] = d + step
        for o in n.outputs:
            dist[o] = dict(merged, **{o: 0})

    def value_pos(v: str) -> int:
        p = producers.get(v)
        return position[p.name] if p is not None else -1

    blocks: list[Block] = []
    taken: list[set[str]] = []
    for j in nodes:
        if j.op not in JOIN_OPS or j.tags.get("expanded_from"):
            continue
        ins = _data_inputs(j, graph)
        if len(ins) != 2 or ins[0] == ins[1]:
            continue
        da, db = dist.get(ins[0], {}), dist.get(ins[1], {})
        common = set(da) & set(db)
        if not common:
            continue
        fork = max(sorted(common), key=value_pos)
        short, long_ = sorted((da[fork], db[fork]))
        if short > MAX_SHORTCUT or long_ < 1:
            continue
        upstream = _upstream(j, producers, graph)
        members = [
            n.name
            for n in nodes
            if (n is j or n.name in upstream)
            and n.outputs[0] != fork
            and fork in dist.get(n.outputs[0], {})
        ]
        if len(members) < 2:
            continue
        members += _activation_tail(j, nodes, graph)
        new = set(members)
        if any(new & old and not (new <= old or old <= new) for old in taken):
            continue
        blocks.append(Block(j.name, fork, members))
        taken.append(new)
    return blocks


def _activation_tail(j: Node, nodes: list[Node], graph: Graph) -> list[str]:
    """The activation node that is the only reader of the join, if there is one."""
    from graphc.ops.registry import get_op

    readers = [n for n in nodes if j.name in n.inputs]
    if len(readers) != 1 or j.name in graph.outputs:
        return []
    r = readers[0]
    if get_op(r.op, r.loc).category == "activations" and len(_data_inputs(r, graph)) == 1:
        return [r.name]
    return []


def _upstream(j: Node, producers: dict[str, Node], graph: Graph) -> set[str]:
    """Names of the nodes whose outputs flow into node `j`."""
    seen: set[str] = set()
    stack = list(_data_inputs(j, graph))
    while stack:
        p = producers.get(stack.pop())
        if p is None or p.name in seen:
            continue
        seen.add(p.name)
        stack.extend(_data_inputs(p, graph))
    return seen
