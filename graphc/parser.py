"""The .gc model-file language: Python syntax, parsed with `ast`, never executed.

    # XOR with two tanh units
    x = input(float32, [N, 2])
    y = input(int64, [N])
    h = tanh(linear(x, 2))
    logits = linear(h, 2)
    loss = cross_entropy(logits, y)
    output(logits)
    minimize(loss)

A file is a list of statements: assignments of op calls (nested calls and
the operators + - * / @ are allowed), `input(dtype, shape)` and
`constant(value)` declarations, and the directives `output(...)`,
`minimize(...)` and `seed(...)`. Names may be used before the line that
defines them; the graph must still be acyclic. Anything else — imports,
attribute access, lambdas, loops, subscripts — is rejected with its location.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.errors import GraphError, SourceLoc, closest
from graphc.fileio import read_text
from graphc.infer import infer
from graphc.ir import Graph, Node, TensorType
from graphc.ops.registry import REGISTRY, _coerce, bind_args, get_op
from graphc.shapes import DTYPES

DIRECTIVES = ("input", "constant", "output", "minimize", "seed")
BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.MatMult: "matmul"}
_FORBIDDEN = {
    ast.Import: "imports",
    ast.ImportFrom: "imports",
    ast.Lambda: "lambdas",
    ast.For: "loops",
    ast.While: "loops",
    ast.If: "if statements",
    ast.FunctionDef: "functions",
    ast.ClassDef: "classes",
    ast.With: "with blocks",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.ListComp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.AugAssign: "augmented assignment",
    ast.Delete: "del",
    ast.Global: "global",
}


@dataclass
class _Pending:
    """A node before names are resolved: args hold ('ref', name) or ('lit', value)."""

    name: str
    op: str
    args: list[tuple[str, Any, ast.AST]]
    kwargs: dict[str, tuple[str, Any, ast.AST]]
    loc: SourceLoc
    outputs: list[str]
    comment: list[str] = field(default_factory=list)


class _Parser:
    check = True  # run type inference at the end (parse_text(check=False) skips it)

    def __init__(self, text: str, file: str | None) -> None:
        self.text = text
        self.file = file
        self.lines = text.splitlines()
        self.graph = Graph(_stem(file))
        self.graph.file = file
        self.pending: list[_Pending] = []
        self.defined: dict[str, SourceLoc] = {}
        self.refs: list[tuple[str, SourceLoc]] = []
        self.targets: set[str] = set()
        self.outputs: list[tuple[str, SourceLoc]] = []
        self.loss: tuple[str, SourceLoc] | None = None

    # ---------------------------------------------------------------- helpers
    def loc(self, n: ast.AST) -> SourceLoc:
        line = getattr(n, "lineno", 1)
        end = getattr(n, "end_col_offset", None) if getattr(n, "end_lineno", line) == line else None
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        return SourceLoc(self.file, line, getattr(n, "col_offset", 0), end, text)

    def error(self, n: ast.AST, message: str, hint: str | None = None) -> GraphError:
        return GraphError(message, loc=self.loc(n), hint=hint)

    def define(self, name: str, n: ast.AST) -> None:
        if name in self.defined:
            first = self.defined[name]
            raise self.error(
                n,
                f"duplicate name '{name}' (first defined at line {first.line})",
                hint="every assignment needs a new name",
            )
        if name in DIRECTIVES or name in DTYPES:
            raise self.error(n, f"'{name}' is reserved and cannot name a value")
        self.defined[name] = self.loc(n)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.targets or name in self.defined:
            name = f"{base}_{i}"
            i += 1
        self.targets.add(name)
        return name

    # ---------------------------------------------------------------- parse
    def parse(self) -> Graph:
        try:
            tree = ast.parse(self.text, filename=self.file or "<string>")
        except SyntaxError as err:
            line = err.lineno or 1
            text = self.lines[line - 1] if 0 < line <= len(self.lines) else None
            raise GraphError(
                f"syntax error: {err.msg}",
                loc=SourceLoc(self.file, line, max((err.offset or 1) - 1, 0), None, text),
                hint="model files use Python syntax: `name = op(args)`",
            ) from None
        self._check_forbidden(tree)
        comments = _comments(self.text)
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                for t in stmt.targets:
                    for e in t.elts if isinstance(t, ast.Tuple) else [t]:
                        if isinstance(e, ast.Name):
                            self.targets.add(e.id)
        first_line = tree.body[0].lineno if tree.body else 10**9
        attached = _attach_comments(comments, [s.lineno for s in tree.body], first_line)
        self.graph.header = attached.pop("header", [])
        self.graph.footer = attached.pop("footer", [])
        for stmt in tree.body:
            self.statement(stmt, attached.get(stmt.lineno, []))
        return self.build()

    def _check_forbidden(self, tree: ast.AST) -> None:
        for n in ast.walk(tree):
            kind = _FORBIDDEN.get(type(n))
            if kind:
                raise self.error(
                    n,
                    f"not part of the model-file language: {kind}",
                    hint="model files are parsed, never executed: write "
                    "`name = op(args)` statements only",
                )
            if isinstance(n, ast.Name) and n.id.startswith("__"):
                raise self.error(
                    n,
                    f"'{n.id}' is not allowed in a model file",
                    hint="model files are parsed, never executed",
                )

    def statement(self, stmt: ast.stmt, comment: list[str]) -> None:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            call = stmt.value
            fname = call.func.id if isinstance(call.func, ast.Name) else None
            if fname == "output":
                self.graph.comments.setdefault("__output__", []).extend(comment)
                for a in call.args:
                    if not isinstance(a, ast.Name):
                        raise self.error(a, "output() takes value names", hint="output(logits)")
                    self.outputs.append((a.id, self.loc(a)))
                return
            if fname == "minimize":
                if len(call.args) != 1 or not isinstance(call.args[0], ast.Name):
                    raise self.error(call, "minimize() takes one value name: minimize(loss)")
                self.graph.comments.setdefault("__minimize__", []).extend(comment)
                self.loss = (call.args[0].id, self.loc(call.args[0]))
                return
            if fname == "seed":
                if (
                    len(call.args) != 1
                    or not isinstance(call.args[0], ast.Constant)
                    or not isinstance(call.args[0].value, int)
                ):
                    raise self.error(call, "seed() takes one integer: seed(0)")
                self.graph.seed = call.args[0].value
                return
            raise self.error(
                stmt,
                "a call whose result is not assigned does nothing",
                hint="assign it: `h = op(...)`; or use output(...)/minimize(...)",
            )
        if not isinstance(stmt, ast.Assign):
            raise self.error(
                stmt,
                f"{type(stmt).__name__.lower()} statements are not part of the model-file language",
                hint="write `name = op(args)`",
            )
        if len(stmt.targets) != 1:
            raise self.error(stmt, "chained assignment is not allowed; give each value one name")
        target = stmt.targets[0]
        names = target.elts if isinstance(target, ast.Tuple) else [target]
        for t in names:
            if not isinstance(t, ast.Name):
                raise self.error(t, "the left side must be a name (or names: a, b = op(...))")
        value = stmt.value
        head = names[0].id
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id in ("input", "constant")
        ):
            if len(names) != 1:
                raise self.error(stmt, f"{value.func.id}() defines one value")
            self.define(head, names[0])
            if value.func.id == "input":
                self.input_decl(head, value, comment)
            else:
                self.constant_decl(head, value, comment)
            return
        if not isinstance(value, (ast.Call, ast.BinOp, ast.UnaryOp)):
            raise self.error(
                value,
                "the right side must be an op call, e.g. relu(x)",
                hint="to alias a value, use identity(x)",
            )
        for t in names:
            self.define(t.id, t)
        start = len(self.pending)
        self.expr(value, [t.id for t in names], [])
        # the comment belongs above the statement: its first (innermost) node
        self.pending[start].comment = list(comment)

    def input_decl(self, name: str, call: ast.Call, comment: list[str]) -> None:
        args = list(call.args)
        kw = {k.arg: k.value for k in call.keywords}
        dtype_node = kw.pop("dtype", None) or (
            args.pop(0) if args and not isinstance(args[0], (ast.List, ast.Tuple)) else None
        )
        shape_node = kw.pop("shape", None) or (args.pop(0) if args else None)
        if args or kw:
            raise self.error(call, "input() takes a dtype and a shape: input(float32, [N, 784])")
        dtype = "float32"
        if dtype_node is not None:
            dtype = _name_or_str(dtype_node)
            if dtype not in DTYPES:
                near = closest(str(dtype), DTYPES)
                raise self.error(
                    dtype_node,
                    f"unknown dtype '{dtype}'",
                    hint=f"did you mean '{near}'?" if near else "use one of: " + ", ".join(DTYPES),
                )
        if not isinstance(shape_node, (ast.List, ast.Tuple)):
            raise self.error(
                shape_node or call,
                "input() needs a shape list, e.g. [N, 784]",
                hint="named dims like N (batch) or T (time) stay symbolic",
            )
        shape = []
        for d in shape_node.elts:
            if isinstance(d, ast.Constant) and isinstance(d.value, int) and d.value > 0:
                shape.append(d.value)
            elif isinstance(d, ast.Name):
                shape.append(d.id)
            else:
                raise self.error(d, "a dim must be a positive integer or a name such as N")
        t = TensorType(dtype, tuple(shape))
        self.graph.inputs[name] = t
        self.graph.input_locs[name] = self.loc(call)
        if comment:
            self.graph.comments[name] = comment

    def constant_decl(self, name: str, call: ast.Call, comment: list[str]) -> None:
        kw = {k.arg: k.value for k in call.keywords}
        if len(call.args) != 1 or set(kw) - {"dtype"}:
            raise self.error(
                call,
                "constant() takes a value and an optional dtype: "
                "constant(0.5) or constant([1, 2], dtype=int64)",
            )
        value = self.literal(call.args[0])
        dtype = _name_or_str(kw["dtype"]) if "dtype" in kw else None
        if dtype is not None and dtype not in DTYPES:
            raise self.error(kw["dtype"], f"unknown dtype '{dtype}'")
        arr = np.asarray(value, dtype=dtype or None)
        if dtype is None and arr.dtype.kind == "f":
            arr = arr.astype("float32")
        elif dtype is None and arr.dtype.kind in "iu":
            arr = arr.astype("int64")
        self.graph.constants[name] = arr
        if comment:
            self.graph.comments[name] = comment

    def literal(self, n: ast.AST) -> Any:
        if (isinstance(n, ast.Constant) and isinstance(n.value, (int, float, str, bool))) or (
            isinstance(n, ast.Constant) and n.value is None
        ):
            return n.value
        if (
            isinstance(n, ast.UnaryOp)
            and isinstance(n.op, (ast.USub, ast.UAdd))
            and isinstance(n.operand, ast.Constant)
            and isinstance(n.operand.value, (int, float))
        ):
            return -n.operand.value if isinstance(n.op, ast.USub) else n.operand.value
        if isinstance(n, (ast.List, ast.Tuple)):
            return [self.literal(e) for e in n.elts]
        if isinstance(n, ast.Name) and n.id in DTYPES:
            return n.id
        raise self.error(n, "expected a literal (number, string, True/False or a list of them)")

    def arg(self, n: ast.AST, owner: str) -> tuple[str, Any, ast.AST]:
        """('ref', value name) for tensors — names and nested calls — else ('lit', value)."""
        if isinstance(n, ast.Name) and n.id not in DTYPES and n.id not in ("True", "False"):
            self.refs.append((n.id, self.loc(n)))
            return ("ref", n.id, n)
        if isinstance(n, (ast.Call, ast.BinOp)) or (
            isinstance(n, ast.UnaryOp) and not isinstance(n.operand, ast.Constant)
        ):
            op = _op_name(n)
            name = self.fresh(f"{owner}_{op}")
            self.expr(n, [name], [])
            return ("ref", name, n)
        return ("lit", self.literal(n), n)

    def expr(self, n: ast.AST, outputs: list[str], comment: list[str]) -> None:
        name = outputs[0]
        if isinstance(n, ast.BinOp):
            op = BINOPS.get(type(n.op))
            if op is None:
                raise self.error(
                    n,
                    f"the operator {type(n.op).__name__} is not supported",
                    hint="use + - * / @ or an op call",
                )
            args = [self.operand(n.left, name), self.operand(n.right, name)]
            self.pending.append(_Pending(name, op, args, {}, self.loc(n), outputs, comment))
            return
        if isinstance(n, ast.UnaryOp):
            if not isinstance(n.op, ast.USub):
                raise self.error(n, "only unary minus is supported")
            self.pending.append(
                _Pending(
                    name, "neg", [self.operand(n.operand, name)], {}, self.loc(n), outputs, comment
                )
            )
            return
        if not isinstance(n, ast.Call) or not isinstance(n.func, ast.Name):
            raise self.error(n, "expected an op call such as relu(x)")
        opname = n.func.id
        if opname in DIRECTIVES:
            raise self.error(
                n,
                f"{opname}() cannot be nested inside an expression",
                hint=f"write it as its own statement: name = {opname}(...)",
            )
        get_op(opname, self.loc(n.func))
        for a in n.args:
            if isinstance(a, ast.Starred):
                raise self.error(a, "*args are not part of the model-file language")
        args = [self.arg(a, name) for a in n.args]
        kwargs = {}
        for k in n.keywords:
            if k.arg is None:
                raise self.error(k, "**kwargs are not part of the model-file language")
            kwargs[k.arg] = self.arg(k.value, name)
        self.pending.append(_Pending(name, opname, args, kwargs, self.loc(n), outputs, comment))

    def operand(self, n: ast.AST, owner: str) -> tuple[str, Any, ast.AST]:
        kind, value, node = self.arg(n, owner)
        if kind == "lit":
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise self.error(n, "operators take tensors or numbers")
            cname = self.fresh(f"{owner}_c")
            self.defined[cname] = self.loc(n)
            self.graph.constants[cname] = np.asarray(value, dtype="float32")
            return ("ref", cname, n)
        return (kind, value, node)

    # ---------------------------------------------------------------- build
    def build(self) -> Graph:
        g = self.graph
        known = set(self.defined)
        for name, loc in self.refs:
            if name not in known:
                near = closest(name, known)
                raise GraphError(
                    f"undefined name '{name}'",
                    loc=loc,
                    hint=f"did you mean '{near}'?"
                    if near
                    else "define it first: name = input(float32, [N, ...])",
                )
        for p in self.pending:
            g.add_node(self.node(p))
        for name, loc in self.outputs:
            if name not in known:
                near = closest(name, known)
                raise GraphError(
                    f"output '{name}' is not defined",
                    loc=loc,
                    hint=f"did you mean '{near}'?" if near else None,
                )
            g.outputs.append(name)
        if self.loss is not None:
            name, loc = self.loss
            if name not in known:
                near = closest(name, known)
                raise GraphError(
                    f"minimize: '{name}' is not defined",
                    loc=loc,
                    hint=f"did you mean '{near}'?" if near else None,
                )
            g.loss = name
        if self.check:
            infer(g)
        return g

    def node(self, p: _Pending) -> Node:
        op = get_op(p.op, p.loc)
        pos = [(k == "ref", v) for k, v, _ in p.args]
        kw = {key: v for key, (k, v, _) in p.kwargs.items()}
        refs_kw = {key for key, (k, _, _) in p.kwargs.items() if k == "ref"}
        inputs, attrs = bind_args(op, pos, kw, is_tensor_kw=lambda v: False, where=p.loc)
        for key in attrs:
            if key in refs_kw:
                raise GraphError(
                    f"{op.name}() attribute '{key}' must be a literal, not a tensor",
                    loc=self._arg_loc(p, key),
                    hint=op.signature(),
                )
        spec = dict(op.attrs)
        for key, value in attrs.items():
            if key in spec:
                attrs[key] = _coerce(op.name, key, spec[key], value, self._arg_loc(p, key))
        attrs = op.check_attrs(attrs, where=p.loc)
        n_out = op.num_outputs(attrs)
        if len(p.outputs) != n_out:
            raise GraphError(
                f"{op.name}() gives {n_out} output(s) but {len(p.outputs)} name(s) are assigned",
                loc=p.loc,
            )
        params = [f"{p.name}.{s.name}" for s in op.active_params(attrs)]
        return Node(
            p.name, p.op, list(inputs) + params, list(p.outputs), attrs, p.loc, list(p.comment)
        )

    def _arg_loc(self, p: _Pending, key: str) -> SourceLoc:
        if key in p.kwargs:
            return self.loc(p.kwargs[key][2])
        op = REGISTRY[p.op]
        names = list(op.attrs)
        lits = [a for a in p.args if a[0] == "lit"]
        if key in names and names.index(key) < len(lits):
            return self.loc(lits[names.index(key)][2])
        return p.loc


def _op_name(n: ast.AST) -> str:
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
        return n.func.id
    if isinstance(n, ast.BinOp):
        return BINOPS.get(type(n.op), "op")
    return "neg"


def _name_or_str(n: ast.AST) -> str:
    if isinstance(n, ast.Name):
        return n.id
    if isinstance(n, ast.Constant) and isinstance(n.value, str):
        return n.value
    return repr(ast.dump(n))


def _stem(file: str | None) -> str:
    if not file:
        return "model"
    import os

    return os.path.splitext(os.path.basename(file))[0] or "model"


def _comments(text: str) -> dict[int, str]:
    """Comment text by line number (`# ` stripped), full-line comments only."""
    out: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                line = tok.start[0]
                before = text.splitlines()[line - 1][: tok.start[1]]
                body = tok.string[1:]
                body = body[1:] if body.startswith(" ") else body
                out[line] = body if not before.strip() else "\x00" + body
    except (tokenize.TokenError, IndentationError):
        pass
    return out


def _attach_comments(
    comments: dict[int, str], stmt_lines: list[int], first: int
) -> dict[Any, list[str]]:
    """Group comments: a header block, blocks above statements, inline ones, a footer."""
    out: dict[Any, list[str]] = {}
    starts = sorted(stmt_lines)
    for line in sorted(comments):
        text = comments[line]
        if text.startswith("\x00"):  # inline comment: belongs to the statement on its line
            owner = max((s for s in starts if s <= line), default=None)
            out.setdefault(owner if owner is not None else "header", []).append(text[1:])
            continue
        if line < first:
            out.setdefault("header", []).append(text)
            continue
        nxt = min((s for s in starts if s > line), default=None)
        out.setdefault(nxt if nxt is not None else "footer", []).append(text)
    # the header is the first comment block; a block touching the first statement is its own
    if "header" in out and first < 10**9:
        header = sorted(k for k, v in comments.items() if k < first and not v.startswith("\x00"))
        if header and header[-1] == first - 1:
            block = []
            k = first - 1
            while k in comments and not comments[k].startswith("\x00"):
                block.insert(0, comments[k])
                k -= 1
            if len(block) < len(out["header"]):
                out["header"] = out["header"][: len(out["header"]) - len(block)]
                out[first] = block + out.get(first, [])
    return out


def parse_text(text: str, file: str | None = None, *, check: bool = True) -> Graph:
    """Parse and type-check model-file text; raises GraphError with file:line:col.

    check=False skips type inference (the editor opens a file whose shapes do not
    check and shows the error on its node).
    """
    p = _Parser(text, file)
    p.check = check
    return p.parse()


def parse_file(path: str) -> Graph:
    """Parse and type-check a .gc model file."""
    return parse_text(read_text(path), str(path))
