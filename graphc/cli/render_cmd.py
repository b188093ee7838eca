"""graphc render FILE -o OUT.svg|png|pdf|dot: Graphviz pictures of a model's graphs."""

from __future__ import annotations

import argparse


def add_parser(sub):
    p = sub.add_parser(
        "render",
        help="draw the forward graph, backward graph or training step with Graphviz",
        description="Draw a .gc model as a computation graph: ops as boxes with their key "
        "attributes, inputs and parameters by shape and colour, edges labelled "
        "with tensor shapes, layers and residual blocks in clusters. --backward "
        "adds the gradient nodes (red) beside the forward nodes they belong to, "
        "with the activations they read as dashed edges; --train draws the whole "
        "training step with its optimizer updates. Without Graphviz installed "
        "the .dot file is written instead (exit status 2).",
    )
    p.add_argument("file", help="a .gc model file")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="picture to write: .svg, .png, .pdf or .dot (DOT text)",
    )
    p.add_argument(
        "--format",
        choices=("svg", "png", "pdf", "dot"),
        default=None,
        help="picture format (default: from the output's suffix)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--backward", action="store_true", help="forward + backward graph (gradients of the loss)"
    )
    mode.add_argument(
        "--train", action="store_true", help="the whole training step: gradients, optimizer updates"
    )
    p.add_argument(
        "--optimized",
        action="store_true",
        help="the same as -O2: draw the graph after the optimizer (fused nodes show what "
        "they fused)",
    )
    p.add_argument(
        "--collapse",
        action="store_true",
        help="fold each layer, composite and residual block into one box",
    )
    p.add_argument(
        "--values",
        action="store_true",
        help="run the graph and write each value (and its gradient) on the edges",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="with --values: an input's value: a number, NAME=FILE.npy or .npz "
        "(repeatable; other inputs are random)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=4,
        help="with --values: size of symbolic dims such as N (default 4)",
    )
    p.add_argument("--seed", type=int, default=0, help="with --values: random seed (default 0)")
    p.add_argument(
        "--memory",
        action="store_true",
        help="draw the planned memory timeline (live bytes, peak) beside the graph",
    )
    p.add_argument(
        "--memory-plot",
        metavar="FILE",
        default=None,
        help="also write the memory timeline alone as FILE (.svg, .png or .pdf)",
    )
    p.add_argument(
        "--direction",
        choices=("TB", "LR"),
        default="TB",
        help="top-to-bottom (default) or left-to-right layout",
    )
    p.add_argument("--no-legend", dest="legend", action="store_false", help="leave out the legend")
    p.add_argument(
        "--no-shapes",
        dest="shapes",
        action="store_false",
        help="leave the tensor shapes off the edges",
    )
    p.add_argument(
        "--constants",
        action="store_true",
        help="draw scalar constants as boxes (default: folded into their reader)",
    )
    try:
        from graphc.train.cli_args import add_train_args
    except ImportError:
        add_train_args = None
    if add_train_args is not None:
        add_train_args(p)
    from graphc.passes import add_opt_args

    add_opt_args(p, default=0)
    return p


def _optimizer(args: argparse.Namespace):
    """graph -> the graph after the -O level's passes (fused nodes noted), or None at -O0."""
    from graphc.passes import optimize_from_args
    from graphc.render_fusion import note_fusions

    if args.optimized:
        args.opt_level = 2
    if args.opt_level == 0 and args.memory_budget is None:
        return None

    def run(graph):
        out = optimize_from_args(graph, args)
        note_fusions(graph, out)
        return out

    return run


def build_graph(args: argparse.Namespace):
    """The graph the command draws, its mode, and extra feeds for --values."""
    from graphc.cli.common import load_graph
    from graphc.errors import GraphError
    from graphc.render import backward_graph

    g = load_graph(args.file)
    opt = _optimizer(args)
    extra = {}
    if args.train:
        try:
            from graphc.train.cli_args import step_from_args
        except ImportError:
            raise GraphError("--train needs the training-step builder (graphc.train)") from None
        ts = step_from_args(g, args, opt)
        import numpy as np

        from graphc.train.step import LR, STEP

        extra = {LR: np.asarray(ts.config.learning_rate()), STEP: np.asarray(0)}
        return ts.graph, "train", extra
    try:  # --weights (values to show) and --freeze (dimmed, not differentiated)
        from graphc.train.cli_args import prepare_graph
    except ImportError:
        prepare_graph = None
    if prepare_graph is not None:
        prepare_graph(g, args)
    if args.backward:
        bg = backward_graph(g)
        return (opt(bg) if opt else bg), "backward", extra
    return (opt(g) if opt else g), "forward", extra


def _memory_points(graph) -> list[tuple[int, int]]:
    """(step, live bytes) from the memory planner."""
    from graphc.errors import GraphError
    from graphc.passes import plan_memory

    plan = plan_memory(graph)
    timeline = getattr(plan, "timeline", None)
    if callable(timeline):
        timeline = timeline()
    if timeline is None:
        raise GraphError("the memory planner gave no timeline for this graph")
    points = []
    for i, item in enumerate(timeline):
        if isinstance(item, (tuple, list)):
            points.append((int(item[0]), int(item[1])))
        else:
            points.append((i, int(getattr(item, "live_bytes", item))))
    return points


def run(args) -> int:
    from pathlib import Path

    from graphc.cli.common import parse_inputs
    from graphc.feeds import label_ranges
    from graphc.fileio import atomic_write_text
    from graphc.interp import evaluate
    from graphc.render import format_of, render_file, run_dot, to_dot
    from graphc.render_memory import timeline_dot, timeline_svg
    from graphc.render_values import make_feeds, value_gradients

    fmt = format_of(args.output, args.format)
    graph, mode, extra = build_graph(args)
    values = grads = None
    if args.values:
        given = {**extra, **parse_inputs(args.input)}
        feeds = make_feeds(
            graph, given, seed=args.seed, batch=args.batch, int_highs=label_ranges(graph)
        )
        values = evaluate(graph, feeds)
        if mode == "forward":
            grads = value_gradients(graph, feeds, values)
    points = _memory_points(graph) if (args.memory or args.memory_plot) else None
    text = to_dot(
        graph,
        mode=mode,
        collapse=args.collapse,
        direction=args.direction,
        legend=args.legend,
        shapes=args.shapes,
        show_constants=args.constants,
        values=values,
        grads=grads,
        memory=points if args.memory else None,
    )
    if args.memory_plot:
        plot = Path(args.memory_plot)
        pfmt = format_of(plot)
        if pfmt == "svg":
            atomic_write_text(plot, timeline_svg(points))
        elif pfmt == "dot":
            atomic_write_text(plot, timeline_dot(points))
        else:
            from graphc.fileio import atomic_write_bytes

            atomic_write_bytes(plot, run_dot(timeline_dot(points), pfmt))
        print(f"wrote {plot}")
    path = render_file(text, args.output, fmt)
    print(
        f"wrote {path} ({mode} graph, {len(graph.nodes)} nodes"
        + (", folded" if args.collapse else "")
        + ")"
    )
    return 0
