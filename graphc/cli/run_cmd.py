"""graphc run FILE|MODEL.onnx --input name=array.npy: execute on ONNX Runtime."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "run",
        help="run a model on ONNX Runtime (CPU or CUDA)",
        description="Run a .gc model (compiled in memory) or an .onnx file on ONNX Runtime "
        "and print its outputs. Missing inputs can be drawn at random.",
    )
    p.add_argument("model", help="a .gc model file or an .onnx model")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        metavar="NAME=FILE",
        help="an input array: NAME=FILE.npy, NAME=FILE.npz[:KEY] or NAME=NUMBER (repeatable)",
    )
    p.add_argument(
        "--random",
        action="store_true",
        help="draw inputs that were not given at random (normal floats, valid labels)",
    )
    p.add_argument("--batch", type=int, default=4, help="batch size for --random (default 4)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="execution device (cuda falls back to cpu with a notice)",
    )
    p.add_argument("-o", "--output", help="save all outputs to this .npz file")
    return p


def run(args) -> int:
    import io

    import numpy as np

    from graphc.cli.common import parse_inputs
    from graphc.errors import GraphError
    from graphc.feeds import random_feeds
    from graphc.fileio import atomic_write_bytes
    from graphc.runtime import make_session
    from graphc.runtime import run as ort_run

    feeds = parse_inputs(args.input)
    if args.model.endswith(".gc"):
        from graphc.cli.common import load_graph
        from graphc.export import export

        g = load_graph(args.model)
        if not g.outputs:
            raise GraphError(
                f"{args.model} declares no outputs",
                hint="add `output(name)` for the values the model returns",
            )
        model = export(g)
        types = {k: t.dtype for k, t in g.inputs.items()}
        if args.random:
            rand = random_feeds(g, args.batch)
            feeds = {**{k: v for k, v in rand.items() if k in _inputs_of(model)}, **feeds}
    else:
        import os

        if not os.path.exists(args.model):
            raise GraphError(f"no such file: '{args.model}'")
        model = args.model
        types = {}
    session = make_session(model, args.device)
    if not types:
        types = {i.name: _np_type(i.type) for i in session.get_inputs()}
        if args.random:
            rng = np.random.default_rng(0)
            for i in session.get_inputs():
                if i.name not in feeds:
                    shape = [d if isinstance(d, int) else args.batch for d in i.shape]
                    feeds[i.name] = (
                        rng.integers(0, 2, shape) if "int" in i.type else rng.standard_normal(shape)
                    )
    feeds = {k: np.asarray(v, dtype=types.get(k) or None) for k, v in feeds.items()}
    out = ort_run(session, feeds)
    np.set_printoptions(precision=4, suppress=True, threshold=20, edgeitems=3)
    for name, value in out.items():
        print(f"{name}: {value.dtype}{list(value.shape)}")
        print("  " + np.array2string(value, prefix="  "))
    if args.output:
        buf = io.BytesIO()
        np.savez(buf, **out)
        atomic_write_bytes(args.output, buf.getvalue())
        print(f"wrote {args.output}")
    return 0


def _inputs_of(model) -> set[str]:
    return {i.name for i in model.graph.input}


def _np_type(onnx_type: str) -> str:
    return {
        "tensor(float)": "float32",
        "tensor(double)": "float64",
        "tensor(int64)": "int64",
        "tensor(int32)": "int32",
        "tensor(bool)": "bool",
        "tensor(float16)": "float16",
    }.get(onnx_type, "float32")
