"""Layered (Sugiyama-style) layout of a DAG on a grid of terminal cells.

Positions come from Graphviz's `dot` (ranking, crossing reduction and
coordinate assignment are its job, not ours); edges are then routed as
right-angle polylines that turn only in the gaps between ranks, running
vertically through the places `dot` reserved for them (its virtual nodes),
so an edge never crosses a box. When `dot` is not installed a plain
longest-path layering with barycentre ordering stands in, so the editor
still works, just with more crossings.

This module knows nothing about graphc: it lays out named boxes of given
sizes joined by edges.
"""

from __future__ import annotations

import bisect
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

# Inches per cell handed to dot: a terminal cell is about twice as tall as wide.
_CX = 0.1
_CY = 0.2
# dot's crossing reduction grows fast with long edges: fine at 1,000 boxes (~0.5 s), over
# a minute at 2,300 (a folded backward graph of a 1,000-node model). Above this, "auto"
# uses the built-in layering.
DOT_MAX_BOXES = 1200
DOT_TIMEOUT_S = 30
RANK_GAP = 3  # empty rows between ranks: room for an edge to turn and an arrowhead
NODE_GAP = 3  # empty columns between neighbouring boxes


@dataclass
class Box:
    name: str
    x: int  # left column
    y: int  # top row
    w: int
    h: int

    @property
    def cx(self) -> int:
        return self.x + self.w // 2

    @property
    def bottom(self) -> int:
        return self.y + self.h - 1


@dataclass
class Route:
    src: str
    dst: str
    points: list[tuple[int, int]]  # (col, row) corners of a right-angle polyline


@dataclass
class Layout:
    boxes: dict[str, Box]
    routes: list[Route]
    width: int
    height: int
    engine: str
    rows: dict[int, list[str]] = field(default_factory=dict)  # row -> boxes covering it

    def index_rows(self) -> None:
        self.rows = {}
        for b in self.boxes.values():
            for r in range(b.y, b.y + b.h):
                self.rows.setdefault(r, []).append(b.name)


def dot_available() -> bool:
    return shutil.which("dot") is not None


def layout(
    sizes: dict[str, tuple[int, int]], edges: Sequence[tuple[str, str]], engine: str = "auto"
) -> Layout:
    """Place boxes (name -> (width, height) in cells) and route edges (src, dst).

    engine: "dot", "simple", or "auto" (dot when installed, up to DOT_MAX_BOXES boxes).
    """
    edges = [(a, b) for a, b in dict.fromkeys(edges) if a in sizes and b in sizes and a != b]
    if not sizes:
        return Layout({}, [], 0, 0, "empty")
    centres, waypoints, used = None, {}, "simple"
    big = engine == "auto" and len(sizes) > DOT_MAX_BOXES
    if engine in ("auto", "dot") and dot_available() and not big:
        try:
            centres, waypoints = _dot_positions(sizes, edges)
            used = "dot"
        except (OSError, subprocess.SubprocessError, ValueError):
            if engine == "dot":
                raise
    if centres is None:
        centres = _simple_positions(sizes, edges)
    return _finish(sizes, edges, centres, waypoints, used)


# --------------------------------------------------------------------- dot
def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dot_positions(sizes, edges):
    lines = [
        "digraph G {",
        f"rankdir=TB; nodesep={NODE_GAP * _CX:.2f}; ranksep={RANK_GAP * _CY:.2f};",
        'node [shape=box fixedsize=true label=""];',
    ]
    ids = {name: f"n{i}" for i, name in enumerate(sizes)}
    for name, (w, h) in sizes.items():
        lines.append(f"{ids[name]} [width={w * _CX:.2f} height={h * _CY:.2f}];")
    for a, b in edges:
        lines.append(f"{ids[a]} -> {ids[b]};")
    lines.append("}")
    out = subprocess.run(
        ["dot", "-Tplain"],
        input="\n".join(lines).encode(),
        capture_output=True,
        timeout=DOT_TIMEOUT_S,
        check=True,
    ).stdout.decode()
    back = {v: k for k, v in ids.items()}
    height = 0.0
    centres: dict[str, tuple[float, float]] = {}
    waypoints: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for line in out.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "graph":
            height = float(parts[3])
        elif parts[0] == "node":
            centres[back[parts[1]]] = (float(parts[2]) / _CX, (height - float(parts[3])) / _CY)
        elif parts[0] == "edge":
            n = int(parts[3])
            pts = [
                (float(parts[4 + 2 * i]) / _CX, (height - float(parts[5 + 2 * i])) / _CY)
                for i in range(n)
            ]
            # Control and on-curve points of the spline lie close to its path; enough
            # to read off the lane dot kept free at each rank it crosses.
            waypoints[(back[parts[1]], back[parts[2]])] = pts
    if len(centres) != len(sizes):
        raise ValueError("dot returned an incomplete layout")
    return centres, waypoints


# ------------------------------------------------------------------ simple
def _simple_positions(sizes, edges):
    """Longest-path layering, two barycentre sweeps, packed rows (fallback only)."""
    preds: dict[str, list[str]] = {n: [] for n in sizes}
    succs: dict[str, list[str]] = {n: [] for n in sizes}
    for a, b in edges:
        preds[b].append(a)
        succs[a].append(b)
    rank: dict[str, int] = {}
    indeg = {n: len(p) for n, p in preds.items()}
    ready = [n for n in sizes if indeg[n] == 0]
    while ready:
        n = ready.pop(0)
        rank[n] = max((rank[p] + 1 for p in preds[n]), default=0)
        for s in succs[n]:
            indeg[s] -= 1
            if indeg[s] == 0:
                ready.append(s)
    for n in sizes:  # nodes on a cycle: put them after everything else
        rank.setdefault(n, max(rank.values(), default=-1) + 1)
    layers: dict[int, list[str]] = {}
    for n in sizes:
        layers.setdefault(rank[n], []).append(n)
    order = {n: i for layer in layers.values() for i, n in enumerate(layer)}
    for _ in range(2):
        for r in sorted(layers)[1:]:
            layers[r].sort(
                key=lambda n: (
                    sum(order[p] for p in preds[n]) / len(preds[n]) if preds[n] else order[n]
                )
            )
            order.update({n: i for i, n in enumerate(layers[r])})
    centres = {}
    y = 0
    widest = max(sum(sizes[n][0] + NODE_GAP for n in layer) for layer in layers.values())
    for r in sorted(layers):
        layer = layers[r]
        h = max(sizes[n][1] for n in layer)
        total = sum(sizes[n][0] + NODE_GAP for n in layer)
        x = (widest - total) / 2
        for n in layer:
            w = sizes[n][0]
            centres[n] = (x + w / 2, y + h / 2)
            x += w + NODE_GAP
        y += h + RANK_GAP
    return centres


# ----------------------------------------------------------------- routing
def _finish(sizes, edges, centres, waypoints, engine) -> Layout:
    boxes: dict[str, Box] = {}
    for name, (w, h) in sizes.items():
        cx, cy = centres[name]
        boxes[name] = Box(name, round(cx - w / 2), round(cy - h / 2), w, h)
    # Shift so the drawing starts at (1, 0): one free column for edges on the left.
    min_x = min(b.x for b in boxes.values())
    min_y = min(b.y for b in boxes.values())
    for b in boxes.values():
        b.x += 1 - min_x
        b.y -= min_y
    dx, dy = 1 - min_x, -min_y
    bands = _bands(boxes)
    band_of = {name: i for i, members in enumerate(bands) for name in members[2]}
    # Spread a box's incoming edges over its top side, ordered by where they come from.
    incoming: dict[str, list[str]] = {}
    for a, b in edges:
        incoming.setdefault(b, []).append(a)
    port: dict[tuple[str, str], int] = {}
    for b, srcs in incoming.items():
        box = boxes[b]
        srcs.sort(key=lambda s: boxes[s].cx)
        k = len(srcs)
        for i, s in enumerate(srcs):
            port[(s, b)] = box.x + 1 + (i + 1) * (box.w - 2) // (k + 1) if k > 1 else box.cx
    routes = []
    for a, b in edges:
        sa, sb = boxes[a], boxes[b]
        ia, ib = band_of[a], band_of[b]
        samples = sorted((y + dy, x + dx) for x, y in waypoints.get((a, b), []))
        if ib > ia and not samples:  # fallback layout: one jog, in the gap above the target
            turn = _turn_row(bands, ib - 1)
            if ib - ia == 1:
                pts = [
                    (sa.cx, sa.bottom + 1),
                    (sa.cx, turn),
                    (port[(a, b)], turn),
                    (port[(a, b)], sb.y - 1),
                ]
            else:  # a long edge runs down a lane right of the drawing, clear of every box
                first = _turn_row(bands, ia)
                pts = [
                    (sa.cx, sa.bottom + 1),
                    (sa.cx, first),
                    ("lane", first),
                    ("lane", turn),
                    (port[(a, b)], turn),
                    (port[(a, b)], sb.y - 1),
                ]
        elif ib > ia:  # through the lane dot kept free at every rank the edge crosses
            ys = [p[0] for p in samples]
            xs = [sa.cx]
            for k in range(ia + 1, ib):
                mid = (bands[k][0] + bands[k][1]) / 2
                i = bisect.bisect_left(ys, mid)
                near = min(samples[max(i - 1, 0) : i + 1], key=lambda p: abs(p[0] - mid))
                xs.append(round(near[1]))
            xs.append(port[(a, b)])
            pts = [(xs[0], sa.bottom + 1)]
            for j, k in enumerate(range(ia, ib)):
                gap = bands[k + 1][0] - bands[k][1] - 1
                turn = bands[k][1] + 1 + max(gap - 1, 0) // 2
                pts += [(xs[j], turn), (xs[j + 1], turn)]
                pts.append((xs[j + 1], sb.y - 1 if k + 1 == ib else bands[k + 1][1] + 1))
        else:  # back or flat edge (only on a cycle): go round the left side
            pts = [
                (sa.cx, sa.bottom + 1),
                (0, sa.bottom + 1),
                (0, sb.y - 1),
                (port[(a, b)], sb.y - 1),
            ]
        routes.append(Route(a, b, pts if pts[2][0] == "lane" else _dedupe(pts)))
    width = max(b.x + b.w for b in boxes.values()) + 2
    width = _assign_lanes(routes, width)
    height = max(b.y + b.h for b in boxes.values()) + 1
    out = Layout(boxes, routes, width, height, engine)
    out.index_rows()
    return out


def _turn_row(bands, k: int) -> int:
    """The row in the middle of the gap below band k, where edges turn."""
    gap = bands[k + 1][0] - bands[k][1] - 1
    return bands[k][1] + 1 + max(gap - 1, 0) // 2


def _assign_lanes(routes: list[Route], width: int) -> int:
    """Give each long fallback edge a lane column right of the drawing; edges whose
    vertical spans do not overlap share one. Returns the new drawing width."""
    long_routes = [r for r in routes if any(p[0] == "lane" for p in r.points)]
    ends: list[int] = []  # per lane, the last row used
    for r in sorted(long_routes, key=lambda r: r.points[2][1]):
        top, bottom = r.points[2][1], r.points[3][1]
        lane = next((i for i, end in enumerate(ends) if end < top - 1), None)
        if lane is None:
            lane = len(ends)
            ends.append(bottom)
        ends[lane] = bottom
        x = width + 1 + 2 * lane
        r.points = _dedupe([(x if p[0] == "lane" else p[0], p[1]) for p in r.points])
    return width + 2 * len(ends) + (2 if ends else 0)


def _bands(boxes: dict[str, Box]) -> list[tuple[int, int, list[str]]]:
    """Ranks as (top row, bottom row, members), found from overlapping row spans."""
    spans = sorted(boxes.values(), key=lambda b: b.y)
    bands: list[list] = []
    for b in spans:
        if bands and b.y <= bands[-1][1]:
            bands[-1][1] = max(bands[-1][1], b.bottom)
            bands[-1][2].append(b.name)
        else:
            bands.append([b.y, b.bottom, [b.name]])
    return [tuple(x) for x in bands]


def _dedupe(pts):
    """Drop repeated points and the middle one of three on a straight line."""
    out = []
    for p in pts:
        if out and out[-1] == p:
            continue
        if len(out) >= 2 and (out[-2][0] == out[-1][0] == p[0] or out[-2][1] == out[-1][1] == p[1]):
            out[-1] = p
            continue
        out.append(p)
    return out


def patch(
    old: Layout, sizes: dict[str, tuple[int, int]], edges: Sequence[tuple[str, str]]
) -> Layout:
    """A quick stand-in for `layout(sizes, edges)` that reuses `old`'s positions.

    Used for big graphs while the exact layout runs in the background, so an
    edit shows at once: kept boxes keep their centres (with their new sizes),
    removed ones vanish, new ones go in a column on the right below their
    first producer, and edges between moved or new boxes get a plain
    three-segment route. The exact layout replaces it a moment later.
    """
    edges = [(a, b) for a, b in dict.fromkeys(edges) if a in sizes and b in sizes and a != b]
    boxes: dict[str, Box] = {}
    for name, (w, h) in sizes.items():
        ob = old.boxes.get(name)
        if ob is not None:
            boxes[name] = Box(name, max(1, ob.cx - w // 2), ob.y, w, h)
    right = max((b.x + b.w for b in boxes.values()), default=0) + NODE_GAP
    preds: dict[str, str] = {}
    for a, b in edges:
        preds.setdefault(b, a)
    for name, (w, h) in sizes.items():
        if name in boxes:
            continue
        p = boxes.get(preds.get(name, ""))
        y = p.bottom + RANK_GAP + 1 if p is not None else 0
        boxes[name] = Box(name, right, y, w, h)
        right += w + NODE_GAP
    kept = {(r.src, r.dst): r for r in old.routes}
    routes = []
    for a, b in edges:
        sa, sb = boxes[a], boxes[b]
        r = kept.get((a, b))
        if (
            r is not None
            and r.points[0] == (sa.cx, sa.bottom + 1)
            and sb.x <= r.points[-1][0] < sb.x + sb.w
            and r.points[-1][1] == sb.y - 1
        ):
            routes.append(r)
            continue
        turn = sb.y - 2 if sb.y - 2 > sa.bottom else sa.bottom + 1
        routes.append(
            Route(
                a,
                b,
                _dedupe([(sa.cx, sa.bottom + 1), (sa.cx, turn), (sb.cx, turn), (sb.cx, sb.y - 1)]),
            )
        )
    width = max((b.x + b.w for b in boxes.values()), default=0) + 2
    height = max((b.y + b.h for b in boxes.values()), default=0) + 1
    out = Layout(boxes, routes, width, height, old.engine + "+patched")
    out.index_rows()
    return out
