"""Rendering through the real Graphviz `dot` binary: SVG, PNG and PDF come out whole.

Skipped when Graphviz is not installed (`apt-get install graphviz`).
"""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import graphc
from graphc.render import backward_graph, dot_binary, render_file, run_dot, to_dot
from graphc.render_memory import timeline_dot
from graphc.render_model import build_view

pytestmark = pytest.mark.skipif(dot_binary() is None, reason="Graphviz `dot` is not installed")

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
SVG = "{http://www.w3.org/2000/svg}"


def _svg_groups(svg: bytes, cls: str) -> list[str]:
    """Titles of the SVG groups of a class ("node", "edge", "cluster")."""
    root = ET.fromstring(svg)
    return [g.find(f"{SVG}title").text for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize(
    "name,mode,collapse",
    [
        ("mlp_digits.gc", "forward", False),
        ("xor.gc", "backward", False),
        ("resnet_small.gc", "forward", True),
    ],
)
def test_svg_has_every_box_and_edge(name, mode, collapse):
    g = graphc.load(str(SAMPLES / name))
    if mode == "backward":
        g = backward_graph(g)
    text = to_dot(g, mode=mode, collapse=collapse)
    view = build_view(g, mode=mode, collapse=collapse)
    svg = run_dot(text, "svg")
    nodes = _svg_groups(svg, "node")
    assert set(nodes) == set(view.boxes) | {"legend"}
    drawn = len(re.findall(r" -> ", text)) - text.count("[style=invis]")
    assert len(_svg_groups(svg, "edge")) == drawn
    clusters = _svg_groups(svg, "cluster")
    assert sorted(clusters) == sorted(f"cluster_{c}" for c in view.clusters)


def test_png_and_pdf(tmp_path):
    g = graphc.load(str(SAMPLES / "lecture_example.gc"))
    text = to_dot(g, direction="LR")
    png = render_file(text, tmp_path / "lecture.png")
    w, h = _png_size(png.read_bytes())
    assert w > h > 100  # left to right: wider than tall
    pdf = render_file(text, tmp_path / "lecture.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    dot = render_file(text, tmp_path / "lecture.dot")
    assert dot.read_text() == text


def test_memory_timeline_renders_to_png():
    data = run_dot(timeline_dot([(0, 100), (1, 300), (2, 200)]), "png")
    w, h = _png_size(data)
    assert w > 50 and h > 50
