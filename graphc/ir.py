"""The one graph IR: typed values, nodes, parameters; every stage maps Graph -> Graph."""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import GraphError, SourceLoc
from graphc.shapes import Shape, fmt_shape, is_static

INITIALIZERS = ("he", "xavier", "zeros", "ones", "normal", "uniform")


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: Shape

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}{fmt_shape(self.shape)}"


@dataclass
class Node:
    """One op application. A single-output node's output value has the node's name."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    loc: SourceLoc | None = None
    comment: list[str] = field(default_factory=list)  # comment lines printed above it
    tags: dict[str, Any] = field(default_factory=dict)  # pass bookkeeping (e.g. "grad_of")


@dataclass
class Param:
    """A trainable tensor. `value` holds loaded or initialized weights once known."""

    name: str
    shape: Shape
    dtype: str = "float32"
    init: str = "he"
    frozen: bool = False
    fan: tuple[int, int] = (1, 1)  # fan-in, fan-out, for He and Xavier scaling
    value: np.ndarray | None = None
    state: bool = False  # running statistics (batch norm): updated by the step, not trained

    @property
    def type(self) -> TensorType:
        return TensorType(self.dtype, self.shape)

    def initial_value(self, seed: int = 0) -> np.ndarray:
        """The initializer's draw, reproducible per (seed, parameter name)."""
        if not is_static(self.shape):
            raise GraphError(
                f"parameter '{self.name}' has a symbolic shape {fmt_shape(self.shape)}",
                hint="parameters need fixed sizes; give the input a fixed feature size",
            )
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        fan_in, fan_out = self.fan
        shape = tuple(self.shape)
        if self.init == "zeros":
            v = np.zeros(shape)
        elif self.init == "ones":
            v = np.ones(shape)
        elif self.init == "he":
            v = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape)
        elif self.init == "xavier":
            limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))
            v = rng.uniform(-limit, limit, shape)
        elif self.init == "normal":
            v = rng.normal(0.0, 0.01, shape)
        elif self.init == "uniform":
            limit = 1.0 / np.sqrt(max(fan_in, 1))
            v = rng.uniform(-limit, limit, shape)
        elif self.init.startswith("constant:"):
            # a fixed starting value declared by an op (PReLU slopes start at 0.25)
            v = np.full(shape, float(self.init.split(":", 1)[1]))
        elif self.init.startswith("blocks:"):
            # equal blocks along the last axis, one constant each (LSTM forget-gate bias 1.0)
            vals = [float(t) for t in self.init.split(":", 1)[1].split(",")]
            v = np.repeat(vals, shape[-1] // len(vals)) * np.ones(shape)
        else:
            raise GraphError(
                f"unknown initializer '{self.init}' for parameter '{self.name}'",
                hint="use one of: " + ", ".join(INITIALIZERS),
            )
        return v.astype(self.dtype)


class Graph:
    """A DAG of nodes over named values (inputs, parameters, constants, node outputs)."""

    def __init__(self, name: str = "model", *, dtype: str = "float32", seed: int = 0) -> None:
        self.name = name
        self.dtype = dtype  # dtype of parameters and float constants
        self.seed = seed
        self.inputs: dict[str, TensorType] = {}
        self.input_locs: dict[str, SourceLoc | None] = {}
        self.params: dict[str, Param] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.nodes: dict[str, Node] = {}
        self.outputs: list[str] = []
        self.loss: str | None = None
        self.types: dict[str, TensorType] = {}
        self.comments: dict[str, list[str]] = {}  # value name -> comment lines (inputs)
        self.header: list[str] = []  # comment lines at the top of the file
        self.footer: list[str] = []
        self.file: str | None = None
        self.meta: dict[str, Any] = {}

    # ----------------------------------------------------------------- queries
    def type(self, value: str) -> TensorType:
        try:
            return self.types[value]
        except KeyError:
            raise GraphError(f"value '{value}' has no inferred type", node=value) from None

    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes.values() for out in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        uses: dict[str, list[Node]] = {}
        for n in self.nodes.values():
            for v in n.inputs:
                if v:
                    uses.setdefault(v, []).append(n)
        return uses

    def is_source(self, value: str) -> bool:
        return value in self.inputs or value in self.params or value in self.constants

    def value_names(self) -> set[str]:
        names = set(self.inputs) | set(self.params) | set(self.constants)
        for n in self.nodes.values():
            names.update(n.outputs)
        return names

    def topo_order(self) -> list[Node]:
        """Nodes in dependency order (stable: file order among ready nodes); cycles are errors."""
        producers = self.producers()
        indeg: dict[str, int] = {}
        users: dict[str, list[str]] = {}
        for n in self.nodes.values():
            deps = {producers[v].name for v in n.inputs if v in producers}
            indeg[n.name] = len(deps)
            for d in deps:
                users.setdefault(d, []).append(n.name)
        position = {name: i for i, name in enumerate(self.nodes)}
        import heapq

        ready = [(position[k], k) for k, d in indeg.items() if d == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            _, k = heapq.heappop(ready)
            order.append(self.nodes[k])
            for u in users.get(k, ()):
                indeg[u] -= 1
                if indeg[u] == 0:
                    heapq.heappush(ready, (position[u], u))
        if len(order) != len(self.nodes):
            raise self._cycle_error(producers, {n.name for n in order})
        return order

    def _cycle_error(self, producers: dict[str, Node], done: set[str]) -> GraphError:
        import networkx as nx

        g = nx.DiGraph()
        for n in self.nodes.values():
            if n.name in done:
                continue
            for v in n.inputs:
                if v in producers and producers[v].name not in done:
                    g.add_edge(producers[v].name, n.name)
        cycle = [u for u, _ in nx.find_cycle(g)]
        path = " -> ".join(cycle + [cycle[0]])
        first = self.nodes[cycle[0]]
        return GraphError(
            f"the graph has a cycle: {path}",
            loc=first.loc,
            node=first.name,
            hint="a network is a DAG: make one of these nodes read an earlier value instead",
        )

    def to_networkx(self):
        """A networkx view (values and nodes as vertices) for analyses; not a second IR."""
        import networkx as nx

        g = nx.DiGraph()
        for n in self.nodes.values():
            g.add_node(n.name, kind="op", op=n.op)
            for v in n.inputs:
                if v:
                    g.add_edge(v, n.name)
            for v in n.outputs:
                if v != n.name:
                    g.add_edge(n.name, v)
        return g

    # ---------------------------------------------------------------- edits
    def unique_name(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, … — the first name no value or node uses yet."""
        taken = self._taken_names()
        name, i = base, 0
        while name in taken or self._uses_name(name):
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    def _uses_name(self, name: str) -> bool:
        return (
            name in self.nodes
            or name in self.inputs
            or name in self.params
            or name in self.constants
        )

    def _taken_names(self) -> set[str]:
        # Rebuilding the set for every new node made graph construction quadratic. The
        # cache belongs to one nodes dict and add_node extends it; anything added another
        # way (inputs, parameters, constants, renamed nodes) is caught by _uses_name.
        if getattr(self, "_names_for", None) is not self.nodes:
            self._names = self.value_names() | set(self.nodes)
            self._names_for = self.nodes
        return self._names

    def add_node(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise GraphError(f"duplicate node name '{node.name}'", loc=node.loc, node=node.name)
        self.nodes[node.name] = node
        if getattr(self, "_names_for", None) is self.nodes:
            self._names.update([node.name, *node.outputs])
        return node

    def remove_node(self, name: str) -> Node:
        return self.nodes.pop(name)

    def copy(self) -> Graph:
        """A deep copy; parameter arrays and constants are shared (they are never mutated)."""
        g = copy.copy(self)
        g._names_for = None
        g.inputs = dict(self.inputs)
        g.input_locs = dict(self.input_locs)
        g.params = {k: copy.copy(p) for k, p in self.params.items()}
        g.constants = dict(self.constants)
        g.nodes = {
            k: Node(
                n.name,
                n.op,
                list(n.inputs),
                list(n.outputs),
                dict(n.attrs),
                n.loc,
                list(n.comment),
                dict(n.tags),
            )
            for k, n in self.nodes.items()
        }
        g.outputs = list(self.outputs)
        g.types = dict(self.types)
        g.comments = {k: list(v) for k, v in self.comments.items()}
        g.header = list(self.header)
        g.footer = list(self.footer)
        g.meta = dict(self.meta)
        return g

    def param_values(self) -> dict[str, np.ndarray]:
        """Current parameter values, initializing any that have none yet."""
        out = {}
        for name, p in self.params.items():
            if p.value is None:
                p.value = p.initial_value(self.seed)
            out[name] = p.value
        return out

    def __repr__(self) -> str:
        return (
            f"Graph({self.name!r}, inputs={list(self.inputs)}, nodes={len(self.nodes)}, "
            f"params={len(self.params)}, outputs={self.outputs})"
        )
