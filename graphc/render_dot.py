"""DOT text for a View: deterministic (same graph, same options -> same bytes).

Everything is emitted in graph order; nothing depends on hashing, dict order
of sets or the clock. Labels are Graphviz HTML-like labels, escaped here.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from graphc.render_model import PARAM_KINDS, SOURCE_KINDS, Box, View, Wire, fmt_type
from graphc.render_style import (
    CLUSTER_STYLES,
    EDGE_ATTRS,
    EDGE_STYLES,
    FAINT,
    GRAD_INK,
    GRAPH_ATTRS,
    INK,
    KIND_STYLES,
    MUTED,
    NODE_ATTRS,
    VALUE_INK,
    BoxStyle,
    group_style,
    op_style,
)

LARGE = 300  # boxes; above this the layout trades curved edges for speed
MODE_TITLES = {
    "forward": "forward graph",
    "backward": "forward + backward graph",
    "train": "training step",
}


def q(s: str) -> str:
    """A quoted DOT id."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def h(s: str) -> str:
    """Text escaped for an HTML-like label."""
    return escape(str(s), quote=True)


def _attrs(d: Mapping[str, object]) -> str:
    parts = []
    for k, v in d.items():
        if v is None:
            continue
        sv = str(v)
        parts.append(f"{k}={sv}" if sv.startswith("<") and sv.endswith(">") else f"{k}={q(sv)}")
    return " [" + ", ".join(parts) + "]" if parts else ""


def box_style(box: Box) -> BoxStyle:
    if box.kind == "op":
        return op_style(box.category, fused=box.fused)
    if box.kind == "group":
        return group_style(box.category)
    return KIND_STYLES[box.kind]


def _box_label(box: Box, style: BoxStyle, extra: list[tuple[str, str]]) -> str:
    small = [
        f'<font point-size="9" color="{MUTED if box.kind != "grad" else "#991b1b"}">'
        f"{h(line)}</font>"
        for line in box.lines
        if line
    ]
    small += [f'<font point-size="9" color="{color}">{h(text)}</font>' for text, color in extra]
    if box.symbol:
        head = f'<font point-size="15">{h(box.symbol)}</font>'
        return "<" + "<br/>".join([head] + small) + ">"
    if box.rows:
        return "<" + _param_table(box.rows, extra) + ">"
    bold = box.kind not in SOURCE_KINDS + ("output",)
    head = f"<b>{h(box.title)}</b>" if bold else h(box.title)
    return "<" + "<br/>".join([head] + small) + ">"


ROW_INK = {"param": (INK, MUTED), "frozen": (FAINT, FAINT), "state": (MUTED, FAINT)}


def _param_table(rows: list[tuple[str, str, str]], extra: list[tuple[str, str]]) -> str:
    """A layer's parameters, one row each: name, shape (frozen rows dimmed, statistics
    in italics)."""
    cells = []
    for name, dims, kind in rows:
        ink, ink2 = ROW_INK.get(kind, (INK, MUTED))
        label = f"<i>{h(name)}</i>" if kind == "state" else h(name)
        note = " (frozen)" if kind == "frozen" else ""
        cells.append(
            f'<tr><td align="left"><font point-size="10" color="{ink}">{label}</font>'
            f'</td><td align="right"><font point-size="9" color="{ink2}">{h(dims)}'
            f"{note}</font></td></tr>"
        )
    for text, color in extra:
        cells.append(
            f'<tr><td colspan="2"><font point-size="9" color="{color}">{h(text)}</font></td></tr>'
        )
    return (
        '<table border="0" cellborder="0" cellspacing="0" cellpadding="1">'
        + "".join(cells)
        + "</table>"
    )


def _node_attrs(box: Box, extra: list[tuple[str, str]]) -> dict[str, object]:
    s = box_style(box)
    attrs: dict[str, object] = {
        "label": _box_label(box, s, extra),
        "shape": "circle" if box.symbol else s.shape,
        "style": s.style if not box.symbol else "filled",
        "fillcolor": s.fill,
        "color": s.border,
        "fontcolor": s.ink,
        "penwidth": f"{s.penwidth:g}",
    }
    if box.symbol:
        attrs.update(margin="0.02", width="0.42")
    if box.kind in SOURCE_KINDS and box.kind != "input":
        attrs["fontsize"] = "10"
    if box.kind == "group":
        attrs["penwidth"] = "2"
        attrs["margin"] = "0.2,0.08"
    if box.members:
        attrs["tooltip"] = ", ".join(box.members)
    elif box.kind in ("grad", "update") or box.symbol:
        attrs["tooltip"] = box.id
    return attrs


def _wire_label(
    view: View, w: Wire, values: Mapping[str, str], grads: Mapping[str, str], shapes: bool
) -> str | None:
    if view.boxes[w.src].rows:
        return None  # a layer's parameters: shapes and values are in the box, row by row
    parts = []
    grad_edge = w.kind == "grad" or view.boxes[w.src].kind in ("grad", "param_grad")
    if w.value in values and w.kind != "saved":  # a saved value is on its forward edge
        color = GRAD_INK if grad_edge else VALUE_INK
        parts.append(f'<font color="{color}">{h(values[w.value])}</font>')
    if w.value in grads and w.kind == "data":
        parts.append(f'<font color="{GRAD_INK}">\u2202L: {h(grads[w.value])}</font>')
    if w.count > 1:
        parts.append(f'<font color="{FAINT}">\u00d7{w.count}</font>')
    src_kind = view.boxes[w.src].kind
    show_shape = shapes and w.kind != "saved" and src_kind not in PARAM_KINDS
    t = view.types.get(w.value)
    if show_shape and t is not None and not (parts and len(t.shape) == 0):
        parts.append(f'<font color="{FAINT if grad_edge else MUTED}">{h(fmt_type(t))}</font>')
    return "<" + "<br/>".join(parts) + ">" if parts else None


def view_to_dot(
    view: View,
    *,
    direction: str = "TB",
    legend: bool = True,
    shapes: bool = True,
    title: str | None = None,
    values: Mapping[str, str] | None = None,
    grads: Mapping[str, str] | None = None,
    box_notes: Mapping[str, list[tuple[str, str]]] | None = None,
    extra: str = "",
) -> str:
    """The DOT text of a view. `values`/`grads` map value names to edge annotations."""
    values, grads, box_notes = values or {}, grads or {}, box_notes or {}
    out: list[str] = [f"digraph {q(view.name)} {{"]
    head = (
        title
        if title is not None
        else (
            f'<b>{h(view.name)}</b>  <font color="{MUTED}">{MODE_TITLES[view.mode]}'
            + (" (folded)" if view.collapsed else "")
            + "</font>"
        )
    )
    gattrs = dict(GRAPH_ATTRS, rankdir=direction, label=f"<{head}>" if head else None)
    if len(view.boxes) > LARGE:
        # curved routing and exact placement of a thousand boxes takes dot minutes;
        # straight edges and a bounded network simplex take seconds
        gattrs.update(splines="line", nslimit="0.05", nslimit1="0.05", mclimit="0.5")
    out.append(f"  graph{_attrs(gattrs)};")
    out.append(f"  node{_attrs(NODE_ATTRS)};")
    out.append(f"  edge{_attrs(EDGE_ATTRS)};")

    children: dict[str | None, list[str]] = {}
    for cid, c in view.clusters.items():
        children.setdefault(c.parent, []).append(cid)
    inside: dict[str | None, list[Box]] = {}
    for box in view.boxes.values():
        inside.setdefault(box.cluster, []).append(box)

    def emit(cid: str | None, indent: str) -> None:
        for box in inside.get(cid, []):
            out.append(f"{indent}{q(box.id)}{_attrs(_node_attrs(box, box_notes.get(box.id, [])))};")
        for child in children.get(cid, []):
            c = view.clusters[child]
            border, fill, style = CLUSTER_STYLES[c.kind]
            out.append(f"{indent}subgraph {q('cluster_' + child)} {{")
            label = f'<<font point-size="9" color="{MUTED}">{h(c.label)}</font>>'
            frame = {
                "label": label,
                "color": border,
                "fillcolor": fill,
                "style": style + ",filled",
                "labeljust": "l",
                "margin": "10",
            }
            out.append(f"{indent}  graph{_attrs(frame)};")
            emit(child, indent + "  ")
            out.append(f"{indent}}}")

    emit(None, "  ")
    for w in view.wires:
        style, color, width, _ = EDGE_STYLES[w.kind]
        attrs: dict[str, object] = {"label": _wire_label(view, w, values, grads, shapes)}
        if (
            w.kind == "data"
            and view.boxes[w.src].kind in ("op", "group")
            and view.boxes[w.dst].kind in ("op", "group")
        ):
            attrs["weight"] = "3"  # keep the main path straight; inputs and params bend
        if w.kind != "data":
            attrs.update(style=style, color=color, penwidth=f"{width:g}")
        if w.kind == "saved":
            attrs["constraint"] = "false"
        if w.kind == "grad":
            # gradients flow back up the picture: lay the edge out against its direction
            attrs["dir"] = "back"
            out.append(f"  {q(w.dst)} -> {q(w.src)}{_attrs(attrs)};")
        else:
            out.append(f"  {q(w.src)} -> {q(w.dst)}{_attrs(attrs)};")
    # a layer's parameter box sits level with the layer, so the main path stays straight
    for box in view.boxes.values():
        if box.id.startswith("params:") and box.id[len("params:") :] in view.boxes:
            out.append(f"  {{ rank=same; {q(box.id)}; {q(box.id[len('params:') :])}; }}")
    for a, b in view.beside:
        if a in view.boxes and b in view.boxes:
            out.append(f"  {{ rank=same; {q(a)}; {q(b)}; }}")
    if legend:
        out.append(legend_node(view))
        # tie the legend after the last box, so it sits at the end of the flow
        # (a free-standing node would be packed beside the graph's first rank)
        sinks = [b.id for b in view.boxes.values() if b.kind == "output"] or list(view.boxes)
        sinks.sort(key=lambda b: view.boxes[b].lines == ["loss"] or b.endswith(":loss"))
        if sinks:
            out.append(f"  {q(sinks[-1])} -> {q('legend')} [style=invis];")
    if extra:
        out.append(extra)
    out.append("}")
    return "\n".join(out) + "\n"


def legend_node(view: View) -> str:
    """A small table naming every kind of box and edge that appears in the picture."""
    rows = []
    seen: set[str] = set()
    for box in view.boxes.values():
        s = box_style(box)
        name = s.legend if box.kind not in ("op",) else (box.category or "op")
        if box.symbol and box.kind == "op":
            name = box.category or "op"
        key = f"{box.kind}/{name}"
        if key in seen:
            continue
        seen.add(key)
        rows.append((box.kind != "op", name, s))
    rows.sort(key=lambda r: (r[0], _KIND_ORDER.get(r[2].legend, 50), r[1]))
    cells = []
    for _, name, s in rows:
        dashed = ' style="dashed"' if "dashed" in s.style else ""
        cells.append(
            f'<tr><td width="22" height="12" fixedsize="true" bgcolor="{s.fill}" '
            f'color="{s.border}" border="1"{dashed}></td>'
            f'<td align="left"><font point-size="9">{h(name)}</font></td></tr>'
        )
    kinds = list(dict.fromkeys(w.kind for w in view.wires))
    for k in ("data", "grad", "saved", "update"):
        if k not in kinds:
            continue
        style, color, _, text = EDGE_STYLES[k]
        glyph = "\u2013 \u2013 \u25b8" if style == "dashed" else "\u2014\u2014\u25b8"
        cells.append(
            f'<tr><td><font color="{color}" point-size="9">{glyph}</font></td>'
            f'<td align="left"><font point-size="9">{h(text)}</font></td></tr>'
        )
    table = (
        '<<table border="0" cellborder="0" cellspacing="3" cellpadding="1">'
        f'<tr><td colspan="2" align="left"><font point-size="9" color="{MUTED}">'
        "<b>legend</b></font></td></tr>" + "".join(cells) + "</table>>"
    )
    return (
        f'  {q("legend")} [shape=box, style="rounded", color="#e2e8f0", '
        f'margin="0.1,0.05", label={table}];'
    )


_KIND_ORDER = {
    "graph input": 0,
    "parameter": 1,
    "frozen parameter": 2,
    "running statistic": 3,
    "constant": 4,
    "graph output": 5,
    "folded group": 6,
    "gradient op": 7,
    "parameter gradient": 8,
    "optimizer update": 9,
    "updated parameter": 10,
}
