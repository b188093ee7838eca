"""Snapshot tests: the main screens at 80x24, compared with stored SVG screenshots.

Update after an intended change with `pytest tests/test_tui_snapshots.py --snapshot-update`
and look at the report. The built-in layered layout is used so the pictures do not
depend on the installed Graphviz version.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_textual_snapshot")

from graphc.tui.app import GraphApp
from graphc.tui.document import Document

XOR = """\
# XOR: the function one perceptron cannot learn
x = input(float32, [N, 2])
y = input(int64, [N])
fc1 = linear(x, 4)
h = tanh(fc1)
logits = linear(h, 2)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""

SIZE = (80, 24)


@pytest.fixture
def xor_app(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    return GraphApp(document=Document.open(path), engine="simple", autosave_s=0, watch_s=0)


def _select(name):
    async def run_before(pilot) -> None:
        await pilot.pause()
        pilot.app.canvas.select(name)
        await pilot.pause()

    return run_before


def test_main_screen(snap_compare, xor_app):
    assert snap_compare(xor_app, terminal_size=SIZE, run_before=_select("fc1"))


def test_error_on_node(snap_compare, xor_app):
    async def run_before(pilot) -> None:
        await pilot.pause()
        pilot.app.doc.connect("loss", 1, "h")
        pilot.app.refresh_view()
        pilot.app.canvas.select("loss")
        await pilot.pause()

    assert snap_compare(xor_app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, xor_app):
    assert snap_compare(xor_app, terminal_size=SIZE, press=["question_mark"])


def test_summary_screen(snap_compare, xor_app):
    assert snap_compare(xor_app, terminal_size=SIZE, press=["4"])


def test_backward_view_folded(snap_compare, xor_app):
    async def run_before(pilot) -> None:
        await pilot.pause()
        await pilot.press("2")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.press("Z")  # one box per gradient cluster
        pilot.app.canvas.select("∇fc1")
        await pilot.pause()

    assert snap_compare(xor_app, terminal_size=SIZE, run_before=run_before)
