"""Editor responsiveness: layout and redraw time for 100/300/1,000-node graphs.

Measured inside the running app (Textual's headless driver, 120x40): one
edit is the document edit with re-inference, the scene rebuild, the layout
(Graphviz dot, or the built-in fallback), the edge index, and painting every
visible row of the canvas. Goal: under 100 ms per edit at 300 nodes.

    .venv/bin/python benchmarks/bench_tui.py [--sizes 100 300 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import platform
import statistics
import time

from graphc import parse
from graphc.tui.app import GraphApp
from graphc.tui.document import Document
from graphc.tui.layout import dot_available


def residual_mlp(n_nodes: int, width: int = 64) -> str:
    """A stack of residual blocks (linear, relu, add): three nodes per block."""
    lines = [f"x = input(float32, [N, {width}])"]
    prev = "x"
    for i in range(n_nodes // 3):
        lines += [
            f"a{i} = linear({prev}, {width})",
            f"r{i} = relu(a{i})",
            f"h{i} = add({prev}, r{i})",
        ]
        prev = f"h{i}"
    lines.append(f"output({prev})")
    return "\n".join(lines) + "\n"


async def settle(app, pilot) -> None:
    """Wait until no background layout is running (a newer one cancels an older one)."""
    from textual.worker import WorkerCancelled

    while any(w.is_running for w in app.workers):
        with contextlib.suppress(WorkerCancelled):
            await app.workers.wait_for_complete()
    await pilot.pause()


async def measure(n: int, engine: str, repeat: int) -> dict:
    g = parse(residual_mlp(n))
    app = GraphApp(document=Document(g), engine=engine, autosave_s=0, watch_s=0)
    out: dict = {"nodes": len(g.nodes), "engine": engine}
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        canvas = app.canvas
        height = canvas.size.height

        def paint() -> float:
            t = time.perf_counter()
            canvas._rows.clear()
            for y in range(height):
                canvas.render_line(y)
            return time.perf_counter() - t

        # A cold layout, as when a file is opened: the first picture, and the exact one.
        canvas.lay, canvas._layout_key = None, None
        t = time.perf_counter()
        app.refresh_view()
        out["first_picture_ms"] = 1000 * (time.perf_counter() - t)
        await settle(app, pilot)
        out["first_layout_ms"] = 1000 * (canvas.laid_out_at - t)
        edit, relayout, draw, total, landed = [], [], [], [], []
        mid = f"a{n // 6}"
        for k in range(repeat):
            t0 = time.perf_counter()
            # A rename changes a box's size, so it always costs a full layout.
            new = f"layer_{k}"
            app.doc.rename(mid, new)
            mid = new
            t1 = time.perf_counter()
            app.refresh_view()
            t2 = time.perf_counter()
            canvas.select(mid)
            d = paint()
            edit.append(t1 - t0)
            relayout.append(t2 - t1)
            draw.append(d)
            total.append(time.perf_counter() - t0)
            await settle(app, pilot)  # the exact layout, when it runs in a thread
            landed.append(canvas.laid_out_at - t0)
        # An attribute edit that keeps every box's size reuses the layout.
        t0 = time.perf_counter()
        app.doc.set_attrs(mid, {"units": 64, "bias": True})
        app.refresh_view()
        paint()
        out["attr_edit_cached_ms"] = 1000 * (time.perf_counter() - t0)
        await pilot.pause()
    ms = lambda xs: 1000 * statistics.median(xs)
    out.update(
        edit_infer_ms=ms(edit),
        scene_layout_ms=ms(relayout),
        paint_ms=ms(draw),
        total_edit_ms=ms(total),
        exact_layout_ms=ms(landed),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    engines = (["dot"] if dot_available() else []) + ["simple"]
    print(
        f"# graphc edit benchmark ({platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()})"
    )
    head = (
        "| nodes | layout | open: first picture ms | open: exact layout ms | edit+infer ms "
        "| scene+layout ms | paint ms "
        "| total per edit ms | exact layout on screen ms | attr edit (layout cached) ms |"
    )
    print(head)
    print("|" + "---|" * 10)
    for n in args.sizes:
        for engine in engines:
            r = asyncio.run(measure(n, engine, args.repeat))
            print(
                f"| {r['nodes']} | {r['engine']} | {r['first_picture_ms']:.0f} | "
                f"{r['first_layout_ms']:.0f} | "
                f"{r['edit_infer_ms']:.1f} | {r['scene_layout_ms']:.0f} | {r['paint_ms']:.1f} | "
                f"{r['total_edit_ms']:.0f} | {r['exact_layout_ms']:.0f} | "
                f"{r['attr_edit_cached_ms']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
