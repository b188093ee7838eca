"""Structural edits on a Graph, each a plain function that mutates the graph it is given.

The document calls these on a copy, re-infers, and keeps the copy (with any
error attached) as the new state; undo restores the previous copy. None of
them infers types: that is the document's job, once per edit.
"""

from __future__ import annotations

import re
from typing import Any

import networkx as nx

from graphc import Graph, GraphError, Node, TensorType
from graphc.infer import split_inputs
from graphc.ops.registry import get_op
from graphc.shapes import DTYPES

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(graph: Graph, name: str, *, old: str | None = None) -> str:
    name = name.strip()
    if not _NAME.match(name):
        raise GraphError(
            f"'{name}' is not a valid name",
            hint="use letters, digits and underscores, not starting with a digit",
        )
    taken = (graph.value_names() | set(graph.nodes)) - {old}
    if name in taken:
        raise GraphError(f"the name '{name}' is already used", node=name, hint="pick another name")
    return name


def placeholder_attrs(opname: str) -> dict[str, Any]:
    """Values for an op's required attributes, so a freshly added node can exist.

    The inspector opens on the new node straight away, so these are only a
    starting point the user edits (a linear layer starts with units=1).
    """
    op = get_op(opname)
    out: dict[str, Any] = {}
    for key, a in op.attrs.items():
        if not a.required:
            continue
        kinds = a.kind if isinstance(a.kind, tuple) else (a.kind,)
        if a.choices:
            out[key] = a.choices[0]
        elif int in kinds:
            out[key] = 1
        elif float in kinds:
            out[key] = 1.0
        elif bool in kinds:
            out[key] = False
        elif tuple in kinds or list in kinds:
            out[key] = ()
        else:
            out[key] = ""
    return out


def _param_inputs(opname: str, name: str, attrs: dict) -> list[str]:
    return [f"{name}.{p.name}" for p in get_op(opname).active_params(attrs)]


def add_node(
    graph: Graph,
    opname: str,
    inputs: list[str] | None = None,
    attrs: dict[str, Any] | None = None,
    name: str | None = None,
    after: str | None = None,
) -> str:
    """Add a node; missing required inputs are left unconnected ("")."""
    op = get_op(opname)
    given = dict(placeholder_attrs(opname))
    given.update(attrs or {})
    attrs = op.check_attrs(given)
    name = check_name(graph, name) if name else graph.unique_name(opname)
    inputs = list(inputs or [])
    n_slots = max(len(op.inputs), len(inputs)) if op.variadic else len(op.inputs)
    if op.variadic and not inputs:
        n_slots = len(op.inputs)
    data = (inputs + [""] * n_slots)[:n_slots]
    outputs = [name] + [f"{name}:{i}" for i in range(1, op.num_outputs(attrs))]
    node = Node(name, opname, data + _param_inputs(opname, name, attrs), outputs, attrs)
    graph.add_node(node)
    if after is not None and after in graph.nodes:  # keep file order readable
        _move_after(graph, name, after)
    return name


def insert_after(
    graph: Graph,
    opname: str,
    value: str,
    attrs: dict[str, Any] | None = None,
    name: str | None = None,
) -> str:
    """Add a node reading `value` and move every reader of `value` over to it (a layer
    slipped into an existing chain: dropout after a dense layer)."""
    readers = [n for n in graph.nodes.values() if value in split_inputs(n)[0]]
    producer = graph.producers().get(value)
    new = add_node(
        graph, opname, [value], attrs, name, after=producer.name if producer is not None else None
    )
    for n in readers:
        data, params = split_inputs(n)
        n.inputs = [new if v == value else v for v in data] + params
    graph.outputs = [new if o == value else o for o in graph.outputs]
    if graph.loss == value:
        graph.loss = new
    return new


def _move_after(graph: Graph, name: str, after: str) -> None:
    items = list(graph.nodes.items())
    moved = next(i for i in items if i[0] == name)
    items.remove(moved)
    idx = next(i for i, (k, _) in enumerate(items) if k == after)
    items.insert(idx + 1, moved)
    graph.nodes = dict(items)


def data_slots(graph: Graph, name: str) -> list[tuple[str, str]]:
    """(slot name, value) for each data input of a node."""
    node = graph.nodes[name]
    op = get_op(node.op)
    data, _ = split_inputs(node)
    names = op.input_names()
    out = []
    for i, v in enumerate(data):
        slot = names[i] if i < len(names) else names[-1]
        if op.variadic and i >= len(names) - 1:
            slot = f"{names[-1]}[{i - len(names) + 1}]"
        out.append((slot, v))
    return out


def connect(graph: Graph, node: str, slot: int, value: str) -> None:
    """Feed `value` into data input number `slot` of `node` (appending to a variadic list)."""
    n = graph.nodes[node]
    if value not in graph.value_names():
        raise GraphError(f"there is no value named '{value}'", node=node)
    if value in n.outputs:
        raise GraphError(f"'{node}' cannot read its own output", node=node)
    data, params = split_inputs(n)
    op = get_op(n.op)
    if slot == len(data) and op.variadic:
        data.append(value)
    elif 0 <= slot < len(data):
        data[slot] = value
    else:
        raise GraphError(f"{n.op} '{node}' has no input number {slot}", node=node)
    n.inputs = data + params


def disconnect(graph: Graph, node: str, slot: int) -> None:
    n = graph.nodes[node]
    data, params = split_inputs(n)
    op = get_op(n.op)
    if not 0 <= slot < len(data):
        raise GraphError(f"{n.op} '{node}' has no input number {slot}", node=node)
    if op.variadic and slot >= len(op.inputs) - 1 and len(data) > len(op.inputs):
        del data[slot]
    else:
        data[slot] = ""
    n.inputs = data + params


def set_attrs(graph: Graph, node: str, attrs: dict[str, Any]) -> None:
    """Replace a node's attributes (validated); parameters and outputs follow them."""
    n = graph.nodes[node]
    op = get_op(n.op)
    new = op.check_attrs(attrs)
    data, _ = split_inputs(n)
    n.attrs = new
    n.inputs = data + _param_inputs(n.op, n.name, new)
    want = [n.name] + [f"{n.name}:{i}" for i in range(1, op.num_outputs(new))]
    for gone in set(n.outputs) - set(want):
        _drop_uses(graph, gone)
    n.outputs = want


def _drop_uses(graph: Graph, value: str) -> None:
    for other in graph.nodes.values():
        other.inputs = ["" if v == value else v for v in other.inputs]
    graph.outputs = [o for o in graph.outputs if o != value]
    if graph.loss == value:
        graph.loss = None


def descendants(graph: Graph, name: str) -> set[str]:
    """Nodes that depend on node or input `name` (not including it)."""
    g = graph.to_networkx()
    if name not in g:
        return set()
    return {d for d in nx.descendants(g, name) if d in graph.nodes}


def delete(graph: Graph, name: str, subtree: bool = False) -> list[str]:
    """Delete a node or graph input; with subtree, everything that depends on it too."""
    doomed = [name] + (sorted(descendants(graph, name)) if subtree else [])
    read: set[str] = set()
    for d in doomed:
        if d in graph.nodes:
            n = graph.nodes.pop(d)
            read.update(n.inputs)
            for v in n.outputs:
                _drop_uses(graph, v)
            for p in split_inputs(n)[1]:
                graph.params.pop(p, None)
        elif d in graph.inputs:
            del graph.inputs[d]
            graph.input_locs.pop(d, None)
            graph.comments.pop(d, None)
            _drop_uses(graph, d)
        else:
            raise GraphError(f"there is no node or input named '{d}'", node=d)
    # Constants only the deleted nodes read (the 2 of `h = x * 2`) go with them.
    still_read = {v for n in graph.nodes.values() for v in n.inputs}
    for c in read & set(graph.constants) - still_read:
        del graph.constants[c]
    return doomed


def rename(graph: Graph, old: str, new: str) -> None:
    """Rename a node (its outputs and parameters follow) or a graph input."""
    new = check_name(graph, new, old=old)
    mapping: dict[str, str] = {}
    if old in graph.nodes:
        n = graph.nodes[old]
        mapping = {v: new + v[len(old) :] for v in n.outputs}
        for p in split_inputs(n)[1]:
            mapping[p] = new + p[len(old) :]
        n.name = new
        graph.nodes = {(new if k == old else k): v for k, v in graph.nodes.items()}
        for p_old, p_new in mapping.items():
            if p_old in graph.params:
                p = graph.params.pop(p_old)
                p.name = p_new
                graph.params[p_new] = p
    elif old in graph.inputs:
        mapping = {old: new}
        graph.inputs = {(new if k == old else k): v for k, v in graph.inputs.items()}
        graph.input_locs = {(new if k == old else k): v for k, v in graph.input_locs.items()}
        if old in graph.comments:
            graph.comments[new] = graph.comments.pop(old)
    else:
        raise GraphError(f"there is no node or input named '{old}'", node=old)
    for n in graph.nodes.values():
        n.inputs = [mapping.get(v, v) for v in n.inputs]
        n.outputs = [mapping.get(v, v) for v in n.outputs]
    graph.outputs = [mapping.get(v, v) for v in graph.outputs]
    if graph.loss:
        graph.loss = mapping.get(graph.loss, graph.loss)


def parse_shape(text: str) -> tuple:
    """'N, 2' or '[N, 2]' -> ('N', 2): ints stay ints, names stay symbolic dims."""
    body = text.strip().strip("[]()").strip()
    if not body:
        return ()
    dims: list = []
    for part in body.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+", part):
            dims.append(int(part))
        elif _NAME.match(part):
            dims.append(part)
        else:
            raise GraphError(
                f"'{part}' is not a dimension",
                hint="write dims as numbers or names, e.g. N, 28, 28",
            )
    return tuple(dims)


def add_input(graph: Graph, name: str, shape: tuple, dtype: str = "float32") -> str:
    name = check_name(graph, name)
    set_input_type(graph, name, shape, dtype, new=True)
    return name


def set_input_type(graph: Graph, name: str, shape: tuple, dtype: str, *, new: bool = False) -> None:
    if dtype not in DTYPES:
        raise GraphError(f"unknown dtype '{dtype}'", hint="use one of: " + ", ".join(DTYPES))
    if not new and name not in graph.inputs:
        raise GraphError(f"'{name}' is not a graph input", node=name)
    graph.inputs[name] = TensorType(dtype, tuple(shape))


def toggle_output(graph: Graph, value: str) -> bool:
    """Mark a value as a graph output, or unmark it; returns whether it is one now."""
    if value in graph.outputs:
        graph.outputs.remove(value)
        return False
    graph.outputs.append(value)
    return True


def set_loss(graph: Graph, value: str | None) -> None:
    graph.loss = value
