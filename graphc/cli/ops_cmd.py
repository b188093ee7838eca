"""graphc ops: list the op library (name, family, signature, what it computes)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "ops",
        help="list the ops the model-file language knows",
        description="List every op in the registry, grouped by family.",
    )
    p.add_argument("name", nargs="?", help="show one op in detail")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    return p


def run(args) -> int:
    from graphc.ops import all_ops, get_op

    if args.name:
        op = get_op(args.name)
        print(op.signature())
        print(f"  family: {op.category}")
        print(f"  {op.doc}")
        for k, a in op.attrs.items():
            kind = (
                a.kind.__name__
                if isinstance(a.kind, type)
                else "/".join(t.__name__ for t in a.kind)
            )
            default = "required" if a.required else f"default {a.default!r}"
            print(f"  {k}: {kind}, {default}{' — ' + a.doc if a.doc else ''}")
        for p in op.params:
            print(f"  parameter <node>.{p.name} (init {p.init}{', state' if p.state else ''})")
        grad = "yes" if op.differentiable else ("via decomposition" if op.decompose else "no")
        print(f"  gradient: {grad}")
        return 0
    ops = all_ops()
    by_cat: dict[str, list] = {}
    for op in ops.values():
        by_cat.setdefault(op.category, []).append(op)
    if args.markdown:
        print("| op | family | signature | what it computes |")
        print("|---|---|---|---|")
        for cat in sorted(by_cat):
            for op in by_cat[cat]:
                print(f"| `{op.name}` | {cat} | `{op.signature()}` | {op.doc} |")
        return 0
    for cat in sorted(by_cat):
        print(f"{cat}:")
        for op in by_cat[cat]:
            print(f"  {op.signature():<58} {op.doc}")
    return 0
