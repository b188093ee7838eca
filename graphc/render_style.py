"""The look of rendered graphs: one palette, one font, one style per kind of box.

Kept apart from the layout code so that the picture's look can be tuned in one
place. Colours are soft fills with a darker border of the same hue (the style
of lecture computation-graph figures), chosen to stay distinguishable when
printed in greyscale: inputs, parameters and gradients differ in shape too.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

FONT = "Helvetica,Arial,sans-serif"
INK = "#1e293b"  # main text
MUTED = "#64748b"  # secondary text, shape labels, plain edges
FAINT = "#94a3b8"
VALUE_INK = "#15803d"  # forward values on edges (green, as in the lecture figures)
GRAD_INK = "#b91c1c"  # gradient values (red)


@dataclass(frozen=True)
class BoxStyle:
    shape: str
    fill: str
    border: str
    style: str = "filled"
    ink: str = INK
    penwidth: float = 1.2
    legend: str = ""  # what the legend calls it


# One entry per kind of box the view builder produces.
KIND_STYLES: dict[str, BoxStyle] = {
    "input": BoxStyle("ellipse", "#e0f2fe", "#0284c7", legend="graph input"),
    "param": BoxStyle("box", "#ffedd5", "#ea580c", "filled", legend="parameter"),
    "frozen": BoxStyle(
        "box", "#f5f5f4", "#a8a29e", "filled,dashed", ink=MUTED, legend="frozen parameter"
    ),
    "state": BoxStyle("box", "#f5f5f4", "#78716c", "filled", ink=MUTED, legend="running statistic"),
    "slot": BoxStyle("box", "#faf5ff", "#a78bfa", "filled", ink="#5b21b6", legend="optimizer slot"),
    "const": BoxStyle("note", "#f8fafc", "#cbd5e1", ink=MUTED, penwidth=1.0, legend="constant"),
    "output": BoxStyle(
        "ellipse", "#ffffff", "#334155", "filled,bold", penwidth=1.6, legend="graph output"
    ),
    "grad": BoxStyle(
        "box", "#fee2e2", "#dc2626", "rounded,filled", ink="#7f1d1d", legend="gradient op"
    ),
    "param_grad": BoxStyle(
        "box",
        "#fecaca",
        "#b91c1c",
        "filled,bold",
        ink="#7f1d1d",
        penwidth=1.6,
        legend="parameter gradient",
    ),
    "update": BoxStyle(
        "box", "#ede9fe", "#7c3aed", "rounded,filled", ink="#4c1d95", legend="optimizer update"
    ),
    "new_param": BoxStyle(
        "box",
        "#ede9fe",
        "#6d28d9",
        "filled,bold",
        ink="#4c1d95",
        penwidth=1.6,
        legend="updated parameter",
    ),
}

# Forward ops are rounded boxes filled by category.
CATEGORY_FILLS: dict[str, tuple[str, str]] = {
    "layers": ("#dcfce7", "#16a34a"),
    "conv": ("#dcfce7", "#16a34a"),
    "recurrent": ("#d1fae5", "#059669"),
    "activations": ("#fef9c3", "#ca8a04"),
    "normalization": ("#e0e7ff", "#4f46e5"),
    "pool": ("#cffafe", "#0891b2"),
    "losses": ("#fce7f3", "#db2777"),
    "regularization": ("#fae8ff", "#a21caf"),
    "math": ("#f8fafc", "#64748b"),
    "tensor": ("#f1f5f9", "#94a3b8"),
}
_SPARE = [("#ffedd5", "#ea580c"), ("#ecfccb", "#65a30d"), ("#e0f2f1", "#0f766e")]


def op_style(category: str, *, fused: bool = False) -> BoxStyle:
    """The style of a forward op box of this category (unknown ones get a stable spare)."""
    fill, border = CATEGORY_FILLS.get(category) or _SPARE[zlib.crc32(category.encode()) % 3]
    return BoxStyle(
        "box",
        fill,
        border,
        "rounded,filled",
        penwidth=1.8 if fused else 1.2,
        legend=category or "op",
    )


def group_style(category: str) -> BoxStyle:
    """A collapsed layer or block: the category colour, a heavier double border."""
    s = op_style(category)
    return BoxStyle("box", s.fill, s.border, "rounded,filled", penwidth=1.6, legend="folded group")


# Edges: (style, colour, penwidth, legend text).
EDGE_STYLES: dict[str, tuple[str, str, float, str]] = {
    "data": ("solid", "#475569", 1.1, "tensor (forward)"),
    "grad": ("solid", "#dc2626", 1.3, "gradient"),
    "saved": ("dashed", "#94a3b8", 1.0, "saved for backward"),
    "update": ("solid", "#7c3aed", 1.2, "optimizer step"),
}

CLUSTER_STYLES: dict[str, tuple[str, str, str]] = {
    # kind: (border colour, fill, style)
    "layer": ("#cbd5e1", "#fcfcfd", "rounded,dashed"),
    "composite": ("#f9a8d4", "#fffafc", "rounded,dashed"),
    "block": ("#a5b4fc", "#f8f9ff", "rounded"),
    "update": ("#c4b5fd", "#fdfcff", "rounded,dashed"),
}

GRAPH_ATTRS = {
    "fontname": FONT,
    "fontsize": "13",
    "fontcolor": INK,
    "bgcolor": "white",
    "pad": "0.3",
    "nodesep": "0.3",
    "ranksep": "0.35",
    "newrank": "true",
    "labelloc": "t",
    "labeljust": "l",
    "outputorder": "edgesfirst",
}
NODE_ATTRS = {
    "fontname": FONT,
    "fontsize": "11",
    "fontcolor": INK,
    "margin": "0.12,0.05",
    "height": "0.3",
}
EDGE_ATTRS = {"fontname": FONT, "fontsize": "9", "fontcolor": MUTED, "arrowsize": "0.6"}
