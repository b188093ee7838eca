"""Graph optimizer: named passes `Graph -> Graph` in pipelines -O0, -O1, -O2.

    from graphc.passes import optimize, plan_memory
    g2 = optimize(graphc.grad(g), level=2, print_stats=True)
    plan = plan_memory(g2)            # schedule, liveness, buffers, peak, timeline

See docs/optimizer.md for what each pass does and what it buys.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from graphc.ir import Graph
from graphc.passes import (  # noqa: F401 - imported to register the passes
    avg_pool_conv,
    batch_sum,
    conv_full_window,
    conv_weight_grad,
    cse,
    dce,
    fold,
    fold_batch_norm,
    fuse_batch_norm_grad,
    fuse_bce,
    fuse_gemm,
    fuse_optimizer,
    fuse_softmax_ce,
    hoist_scale,
    max_pool_grad,
    memory,
    projection,
    recompute,
    simplify,
    time_batch,
    unroll,
)
from graphc.passes.manager import PASSES, PIPELINES, PipelineResult, pipeline, run_passes, verify
from graphc.passes.memory import MemoryPlan, plan_memory


def optimize(
    graph: Graph,
    level: int = 1,
    *,
    print_stats: bool = False,
    dump_after: str | Sequence[str] | None = None,
    dump_dir: str = ".",
    memory_budget: int | str | None = None,
    passes: Sequence[str] | None = None,
    check: bool = True,
) -> Graph:
    """Run the -O`level` pipeline (or the named `passes`) and return the optimized graph.

    `memory_budget` (bytes, or "auto") adds recomputation: activations the
    backward pass reads are dropped and recomputed until the planned peak fits.
    The graph is verified after every pass; per-pass statistics are kept in
    `meta["pass_stats"]` and printed to stderr with `print_stats`.
    """
    names = list(passes) if passes is not None else pipeline(level)
    if memory_budget is not None:
        names.append("recompute")
    dumps = [dump_after] if isinstance(dump_after, str) else list(dump_after or ())
    result = PipelineResult()
    if memory_budget is not None:
        graph = graph.copy()
        graph.meta["memory_budget"] = memory_budget
    out = run_passes(graph, names, check=check, dump_after=dumps, dump_dir=dump_dir, result=result)
    out.meta["pass_stats"] = result.stats
    if print_stats:
        print(result.table(), file=sys.stderr)
    return out


def add_opt_args(parser, default: int = 1) -> None:
    """-O0/-O1/-O2, --print-passes, --dump-after, --memory-budget for a CLI command."""
    g = parser.add_argument_group("optimizer")
    g.add_argument(
        "-O",
        dest="opt_level",
        type=int,
        choices=sorted(PIPELINES),
        default=default,
        metavar="LEVEL",
        help="optimization level: 0 none, 1 clean-up, "
        f"2 clean-up + fusion + memory-aware order (default {default})",
    )
    g.add_argument(
        "--print-passes",
        action="store_true",
        help="print per-pass statistics (nodes, bytes, FLOPs, time) to stderr",
    )
    g.add_argument(
        "--dump-after",
        action="append",
        default=[],
        metavar="PASS",
        help="write the graph after PASS (repeatable) to --dump-dir",
    )
    g.add_argument("--dump-dir", default=".", metavar="DIR", help="where --dump-after writes")
    g.add_argument(
        "--memory-budget",
        default=None,
        metavar="BYTES|auto",
        help="recompute activations in the backward pass to fit this peak "
        "(e.g. 200MB, 1.5GiB or auto = the sqrt(n) checkpointing point)",
    )


def optimize_from_args(graph: Graph, args) -> Graph:
    """Apply the options `add_opt_args` declared."""
    from graphc.passes.recompute import parse_budget

    budget = getattr(args, "memory_budget", None)
    return optimize(
        graph,
        getattr(args, "opt_level", 1),
        print_stats=getattr(args, "print_passes", False),
        dump_after=getattr(args, "dump_after", None) or None,
        dump_dir=getattr(args, "dump_dir", "."),
        memory_budget=parse_budget(budget) if budget is not None else None,
    )


__all__ = [
    "PASSES",
    "PIPELINES",
    "MemoryPlan",
    "add_opt_args",
    "optimize",
    "optimize_from_args",
    "plan_memory",
    "verify",
]
