"""Print a Graph as canonical .gc text (the inverse of graphc.parser).

Canonical form: header comments, inputs, constants, one assignment per node
in graph order (tensors positional, required attributes positional, other
attributes as keywords only when they differ from the default, parameters
implied by the node name), then output(...) and minimize(...). Parsing the
printed text gives the same graph, and printing is idempotent.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from graphc.errors import GraphError
from graphc.infer import split_inputs
from graphc.ir import Graph, Node
from graphc.ops.registry import get_op

MAX_CONSTANT = 64  # elements; larger constants belong in parameters or data files


def _literal(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        r = repr(v)
        return r if r not in ("inf", "-inf", "nan") else f'"{r}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    if isinstance(v, (np.integer, np.floating)):
        return _literal(v.item())
    return repr(v)


def _comment_lines(lines: list[str]) -> list[str]:
    return [f"# {c}" if c else "#" for c in lines]


def _call(graph: Graph, node: Node) -> str:
    op = get_op(node.op, node.loc)
    data, _params = split_inputs(node)
    parts: list[str] = []
    names = op.input_names()
    keyword_from = None
    for i, v in enumerate(data):
        if not v:
            keyword_from = i
            continue
        if keyword_from is not None and i < len(op.inputs) and not op.variadic:
            parts.append(f"{names[i]}={v}")
        else:
            parts.append(v)
    positional = True
    for key, a in op.attrs.items():
        value = node.attrs.get(key, a.default)
        if a.required and positional:
            parts.append(_literal(value))
            continue
        positional = False
        if not a.required and _same(value, a.default):
            continue
        if a.implied is not None and _same(value, a.implied(node.name)):
            continue
        parts.append(f"{key}={_literal(value)}")
    for key in ("init", "frozen"):
        if key in node.attrs and key not in op.attrs and node.attrs[key] not in (None, False):
            parts.append(f"{key}={_literal(node.attrs[key])}")
    return f"{node.op}({', '.join(parts)})"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return (a == b and type(a) is type(b)) or (a is None and b is None)


def _constant(name: str, arr: np.ndarray) -> str:
    if arr.size > MAX_CONSTANT:
        raise GraphError(
            f"constant '{name}' has {arr.size} elements; too large to print",
            hint="make it a parameter or feed it as an input",
        )
    body = _literal(arr.tolist())
    default = "float32" if arr.dtype.kind == "f" else "int64" if arr.dtype.kind in "iu" else None
    if (
        arr.dtype.kind == "f"
        and not isinstance(arr.tolist(), list)
        and "." not in body
        and "e" not in body
    ):
        body += ".0"
    suffix = "" if str(arr.dtype) == default else f", dtype={arr.dtype}"
    return f"{name} = constant({body}{suffix})"


def print_graph(graph: Graph) -> str:
    """Canonical .gc text for a graph (comments kept)."""
    out: list[str] = []
    if graph.header:
        out += _comment_lines(graph.header) + [""]
    if graph.seed:
        out += [f"seed({graph.seed})", ""]
    for name, t in graph.inputs.items():
        out += _comment_lines(graph.comments.get(name, []))
        shape = ", ".join(str(d) for d in t.shape)
        out.append(f"{name} = input({t.dtype}, [{shape}])")
    if graph.constants:
        for name, arr in graph.constants.items():
            out += _comment_lines(graph.comments.get(name, []))
            out.append(_constant(name, np.asarray(arr)))
    if graph.inputs or graph.constants:
        out.append("")
    for node in graph.nodes.values():
        if node.comment and out and out[-1] != "":
            out.append("")
        out += _comment_lines(node.comment)
        targets = ", ".join(node.outputs)
        for o in node.outputs:
            if not o.isidentifier():
                raise GraphError(
                    f"value '{o}' has no printable name",
                    node=node.name,
                    hint="model files name values with identifiers",
                )
        out.append(f"{targets} = {_call(graph, node)}")
    tail: list[str] = []
    if graph.outputs:
        tail += _comment_lines(graph.comments.get("__output__", []))
        tail.append(f"output({', '.join(graph.outputs)})")
    if graph.loss:
        tail += _comment_lines(graph.comments.get("__minimize__", []))
        tail.append(f"minimize({graph.loss})")
    if tail:
        if out and out[-1] != "":
            out.append("")
        out += tail
    if graph.footer:
        out += [""] + _comment_lines(graph.footer)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"
