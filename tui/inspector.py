"""The inspector: the selected node's inputs, attributes, parameters and cost, as a form.

Each attribute is an Input validated against the op's own attribute rules
(`OpDef.check_attrs`) as the user types; Enter on a valid field posts
`Inspector.AttrsChanged` and the app turns it into one undoable edit. A graph
input's dtype and shape are edited the same way.
"""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.message import Message
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Label, Static

from graphc import Graph, GraphError
from graphc.ops.registry import get_op
from graphc.shapes import DTYPES
from graphc.summary import node_flops, node_params
from graphc.tui import edits
from graphc.tui.scene import split_inputs_safe, type_text


def parse_literal(text: str, kinds: tuple) -> Any:
    """A field's text as a value: Python literals, bare words as strings for str attrs."""
    text = text.strip()
    if text in ("", "None"):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if str in kinds:
            return text
        raise GraphError(
            f"'{text}' is not a value", hint="write a number, True/False or a list like [3, 3]"
        ) from None
    if isinstance(value, list):
        value = tuple(value)
    return value


def attr_spec(opname: str) -> dict:
    op = get_op(opname)
    spec = dict(op.attrs)
    if op.params:
        from graphc.ops.registry import Attr

        spec.setdefault("frozen", Attr(bool, False, doc="exclude from training"))
        spec.setdefault("init", Attr(str, None, doc="weight initializer"))
    return spec


class AttrValidator(Validator):
    """Checks one attribute with the op's rules, the other attributes held fixed."""

    def __init__(self, opname: str, key: str, attrs: dict) -> None:
        super().__init__()
        self.opname, self.key, self.attrs = opname, key, attrs

    def validate(self, value: str) -> ValidationResult:
        try:
            self.parse(value)
        except GraphError as err:
            return self.failure(err.message + (f" ({err.hint})" if err.hint else ""))
        return self.success()

    def parse(self, value: str) -> dict:
        a = attr_spec(self.opname)[self.key]
        kinds = a.kind if isinstance(a.kind, tuple) else (a.kind,)
        attrs = dict(self.attrs)
        attrs[self.key] = parse_literal(value, kinds)
        if attrs[self.key] is None and a.required:
            raise GraphError(f"{self.opname}() needs the attribute '{self.key}'")
        return get_op(self.opname).check_attrs(attrs)


class ShapeValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        try:
            edits.parse_shape(value)
        except GraphError as err:
            return self.failure(err.message)
        return self.success()


class DtypeValidator(Validator):
    def validate(self, value: str) -> ValidationResult:
        if value.strip() in DTYPES:
            return self.success()
        return self.failure("dtype must be one of " + ", ".join(DTYPES))


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    if isinstance(v, str):
        return v
    return repr(v)


class FocusedInput(Input):
    """An Input that takes the focus once mounted (the field `e` or a new node opens)."""

    def on_mount(self) -> None:
        self.focus()
        for inspector in self.ancestors_with_self:
            if isinstance(inspector, Inspector):
                inspector.focus_next_show = False  # done: later redraws leave focus alone


class Inspector(VerticalScroll, can_focus=False):
    """Shows and edits whatever the canvas has selected."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "leave", "Back to graph")]

    class AttrsChanged(Message):
        def __init__(self, node: str, attrs: dict) -> None:
            super().__init__()
            self.node, self.attrs = node, attrs

    class InputTypeChanged(Message):
        def __init__(self, name: str, shape: tuple, dtype: str) -> None:
            super().__init__()
            self.name, self.shape, self.dtype = name, shape, dtype

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.graph: Graph | None = None
        self.target: str | None = None
        self.problem: str | None = None
        self.members: tuple[str, ...] = ()
        self.focus_next_show = False  # focus the first field (a required one first) next time
        self._focus = False

    def show(
        self,
        graph: Graph,
        target: str | None,
        problem: str | None = None,
        members: tuple[str, ...] = (),
    ) -> None:
        same = (
            graph is self.graph
            and target == self.target
            and problem == self.problem
            and members == self.members
        )
        if same and not self.focus_next_show:
            return  # nothing new: keep the form (and the field being typed in) as it is
        self.graph, self.target, self.problem, self.members = graph, target, problem, members
        self._focus = self.focus_next_show
        self.refresh(recompose=True)

    def compose(self) -> ComposeResult:
        g, name = self.graph, self.target
        if g is not None and self.members:
            yield Label(f"[b]{escape(name or '')}[/b]  fold", markup=True)
            yield Static(
                "\n".join(escape(f"{m}: {g.nodes[m].op}") for m in self.members if m in g.nodes),
                markup=True,
            )
            yield Static("[dim]z unfolds it[/]", markup=True)
            return
        if g is None or name is None or (name not in g.nodes and name not in g.inputs):
            yield Static(
                "[b]Inspector[/b]\n\nSelect a node (click, or arrow keys).\n\n"
                "[dim]a[/] add op   [dim]i[/] add input\n[dim]?[/] all keys",
                classes="empty",
            )
            return
        if self.problem:
            yield Static(f"[b red]error:[/] {escape(self.problem)}", classes="problem", markup=True)
        if name in g.inputs:
            t = g.inputs[name]
            yield Label(f"[b]{escape(name)}[/b]  graph input", markup=True)
            if g.comments.get(name):
                yield Static(
                    "\n".join(f"# {c}" for c in g.comments[name]), markup=False, classes="doc"
                )
            yield Label("dtype", classes="field")
            field = FocusedInput if self._focus else Input
            yield field(
                t.dtype,
                id="f-dtype",
                validators=[DtypeValidator()],
                validate_on=["changed", "submitted"],
            )
            yield Label("shape", classes="field")
            yield Input(
                ", ".join(map(str, t.shape)),
                id="f-shape",
                validators=[ShapeValidator()],
                validate_on=["changed", "submitted"],
            )
            return
        node = g.nodes[name]
        op = get_op(node.op)
        yield Label(f"[b]{escape(name)}[/b]  {node.op}", markup=True)
        if node.comment:
            yield Static(
                "\n".join(f"# {c.lstrip('# ')}" for c in node.comment), markup=False, classes="doc"
            )
        yield Static(op.doc, markup=False, classes="doc")
        _, params = split_inputs_safe(node)
        for slot, v in edits.data_slots(g, name):
            shown = escape(f"{v}: {type_text(g, v)}") if v else "[red]not connected[/]"
            yield Static(f"[dim]in[/] {slot} ← {shown}", markup=True)
        spec = attr_spec(node.op)
        first = next((k for k, a in spec.items() if a.required), next(iter(spec), None))
        for key, a in spec.items():
            yield Label(f"{key}" + (" *" if a.required else ""), classes="field")
            field = FocusedInput if self._focus and key == first else Input
            yield field(
                _fmt(node.attrs.get(key)),
                id=f"attr-{key}",
                validators=[AttrValidator(node.op, key, node.attrs)],
                validate_on=["changed", "submitted"],
                tooltip=a.doc or None,
            )
        yield Static(f"[dim]out[/] {escape(type_text(g, node.outputs[0]))}", markup=True)
        for p in params:
            if p in g.params:
                yield Static(
                    f"[dim]param[/] {p.split('.')[-1]} {escape(type_text(g, p))}", markup=True
                )
        try:
            flops = node_flops(g, node)
            count = node_params(g, node)
            yield Static(
                f"[dim]params[/] {count:,}  [dim]FLOPs[/] {'-' if flops is None else f'{flops:,}'}",
                markup=True,
            )
        except (KeyError, GraphError):  # types missing while an error upstream blocks them
            yield Static("[dim]params and FLOPs: after the error is fixed[/]", markup=True)

    def action_leave(self) -> None:
        self.app.canvas.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.validation_result is not None and not event.validation_result.is_valid:
            self.app.notify(
                "; ".join(event.validation_result.failure_descriptions), severity="error"
            )
            return
        name = self.target
        wid = event.input.id or ""
        if wid.startswith("attr-"):
            v = event.input.validators[0]
            self.post_message(self.AttrsChanged(name, v.parse(event.value)))
        elif wid in ("f-dtype", "f-shape"):
            dtype = self.query_one("#f-dtype", Input).value.strip()
            shape = edits.parse_shape(self.query_one("#f-shape", Input).value)
            if dtype not in DTYPES:
                self.app.notify(f"unknown dtype '{dtype}'", severity="error")
                return
            self.post_message(self.InputTypeChanged(name, shape, dtype))
