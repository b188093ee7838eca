"""Test cases for every registered op, read from each op's `test=` hints.

Hint format (on `defop(..., test={...})`):

    {"cases": [{"shapes": [[4, 5], ...],          # one concrete shape per data input
                "attrs": {...},                    # optional
                "dtypes": ["float", "int64"],      # optional; "float" = the run's float dtype
                "ranges": [None, [0.0, 1.0]],      # optional: uniform draws for float inputs
                "batch": bool, "grad": ..., "tol": ..., "stats": bool},  # per-case overrides
               ...],
     "int_high": 2,      # int inputs are drawn in [0, int_high)
     "positive": False,  # float inputs in [0.5, 2.0] instead of standard normal
     "batch": True,      # the tests vary axis 0 of every input together (symbolic "N")
     "grad": True,       # or a string: why the op is not gradient-checked
     "tol": None,        # rtol = atol for the forward comparison in float32 (default 1e-5)
     "tol64": None}      # the same in float64 (default 1e-10)

`ranges` and `stats` are extensions of the team format: `ranges` bounds inputs
that must lie in an interval (probabilities); `stats: True` on a case of a
`random=True` op compares output statistics instead of values (ONNX Runtime
and NumPy draw different random numbers). For compatibility a hint written
without "cases" but with top-level "shapes"/"attrs" counts as one case.
An op without hints has no cases: `cases_for` raises, and the table fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.builder import Builder
from graphc.ir import Graph
from graphc.ops.registry import OpDef

CASE_KEYS = {"shapes", "attrs", "dtypes", "ranges", "batch", "grad", "tol", "tol64", "stats"}
HINT_KEYS = {
    "cases",
    "int_high",
    "positive",
    "batch",
    "grad",
    "tol",
    "tol64",
    "shapes",
    "attrs",
    "dtypes",
    "ranges",
    "stats",
}
NODE = "node"  # the name of the op's node in every case graph
BATCH_DIM = "N"


class MissingHints(Exception):
    """An op declares no usable test hints."""


@dataclass
class Case:
    op: OpDef
    index: int
    shapes: list[list[int]]
    attrs: dict[str, Any] = field(default_factory=dict)
    dtypes: list[str] = field(default_factory=list)
    ranges: list[Any] = field(default_factory=list)
    int_high: int = 2
    positive: bool = False
    batch: bool = True
    grad: bool | str = True
    tol: float | None = None
    tol64: float | None = None
    stats: bool = False

    @property
    def id(self) -> str:
        return f"{self.op.name}[{self.index}]"

    def dtype_of(self, i: int, float_dtype: str) -> str:
        d = self.dtypes[i] if i < len(self.dtypes) and self.dtypes[i] else "float"
        return float_dtype if d == "float" else d


def cases_for(op: OpDef) -> list[Case]:
    """The op's test cases; raises MissingHints when it declares none (or malformed ones)."""
    hints = dict(op.test or {})
    if not hints:
        raise MissingHints(
            f"op '{op.name}' has no test hints: add test={{'cases': [...]}} to its "
            "defop (see tests/op_cases.py for the format)"
        )
    unknown = set(hints) - HINT_KEYS
    if unknown:
        raise MissingHints(f"op '{op.name}': unknown test hint keys {sorted(unknown)}")
    raw = hints.get("cases")
    if raw is None and "shapes" in hints:
        raw = [{k: hints[k] for k in ("shapes", "attrs", "dtypes", "ranges") if k in hints}]
    if not raw:
        raise MissingHints(f"op '{op.name}' has test hints but no cases")
    out = []
    for i, c in enumerate(raw):
        bad = set(c) - CASE_KEYS
        if bad or "shapes" not in c:
            raise MissingHints(
                f"op '{op.name}' case {i}: needs 'shapes'; unknown keys {sorted(bad)}"
            )
        out.append(
            Case(
                op=op,
                index=i,
                shapes=[list(s) for s in c["shapes"]],
                attrs=dict(c.get("attrs", {})),
                dtypes=list(c.get("dtypes", [])),
                ranges=list(c.get("ranges", [])),
                int_high=int(hints.get("int_high", 2)),
                positive=bool(hints.get("positive", False)),
                batch=bool(c.get("batch", hints.get("batch", True))),
                grad=c.get("grad", hints.get("grad", True)),
                tol=c.get("tol", hints.get("tol")),
                tol64=c.get("tol64", hints.get("tol64")),
                stats=bool(c.get("stats", hints.get("stats", False))),
            )
        )
    return out


def input_names(op: OpDef, n: int) -> list[str]:
    """Graph input names for n data inputs: the op's input names (variadic ones numbered)."""
    names: list[str] = []
    for spec in op.inputs:
        base = spec.rstrip("?*")
        if spec.endswith("*"):
            names += [f"{base}{k}" for k in range(n - len(names))]
        elif len(names) < n:
            names.append(base)
        elif not spec.endswith("?"):
            raise MissingHints(
                f"op '{op.name}': hints give {n} input shapes, but input "
                f"'{base}' is required (inputs {op.inputs})"
            )
    if len(names) != n:
        raise MissingHints(f"op '{op.name}': hints give {n} input shapes for inputs {op.inputs}")
    return names


def build(case: Case, float_dtype: str = "float32", *, symbolic_batch: bool | None = None) -> Graph:
    """A one-node graph: inputs named after the op's inputs, the node named `node`.

    With a symbolic batch (the default for cases with batch=True), axis 0 of every
    input is the dim "N", so the op's shape rule runs on symbolic shapes.
    """
    op = case.op
    sym = case.batch if symbolic_batch is None else symbolic_batch
    b = Builder(Graph(f"case_{op.name}", dtype=float_dtype, seed=0))
    names = input_names(op, len(case.shapes))
    tensors = []
    for i, (name, shape) in enumerate(zip(names, case.shapes)):
        shape = list(shape)
        if sym and shape:
            shape[0] = BATCH_DIM
        tensors.append(b.input(name, shape, case.dtype_of(i, float_dtype)))
    outs = b.op(op.name, *tensors, name=NODE, **case.attrs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    b.output(*outs)
    return b.graph


def draw_inputs(
    case: Case, graph: Graph, batch: int | None, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Random arrays for the graph's inputs; `batch` replaces axis 0 when the case varies it."""
    feeds = {}
    for i, (name, t) in enumerate(graph.inputs.items()):
        shape = list(case.shapes[i])
        if batch is not None and case.batch and shape:
            shape[0] = batch
        rng_i = case.ranges[i] if i < len(case.ranges) else None
        if t.dtype.startswith("float"):
            if rng_i is not None:
                v = rng.uniform(rng_i[0], rng_i[1], shape)
            elif case.positive:
                v = rng.uniform(0.5, 2.0, shape)
            else:
                v = rng.standard_normal(shape)
            feeds[name] = v.astype(t.dtype)
        elif t.dtype == "bool":
            feeds[name] = rng.random(shape) < 0.5
        else:
            feeds[name] = rng.integers(0, case.int_high, shape).astype(t.dtype)
    return feeds


def randomize_params(graph: Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values for trainable parameters (zero-initialized biases would hide bugs).

    State parameters (running statistics) keep their initial values: a running
    variance must stay positive.
    """
    values = graph.param_values()
    out = {}
    for name, p in graph.params.items():
        if p.state:
            out[name] = values[name]
        else:
            out[name] = (0.5 * rng.standard_normal(tuple(p.shape))).astype(p.dtype)
        p.value = out[name]
    return out
