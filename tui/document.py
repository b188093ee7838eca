"""The editable model behind the editor: a graph, its file, undo/redo, autosave.

Every edit runs on a copy of the current graph, which is then re-inferred
(`check`). The copy becomes the current state even when it has an error, so
the user can see the error on the node it concerns and fix it in the next
edit; `last_good` keeps the newest state that passed inference, and saving
or compiling refuses while there is an error. Undo and redo swap whole
snapshots: a copy per edit is cheap next to inference, and restoring is then
exact by construction.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphc import Graph, GraphError
from graphc.fileio import atomic_write_text, read_text
from graphc.tui import edits
from graphc.tui.check import CheckResult, check

UNDO_LIMIT = 200


def to_text(graph: Graph) -> str:
    from graphc.printer import print_graph

    return print_graph(graph)


def parse(text: str, file: str | None) -> Graph:
    """Parse without type-checking: the document infers (and shows errors) itself, so a
    file whose shapes do not check still opens, with the error on its node."""
    from graphc.parser import parse_text

    return parse_text(text, file, check=False)


def autosave_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.autosave")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Snapshot:
    graph: Graph
    label: str


class Document:
    """A model file being edited."""

    def __init__(
        self, graph: Graph, path: str | os.PathLike | None = None, disk_text: str | None = None
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.graph = graph
        self.result: CheckResult = check(graph)
        self.last_good: Graph | None = graph.copy() if self.result.ok else None
        self.undo_stack: list[Snapshot] = []
        self.redo_stack: list[Snapshot] = []
        self.saved_graph_text = disk_text  # the text on disk when we last read or wrote it
        self._disk_digest = _digest(disk_text) if disk_text is not None else None
        self._disk_mtime = self._mtime()
        self._clean = graph  # the state that matches the file (undo can come back to it)
        self.version = 0  # bumps on every change (edits, undo, redo)
        self.autosaved_version = 0

    # ------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | os.PathLike) -> Document:
        """Open a model file, or start a new empty graph if it does not exist yet."""
        p = Path(path)
        if not p.exists():
            return cls.new(p)
        text = read_text(p)
        return cls(parse(text, str(p)), p, text)

    @classmethod
    def new(cls, path: str | os.PathLike | None = None) -> Document:
        name = Path(path).stem if path is not None else "model"
        g = Graph(name if name.isidentifier() else "model")
        if path is not None:
            g.file = str(path)
        doc = cls(g, path, None)
        return doc

    # --------------------------------------------------------------- state
    @property
    def error(self) -> GraphError | None:
        return self.result.problems[0].error if self.result.problems else None

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def dirty(self) -> bool:
        return self.graph is not self._clean

    @property
    def title(self) -> str:
        return str(self.path) if self.path else "untitled"

    # --------------------------------------------------------------- edits
    def apply(self, label: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn(graph_copy, *args)`; keep the result even if inference fails.

        A GraphError raised by `fn` itself (a bad name, an unknown op) is an
        edit that could not be made at all: nothing changes and it propagates.
        """
        g = self.graph.copy()
        result = fn(g, *args, **kwargs)
        self._push(Snapshot(self.graph, label))
        self._set(g)
        return result

    def _push(self, snap: Snapshot) -> None:
        self.undo_stack.append(snap)
        del self.undo_stack[:-UNDO_LIMIT]
        self.redo_stack.clear()

    def _set(self, graph: Graph) -> None:
        self.graph = graph
        self.result = check(graph)
        if self.result.ok:
            self.last_good = graph.copy()
        self.version += 1

    def undo(self) -> str | None:
        if not self.undo_stack:
            return None
        snap = self.undo_stack.pop()
        self.redo_stack.append(Snapshot(self.graph, snap.label))
        self._set(snap.graph)
        return snap.label

    def redo(self) -> str | None:
        if not self.redo_stack:
            return None
        snap = self.redo_stack.pop()
        self.undo_stack.append(Snapshot(self.graph, snap.label))
        self._set(snap.graph)
        return snap.label

    # Named edits (thin wrappers so callers and tests read as intent).
    def add_node(self, opname: str, inputs=None, attrs=None, name=None, after=None) -> str:
        return self.apply(f"add {opname}", edits.add_node, opname, inputs, attrs, name, after)

    def insert_after(self, opname: str, value: str, attrs=None, name=None) -> str:
        return self.apply(
            f"insert {opname} after {value}", edits.insert_after, opname, value, attrs, name
        )

    def add_input(self, name: str, shape: tuple, dtype: str = "float32") -> str:
        return self.apply(f"add input {name}", edits.add_input, name, shape, dtype)

    def set_input_type(self, name: str, shape: tuple, dtype: str) -> None:
        self.apply(f"retype {name}", edits.set_input_type, name, shape, dtype)

    def connect(self, node: str, slot: int, value: str) -> None:
        self.apply(f"connect {value} -> {node}", edits.connect, node, slot, value)

    def disconnect(self, node: str, slot: int) -> None:
        self.apply(f"disconnect {node}", edits.disconnect, node, slot)

    def set_attrs(self, node: str, attrs: dict) -> None:
        self.apply(f"edit {node}", edits.set_attrs, node, attrs)

    def delete(self, name: str, subtree: bool = False) -> list[str]:
        return self.apply(f"delete {name}", edits.delete, name, subtree)

    def rename(self, old: str, new: str) -> None:
        self.apply(f"rename {old} -> {new}", edits.rename, old, new)

    def toggle_output(self, value: str) -> bool:
        return self.apply(f"output {value}", edits.toggle_output, value)

    def set_loss(self, value: str | None) -> None:
        self.apply(f"loss {value}", edits.set_loss, value)

    # -------------------------------------------------------------- saving
    def text(self) -> str:
        return to_text(self.graph)

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write canonical .gc atomically; refuses while the graph has an error."""
        if path is not None:
            self.path = Path(path)
        if self.path is None:
            raise GraphError("this graph has no file yet", hint="save it with a file name")
        if not self.ok:
            p = self.result.problems[0]
            raise GraphError(
                f"not saved: {p.status(self.graph)}",
                node=p.node,
                hint="fix the error first (or undo the edit that made it)",
            )
        text = self.text()
        atomic_write_text(self.path, text)  # keeps the file's permissions (fileio)
        self.saved_graph_text = text
        self._disk_digest = _digest(text)
        self._disk_mtime = self._mtime()
        self._clean = self.graph
        self.autosaved_version = self.version
        self.discard_autosave()
        return self.path

    # ------------------------------------------------------------ autosave
    def autosave(self) -> bool:
        """Write the newest good state beside the file if it changed since the last time."""
        if self.path is None or not self.dirty or self.autosaved_version == self.version:
            return False
        graph = self.graph if self.ok else self.last_good
        if graph is None:
            return False
        atomic_write_text(autosave_path(self.path), to_text(graph))
        self.autosaved_version = self.version
        return True

    def discard_autosave(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                autosave_path(self.path).unlink()

    def pending_autosave(self) -> str | None:
        """Text of an autosave left by a crashed session, if it differs from the file."""
        if self.path is None:
            return None
        a = autosave_path(self.path)
        if not a.exists():
            return None
        text = a.read_text(encoding="utf-8")
        if self.saved_graph_text is not None and _digest(text) == self._disk_digest:
            return None
        return text

    def restore_autosave(self) -> None:
        """Load the autosave as an edit (undo goes back to what was on disk)."""
        text = self.pending_autosave()
        if text is None:
            return
        g = parse(text, str(self.path))
        self._push(Snapshot(self.graph, "restore autosave"))
        self._set(g)

    # ------------------------------------------------------ outside changes
    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None

    def changed_on_disk(self) -> bool:
        """Whether someone else wrote the file since we read or saved it."""
        m = self._mtime()
        if m is None or m == self._disk_mtime:
            return False
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError:
            return False
        self._disk_mtime = m
        return _digest(text) != self._disk_digest

    def reload(self) -> None:
        """Replace the graph with the file's contents (as an edit, so it can be undone)."""
        text = read_text(self.path)
        g = parse(text, str(self.path))
        self._push(Snapshot(self.graph, "reload from disk"))
        self._set(g)
        self.saved_graph_text = text
        self._disk_digest = _digest(text)
        self._disk_mtime = self._mtime()
        self._clean = self.graph
