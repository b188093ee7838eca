"""The op registry: one declaration per op carrying every facet.

An op declares its signature (tensor inputs, then attributes), a shape/dtype
rule, a NumPy reference, an ONNX lowering in standard ops, and a gradient rule
that emits graph nodes. Composite ops may instead give a decomposition into
primitives, which the compiler expands before differentiation. No stage
switches on op names: each looks the facet up here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphc.errors import GraphError, closest
from graphc.ir import INITIALIZERS, TensorType
from graphc.shapes import FLOAT_DTYPES, Shape, fmt_shape

_REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """An attribute: Python type(s), default (or required), optional allowed values."""

    kind: type | tuple[type, ...]
    default: Any = _REQUIRED
    choices: tuple | None = None
    doc: str = ""
    # the value an omitted attribute takes, as a function of the node's name (the
    # printer leaves it out when it still has that value, so copies get fresh ones)
    implied: Callable[[str], Any] | None = None

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True)
class ParamSpec:
    """A parameter a layer owns, named `<node>.<name>` (e.g. `fc1.weight`)."""

    name: str
    shape: Callable[[InferCtx], Shape]
    init: str = "he"
    layout: str = "io"  # how fans are read: "io" (in, out), "oi" (out, in, *kernel), "vec"
    when: Callable[[dict], bool] | None = None  # present only if this holds for the attrs
    state: bool = False  # running statistics: never trained, updated by the training step


class NotDifferentiable:
    """Marker: asking for a gradient through this op is an error (argmax, step)."""

    def __init__(self, why: str) -> None:
        self.why = why


@dataclass
class OpDef:
    name: str
    inputs: tuple[str, ...]  # "x"; "x?" optional; "xs*" variadic (only last)
    attrs: dict[str, Attr]
    infer: Callable[[InferCtx], TensorType | Sequence[TensorType]]
    reference: Callable[..., Any]
    lower: Callable[..., Any] | None = None
    grad: Callable[..., Any] | NotDifferentiable | None = None
    decompose: Callable[..., Any] | None = None
    params: tuple[ParamSpec, ...] = ()
    n_outputs: int | Callable[[dict], int] = 1
    category: str = "misc"
    doc: str = ""
    flops: Callable[[InferCtx, Sequence[TensorType]], int] | None = None
    key_attrs: tuple[str, ...] = ()  # shown on boxes in renders and the editor
    inplace: dict[int, int] = field(default_factory=dict)  # output i may reuse input j
    aliases: dict[int, int] = field(default_factory=dict)  # output i is a view of input j
    training_only: bool = False  # behaves differently in training (dropout, batch norm)
    random: bool = False  # draws random numbers (tests compare statistics, not values)
    test: dict = field(default_factory=dict)  # hints for the registry-wide op tests

    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].endswith("*")

    def input_names(self) -> list[str]:
        return [i.rstrip("?*") for i in self.inputs]

    def num_outputs(self, attrs: dict) -> int:
        return self.n_outputs(attrs) if callable(self.n_outputs) else self.n_outputs

    def active_params(self, attrs: dict) -> list[ParamSpec]:
        return [p for p in self.params if p.when is None or p.when(attrs)]

    @property
    def differentiable(self) -> bool:
        return self.grad is not None and not isinstance(self.grad, NotDifferentiable)

    def check_attrs(self, given: dict[str, Any], *, where=None) -> dict[str, Any]:
        """Validate attributes and fill in defaults; raises GraphError naming the bad one."""
        spec = dict(self.attrs)
        if self.params:
            spec.setdefault("frozen", Attr(bool, False, doc="exclude from training"))
            spec.setdefault("init", Attr(str, None, doc="weight initializer"))
        out: dict[str, Any] = {}
        for key, value in given.items():
            if key not in spec:
                near = closest(key, spec)
                hint = (
                    f"did you mean '{near}'?"
                    if near
                    else ("accepted: " + (", ".join(spec) if spec else "no attributes"))
                )
                raise GraphError(
                    f"{self.name}() got an unknown attribute '{key}'", loc=where, hint=hint
                )
            out[key] = _coerce(self.name, key, spec[key], value, where)
        for key, a in spec.items():
            if key not in out:
                if a.required:
                    raise GraphError(
                        f"{self.name}() needs the attribute '{key}'",
                        loc=where,
                        hint=f"{self.signature()}",
                    )
                out[key] = a.default
        if self.params and out.get("init") is not None and out["init"] not in INITIALIZERS:
            raise GraphError(
                f"unknown initializer '{out['init']}'",
                loc=where,
                hint="use one of: " + ", ".join(INITIALIZERS),
            )
        return out

    def signature(self) -> str:
        parts = [i.rstrip("?*") + ("..." if i.endswith("*") else "") for i in self.inputs]
        for k, a in self.attrs.items():
            parts.append(k if a.required else f"{k}={a.default!r}")
        return f"{self.name}({', '.join(parts)})"


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _coerce(op: str, key: str, a: Attr, value: Any, where) -> Any:
    kinds = a.kind if isinstance(a.kind, tuple) else (a.kind,)
    if value is None and a.default is None:
        return None
    ok = False
    if isinstance(value, bool):
        ok = bool in kinds
    elif isinstance(value, int):
        ok = int in kinds or float in kinds
        if ok and int not in kinds:
            value = float(value)
    elif isinstance(value, (list, tuple)) and (tuple in kinds or list in kinds):
        value = tuple(value)
        ok = True
    else:
        ok = isinstance(value, kinds)
    if not ok:
        raise GraphError(
            f"{op}() attribute '{key}' must be {_kind_name(a.kind)}, got {type(value).__name__} "
            f"{value!r}",
            loc=where,
            hint=a.doc or None,
        )
    if a.choices is not None and value not in a.choices:
        raise GraphError(
            f"{op}() attribute '{key}' must be one of {', '.join(map(repr, a.choices))}, "
            f"got {value!r}",
            loc=where,
        )
    return value


@dataclass
class InferCtx:
    """What a shape rule sees: input types, attributes, and a way to fail clearly."""

    op: OpDef
    node: str
    inputs: list[TensorType | None]  # data inputs then parameters, in node order
    attrs: dict[str, Any]
    loc: Any = None

    @property
    def x(self) -> TensorType:
        return self.inputs[0]

    def fail(self, message: str, hint: str | None = None) -> GraphError:
        return GraphError(
            f"{self.op.name} '{self.node}': {message}", loc=self.loc, node=self.node, hint=hint
        )

    def need_rank(self, i: int, *ranks: int) -> TensorType:
        t = self.inputs[i]
        if t.rank not in ranks:
            want = " or ".join(map(str, ranks))
            raise self.fail(
                f"input '{self.op.input_names()[min(i, len(self.op.inputs) - 1)]}' must have "
                f"rank {want}, got {t} (rank {t.rank})"
            )
        return t

    def need_float(self, i: int) -> TensorType:
        t = self.inputs[i]
        if t.dtype not in FLOAT_DTYPES:
            raise self.fail(
                f"input {i} must be a float tensor, got {t}",
                hint="cast it, or feed it where integers are expected",
            )
        return t

    def need_same_dtype(self) -> str:
        dts = {t.dtype for t in self.inputs if t is not None}
        if len(dts) > 1:
            raise self.fail(
                "inputs have different dtypes: "
                + ", ".join(str(t) for t in self.inputs if t is not None)
            )
        return dts.pop()

    def dim_mismatch(self, what: str, a, b, hint: str | None = None) -> GraphError:
        return self.fail(
            f"{what}: {fmt_shape(a) if isinstance(a, tuple) else a} vs "
            f"{fmt_shape(b) if isinstance(b, tuple) else b}",
            hint,
        )


REGISTRY: dict[str, OpDef] = {}


def defop(
    name: str,
    *,
    inputs: Sequence[str] = ("x",),
    attrs: dict[str, Attr] | None = None,
    **facets: Any,
) -> OpDef:
    """Declare an op and register it; returns the declaration."""
    if name in REGISTRY:
        raise ValueError(f"op '{name}' declared twice")
    op = OpDef(name=name, inputs=tuple(inputs), attrs=dict(attrs or {}), **facets)
    REGISTRY[name] = op
    return op


def get_op(name: str, where=None) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        near = closest(name, REGISTRY)
        raise GraphError(
            f"unknown op '{name}'",
            loc=where,
            hint=f"did you mean '{near}'?" if near else "run `graphc ops` to list the ops",
        ) from None


def all_ops() -> dict[str, OpDef]:
    return dict(sorted(REGISTRY.items()))


def bind_args(
    op: OpDef,
    args: Sequence[tuple[bool, Any]],
    kwargs: dict[str, Any],
    *,
    is_tensor_kw: Callable[[Any], bool],
    where=None,
) -> tuple[list[Any], dict[str, Any]]:
    """Map call arguments onto (tensor inputs, attributes).

    `args` holds (is_tensor, value) pairs. Tensors fill the op's inputs in order
    (a variadic input takes every remaining tensor); literals fill attributes in
    declared order. Keywords may name inputs or attributes. The model-file
    parser and the Python builder share this rule.
    """
    inputs: list[Any] = []
    attrs: dict[str, Any] = {}
    pos = list(args)
    i = 0
    for spec in op.inputs:
        name = spec.rstrip("?*")
        if spec.endswith("*"):
            while i < len(pos) and pos[i][0]:
                inputs.append(pos[i][1])
                i += 1
            if name in kwargs:
                inputs.extend(kwargs.pop(name))
            if not inputs:
                raise GraphError(
                    f"{op.name}() needs at least one input tensor", loc=where, hint=op.signature()
                )
        elif name in kwargs:
            inputs.append(kwargs.pop(name))
        elif i < len(pos) and pos[i][0]:
            inputs.append(pos[i][1])
            i += 1
        elif spec.endswith("?"):
            inputs.append("")
        else:
            got = "nothing" if i >= len(pos) else f"the literal {pos[i][1]!r}"
            raise GraphError(
                f"{op.name}() expects a tensor for input '{name}', got {got}",
                loc=where,
                hint=op.signature(),
            )
    attr_names = list(op.attrs)
    for is_tensor, value in pos[i:]:
        if is_tensor:
            raise GraphError(
                f"{op.name}() got too many tensor inputs", loc=where, hint=op.signature()
            )
        if not attr_names:
            raise GraphError(f"{op.name}() got too many arguments", loc=where, hint=op.signature())
        attrs[attr_names.pop(0)] = value
    for key, value in kwargs.items():
        if key in attrs:
            raise GraphError(f"{op.name}() got attribute '{key}' twice", loc=where)
        if is_tensor_kw(value):
            raise GraphError(
                f"{op.name}() attribute '{key}' must be a literal, not a tensor",
                loc=where,
                hint=op.signature(),
            )
        attrs[key] = value
    return inputs, attrs
