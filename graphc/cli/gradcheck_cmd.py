"""graphc gradcheck FILE: symbolic gradients vs central finite differences (float64)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "gradcheck",
        help="check symbolic gradients against finite differences",
        description="Compare every parameter's symbolic gradient with central finite "
        "differences in float64, both run in ONNX Runtime, on random inputs "
        "(or --input arrays). Prints the worst relative error per parameter.",
    )
    p.add_argument("file", help="a .gc model file with minimize(loss)")
    p.add_argument(
        "--input",
        "-i",
        action="append",
        metavar="NAME=FILE",
        help="an input array (default: random)",
    )
    p.add_argument(
        "--wrt",
        action="append",
        metavar="NAME",
        help="check these values instead of every parameter (repeatable)",
    )
    p.add_argument("--batch", type=int, default=3, help="batch size of random inputs")
    p.add_argument(
        "--coords", type=int, default=20, help="coordinates sampled per parameter (default 20)"
    )
    p.add_argument("--tol", type=float, default=1e-6, help="relative error bound (default 1e-6)")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args) -> int:
    from graphc.cli.common import load_graph, parse_inputs
    from graphc.gradcheck import gradcheck

    g = load_graph(args.file)
    feeds = parse_inputs(args.input) or None
    results = gradcheck(
        g, feeds, wrt=args.wrt, batch=args.batch, coords=args.coords, seed=args.seed
    )
    width = max(len(r.target) for r in results) if results else 10
    print(f"{'parameter':<{width}}  {'shape':<16} {'checked':>7}  {'rel. error':>10}  result")
    bad = 0
    for r in results:
        ok = r.ok(args.tol)
        bad += not ok
        print(
            f"{r.target:<{width}}  {list(r.shape)!s:<16} {r.checked:>7}  "
            f"{r.rel_error:>10.2e}  {'ok' if ok else 'FAIL'}"
        )
    worst = max((r.rel_error for r in results), default=0.0)
    if any(r.backend == "numpy" for r in results):
        print(
            "note: ONNX Runtime has no float64 CPU kernel for an op in this model (e.g. Conv, "
            "AveragePool, Softplus); "
            "both sides were evaluated with graphc's NumPy interpreter"
        )
    print(
        f"worst relative error {worst:.2e} (bound {args.tol:g}); "
        f"{len(results) - bad}/{len(results)} parameters pass"
    )
    return 1 if bad else 0
