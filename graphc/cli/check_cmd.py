"""graphc check FILE: parse, infer, and print the summary table."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "check",
        help="parse and type-check a model file; print a summary table",
        description="Parse and infer shapes; print nodes, output shapes, "
        "parameter counts and FLOPs per node and in total.",
    )
    p.add_argument("file", help="a .gc model file")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="batch size used for FLOP counts (symbolic dims take this value)",
    )
    return p


def run(args) -> int:
    from graphc.cli.common import load_graph
    from graphc.summary import format_table

    g = load_graph(args.file)
    print(format_table(g, batch=args.batch))
    ins = ", ".join(f"{k}: {t}" for k, t in g.inputs.items())
    print(f"inputs: {ins}")
    if g.outputs:
        print("outputs: " + ", ".join(f"{o}: {g.types[o]}" for o in g.outputs))
    if g.loss:
        print(f"loss: {g.loss}")
    print(f"{args.file}: ok")
    return 0
