"""Re-inference for the editor: every type that can be inferred, every error where it is.

`graphc.infer.infer` stops at the first error, which is right for the
compiler. An editor wants more: the types of everything the error does not
reach (so the rest of the drawing still shows shapes) and the error attached
to the node and input edge it concerns. `check` runs graphc's own per-node
rule in topological order, skips nodes downstream of a failure, then runs the
real `infer` once the graph is clean so the verdict is always the compiler's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc import Graph, GraphError, TensorType
from graphc.infer import infer, infer_node, split_inputs
from graphc.ops.registry import get_op


@dataclass
class Problem:
    """An error attached to a node (and the input edges it concerns)."""

    node: str | None
    error: GraphError
    inputs: list[str] = field(default_factory=list)  # data inputs of the node, with types

    def status(self, graph: Graph) -> str:
        """One line for the status bar: the node, the message, the input shapes."""
        msg = self.error.message
        if self.node and f"'{self.node}'" not in msg:
            msg = f"{self.node}: {msg}"
        # Name both ends of the offending edges with their shapes, unless the message did.
        shapes = [f"{v}: {graph.types[v]}" for v in self.inputs if v in graph.types]
        mentioned = sum(str(graph.types[v]) in msg for v in self.inputs if v in graph.types)
        if shapes and mentioned < min(2, len(shapes)):
            msg += "  [" + ", ".join(shapes) + "]"
        return msg


@dataclass
class CheckResult:
    problems: list[Problem]
    blocked: set[str]  # nodes not inferred because an input's producer failed

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem_for(self, node: str) -> Problem | None:
        return next((p for p in self.problems if p.node == node), None)


def _unconnected(graph: Graph, node) -> GraphError | None:
    op = get_op(node.op, node.loc)
    data, _ = split_inputs(node)
    for spec, value in zip(op.inputs, data):
        if not value and not spec.endswith("?"):
            return GraphError(
                f"input '{spec.rstrip('?*')}' of {node.op} '{node.name}' is not connected",
                node=node.name,
                hint="select the node and press c to connect it",
            )
    if op.variadic and len(data) < len(op.inputs):
        return GraphError(f"{node.op} '{node.name}' needs at least one input", node=node.name)
    return None


def check(graph: Graph) -> CheckResult:
    """Infer `graph` in place as far as possible; return its problems."""
    problems: list[Problem] = []
    blocked: set[str] = set()
    try:
        order = graph.topo_order()
    except GraphError as err:
        return CheckResult([Problem(err.node, err)], set(graph.nodes))
    graph.types = dict(graph.inputs)
    for name, c in graph.constants.items():
        graph.types[name] = TensorType(str(c.dtype), tuple(c.shape))
    failed_values: set[str] = set()
    for node in order:
        try:
            data, _ = split_inputs(node)
        except GraphError as err:
            problems.append(Problem(node.name, err))
            failed_values.update(node.outputs)
            continue
        if any(v in failed_values for v in data):
            blocked.add(node.name)
            failed_values.update(node.outputs)
            continue
        err = _unconnected(graph, node)
        if err is None:
            try:
                infer_node(graph, node)
                continue
            except GraphError as e:
                err = e
            except Exception as e:  # a shape rule tripping over a malformed edit
                err = GraphError(
                    f"{node.op} '{node.name}': {type(e).__name__}: {e}", node=node.name
                )
        problems.append(Problem(node.name, err, [v for v in data if v]))
        failed_values.update(node.outputs)
    if not problems:
        try:
            infer(graph)
        except GraphError as err:
            problems.append(Problem(err.node if err.node in graph.nodes else None, err))
    return CheckResult(problems, blocked)
