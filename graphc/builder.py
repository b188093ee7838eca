"""The Python builder: the model-file language as method calls.

    b = Builder("xor")
    x = b.input("x", [N, 2])
    y = b.input("y", [N], dtype="int64")
    h = b.tanh(b.linear(x, 4, name="fc1"))
    loss = b.cross_entropy(b.linear(h, 2, name="fc2"), y)
    b.output(h); b.minimize(loss)
    graph = b.graph

Every call adds one node and infers its type at once, so a mistake is
reported at the line that made it. Gradient rules build their nodes with the
same API (and `Tensor` arithmetic: `gy * (1 - y * y)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphError, SourceLoc
from graphc.infer import infer_node
from graphc.ir import Graph, Node, TensorType
from graphc.ops.registry import bind_args, get_op
from graphc.shapes import DTYPES


class Tensor:
    """A handle on one value of a graph under construction."""

    __slots__ = ("b", "name")

    def __init__(self, b: Builder, name: str) -> None:
        self.b = b
        self.name = name

    @property
    def type(self) -> TensorType:
        return self.b.graph.type(self.name)

    @property
    def shape(self):
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def rank(self) -> int:
        return len(self.type.shape)

    def _lift(self, other: Any) -> Tensor:
        return other if isinstance(other, Tensor) else self.b.scalar(other, like=self)

    def __add__(self, o):
        return self.b.add(self, self._lift(o))

    def __radd__(self, o):
        return self.b.add(self._lift(o), self)

    def __sub__(self, o):
        return self.b.sub(self, self._lift(o))

    def __rsub__(self, o):
        return self.b.sub(self._lift(o), self)

    def __mul__(self, o):
        return self.b.mul(self, self._lift(o))

    def __rmul__(self, o):
        return self.b.mul(self._lift(o), self)

    def __truediv__(self, o):
        return self.b.div(self, self._lift(o))

    def __rtruediv__(self, o):
        return self.b.div(self._lift(o), self)

    def __neg__(self):
        return self.b.neg(self)

    def __matmul__(self, o):
        return self.b.matmul(self, o)

    def __pow__(self, k):
        return self.b.pow(self, self._lift(k))

    def __repr__(self) -> str:
        t = self.b.graph.types.get(self.name)
        return f"Tensor({self.name!r}, {t})"


class Builder:
    """Adds nodes to a Graph; ops are methods (`b.relu(x)`), looked up in the registry."""

    def __init__(
        self, graph: Graph | str | None = None, *, prefix: str = "", tags: dict | None = None
    ) -> None:
        self.graph = graph if isinstance(graph, Graph) else Graph(graph or "model")
        self.prefix = prefix
        self.tags = dict(tags or {})
        self.loc: SourceLoc | None = None

    # ------------------------------------------------------------ values
    def tensor(self, value: Tensor | str) -> Tensor:
        return value if isinstance(value, Tensor) else Tensor(self, value)

    def input(self, name: str, shape: Sequence, dtype: str = "float32") -> Tensor:
        if dtype not in DTYPES:
            raise GraphError(f"unknown dtype '{dtype}'", hint="use one of: " + ", ".join(DTYPES))
        if name in self.graph.value_names():
            raise GraphError(f"duplicate name '{name}'", node=name)
        t = TensorType(dtype, tuple(shape))
        self.graph.inputs[name] = t
        self.graph.types[name] = t
        return Tensor(self, name)

    def const(self, value: Any, dtype: str | None = None, name: str | None = None) -> Tensor:
        arr = np.asarray(value, dtype=dtype or None)
        if dtype is None and arr.dtype == np.float64:
            arr = arr.astype(self.graph.dtype)
        name = self.graph.unique_name(name or f"{self.prefix}const")
        self.graph.constants[name] = arr
        self.graph.types[name] = TensorType(str(arr.dtype), tuple(arr.shape))
        return Tensor(self, name)

    def scalar(self, value: float, like: Tensor) -> Tensor:
        """A 0-d constant of `like`'s dtype (shared between uses of the same value)."""
        dtype = like.dtype
        key = ("scalar", dtype, float(value))
        cache = self.graph.meta.setdefault("_scalar_cache", {})
        name = cache.get(key)
        if name is None or name not in self.graph.constants:
            name = self.const(
                np.asarray(value, dtype=dtype), dtype=dtype, name=f"{self.prefix}c"
            ).name
            cache[key] = name
        return Tensor(self, name)

    def output(self, *tensors: Tensor | str) -> None:
        for t in tensors:
            self.graph.outputs.append(self.tensor(t).name)

    def minimize(self, loss: Tensor | str) -> None:
        self.graph.loss = self.tensor(loss).name

    # ------------------------------------------------------------ nodes
    def op(self, opname: str, *args: Any, name: str | None = None, **kwargs: Any):
        """Add a node of `opname`; positional tensors then literal attributes, as in files."""
        op = get_op(opname, self.loc)
        pos = [(isinstance(a, Tensor), a.name if isinstance(a, Tensor) else a) for a in args]
        kw = {
            k: (
                v.name
                if isinstance(v, Tensor)
                else [t.name for t in v]
                if isinstance(v, list) and v and isinstance(v[0], Tensor)
                else v
            )
            for k, v in kwargs.items()
        }
        tensor_kw = {k for k, v in kwargs.items() if isinstance(v, Tensor)}
        inputs, attrs = bind_args(op, pos, kw, is_tensor_kw=lambda v: False, where=self.loc)
        for k in attrs:
            if k in tensor_kw:
                raise GraphError(
                    f"{opname}() attribute '{k}' must be a literal, not a tensor", loc=self.loc
                )
        return self.emit(opname, inputs, attrs, name=name)

    def emit(
        self,
        opname: str,
        inputs: Sequence[str],
        attrs: dict,
        *,
        name: str | None = None,
        comment: Sequence[str] = (),
    ):
        """Add a node from already-bound inputs and attributes (the parser's entry point)."""
        op = get_op(opname, self.loc)
        attrs = op.check_attrs(attrs, where=self.loc)
        if name is None:
            name = self.graph.unique_name(f"{self.prefix}{opname}")
        elif name in self.graph.nodes or name in self.graph.value_names():
            raise GraphError(
                f"duplicate name '{name}'",
                loc=self.loc,
                node=name,
                hint="every assignment needs a new name",
            )
        n_out = op.num_outputs(attrs)
        outputs = [name] + [f"{name}:{i}" for i in range(1, n_out)]
        params = [f"{name}.{p.name}" for p in op.active_params(attrs)]
        node = Node(
            name,
            opname,
            list(inputs) + params,
            outputs,
            attrs,
            self.loc,
            list(comment),
            dict(self.tags),
        )
        self.graph.add_node(node)
        try:
            infer_node(self.graph, node)
        except GraphError:
            del self.graph.nodes[name]
            raise
        outs = tuple(Tensor(self, o) for o in outputs)
        return outs[0] if n_out == 1 else outs

    def __getattr__(self, opname: str):
        if opname.startswith("_"):
            raise AttributeError(opname)
        get_op(opname)  # unknown ops fail here, with a suggestion

        def call(*args: Any, **kwargs: Any):
            return self.op(opname, *args, **kwargs)

        call.__name__ = opname
        return call
