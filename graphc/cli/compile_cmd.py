"""graphc compile FILE -o OUT.onnx.

Writes the inference model, forward+backward (--grad) or a training step.
"""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "compile",
        help="compile a model file to ONNX",
        description="Compile a .gc model to ONNX. By default the inference model (parameters as "
        "initializers). --grad exports forward + backward: inputs are the model "
        "inputs plus every parameter (initializers kept as defaults), outputs are "
        "the loss and one gradient per parameter named <param>.grad. --train "
        "exports one whole training step.",
    )
    p.add_argument("file", help="a .gc model file")
    p.add_argument("-o", "--output", required=True, help="where to write the .onnx model")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--grad", action="store_true", help="export forward + backward")
    mode.add_argument("--train", action="store_true", help="export one training step")
    p.add_argument(
        "--wrt",
        action="append",
        metavar="NAME",
        help="with --grad: differentiate with respect to these values (repeatable; "
        "default: every trainable parameter); name an input for saliency",
    )
    _optional_args(p)
    return p


def _optional_args(p) -> None:
    try:
        from graphc.train import add_train_args
    except ImportError:
        add_train_args = None
    if add_train_args is not None:
        add_train_args(p)
    try:
        from graphc.passes import add_opt_args
    except ImportError:
        add_opt_args = None
    if add_opt_args is not None:
        add_opt_args(p)


def run(args) -> int:
    from graphc.autodiff import grad
    from graphc.cli.common import load_graph
    from graphc.errors import GraphError
    from graphc.export import export, save

    g = load_graph(args.file)
    opt = _optimizer(args)
    if args.train:
        try:
            from graphc.train import build_step_from_args
        except ImportError:
            raise GraphError("training-step export is not available in this build") from None
        model = build_step_from_args(g, args, optimize=opt)
        what = "training step"
    elif args.grad:
        bg = grad(g, wrt=args.wrt)
        if opt:
            bg = opt(bg)
        outputs = [bg.loss] + list(bg.meta["grads"].values())
        model = export(
            bg,
            outputs=outputs,
            params_as_inputs=True,
            keep_inputs=True,
            doc="graphc forward + backward",
        )
        what = "forward + backward"
    else:
        if not g.outputs:
            raise GraphError(
                f"{args.file} declares no outputs",
                hint="add `output(name)` for the values the model returns",
            )
        if opt:
            g = opt(g)
        model = export(g, doc="graphc inference model")
        what = "inference model"
    save(model, args.output)
    ins = ", ".join(i.name for i in model.graph.input)
    outs = ", ".join(o.name for o in model.graph.output)
    print(f"wrote {args.output} ({what}; {len(model.graph.node)} ONNX nodes)")
    print(f"  inputs:  {ins}")
    print(f"  outputs: {outs}")
    for line in _flat_layout_lines(model):
        print(line)
    return 0


def _flat_layout_lines(model) -> list[str]:
    """What each flat buffer of an -O2 training step holds (docs/training.md, "Flat state")."""
    import json

    meta = {e.key: e.value for e in model.metadata_props}
    layout = json.loads(meta.get("graphc.train_step", "{}")).get("flat_state") or []
    lines = []
    for e in layout:
        if e["buffer"].startswith("opt."):
            continue  # slot buffers follow their parameter buffer's order
        parts = [f"{name} {list(shape)}" for name, shape in e["members"]]
        lines.append(f"  {e['buffer']} holds, in order: " + ", ".join(parts))
    if lines:
        lines.append(
            "  (slot buffers opt.<slot>.<buffer> hold the same members' slots; the layout is "
            "in the model's metadata 'graphc.train_step')"
        )
    return lines


def _optimizer(args):
    try:
        from graphc.passes import optimize_from_args
    except ImportError:
        return None
    if getattr(args, "opt_level", None) is None:
        return None
    return lambda graph: optimize_from_args(graph, args)
