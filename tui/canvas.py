"""The graph canvas: one scrolling Line-API widget that paints the whole DAG.

Only the rows on screen are painted (`render_line`), from a per-row index of
boxes and edge cells built once per layout, so a 1,000-node graph scrolls as
fast as a 10-node one. Edge cells carry direction bits that are turned into
box-drawing characters at paint time, so crossing and merging edges join up.
"""

from __future__ import annotations

import time
from itertools import pairwise
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding, BindingType
from textual.events import Click
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from graphc.tui.layout import Layout, layout, patch
from graphc.tui.scene import Scene

UP, DOWN, LEFT, RIGHT = 1, 2, 4, 8
# From this many boxes on, an edit shows a patched copy of the old layout at once and
# the exact layout (Graphviz: ~0.1 s at 300 nodes, ~0.7 s at 1,000) follows from a thread.
ASYNC_LAYOUT_MIN = 150
_LINES = {
    UP | DOWN: "│",
    LEFT | RIGHT: "─",
    DOWN | RIGHT: "┌",
    DOWN | LEFT: "┐",
    UP | RIGHT: "└",
    UP | LEFT: "┘",
    UP | DOWN | RIGHT: "├",
    UP | DOWN | LEFT: "┤",
    DOWN | LEFT | RIGHT: "┬",
    UP | LEFT | RIGHT: "┴",
    UP | DOWN | LEFT | RIGHT: "┼",
    UP: "│",
    DOWN: "│",
    LEFT: "─",
    RIGHT: "─",
}

STYLES = {
    "bg": Style(),
    "edge": Style(color="grey50"),
    "edge_hi": Style(color="yellow", bold=True),
    "edge_err": Style(color="red", bold=True),
    "node": Style(color="white"),
    "input": Style(color="cyan"),
    "grad": Style(color="magenta"),
    "group": Style(color="blue", bold=True),
    "fused": Style(color="bright_green", bold=True),
    "error": Style(color="red", bold=True),
    "blocked": Style(color="grey42"),
    "selected": Style(color="yellow", bold=True),
    "match": Style(color="green", bold=True),
    "title": Style(bold=True),
    "title_sel": Style(bold=True, reverse=True),
    "op": Style(color="bright_blue"),
    "shape": Style(color="grey70"),
    "mark": Style(color="green", bold=True),
}


class GraphCanvas(ScrollView, can_focus=True):
    """Draws a Scene; arrow keys walk edges, click selects, the wheel pans."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "producer", "Producer", show=False),
        Binding("down", "consumer", "Consumer", show=False),
        Binding("left", "sibling(-1)", "Sibling", show=False),
        Binding("right", "sibling(1)", "Sibling", show=False),
        Binding("pageup", "page_up", show=False),
        Binding("pagedown", "page_down", show=False),
        Binding("home", "scroll_home", show=False),
        Binding("end", "scroll_end", show=False),
    ]

    selected: reactive[str | None] = reactive(None, layout=False, repaint=False)

    class Selected(Message):
        def __init__(self, name: str | None) -> None:
            super().__init__()
            self.name = name

    class LaidOut(Message):
        """The exact layout of the current scene is on screen (after a background layout)."""

    def __init__(self, *, engine: str = "auto", **kwargs) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.scene: Scene | None = None
        self.lay: Layout | None = None
        self._layout_key: tuple | None = None
        self._rows: dict[int, Strip] = {}
        self._edge_cells: dict[int, dict[int, int]] = {}
        self._edge_style: dict[tuple[int, int], str] = {}
        self._arrows: dict[tuple[int, int], str] = {}
        self._arrow_rows: dict[int, list[int]] = {}
        self._highlight: set[tuple[int, int]] = set()
        self.matches: set[str] = set()
        self.timings: dict[str, float] = {}
        self._pending_layout: tuple | None = None
        self.laid_out_at = 0.0  # when the exact layout of the current scene went on screen

    # ---------------------------------------------------------------- scene
    def set_scene(self, scene: Scene) -> None:
        """Show a new scene; lays out again only when boxes or edges changed."""
        t0 = time.perf_counter()
        key = scene.key()
        if key != self._layout_key:
            sizes = {k: b.size for k, b in scene.boxes.items()}
            if len(sizes) >= ASYNC_LAYOUT_MIN and self.is_mounted and self.engine != "simple":
                # Show a stand-in now: the old layout patched (an edit), or the quick
                # built-in layout (a different graph, e.g. another view); dot follows.
                kept = sum(k in self.lay.boxes for k in sizes) if self.lay else 0
                self.lay = (
                    patch(self.lay, sizes, scene.edges)
                    if kept >= len(sizes) // 2
                    else layout(sizes, scene.edges, "simple")
                )
                self._layout_later(key, sizes, list(scene.edges))
            else:
                self.lay = layout(sizes, scene.edges, self.engine)
            self._layout_key = key
        t1 = time.perf_counter()
        self.scene = scene
        self._index_edges()
        self._rows.clear()
        self.virtual_size = Size(self.lay.width, self.lay.height)
        if self.selected is not None and self.selected not in scene.boxes:
            self.selected = None
        self.refresh()
        self.timings = {"layout": t1 - t0, "index": time.perf_counter() - t1}
        if self._pending_layout is None or self._pending_layout != key:
            self.laid_out_at = time.perf_counter()

    def _layout_later(self, key: tuple, sizes: dict, edges: list) -> None:
        self._pending_layout = key

        def work() -> None:
            lay = layout(sizes, edges, self.engine)
            self.app.call_from_thread(self._layout_done, key, lay)

        self.run_worker(work, thread=True, group="layout", exclusive=True)

    def _layout_done(self, key: tuple, lay: Layout) -> None:
        if key != self._pending_layout or key != self._layout_key:
            return  # a newer edit is on its way
        self._pending_layout = None
        self.lay = lay
        self._index_edges()
        self._rows.clear()
        self.virtual_size = Size(lay.width, lay.height)
        self.refresh()
        if self.selected is not None:
            self.call_after_refresh(self.reveal, self.selected)
        self.laid_out_at = time.perf_counter()
        self.post_message(self.LaidOut())

    def _index_edges(self) -> None:
        """Edge cells by row, once per layout; the selection's edges are an overlay."""
        cells: dict[int, dict[int, int]] = {}
        style: dict[tuple[int, int], str] = {}
        arrows: dict[tuple[int, int], str] = {}
        for route in self.lay.routes:
            kind = "edge_err" if (route.src, route.dst) in self.scene.error_edges else "edge"
            for x, y, m in _route_cells(route.points):
                row = cells.setdefault(y, {})
                row[x] = row.get(x, 0) | m
                if kind != "edge":
                    style[(x, y)] = kind
            if route.points:
                arrows[route.points[-1]] = kind
        self._edge_cells, self._edge_style, self._arrows = cells, style, arrows
        self._arrow_rows: dict[int, list[int]] = {}
        for x, y in arrows:
            self._arrow_rows.setdefault(y, []).append(x)
        self._index_highlight()

    def _index_highlight(self) -> None:
        sel = self.selected
        hi: set[tuple[int, int]] = set()
        if sel is not None and self.lay is not None:
            for route in self.lay.routes:
                if sel in (route.src, route.dst):
                    hi.update((x, y) for x, y, _ in _route_cells(route.points))
        self._highlight = hi

    # --------------------------------------------------------------- paint
    def render_line(self, y: int) -> Strip:
        if self.lay is None:
            return Strip.blank(self.size.width)
        sx, sy = self.scroll_offset
        row = sy + y
        strip = self._rows.get(row)
        if strip is None:
            strip = self._paint_row(row)
            self._rows[row] = strip
        x0 = self._margin()
        if x0:
            strip = Strip([Segment(" " * x0, STYLES["bg"]), *strip], x0 + strip.cell_length)
        return strip.crop_extend(sx, sx + self.size.width, STYLES["bg"])

    def _margin(self) -> int:
        """Columns left of the drawing: a graph narrower than the canvas is centred."""
        if self.lay is None:
            return 0
        return max(0, (self.scrollable_content_region.width - self.lay.width) // 2)

    def _paint_row(self, row: int) -> Strip:
        width = self.lay.width
        chars = [" "] * width
        kinds = ["bg"] * width
        for x, m in self._edge_cells.get(row, {}).items():
            if 0 <= x < width:
                chars[x] = _LINES.get(m, "·")
                kinds[x] = self._edge_style.get((x, row)) or (
                    "edge_hi" if (x, row) in self._highlight else "edge"
                )
        for x in self._arrow_rows.get(row, ()):
            if 0 <= x < width:
                chars[x] = "▼"
                kinds[x] = self._arrows[(x, row)]
                if kinds[x] == "edge" and (x, row) in self._highlight:
                    kinds[x] = "edge_hi"
        for name in self.lay.rows.get(row, ()):
            self._paint_box(name, row, chars, kinds)
        segments = []
        start = 0
        for i in range(1, width + 1):
            if i == width or kinds[i] != kinds[start]:
                segments.append(Segment("".join(chars[start:i]), STYLES[kinds[start]]))
                start = i
        return Strip(segments, width)

    def _paint_box(self, name: str, row: int, chars: list, kinds: list) -> None:
        box = self.lay.boxes[name]
        sb = self.scene.boxes[name]
        border = (
            "selected"
            if name == self.selected
            else "error"
            if sb.error
            else "match"
            if name in self.matches
            else "blocked"
            if sb.blocked
            else {"input": "input", "grad": "grad", "group": "group", "fused": "fused"}.get(
                sb.kind, "node"
            )
        )
        rounded = sb.kind == "input"
        r = row - box.y
        w = box.w
        if r == 0 or r == box.h - 1:
            heavy = sb.kind in ("group", "fused")
            tl, tr = ("╭", "╮") if rounded else ("┏", "┓") if heavy else ("┌", "┐")
            bl, br = ("╰", "╯") if rounded else ("┗", "┛") if heavy else ("└", "┘")
            horiz = "━" if heavy else "─"
            text = (tl + horiz * (w - 2) + tr) if r == 0 else (bl + horiz * (w - 2) + br)
            if r == 0 and sb.marks:
                tag = " out " if sb.marks == "out" else " loss "
                if len(tag) + 2 < w:
                    text = text[: w - len(tag) - 2] + tag + text[w - 2 :]
            self._put(chars, kinds, box.x, text, border)
            if r == 0 and sb.marks:
                i = text.find(tag)
                self._put(chars, kinds, box.x + i, tag, "mark")
            return
        side = "┃" if sb.kind in ("group", "fused") else "│"
        self._put(chars, kinds, box.x, side, border)
        self._put(chars, kinds, box.x + w - 1, side, border)
        line_i = r - 1
        text = sb.lines[line_i] if line_i < len(sb.lines) else ""
        text = text[: w - 4].center(w - 4)
        style = (
            ("title_sel" if name == self.selected else "title")
            if line_i == 0
            else ("op" if line_i == 1 else "shape")
        )
        if sb.blocked and line_i:
            style = "blocked"
        if sb.error and line_i == 2:
            style = "error"
        self._put(chars, kinds, box.x + 1, " " + text + " ", style)

    @staticmethod
    def _put(chars: list, kinds: list, x: int, text: str, kind: str) -> None:
        for i, ch in enumerate(text):
            if 0 <= x + i < len(chars):
                chars[x + i] = ch
                kinds[x + i] = kind

    # ----------------------------------------------------------- selection
    def watch_selected(self, old: str | None, new: str | None) -> None:
        if self.lay is None or self.scene is None:
            return
        self._index_highlight()
        self._rows.clear()
        self.refresh()
        if new is not None:
            self.reveal(new)
            self.call_after_refresh(self.reveal, new)  # again once a new virtual size is laid out
        self.post_message(self.Selected(new))

    def select(self, name: str | None) -> None:
        if name is not None and self.scene is not None and name not in self.scene.boxes:
            name = self.scene.owner.get(name, name)
        if name == self.selected:  # same name, new scene: redraw and reveal anyway
            self.watch_selected(name, name)
        else:
            self.selected = name

    def reveal(self, name: str) -> None:
        box = self.lay.boxes.get(name) if self.lay else None
        if box is not None:
            self.scroll_to_region(Region(box.x, box.y, box.w, box.h), animate=False, force=True)

    def reveal_first(self) -> None:
        """Scroll to the top box (after the new layout's size is known)."""
        first = self._first()
        if first is not None:
            self.call_after_refresh(self.reveal, first)

    def on_click(self, event: Click) -> None:
        if self.lay is None:
            return
        offset = event.get_content_offset(self)
        if offset is None:
            return
        x = offset.x + int(self.scroll_offset.x) - self._margin()
        y = offset.y + int(self.scroll_offset.y)
        for name in self.lay.rows.get(y, ()):
            b = self.lay.boxes[name]
            if b.x <= x < b.x + b.w:
                self.select(name)
                return

    # ---------------------------------------------------------- navigation
    def _neighbours(self, incoming: bool) -> list[str]:
        if self.selected is None:
            return []
        if incoming:
            out = [a for a, b in self.scene.edges if b == self.selected]
        else:
            out = [b for a, b in self.scene.edges if a == self.selected]
        return sorted(out, key=lambda n: self.lay.boxes[n].x)

    def _first(self) -> str | None:
        if not self.lay or not self.lay.boxes:
            return None
        return min(self.lay.boxes.values(), key=lambda b: (b.y, b.x)).name

    def action_producer(self) -> None:
        ns = self._neighbours(True)
        if self.selected is None:
            self.select(self._first())
        elif ns:
            self.select(ns[0])

    def action_consumer(self) -> None:
        ns = self._neighbours(False)
        if self.selected is None:
            self.select(self._first())
        elif ns:
            self.select(ns[0])

    def action_sibling(self, step: int) -> None:
        if self.selected is None:
            self.select(self._first())
            return
        me = self.lay.boxes[self.selected]
        same = sorted(
            (b for b in self.lay.boxes.values() if abs(b.y - me.y) < b.h), key=lambda b: b.x
        )
        i = [b.name for b in same].index(me.name)
        if 0 <= i + step < len(same):
            self.select(same[i + step].name)


def _route_cells(points):
    """(x, y, direction bits) for every cell a right-angle polyline passes through."""
    for (x0, y0), (x1, y1) in pairwise(points):
        if x0 == x1:
            step = 1 if y1 > y0 else -1
            for y in range(y0, y1 + step, step):
                m = 0
                if y != y0:
                    m |= UP if step == 1 else DOWN
                if y != y1:
                    m |= DOWN if step == 1 else UP
                yield x0, y, m
        else:
            step = 1 if x1 > x0 else -1
            for x in range(x0, x1 + step, step):
                m = 0
                if x != x0:
                    m |= LEFT if step == 1 else RIGHT
                if x != x1:
                    m |= RIGHT if step == 1 else LEFT
                yield x, y0, m
