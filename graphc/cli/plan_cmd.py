"""graphc plan FILE [--train]: the memory plan (tensor, size, first/last use, buffer) and peak."""

from __future__ import annotations

import re


def add_parser(sub):
    p = sub.add_parser(
        "plan",
        help="print the memory plan of a model or of its training step",
        description="Plan the memory of a model (or, with --train, of its whole training "
        "step): the schedule, each tensor's size, first and last use and its place "
        "in one shared arena, then the planned peak, the liveness lower bound and "
        "a naive one-buffer-per-tensor plan. Symbolic dims take --dim sizes "
        "(default 32).",
    )
    p.add_argument("file", help="a .gc model file")
    p.add_argument(
        "--train", action="store_true", help="plan the training step (forward, backward and update)"
    )
    p.add_argument("--grad", action="store_true", help="plan forward + backward only")
    p.add_argument(
        "--dim",
        action="append",
        default=[],
        metavar="NAME=SIZE",
        help="size of a symbolic dim, e.g. --dim N=128 (repeatable)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=60,
        metavar="K",
        help="show the first K tensors of the table (0: all; default 60)",
    )
    p.add_argument(
        "--timeline",
        metavar="OUT.svg",
        help="also draw the memory timeline (live bytes per step) as SVG",
    )
    try:
        from graphc.train import add_train_args

        add_train_args(p)
    except ImportError:
        pass
    from graphc.passes import add_opt_args

    add_opt_args(p)
    return p


def parse_dims(items: list[str]) -> dict[str, int]:
    from graphc.errors import GraphError

    dims = {}
    for item in items:
        m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*=\s*([0-9]+)\s*", item)
        if not m:
            raise GraphError(f"--dim '{item}' is not NAME=SIZE", hint="e.g. --dim N=128")
        dims[m.group(1)] = int(m.group(2))
    return dims


def run(args) -> int:
    from graphc.cli.common import load_graph
    from graphc.passes import optimize_from_args, plan_memory

    g = load_graph(args.file)
    dims = parse_dims(args.dim)
    if args.train:
        from graphc.train import step_from_args

        graph = step_from_args(g, args).graph
        what = "training step"
    elif args.grad:
        from graphc.autodiff import grad

        graph = grad(g)
        what = "forward + backward"
    else:
        graph = g
        what = "inference"
    graph.meta["dim_sizes"] = dims
    graph = optimize_from_args(graph, args)
    plan = plan_memory(graph)
    dim_text = ", ".join(f"{k}={v}" for k, v in dims.items()) or "symbolic dims = 32"
    print(f"memory plan of {args.file} ({what}, -O{args.opt_level}, {dim_text})")
    print(plan.table(limit=args.limit or None))
    from graphc.passes.cost import fmt_bytes
    from graphc.passes.memory import ort_schedule

    ort = plan_memory(graph, ort_schedule(graph), offsets=False)
    print(
        f"ORT's order    {fmt_bytes(ort.peak)}  (live peak in the order ONNX Runtime runs "
        "the exported model)"
    )
    if args.timeline:
        from graphc.fileio import atomic_write_text
        from graphc.render_memory import timeline_svg

        atomic_write_text(
            args.timeline, timeline_svg(plan.timeline, title=f"live memory: {args.file}")
        )
        print(f"wrote {args.timeline}")
    return 0
