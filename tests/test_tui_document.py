"""The editor's plain logic: document edits, undo/redo, saving, autosave, layout.

No Textual here; the app tests drive the same code through the UI.
"""

from __future__ import annotations

import os

import pytest

from graphc import parse, to_text
from graphc.tui import edits
from graphc.tui.check import check
from graphc.tui.document import Document, autosave_path
from graphc.tui.layout import dot_available, layout

XOR = """\
# a tiny MLP
x = input(float32, [N, 2])
y = input(int64, [N])

# hidden layer
fc1 = linear(x, 4)
h = tanh(fc1)
logits = linear(h, 2)
loss = cross_entropy(logits, y)

output(logits)
minimize(loss)
"""


def _structure(g):
    """A graph as plain data: enough to say two graphs are the same model."""
    return (
        {k: (t.dtype, tuple(t.shape)) for k, t in g.inputs.items()},
        [(n.name, n.op, list(n.inputs), list(n.outputs), dict(n.attrs)) for n in g.nodes.values()],
        list(g.outputs),
        g.loss,
        {k: tuple(p.shape) for k, p in g.params.items()},
    )


@pytest.fixture
def xor_file(tmp_path):
    p = tmp_path / "xor.gc"
    p.write_text(XOR)
    return p


def test_build_mlp_from_empty_file_and_save(tmp_path):
    path = tmp_path / "new.gc"
    doc = Document.open(path)  # does not exist yet: a new, empty graph
    assert not doc.graph.nodes and not path.exists()
    doc.add_input("x", ("N", 2))
    doc.add_input("y", ("N",), "int64")
    fc1 = doc.add_node("linear", ["x"], name="fc1")
    doc.set_attrs(fc1, {"units": 4})
    h = doc.add_node("tanh", [fc1], name="h")
    logits = doc.add_node("linear", [h], {"units": 2}, name="logits")
    loss = doc.add_node("cross_entropy", [logits], name="loss")
    assert not doc.ok  # the target is not connected yet
    assert "target" in doc.error.message and doc.result.problems[0].node == "loss"
    doc.connect(loss, 1, "y")
    doc.toggle_output(logits)
    doc.set_loss(loss)
    assert doc.ok and doc.dirty
    doc.save()
    assert not doc.dirty
    saved = parse(path.read_text(), str(path))
    # The reference is the same model written by hand (comments aside).
    want = parse(XOR)
    assert _structure(saved) == _structure(want)
    assert str(saved.types["logits"]) == "float32[N, 2]"
    # Saving is canonical: printing what was read back gives the same text.
    assert to_text(saved) == path.read_text()


def test_invalid_edit_shows_error_and_leaves_file_untouched(xor_file):
    before = xor_file.read_bytes()
    doc = Document.open(xor_file)
    doc.connect("loss", 1, "h")  # targets [N, 4] for logits [N, 2]
    assert not doc.ok
    prob = doc.result.problem_for("loss")
    assert prob is not None and prob.error.node == "loss"
    status = prob.status(doc.graph)
    assert "loss" in status and "float32[N, 4]" in status and "float32[N, 2]" in status
    assert doc.last_good is not None and doc.last_good.nodes["loss"].inputs[1] == "y"
    with pytest.raises(Exception, match="not saved"):
        doc.save()
    assert xor_file.read_bytes() == before
    # The error does not hide the types of everything else.
    assert str(doc.graph.types["logits"]) == "float32[N, 2]"
    doc.undo()
    assert doc.ok


def test_downstream_of_an_error_is_blocked_not_reported(xor_file):
    doc = Document.open(xor_file)
    doc.disconnect("h", 0)
    assert [p.node for p in doc.result.problems] == ["h"]
    assert doc.result.blocked == {"logits", "loss"}
    assert "fc1" in doc.graph.types and "logits" not in doc.graph.types


def test_delete_undo_redo_restores_exactly(xor_file):
    doc = Document.open(xor_file)
    original = _structure(doc.graph)
    original_text = doc.text()
    doc.delete("h")
    assert "h" not in doc.graph.nodes and doc.graph.nodes["logits"].inputs[0] == ""
    after_delete = _structure(doc.graph)
    doc.undo()
    assert _structure(doc.graph) == original and doc.text() == original_text
    assert not doc.dirty
    doc.redo()
    assert _structure(doc.graph) == after_delete
    doc.undo()
    doc.delete("h", subtree=True)
    assert set(doc.graph.nodes) == {"fc1"} and doc.graph.loss is None
    assert doc.graph.outputs == [] and doc.ok
    doc.undo()
    assert doc.text() == original_text


def test_rename_moves_parameters_outputs_and_uses(xor_file):
    doc = Document.open(xor_file)
    doc.rename("logits", "scores")
    g = doc.graph
    assert g.nodes["loss"].inputs[0] == "scores" and g.outputs == ["scores"]
    assert "scores.weight" in g.params and "logits.weight" not in g.params
    assert g.nodes["scores"].inputs[1:] == ["scores.weight", "scores.bias"]
    with pytest.raises(Exception, match="already used"):
        doc.rename("scores", "h")
    with pytest.raises(Exception, match="not a valid name"):
        doc.rename("scores", "2x")
    doc.rename("x", "features")
    assert doc.graph.nodes["fc1"].inputs[0] == "features" and doc.ok
    reparsed = parse(doc.text())
    assert _structure(reparsed) == _structure(doc.graph)


def test_attribute_edit_resizes_parameters_and_comments_survive(xor_file, tmp_path):
    doc = Document.open(xor_file)
    doc.set_attrs("fc1", {"units": 8})
    assert tuple(doc.graph.params["fc1.weight"].shape) == (2, 8)
    assert tuple(doc.graph.params["logits.weight"].shape) == (8, 2)
    doc.set_attrs("logits", {"units": 2, "bias": False})
    assert "logits.bias" not in doc.graph.params
    assert doc.graph.nodes["logits"].inputs == ["h", "logits.weight"]
    doc.save()
    text = xor_file.read_text()
    assert "# hidden layer" in text and "# a tiny MLP" in text
    assert "linear(x, 8)" in text


def test_autosave_is_offered_back_and_save_clears_it(xor_file):
    doc = Document.open(xor_file)
    assert not doc.autosave()  # nothing changed yet
    doc.set_attrs("fc1", {"units": 5})
    assert doc.autosave()
    a = autosave_path(xor_file)
    assert a.exists() and a.name == ".xor.gc.autosave"
    # A new session (the first one "crashed") finds it and can restore it.
    doc2 = Document.open(xor_file)
    assert doc2.pending_autosave() is not None
    doc2.restore_autosave()
    assert tuple(doc2.graph.params["fc1.weight"].shape) == (2, 5) and doc2.dirty
    doc2.save()
    assert not a.exists()
    assert Document.open(xor_file).pending_autosave() is None


def test_autosave_keeps_last_good_state_while_in_error(xor_file):
    doc = Document.open(xor_file)
    doc.set_attrs("fc1", {"units": 6})
    doc.connect("loss", 1, "h")
    assert not doc.ok
    assert doc.autosave()
    restored = parse(autosave_path(xor_file).read_text())
    assert restored.nodes["loss"].inputs[1] == "y"
    assert restored.nodes["fc1"].attrs["units"] == 6


def test_outside_change_is_noticed(xor_file):
    doc = Document.open(xor_file)
    assert not doc.changed_on_disk()
    xor_file.write_text(XOR.replace("linear(x, 4)", "linear(x, 3)"))
    os.utime(xor_file, (1, 1))  # a different mtime even on coarse clocks
    assert doc.changed_on_disk()
    doc.reload()
    assert doc.graph.nodes["fc1"].attrs["units"] == 3 and not doc.dirty
    doc.save()
    assert not doc.changed_on_disk()  # our own save is not an outside change


def test_add_node_fills_required_attrs_and_check_catches_unknown_input(xor_file):
    doc = Document.open(xor_file)
    name = doc.add_node("linear", ["h"])
    assert doc.graph.nodes[name].attrs["units"] == 1 and doc.ok
    with pytest.raises(Exception, match="no value named"):
        doc.connect(name, 0, "nope")
    assert edits.parse_shape("[N, 28, 28]") == ("N", 28, 28)
    with pytest.raises(Exception, match="not a dimension"):
        edits.parse_shape("N, 2.5")


def test_cycle_is_an_error_on_a_node(xor_file):
    doc = Document.open(xor_file)
    doc.connect("fc1", 0, "logits")
    assert not doc.ok and "cycle" in doc.error.message
    assert check(doc.last_good).ok


# ------------------------------------------------------------------ layout
def _residual_sizes_edges():
    sizes = {f"n{i}": (10 + (i % 3) * 4, 5) for i in range(12)}
    edges = [(f"n{i}", f"n{i + 1}") for i in range(11)]
    edges += [(f"n{i}", f"n{i + 3}") for i in range(0, 9, 3)]  # skip connections
    return sizes, edges


@pytest.mark.parametrize("engine", ["simple", "dot"])
def test_layout_boxes_do_not_overlap_and_edges_are_right_angled(engine):
    if engine == "dot" and not dot_available():
        pytest.skip("Graphviz dot is not installed")
    sizes, edges = _residual_sizes_edges()
    lay = layout(sizes, edges, engine)
    assert lay.engine == engine
    boxes = list(lay.boxes.values())
    for i, a in enumerate(boxes):
        assert (a.w, a.h) == sizes[a.name]
        for b in boxes[i + 1 :]:
            apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
            assert apart, (a, b)
    assert len(lay.routes) == len(edges)
    for r in lay.routes:
        src, dst = lay.boxes[r.src], lay.boxes[r.dst]
        assert r.points[0] == (src.cx, src.bottom + 1)
        x, y = r.points[-1]
        assert y == dst.y - 1 and dst.x <= x < dst.x + dst.w  # arrowhead just above
        for (x0, y0), (x1, y1) in zip(r.points, r.points[1:]):
            assert x0 == x1 or y0 == y1
        # dot's free lanes, or the fallback's lanes right of the drawing: never through a box
        for (x0, y0), (x1, y1) in zip(r.points, r.points[1:]):
            for b in boxes:
                if x0 == x1:
                    crosses = (
                        b.x <= x0 < b.x + b.w and min(y0, y1) <= b.bottom and max(y0, y1) >= b.y
                    )
                else:
                    crosses = (
                        b.y <= y0 <= b.bottom and min(x0, x1) < b.x + b.w and max(x0, x1) >= b.x
                    )
                assert not crosses, (r, b)


def test_patched_layout_keeps_positions_and_places_new_boxes():
    from graphc.tui.layout import patch

    sizes, edges = _residual_sizes_edges()
    old = layout(sizes, edges, "simple")
    new_sizes = dict(sizes)
    new_sizes["n3"] = (16, 5)  # wider after a rename
    del new_sizes["n11"]
    new_sizes["extra"] = (12, 5)
    new_edges = [e for e in edges if "n11" not in e] + [("n10", "extra")]
    lay = patch(old, new_sizes, new_edges)
    assert "n11" not in lay.boxes and set(lay.boxes) == set(new_sizes)
    assert lay.boxes["n3"].cx == old.boxes["n3"].cx and lay.boxes["n3"].w == 16
    assert lay.boxes["n5"] == old.boxes["n5"]
    extra, n10 = lay.boxes["extra"], lay.boxes["n10"]
    assert extra.y > n10.bottom  # below its producer
    assert all(extra.x >= b.x + b.w for k, b in lay.boxes.items() if k != "extra")
    assert {(r.src, r.dst) for r in lay.routes} == set(new_edges)
    for r in lay.routes:
        dst = lay.boxes[r.dst]
        assert r.points[-1][1] == dst.y - 1 and dst.x <= r.points[-1][0] < dst.x + dst.w


def test_file_with_a_shape_error_opens_with_the_error_on_its_node(tmp_path):
    path = tmp_path / "bad.gc"
    path.write_text(
        XOR.replace("loss = cross_entropy(logits, y)", "loss = cross_entropy(logits, h)")
    )
    with pytest.raises(Exception, match="targets must match"):
        parse(path.read_text())  # the compiler refuses it ...
    doc = Document.open(path)  # ... the editor opens it to be fixed
    assert not doc.ok and doc.result.problems[0].node == "loss"
    assert doc.last_good is None and not doc.dirty
    doc.connect("loss", 1, "y")
    assert doc.ok
    doc.save()
    assert parse(path.read_text()).nodes["loss"].inputs == ["logits", "y"]


def test_save_keeps_the_file_permissions(xor_file, tmp_path):
    os.chmod(xor_file, 0o644)
    doc = Document.open(xor_file)
    doc.set_attrs("fc1", {"units": 3})
    doc.save()
    assert (xor_file.stat().st_mode & 0o777) == 0o644
    new = tmp_path / "new.gc"
    doc2 = Document.open(new)
    doc2.add_input("x", ("N", 2))
    doc2.save()
    umask = os.umask(0)
    os.umask(umask)
    assert (new.stat().st_mode & 0o777) == 0o666 & ~umask


def test_layout_without_graphviz_falls_back(monkeypatch):
    import graphc.tui.layout as lay_mod

    monkeypatch.setattr(lay_mod.shutil, "which", lambda name: None)
    sizes, edges = _residual_sizes_edges()
    lay = layout(sizes, edges)  # "auto"
    assert lay.engine == "simple" and set(lay.boxes) == set(sizes)


def test_insert_after_moves_the_readers(xor_file):
    doc = Document.open(xor_file)
    d = doc.insert_after("dropout", "h")
    g = doc.graph
    assert g.nodes[d].inputs[0] == "h" and g.nodes["logits"].inputs[0] == d
    assert list(g.nodes).index(d) == list(g.nodes).index("h") + 1  # file order stays readable
    assert doc.ok
    l2 = doc.insert_after("relu", "logits")
    assert doc.graph.outputs == [l2] and doc.graph.nodes["loss"].inputs[0] == l2
    doc.undo()
    doc.undo()
    assert doc.text() == Document.open(xor_file).text()


def test_delete_takes_the_constants_only_it_read(tmp_path):
    p = tmp_path / "c.gc"
    p.write_text("x = input(float32, [N, 2])\nh = x * 2\ng = x * 3\no = relu(h + g)\noutput(o)\n")
    doc = Document.open(p)
    (two,) = [c for c in doc.graph.constants if float(doc.graph.constants[c]) == 2.0]
    doc.delete("h")
    assert two not in doc.graph.constants and len(doc.graph.constants) == 1
    doc.undo()
    assert two in doc.graph.constants
