"""The memory timeline: live bytes over the schedule, with the peak marked.

The memory planner (`graphc.passes`) produces the numbers; this module only
draws them. Two drawings of the same data:

* `timeline_svg`: a line plot written as plain SVG text (no plotting library);
* `timeline_dot_node`: a bar chart as a Graphviz HTML-like table, so the
  timeline can sit next to the graph in one picture and be drawn to PNG or
  PDF by `dot` like everything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from graphc.errors import GraphError
from graphc.render_style import FONT, GRAD_INK, INK, MUTED

MAX_BARS = 120  # wider schedules are bucketed (each bar shows its bucket's maximum)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def _check(points: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    pts = [(int(s), int(b)) for s, b in points]
    if not pts:
        raise GraphError("the memory timeline is empty", hint="plan a graph with nodes first")
    return pts


def peak_of(points: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """(step, bytes) of the first maximum."""
    pts = _check(points)
    return max(pts, key=lambda p: (p[1], -p[0]))


def _nice_ticks(top: float, n: int = 4) -> list[float]:
    """Round tick values (in bytes) at 1, 2, 2.5 or 5 x 10^k of the unit `top` is shown in."""
    if top <= 0:
        return [0.0]
    unit = next((size for size in (1 << 30, 1 << 20, 1 << 10) if top >= size), 1)
    raw = top / unit / n
    mag = 10.0 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = max(1.0, next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw) * unit)
    return [i * step for i in range(int(top // step) + 1)]


def timeline_svg(
    points: Sequence[tuple[int, int]],
    *,
    title: str = "live memory",
    width: int = 640,
    height: int = 260,
) -> str:
    """A step plot of live bytes per schedule step, the peak marked in red."""
    pts = _check(points)
    left, right, top, bottom = 70, 20, 36, 40
    pw, ph = width - left - right, height - top - bottom
    s0, s1 = pts[0][0], max(pts[-1][0], pts[0][0] + 1)
    ymax = max(b for _, b in pts) or 1

    def x(s: float) -> float:
        return left + (s - s0) / (s1 - s0) * pw

    def y(b: float) -> float:
        return top + ph - b / ymax * ph

    path = [f"M{x(pts[0][0]):.1f},{y(0):.1f}"]
    for (s, b), nxt in zip(pts, pts[1:] + [(s1, pts[-1][1])]):
        path.append(f"L{x(s):.1f},{y(b):.1f} L{x(nxt[0]):.1f},{y(b):.1f}")
    line = " ".join(path[1:]).replace("L", "M", 1)
    area = " ".join(path) + f" L{x(s1):.1f},{y(0):.1f} Z"
    ps, pb = peak_of(pts)
    out = [
        (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="11">'
        ),
        f'<rect width="{width}" height="{height}" fill="white"/>',
        (
            f'<text x="{left}" y="20" font-size="13" font-weight="bold" fill="{INK}">'
            f"{escape(title)}</text>"
        ),
    ]
    for t in _nice_ticks(ymax):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#e2e8f0"/>'
        )
        out.append(
            f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end" '
            f'fill="{MUTED}">{escape(fmt_bytes(t))}</text>'
        )
    out.append(f'<path d="{area}" fill="#dbeafe" stroke="none"/>')
    out.append(f'<path d="{line}" fill="none" stroke="#2563eb" stroke-width="1.6"/>')
    out.append(
        f'<line x1="{left}" x2="{left + pw}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="{MUTED}"/>'
    )
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{y(0):.1f}" stroke="{MUTED}"/>')
    for s in sorted({s0, ps, s1}):
        out.append(
            f'<text x="{x(s):.1f}" y="{y(0) + 15:.1f}" text-anchor="middle" '
            f'fill="{MUTED}">{s}</text>'
        )
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'fill="{MUTED}">schedule step</text>'
    )
    px, py = x(ps), y(pb)
    out.append(
        f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{py:.1f}" y2="{y(0):.1f}" '
        f'stroke="{GRAD_INK}" stroke-dasharray="3,3"/>'
    )
    out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{GRAD_INK}"/>')
    # the peak is named in the title row, clear of the curve
    out.append(
        f'<text x="{width - right}" y="20" text-anchor="end" fill="{GRAD_INK}" '
        f'font-weight="bold">peak {escape(fmt_bytes(pb))} at step {ps}</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _buckets(pts: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """(first step, last step, max bytes) per bar."""
    k = max(1, -(-len(pts) // MAX_BARS))
    return [
        (chunk[0][0], chunk[-1][0], max(b for _, b in chunk))
        for chunk in (pts[i : i + k] for i in range(0, len(pts), k))
    ]


def timeline_table(
    points: Sequence[tuple[int, int]], *, title: str = "live memory", height: int = 90
) -> str:
    """The timeline as a Graphviz HTML-like table (bars bottom-aligned, peak in red)."""
    pts = _check(points)
    bars = _buckets(pts)
    ps, pb = peak_of(pts)
    ymax = max(b for *_, b in bars) or 1
    w = max(2, min(12, 480 // len(bars)))
    cells = []
    for first, last, b in bars:
        hgt = max(1, round(b / ymax * height))
        color = GRAD_INK if first <= ps <= last and b == pb else "#60a5fa"
        # a spacer above each bar: Graphviz centres cell contents vertically
        gap = (
            f'<tr><td width="{w}" height="{height - hgt}" fixedsize="true"></td></tr>'
            if hgt < height
            else ""
        )
        cells.append(
            f'<td><table border="0" cellspacing="0" cellpadding="0">{gap}'
            f'<tr><td bgcolor="{color}" width="{w}" height="{hgt}" fixedsize="true">'
            f"</td></tr></table></td>"
        )
    n = len(bars)
    return (
        '<<table border="0" cellborder="0" cellspacing="0" cellpadding="0">'
        f'<tr><td colspan="{n}" align="left"><font point-size="11"><b>{escape(title)}</b>'
        f"</font></td></tr>"
        f'<tr><td colspan="{n}" align="left"><font point-size="9" color="{GRAD_INK}">'
        f"peak {escape(fmt_bytes(pb))} at step {ps}</font></td></tr>"
        f"<tr>{''.join(cells)}</tr>"
        f'<tr><td colspan="{n}" align="center"><font point-size="8" color="{MUTED}">'
        f"schedule step {pts[0][0]} \u2192 {pts[-1][0]}</font></td></tr></table>>"
    )


def timeline_dot_node(points: Sequence[tuple[int, int]], node_id: str = "memory") -> str:
    """A DOT node statement holding the timeline table (placed beside the graph)."""
    return (
        f'  "{node_id}" [shape=box, style="rounded", color="#e2e8f0", margin="0.15,0.1", '
        f"label={timeline_table(points)}];"
    )


def timeline_dot(points: Sequence[tuple[int, int]], *, title: str = "live memory") -> str:
    """A whole DOT graph with just the timeline (for a PNG or PDF of it alone)."""
    return (
        f'digraph "memory" {{\n  graph [bgcolor="white", pad="0.2"];\n'
        f'  node [fontname="{FONT}"];\n'
        f'  "memory" [shape=plaintext, label={timeline_table(points, title=title)}];\n}}\n'
    )
