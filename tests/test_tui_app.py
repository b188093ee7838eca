"""The editor driven as a user would: keys, the op palette, the inspector, dialogs.

Each session ends by reading the saved file back with the parser, so the
check is against the compiler's own view of the model, not the UI's.
"""

from __future__ import annotations

import pytest

pytest.importorskip("textual")

from textual.widgets import Input

from graphc import parse
from graphc.tui.app import GraphApp
from graphc.tui.canvas import GraphCanvas
from graphc.tui.document import Document
from graphc.tui.screens import ConfirmScreen, PromptScreen, TextScreen


def run_async(fn):
    """Run an async test with asyncio (no pytest async plugin is needed)."""
    import asyncio
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


XOR = """\
x = input(float32, [N, 2])
y = input(int64, [N])
fc1 = linear(x, 4)
h = tanh(fc1)
logits = linear(h, 2)
loss = cross_entropy(logits, y)
output(logits)
minimize(loss)
"""


def make_app(path) -> GraphApp:
    return GraphApp(document=Document.open(path), engine="simple", autosave_s=0, watch_s=0)


async def answer_prompt(pilot, text: str) -> None:
    await pilot.pause()
    assert isinstance(pilot.app.screen, PromptScreen), pilot.app.screen
    pilot.app.screen.query_one(Input).value = text
    await pilot.press("enter")
    await pilot.pause()


async def palette_add(pilot, opname: str) -> None:
    await pilot.press("a")
    await pilot.pause()
    await pilot.press(*opname)
    await pilot.pause(0.3)
    await pilot.press("enter")
    await pilot.pause()


async def set_field(pilot, key: str, value: str) -> None:
    """Type into a focused inspector field and apply it with enter."""
    field = pilot.app.inspector.query_one(f"#attr-{key}", Input)
    field.focus()
    await pilot.pause()
    field.value = ""
    await pilot.press(*value, "enter")
    await pilot.pause()


async def click_box(pilot, name: str) -> None:
    canvas = pilot.app.canvas
    box = canvas.lay.boxes[name]
    canvas.scroll_to(box.x, box.y, animate=False)
    await pilot.pause()
    sx, sy = canvas.scroll_offset
    x0 = canvas._margin()
    await pilot.click(GraphCanvas, offset=(x0 + box.x - sx + 2, box.y - sy + 1))
    await pilot.pause()


@run_async
async def test_build_mlp_from_empty_file_via_palette(tmp_path):
    path = tmp_path / "mlp.gc"
    app = make_app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("i")
        await answer_prompt(pilot, "x [N, 2] float32")
        await pilot.press("i")
        await answer_prompt(pilot, "y [N] int64")
        await click_box(pilot, "x")
        assert app.selected == "x"
        await palette_add(pilot, "linear")
        assert app.selected == "linear" and app.doc.graph.nodes["linear"].inputs[0] == "x"
        # The inspector opens on the required attribute, ready for typing.
        await pilot.pause(0.1)
        assert app.focused is not None and app.focused.id == "attr-units", app.focused
        await set_field(pilot, "units", "4")
        assert app.doc.graph.nodes["linear"].attrs["units"] == 4
        await palette_add(pilot, "tanh")
        await palette_add(pilot, "linear")
        second = app.selected
        await set_field(pilot, "units", "2")
        await palette_add(pilot, "cross_entropy")
        assert not app.doc.ok  # the labels are not connected yet
        assert "not connected" in str(app.screen.query_one("#status").render())
        await pilot.press("c")
        await answer_prompt(pilot, "target=y")
        assert app.doc.ok, app.doc.error
        await pilot.press("l")
        app.canvas.select(second)
        await pilot.press("o")
        await pilot.press("s")
        await pilot.pause()
    saved = parse(path.read_text(), str(path))
    assert [n.op for n in saved.topo_order()] == ["linear", "tanh", "linear", "cross_entropy"]
    assert saved.outputs == [second] and saved.loss == "cross_entropy"
    assert str(saved.types[second]) == "float32[N, 2]"
    assert tuple(saved.params["linear.weight"].shape) == (2, 4)
    assert saved.nodes["cross_entropy"].inputs == [second, "y"]


@run_async
async def test_invalid_edit_shows_error_and_file_is_untouched(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        app.canvas.select("loss")
        await pilot.press("c")
        await answer_prompt(pilot, "target=h")
        status = str(app.screen.query_one("#status").render())
        assert "loss" in status and "float32[N, 4]" in status and "float32[N, 2]" in status
        assert app.canvas.scene.boxes["loss"].error
        assert ("h", "loss") in app.canvas.scene.error_edges
        await pilot.press("s")  # refused: the file keeps its last good contents
        await pilot.pause()
        assert path.read_text() == XOR
        await pilot.press("C")  # compile refuses too
        await pilot.pause()
        assert not path.with_suffix(".onnx").exists()
        await pilot.press("E")
        assert app.selected == "loss"
        await pilot.press("u")
        assert app.doc.ok and not app.canvas.scene.boxes["loss"].error
    assert path.read_text() == XOR


@run_async
async def test_delete_undo_redo_restores_graph(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        text0 = app.doc.text()
        app.canvas.select("h")
        await pilot.press("d")
        assert "h" not in app.doc.graph.nodes and "h" not in app.canvas.scene.boxes
        deleted = app.doc.text()
        await pilot.press("u")
        assert app.doc.text() == text0 and "h" in app.canvas.scene.boxes
        await pilot.press("U")
        assert app.doc.text() == deleted
        await pilot.press("u")
        assert app.doc.text() == text0 and not app.doc.dirty


@run_async
async def test_keyboard_walks_edges_and_find(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.canvas.select("fc1")
        await pilot.press("down")
        assert app.selected == "h"
        await pilot.press("down")
        assert app.selected == "logits"
        await pilot.press("up")
        assert app.selected == "h"
        await pilot.press("up", "up")
        assert app.selected == "x"
        await pilot.press("slash")
        await answer_prompt(pilot, "cross")
        assert app.selected == "loss"


@run_async
async def test_quit_with_unsaved_changes_asks(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.canvas.select("h")
        await pilot.press("d", "q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#choice-cancel")
        await pilot.pause()
        assert app.is_running and "h" not in app.doc.graph.nodes
        await pilot.press("q")
        await pilot.pause()
        await pilot.click("#choice-discard")
        await pilot.pause()
    assert path.read_text() == XOR


@run_async
async def test_views_summary_backward_and_help(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await pilot.pause()
        assert isinstance(app.screen, TextScreen)
        text = app.screen.text
        # 2*4 + 4 + 4*2 + 2 parameters
        assert "fc1" in text and text.splitlines()[-3].split()[1] == "22"
        await pilot.press("escape", "2")
        await app.workers.wait_for_complete()  # the backward graph is derived in a thread
        await pilot.pause()
        assert app.view == "backward" and app.shown_view == "backward"
        grads = [n for n in app.view_graph.nodes.values() if n.tags.get("grad_of") == "fc1"]
        assert grads and all(n.name in app.canvas.scene.boxes for n in grads)
        app.canvas.select("fc1")
        await pilot.pause()
        assert {n.name for n in grads} <= app.canvas.matches
        await pilot.press("d")  # views other than forward are read-only
        assert "fc1" in app.doc.graph.nodes and not app.doc.undo_stack
        await pilot.press("Z")  # one fold per node's gradient cluster
        assert app.groups["∇fc1"] == [n.name for n in grads]
        assert "∇loss" in app.groups and "loss⋯" in app.groups
        assert all(n.name not in app.canvas.scene.boxes for n in grads)
        await pilot.press("Z")
        assert not app.groups and all(n.name in app.canvas.scene.boxes for n in grads)
        await pilot.press("1", "question_mark")
        await pilot.pause()
        assert isinstance(app.screen, TextScreen) and "Compile to ONNX" in app.screen.text


@run_async
async def test_compile_writes_onnx_in_background(tmp_path):
    pytest.importorskip("onnx")
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("C")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert path.with_suffix(".onnx").exists(), app.message
        import onnx

        model = onnx.load(str(path.with_suffix(".onnx")))
        assert model.graph.output[0].name == "logits"


@run_async
async def test_inspector_rejects_an_invalid_field_without_editing(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        app.canvas.select("fc1")
        await pilot.pause()
        await set_field(pilot, "units", "four")
        field = app.inspector.query_one("#attr-units", Input)
        assert field.has_class("-invalid")
        assert app.doc.graph.nodes["fc1"].attrs["units"] == 4 and not app.doc.undo_stack
        await set_field(pilot, "bias", "maybe")
        assert app.doc.graph.nodes["fc1"].attrs["bias"] is True and not app.doc.undo_stack
        await set_field(pilot, "init", "glorot")  # not an initializer
        assert not app.doc.undo_stack
        await set_field(pilot, "init", "xavier")
        assert app.doc.graph.nodes["fc1"].attrs["init"] == "xavier"
        app.canvas.select("x")
        await pilot.pause()
        shape = app.inspector.query_one("#f-shape", Input)
        shape.focus()
        shape.value = ""
        await pilot.press(*"N, 3", "enter")
        await pilot.pause()
        assert tuple(app.doc.graph.params["fc1.weight"].shape) == (3, 4)


@run_async
async def test_autosave_is_offered_back_on_reopen(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    doc = Document.open(path)
    doc.set_attrs("fc1", {"units": 7})
    assert doc.autosave()  # ... and then the session is killed
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#choice-restore")
        await pilot.pause()
        assert app.doc.graph.nodes["fc1"].attrs["units"] == 7 and app.doc.dirty
        assert "[N,7]" in app.canvas.scene.boxes["fc1"].lines[2]
    assert path.read_text() == XOR  # restoring is an edit, not a save


@run_async
async def test_outside_change_is_noticed_and_reloaded(tmp_path):
    import os

    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = GraphApp(document=Document.open(path), engine="simple", autosave_s=0, watch_s=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        path.write_text(XOR.replace("linear(x, 4)", "linear(x, 5)"))
        os.utime(path, (1, 1))
        await pilot.pause(0.4)
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#choice-reload")
        await pilot.pause()
        assert app.doc.graph.nodes["fc1"].attrs["units"] == 5 and not app.doc.dirty


@run_async
async def test_fold_a_residual_block(tmp_path):
    path = tmp_path / "res.gc"
    path.write_text(
        "x = input(float32, [N, 8])\n"
        "a = linear(x, 8)\nb = relu(a)\nc = linear(b, 8)\n"
        "s = add(x, c)\nout = relu(s)\noutput(out)\n"
    )
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.canvas.select("x")
        await pilot.press("z")
        assert set(app.canvas.scene.boxes) == {"x", "x…", "s", "out"}
        assert app.canvas.scene.boxes["x…"].members == ("a", "b", "c")
        assert ("x", "x…") in app.canvas.scene.edges and ("x…", "s") in app.canvas.scene.edges
        assert ("x", "s") in app.canvas.scene.edges  # the skip connection stays visible
        await pilot.press("z")  # the fold is selected: unfold it
        assert {"a", "b", "c"} <= set(app.canvas.scene.boxes)


@run_async
async def test_optimized_and_memory_views_and_gradcheck(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.shown_view == "optimized", app.message
        fused = {b.name for b in app.canvas.scene.boxes.values() if b.kind == "fused"}
        # Highlighted = created or re-typed by the passes, judged against graphc.grad itself.
        import graphc

        before = graphc.grad(parse(XOR))
        after = app.view_graph
        changed = {
            n
            for n, node in after.nodes.items()
            if n not in before.nodes or before.nodes[n].op != node.op
        }
        assert fused and fused == changed
        # and the ones -O2 is known to make on this net are among them
        fused_ops = {after.nodes[n].op for n in fused}
        assert {"gemm", "softmax_cross_entropy", "softmax_cross_entropy_grad"} <= fused_ops
        await pilot.press("1", "5")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, TextScreen) and "planned peak" in app.screen.text
        await pilot.press("escape", "G")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, TextScreen), app.message
        assert "4/4 parameters within" in app.screen.text


def test_edit_command_reports_a_file_that_does_not_parse(tmp_path, capsys):
    from graphc.cli import main

    bad = tmp_path / "bad.gc"
    bad.write_text("x = input(float32, [N, 2])\nh = tanh(nope)\n")
    assert main(["edit", str(bad)]) == 2  # reported before the editor would start
    err = capsys.readouterr().err
    assert "bad.gc:2" in err and "nope" in err


@run_async
async def test_new_file_from_the_palette(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    new = tmp_path / "sub" / "fresh.gc"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"New graph file")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await answer_prompt(pilot, str(new))
        assert app.doc.path == new and not app.doc.graph.nodes
        assert not app.canvas.scene.boxes
        await pilot.press("i")
        await answer_prompt(pilot, "z [N, 3]")
        await pilot.press("s")
        await pilot.pause()
    assert parse(new.read_text()).inputs["z"].shape == ("N", 3)
    assert path.read_text() == XOR


@run_async
async def test_insert_op_between_nodes(tmp_path):
    path = tmp_path / "xor.gc"
    path.write_text(XOR)
    app = make_app(path)
    async with app.run_test(size=(80, 24)) as pilot:
        app.canvas.select("h")
        await pilot.press("I")
        await pilot.pause()
        await pilot.press(*"dropout")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        new = app.selected
        assert app.doc.graph.nodes[new].op == "dropout"
        assert app.doc.graph.nodes["logits"].inputs[0] == new and app.doc.ok
        assert ("h", new) in app.canvas.scene.edges and (new, "logits") in app.canvas.scene.edges
