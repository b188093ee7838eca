"""Symbolic shapes: a dim is an int or a name such as 'N' (batch) or 'T' (time).

Arithmetic on dims stays exact when every operand is an int and turns into a
readable expression string otherwise, so shape rules can be written once for
both cases.
"""

from __future__ import annotations

from collections.abc import Sequence

Dim = int | str
Shape = tuple[Dim, ...]

DTYPES = ("float32", "float64", "float16", "int64", "int32", "bool")
FLOAT_DTYPES = ("float32", "float64", "float16")


def is_static(shape: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in shape)


def _wrap(d: Dim) -> str:
    s = str(d)
    return s if isinstance(d, int) or s.isidentifier() else f"({s})"


def dim_mul(*dims: Dim) -> Dim:
    """The product of dims; symbolic ones as 'k*A*B' with every integer factor in k."""
    k, syms = 1, []
    for d in dims:
        dk, ds = dim_factors(d)
        k, syms = k * dk, syms + ds
    if not syms or k == 0:
        return k
    if k == 1 and len(syms) == 1:
        return syms[0]  # unwrapped, so the same size keeps the same spelling
    parts = ([str(k)] if k != 1 else []) + [_wrap(s) for s in syms]
    return "*".join(parts)


def _top_level(d: str) -> list[tuple[int, str]]:
    """(index, char) of d's operator characters outside parentheses."""
    out, depth = [], 0
    for i, ch in enumerate(d):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and ch in "*/+-":
            out.append((i, ch))
    return out


def _unwrap(d: str) -> str:
    """d without parentheses that enclose all of it ('(N-1)' -> 'N-1'; '(T+1)//2' stays)."""
    while d.startswith("(") and d.endswith(")"):
        depth = 0
        for i, ch in enumerate(d):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(d) - 1:
                return d  # the first parenthesis closes before the end
        d = d[1:-1]
    return d


def dim_factors(d: Dim) -> tuple[int, list[str]]:
    """A dim as (its integer factor, its symbolic factors): '4*N' -> (4, ['N']).

    Only a product at the top level is split: a sum or a floor division
    ('N+1', '(4*T)//2') is one symbolic factor."""
    if isinstance(d, int):
        return d, []
    d = _unwrap(d)
    ops = _top_level(d)
    if not ops or any(ch != "*" for _i, ch in ops):
        return 1, [d]
    k, syms, start = 1, [], 0
    for i in [i for i, _ch in ops] + [len(d)]:
        part = d[start:i]
        start = i + 1
        if part.isdigit():
            k *= int(part)
        else:
            pk, ps = dim_factors(part)
            k, syms = k * pk, syms + ps
    return k, syms


def dim_add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    if isinstance(b, int) and b < 0:
        return f"{_wrap(a)}-{-b}"
    return f"{_wrap(a)}+{_wrap(b)}"


def dim_div(a: Dim, b: int) -> Dim:
    if isinstance(a, int):
        return a // b
    return a if b == 1 else f"{_wrap(a)}//{b}"


def conv_out(
    size: Dim, kernel: int, stride: int, pad_total: int, dilation: int, ceil: bool = False
) -> Dim:
    """Output length of a convolution or pooling window sweep."""
    eff = dilation * (kernel - 1) + 1
    if isinstance(size, int):
        num = size + pad_total - eff
        return (-(-num // stride) if ceil else num // stride) + 1
    inner = dim_add(size, pad_total - eff)
    return dim_add(dim_div(inner, stride) if stride != 1 else inner, 1)


def numel(shape: Sequence[Dim]) -> Dim:
    return dim_mul(*shape) if shape else 1


def broadcast(a: Sequence[Dim], b: Sequence[Dim]) -> Shape | None:
    """NumPy broadcasting over symbolic dims; None when the shapes do not broadcast."""
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + tuple(a)
    b = (1,) * (n - len(b)) + tuple(b)
    out: list[Dim] = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


def fmt_shape(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def normalize_axis(axis: int, rank: int) -> int | None:
    a = axis + rank if axis < 0 else axis
    return a if 0 <= a < rank else None


def concrete(
    shape: Sequence[Dim], sizes: dict[str, int] | None = None, default: int = 2
) -> tuple[int, ...]:
    """Replace symbolic dims by numbers (for random test inputs and estimates)."""
    sizes = {} if sizes is None else sizes  # not `or`: an empty defaultdict still has defaults
    out = []
    for d in shape:
        if isinstance(d, int):
            out.append(d)
        elif d in sizes:
            out.append(sizes[d])
        else:
            value = eval_dim(d, sizes, default)
            out.append(default if value is None else value)
    return tuple(out)


def eval_dim(expr: str, sizes: dict[str, int], default: int | None = None) -> int | None:
    """Evaluate a dim expression such as '(T+2)//2' without executing code; names not
    in `sizes` count as `default` (None: the expression has no value)."""
    import ast

    def ev(n: ast.AST) -> int:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        if isinstance(n, ast.Name):
            if n.id in sizes:
                return sizes[n.id]
            if default is None:
                raise KeyError(n.id)
            return default
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):  # conv_out's "T+-1"
            return -ev(n.operand)
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            ops = {ast.Add: a + b, ast.Sub: a - b, ast.Mult: a * b}
            if isinstance(n.op, ast.FloorDiv):
                return a // b
            return ops[type(n.op)]
        raise KeyError(expr)

    try:
        return ev(ast.parse(expr, mode="eval").body)
    except (KeyError, SyntaxError, ZeroDivisionError):
        return None
