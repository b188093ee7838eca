"""Graphviz pictures of forward graphs, backward graphs and training steps.

    from graphc.render import to_dot, render_file
    text = to_dot(graphc.grad(g), mode="backward")     # deterministic DOT text
    render_file(text, "mlp.svg")                        # svg, png, pdf or dot

The pieces: `render_model` builds the view (kinds, clusters, folding),
`render_dot` writes DOT, `render_values` runs the graph for `--values`,
`render_memory` draws the memory timeline. This module ties them together
and runs the `dot` binary.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from graphc.errors import GraphError
from graphc.fileio import atomic_write_bytes, atomic_write_text
from graphc.ir import Graph
from graphc.render_dot import view_to_dot
from graphc.render_memory import timeline_dot_node
from graphc.render_model import build_view
from graphc.render_values import fmt_value

FORMATS = ("svg", "png", "pdf", "dot")
INSTALL_HINT = (
    "install Graphviz: `sudo apt-get install graphviz` (Debian/Ubuntu), "
    "`brew install graphviz` (macOS), `conda install graphviz`, or "
    "https://graphviz.org/download/; then run `dot -Tsvg FILE.dot -o FILE.svg`"
)


class GraphvizMissing(GraphError):
    """The `dot` binary is not installed (or not on PATH)."""


def backward_graph(graph: Graph) -> Graph:
    """The forward + backward graph to draw: gradients for the parameters, or, for a
    model without trainable parameters (the lecture example), for its float inputs."""
    from graphc.autodiff import default_targets, grad
    from graphc.shapes import FLOAT_DTYPES

    if graph.meta.get("grads"):
        return graph  # already differentiated
    wrt = None
    if not default_targets(graph):
        wrt = [k for k, t in graph.inputs.items() if t.dtype in FLOAT_DTYPES]
    return grad(graph, wrt=wrt)


def to_dot(
    graph: Graph,
    *,
    mode: str = "forward",
    collapse: bool = False,
    direction: str = "TB",
    legend: bool = True,
    shapes: bool = True,
    show_constants: bool = False,
    values: Mapping[str, np.ndarray] | None = None,
    grads: Mapping[str, np.ndarray] | None = None,
    memory: Sequence[tuple[int, int]] | None = None,
    title: str | None = None,
) -> str:
    """DOT text for `graph` as it is (differentiate or build the step first).

    `mode` names the picture ("forward", "backward", "train"); `values` and
    `grads` (value name -> array) annotate edges with forward numbers and
    dLoss/dvalue; `memory` is a list of (schedule step, live bytes) drawn as a
    timeline next to the graph.
    """
    if mode not in ("forward", "backward", "train"):
        raise GraphError(f"unknown render mode '{mode}'", hint="forward, backward or train")
    if direction not in ("TB", "LR", "BT", "RL"):
        raise GraphError(f"unknown direction '{direction}'", hint="TB (top to bottom) or LR")
    view = build_view(graph, mode=mode, collapse=collapse, show_constants=show_constants)
    vtext = {k: fmt_value(v) for k, v in (values or {}).items()}
    gtext = {k: fmt_value(v) for k, v in (grads or {}).items()}
    notes: dict[str, list[tuple[str, str]]] = {}
    if values:
        from graphc.render_style import GRAD_INK, VALUE_INK

        for box in view.boxes.values():
            if box.kind in ("param_grad", "new_param") and box.value in vtext:
                color = GRAD_INK if box.kind == "param_grad" else VALUE_INK
                notes[box.id] = [(vtext[box.value], color)]
            for p, (short, _dims, _kind) in zip(box.params, box.rows):
                if p in vtext:  # a layer's parameters: value and gradient under each row
                    notes.setdefault(box.id, []).append((f"{short} {vtext[p]}", VALUE_INK))
                if p in gtext:
                    notes[box.id].append((f"\u2202L: {gtext[p]}", GRAD_INK))
    extra = timeline_dot_node(memory) if memory else ""
    return view_to_dot(
        view,
        direction=direction,
        legend=legend,
        shapes=shapes,
        title=title,
        values=vtext,
        grads=gtext,
        box_notes=notes,
        extra=extra,
    )


def dot_binary() -> str | None:
    """Path of Graphviz's `dot`, or None when it is not installed."""
    return shutil.which("dot")


def run_dot(dot_text: str, fmt: str, *, timeout: float = 120.0) -> bytes:
    """Lay out and draw DOT text with the `dot` binary."""
    if fmt not in ("svg", "png", "pdf"):
        raise GraphError(f"cannot draw format '{fmt}'", hint="svg, png or pdf")
    exe = dot_binary()
    if exe is None:
        raise GraphvizMissing("Graphviz's `dot` program is not installed", hint=INSTALL_HINT)
    # cairo gives anti-aliased PNG and PDF; the core SVG writer is the most portable
    device = {"svg": "svg", "png": "png:cairo", "pdf": "pdf:cairo"}[fmt]
    args = [exe, f"-T{device}"] + (["-Gdpi=144"] if fmt == "png" else [])
    try:
        proc = subprocess.run(
            args, input=dot_text.encode("utf-8"), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise GraphError(
            f"Graphviz took more than {timeout:.0f} s to lay out the graph",
            hint="fold it with --collapse, or write --format dot",
        ) from None
    if proc.returncode != 0:
        msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise GraphError(
            "Graphviz failed: " + (msg[-1] if msg else f"exit {proc.returncode}"),
            hint="this is a graphc bug if the .dot file is ours; please report it",
        )
    return proc.stdout


def format_of(path: str | Path, fmt: str | None = None) -> str:
    fmt = (fmt or Path(path).suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise GraphError(
            f"cannot tell the picture format of '{path}'",
            hint="name the file .svg, .png, .pdf or .dot (or pass --format)",
        )
    return fmt


def render_file(dot_text: str, path: str | Path, fmt: str | None = None) -> Path:
    """Write DOT text as `path` (format from the suffix unless given); returns the path.

    Without Graphviz the DOT text is written next to it (`<path>.dot`) and
    GraphvizMissing is raised, so a caller can say how to finish the job.
    """
    path = Path(path)
    fmt = format_of(path, fmt)
    if fmt == "dot":
        atomic_write_text(path, dot_text)
        return path
    if dot_binary() is None:
        dot_path = path.with_suffix(".dot")
        atomic_write_text(dot_path, dot_text)
        raise GraphvizMissing(
            f"Graphviz's `dot` program is not installed; wrote {dot_path} instead of {path}",
            hint=INSTALL_HINT.replace("FILE.dot", str(dot_path))
            .replace("FILE.svg", str(path))
            .replace("-Tsvg", f"-T{fmt}"),
        )
    atomic_write_bytes(path, run_dot(dot_text, fmt))
    return path
