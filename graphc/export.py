"""ONNX export: each op's lowering emits standard ONNX nodes (default domain only)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from graphc.errors import GraphError
from graphc.ir import Graph, Node, TensorType
from graphc.ops.registry import get_op

OPSET = 21
IR_VERSION = 10

_ONNX_DTYPES = {
    "float32": 1,
    "float64": 11,
    "float16": 10,
    "int64": 7,
    "int32": 6,
    "bool": 9,
}


def onnx_dtype(dtype: str) -> int:
    return _ONNX_DTYPES[dtype]


class Emitter:
    """What a lowering sees: emit ONNX nodes, add constants, look up IR types."""

    def __init__(self, graph: Graph) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.graph = graph
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set(graph.value_names())
        self._consts: dict[tuple, str] = {}
        self.node: Node | None = None  # the IR node being lowered
        self._types: dict[str, TensorType] = {}  # ONNX output name -> IR type

    def fresh(self, hint: str) -> str:
        base = hint
        i = 0
        name = base
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], *, outputs: int = 1, **attrs: Any):
        """Emit one ONNX node; returns its output name (or names when outputs > 1)."""
        stem = self.node.name if self.node is not None else op_type.lower()
        outs = [self.fresh(f"{stem}/{op_type}") for _ in range(outputs)]
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(
            self._helper.make_node(
                op_type, list(inputs), outs, name=self.fresh(f"{stem}/{op_type}#node"), **attrs
            )
        )
        return outs[0] if outputs == 1 else outs

    def const(self, value: Any, dtype: str | None = None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        # equal constants share one initializer, so ORT's CSE can merge the nodes reading
        # them (a one-hot's arange of up to 4 K classes); larger arrays are not hashed
        key = (str(arr.dtype), arr.shape, arr.tobytes()) if arr.size <= 4096 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        name = self.fresh(hint)
        self.initializers.append(self._numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (axes, shapes, starts and ends of slices)."""
        return self.const(np.asarray(list(values), dtype=np.int64), hint="ints")

    def scalar(self, value: float, like: str) -> str:
        return self.const(np.asarray(value, dtype=self.type(like).dtype), hint="scalar")

    def type(self, value: str) -> TensorType:
        """The IR type of a value, by IR name or by the ONNX name a lowering produced."""
        t = self._types.get(value)
        return t if t is not None else self.graph.type(value)

    def onnx_dtype(self, dtype: str) -> int:
        return onnx_dtype(dtype)

    def tensor(self, array: np.ndarray):
        """A TensorProto, for attributes such as ConstantOfShape's value."""
        return self._numpy_helper.from_array(np.asarray(array))


def prune(graph: Graph, outputs: Sequence[str]) -> list[Node]:
    """Nodes the outputs depend on, in topological order."""
    producers = graph.producers()
    needed: set[str] = set()
    stack = list(outputs)
    while stack:
        v = stack.pop()
        if v in needed:
            continue
        needed.add(v)
        if v in producers:
            stack.extend(i for i in producers[v].inputs if i)
    return [n for n in graph.topo_order() if any(o in needed for o in n.outputs)]


def value_info(name: str, t: TensorType):
    from onnx import helper

    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, onnx_dtype(t.dtype), dims)


def export(
    graph: Graph,
    *,
    outputs: Sequence[str] | None = None,
    params_as_inputs: bool = False,
    input_order: Sequence[str] | None = None,
    extra_inputs: Sequence[str] = (),
    doc: str = "",
    keep_inputs: bool = False,
    check: bool = True,
):
    """Lower a typed Graph to an onnx.ModelProto.

    Parameters become initializers (or, with `params_as_inputs`, graph inputs
    whose initializers are their defaults). Only nodes the outputs need are
    emitted; inputs nothing reads are dropped unless `keep_inputs`.
    """
    import onnx
    from onnx import helper

    from graphc.lowering import expand_composites

    graph = expand_composites(graph, keep_lowerable=True)
    outputs = list(outputs if outputs is not None else graph.outputs)
    if not outputs:
        raise GraphError(
            "the graph has no outputs to export", hint="add `output(name)` to the model file"
        )
    nodes = prune(graph, outputs)
    e = Emitter(graph)
    alias: dict[str, str] = {}

    def src(v: str) -> str:
        return alias.get(v, v) if v else ""

    for node in nodes:
        op = get_op(node.op, node.loc)
        if op.lower is None:
            raise GraphError(f"op '{node.op}' has no ONNX lowering", loc=node.loc, node=node.name)
        e.node = node
        try:
            res = op.lower(e, node, *[src(v) for v in node.inputs])
        except GraphError as err:
            raise err.with_context(loc=node.loc, node=node.name) from None
        res = [res] if isinstance(res, str) else list(res)
        for want, got in zip(node.outputs, res):
            alias[want] = got
            e._types[got] = graph.type(want)
    used = {i for n in e.nodes for i in n.input} | set(src(o) for o in outputs)
    inputs = [k for k in (input_order or graph.inputs) if keep_inputs or k in used]
    inputs += [k for k in extra_inputs if k not in inputs]
    g_inputs = [value_info(k, graph.type(k)) for k in inputs]
    inits = list(e.initializers)
    values = graph.param_values()
    for name, arr in values.items():
        if name in used or (params_as_inputs and keep_inputs):
            inits.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
            if params_as_inputs:
                g_inputs.append(value_info(name, graph.type(name)))
    for name, arr in graph.constants.items():
        if name in used:
            inits.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    g_outputs = []
    for out in outputs:
        real = src(out)
        if real != out:
            e.nodes.append(helper.make_node("Identity", [real], [out], name=f"{out}#out"))
        g_outputs.append(value_info(out, graph.type(out)))
    g = helper.make_graph(e.nodes, graph.name, g_inputs, g_outputs, initializer=inits)
    model = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="graphc", doc_string=doc
    )
    model.ir_version = IR_VERSION
    if check:
        check_model(model)
    return model


def check_model(model) -> None:
    """The full ONNX checker plus strict shape inference."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise GraphError(
            f"the exported ONNX model is invalid: {err}",
            hint="this is a graphc bug; please report it with the model file",
        ) from err


def save(model, path: str) -> None:
    """Write an ONNX model atomically (temp file + rename)."""
    from graphc.fileio import atomic_write_bytes

    atomic_write_bytes(path, model.SerializeToString())
