"""`graphc edit`: the Textual graph editor.

The App holds a Document (the model, undo/redo, autosave) and draws it on a
GraphCanvas, with an Inspector beside it. Every edit goes through the
Document, which re-infers; the app then rebuilds the scene. Keys live on the
main screen (so they do not fire under a dialog); every action is also in
the command palette (ctrl+p).
"""

from __future__ import annotations

import gc
import time
from functools import partial
from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from graphc import Graph, GraphError
from graphc.tui import actions
from graphc.tui.canvas import GraphCanvas
from graphc.tui.document import Document
from graphc.tui.editing import EditingMixin
from graphc.tui.inspector import Inspector
from graphc.tui.scene import build, fold_all_clusters, grad_nodes
from graphc.tui.screens import ConfirmScreen, PromptScreen, TextScreen

FOLD_ABOVE = 400  # derived views bigger than this open with gradient clusters folded

# (key, action, footer label, palette title, shown in footer)
KEYS = [
    ("a", "add_op", "Add", "Add op", True),
    ("c", "connect", "Connect", "Connect an input", True),
    ("d", "delete", "Delete", "Delete node", True),
    ("e", "edit", "Edit", "Edit attributes (inspector)", True),
    ("u,ctrl+z", "undo", "Undo", "Undo", True),
    ("s,ctrl+s", "save", "Save", "Save", True),
    ("slash", "find", "Find", "Find node by name or op", True),
    ("question_mark", "help", "Help", "Help: all keys", True),
    ("U,ctrl+y", "redo", "Redo", "Redo", False),
    ("I", "insert_op", "Insert", "Insert op after the selection (its readers move to it)", False),
    ("i", "add_input", "Input", "Add graph input", False),
    ("x", "disconnect", "Disconnect", "Disconnect an input", False),
    ("D", "delete_subtree", "Delete tree", "Delete node and everything after it", False),
    ("r", "rename", "Rename", "Rename node or input", False),
    ("o", "toggle_output", "Output", "Mark/unmark as graph output", False),
    ("l", "set_loss", "Loss", "Set as loss (minimize)", False),
    ("n", "next_match", "Next", "Next search match", False),
    ("E", "next_error", "Error", "Jump to the error", False),
    ("z", "collapse", "Fold", "Collapse/expand block (fork..join) or group", False),
    (
        "Z",
        "fold_all",
        "Fold all",
        "Fold every block (or gradient cluster); again: unfold all",
        False,
    ),
    ("1", "view('forward')", "Forward", "View: forward graph", False),
    ("2", "view('backward')", "Backward", "View: backward graph (gradients)", False),
    ("3", "view('optimized')", "Optimized", "View: optimized graph", False),
    ("4", "summary", "Summary", "View: parameters and FLOPs", False),
    ("5", "memory", "Memory", "View: memory plan", False),
    ("C", "compile", "Compile", "Compile to ONNX", False),
    ("R", "render", "Render", "Render with Graphviz", False),
    ("G", "gradcheck", "Gradcheck", "Run gradcheck", False),
    ("T", "train", "Train", "Train (live curve)", False),
    ("N", "new_file", "New", "New graph file", False),
    ("A", "save_as", "Save as", "Save as…", False),
    ("q", "quit", "Quit", "Quit", False),
]


class EditorScreen(Screen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding(k, f"app.{a}", label, show=show) for k, a, label, _, show in KEYS
    ]

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            yield GraphCanvas(id="canvas", engine=self.app.engine)
            yield Inspector(id="inspector")
        yield Static("", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.app.start()

    def on_resize(self, event) -> None:
        # 30 columns keep the graph readable at 80x24; wide terminals give the form more.
        self.query_one(Inspector).styles.width = max(30, min(48, event.size.width // 4))


class GraphApp(EditingMixin, App):
    """The graph editor."""

    CSS_PATH = "app.tcss"
    TITLE = "graphc edit"

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        document: Document | None = None,
        engine: str = "auto",
        autosave_s: float = 3.0,
        watch_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.doc = document or (Document.open(path) if path is not None else Document.new())
        self.engine = engine
        self.autosave_s, self.watch_s = autosave_s, watch_s
        self.view = "forward"
        self.view_graph: Graph = self.doc.graph
        self.groups: dict[str, list[str]] = {}
        self.matches: list[str] = []
        self.message = ""
        self.timings: dict[str, float] = {}
        self._asking_disk = False
        self._last_change = 0.0
        self.shown_view = "forward"  # the view the canvas is drawing right now
        self.prev_selection: str | None = None
        self._derived: tuple | None = None  # (view, base graph, derived graph, fused nodes)
        self._deriving: tuple | None = None

    # ------------------------------------------------------------- set-up
    def get_default_screen(self) -> Screen:
        return EditorScreen()

    def start(self) -> None:
        """First draw, timers, and the offer of a crashed session's autosave."""
        self.refresh_view()
        self.canvas.focus()
        if self.autosave_s:
            self.set_interval(self.autosave_s, self._autosave)
        if self.watch_s:
            self.set_interval(self.watch_s, self._watch_disk)
        # Every edit copies the graph (undo snapshots), so the cyclic collector's full
        # passes over those objects landed in the middle of edits: 100-300 ms spikes at
        # 1,000 nodes. Collect while the user is idle instead (restored on exit).
        self._gc_was_enabled = gc.isenabled()
        gc.disable()
        self.set_interval(1.0, self._idle_collect)
        if self.doc.pending_autosave() is not None:
            self.push_screen(
                ConfirmScreen(
                    f"An autosave of {self.doc.title} newer than the file was found "
                    "(the editor did not close cleanly).",
                    [("restore", "Restore it"), ("discard", "Discard it")],
                ),
                self._on_autosave_answer,
            )

    def _idle_collect(self) -> None:
        if time.monotonic() - self._last_change > 0.8 and gc.get_count()[0] > 1000:
            gc.collect()

    def on_unmount(self) -> None:
        if getattr(self, "_gc_was_enabled", False):
            gc.enable()

    def _on_autosave_answer(self, answer: str) -> None:
        if answer == "restore":
            self._guard(self.doc.restore_autosave)
            self.say("restored the autosave (u undoes it)")
        else:
            self.doc.discard_autosave()
        self.refresh_view()

    @property
    def canvas(self) -> GraphCanvas:
        return self._editor().query_one(GraphCanvas)

    def _editor(self) -> EditorScreen:
        return next(s for s in self.screen_stack if isinstance(s, EditorScreen))

    @property
    def inspector(self) -> Inspector:
        return self._editor().query_one(Inspector)

    @property
    def selected(self) -> str | None:
        return self.canvas.selected

    # ------------------------------------------------------------ drawing
    def refresh_view(self) -> None:
        """Rebuild the scene from the document (after every edit) and redraw.

        The backward and optimized graphs are derived in a worker thread (autodiff
        of a big model takes seconds); until one is ready the canvas keeps what it
        shows and the status line says so.
        """
        t0 = time.perf_counter()
        self._last_change = time.monotonic()
        g = self.doc.graph
        result = self.doc.result
        fused: set[str] = set()
        if self.view != "forward":
            base = self.doc.last_good or self.doc.graph
            d = self._derived
            if d is None or d[0] != self.view or d[1] is not base:
                self._derive(self.view, base)
                return
            g, fused, result = d[2], d[3], None
            if self.view == "optimized":
                self.message = (
                    f"optimized (-O2): {len(fused)} fused or rewritten node(s) drawn heavy green"
                )
        self.view_graph = g
        self.shown_view = self.view
        groups = [(k, v) for k, v in self.groups.items()]
        scene = build(g, result, groups, fused=fused)
        t1 = time.perf_counter()
        self.canvas.set_scene(scene)
        self.timings = {"scene": t1 - t0, **self.canvas.timings}
        self._update_side()

    def _derive(self, view: str, base: Graph) -> None:
        if self._deriving is not None and self._deriving[0] == view and self._deriving[1] is base:
            return
        self._deriving = (view, base)
        self.say(f"computing the {view} graph…")

        def work() -> None:
            try:
                if view == "backward":
                    g, fused = actions.backward_graph(base), set()
                else:
                    g, fused = actions.optimized_graph(base)
            except Exception as err:  # a pass failing must not end the session
                self.call_from_thread(self._derived_done, view, base, None, set(), err)
                return
            self.call_from_thread(self._derived_done, view, base, g, fused, None)

        self.run_worker(work, thread=True, group="derive", exclusive=True)

    def _derived_done(
        self, view: str, base: Graph, g: Graph | None, fused: set, err: Exception | None
    ) -> None:
        if self._deriving is not None and self._deriving[1] is base:
            self._deriving = None
        if err is not None:
            msg = err.message if isinstance(err, GraphError) else f"{type(err).__name__}: {err}"
            if self.view == view:
                self.view = "forward"
                self.refresh_view()
            self.say(f"{view} view: {msg}", error=True)
            return
        self._derived = (view, base, g, fused)
        if self.view != view:
            return
        if not self.groups and len(g.nodes) > FOLD_ABOVE:
            self.groups = fold_all_clusters(g)
        changed = self.shown_view != view
        self.refresh_view()
        if changed:
            self._show_new_view()
        if self.groups and changed:
            self.say(f"{len(g.nodes)} nodes: gradient clusters folded (Z unfolds)")

    def _show_new_view(self) -> None:
        sel = self.prev_selection
        self.canvas.scroll_to(0, 0, animate=False)
        self.canvas.select(sel if sel in self.canvas.scene.boxes else None)
        if self.selected is None:
            self.canvas.reveal_first()
        self.say(
            f"{self.view} view"
            + (
                " — select a forward op to see its gradient nodes"
                if self.view == "backward"
                else ""
            )
        )

    def _update_side(self) -> None:
        sel = self.selected
        prob = self.doc.result.problem_for(sel) if sel and self.shown_view == "forward" else None
        editable = self.shown_view == "forward"
        box = self.canvas.scene.boxes.get(sel) if sel and self.canvas.scene else None
        self.inspector.show(
            self.view_graph,
            sel if editable or sel in self.view_graph.nodes or box is not None else None,
            prob.status(self.doc.graph) if prob else None,
            box.members if box is not None else (),
        )
        self._update_status()

    def _update_status(self) -> None:
        parts = []
        dirty = "●" if self.doc.dirty else " "
        parts.append(_esc(f"{dirty} {Path(self.doc.title).name} [{self.view}]"))
        if self.doc.result.problems:
            p = self.doc.result.problems[0]
            parts.append(f"[b red]✗ {_esc(p.status(self.doc.graph))}[/]")
        elif self.message:
            parts.append(_esc(self.message))
        elif self.shown_view != "forward":
            parts.append(f"{len(self.view_graph.nodes)} nodes in the {self.shown_view} graph")
        else:
            n = len(self.doc.graph.nodes)
            parts.append(f"✓ {n} nodes, {len(self.doc.graph.params)} params")
        self._editor().query_one("#status", Static).update("  ".join(parts))

    def say(self, message: str, error: bool = False) -> None:
        self.message = message
        if error:
            self.notify(message, severity="error", timeout=6)
        if self.screen_stack and any(isinstance(s, EditorScreen) for s in self.screen_stack):
            self._update_status()

    def on_graph_canvas_selected(self, event: GraphCanvas.Selected) -> None:
        if event.name is not None:
            self.message = ""
        if self.shown_view == "backward" and event.name:
            self._show_gradients(event.name)
        self._update_side()

    # -------------------------------------------------------------- views
    def action_view(self, view: str) -> None:
        self.prev_selection = self.selected
        self.view = view
        self.groups.clear()
        self.refresh_view()
        if self.shown_view == view:
            self._show_new_view()

    def _show_gradients(self, name: str) -> None:
        g = self.view_graph
        grads = grad_nodes(g, name)
        read = sorted(
            {
                v
                for n in grads
                for v in n.inputs
                if v in g.inputs or (v in g.nodes and not g.nodes[v].tags.get("grad"))
            }
        )
        self.canvas.matches = {n.name for n in grads} | set(read)
        self.canvas.refresh()
        self.canvas._rows.clear()
        if grads:
            self.message = (
                f"{name}: {len(grads)} gradient node(s); they read "
                f"{', '.join(read) or 'no activations'}"
            )

    def action_summary(self) -> None:
        if not self.doc.ok:
            self.say("the summary needs a graph without errors", error=True)
            return
        self.push_screen(TextScreen("Parameters and FLOPs", actions.summary_report(self.doc.graph)))

    def action_memory(self) -> None:
        self._run_report("Memory plan", actions.memory_report)

    def action_help(self) -> None:
        lines = ["Keys (every action is also in the command palette, ctrl+p):", ""]
        for k, _, _, title, _ in KEYS:
            keys = k.replace("slash", "/").replace("question_mark", "?")
            lines.append(f"  {keys:<14} {title}")
        lines += [
            "",
            "  arrows         walk edges: up = producer, down = consumer, left/right = sibling",
            "  click          select; wheel / pgup / pgdn: pan",
            "  enter          (in the inspector) apply a field; esc leaves it",
            "",
            (
                "Every edit re-infers shapes; an error is drawn red on the node and its input "
                "edges and shown in the status line. Save refuses until it is fixed."
            ),
            "Autosave writes .FILE.autosave beside the file every few seconds.",
        ]
        self.push_screen(TextScreen("graphc edit — help", "\n".join(lines)))

    # ------------------------------------------------------------ actions
    def _require_ok(self) -> bool:
        if not self.doc.ok:
            p = self.doc.result.problems[0]
            self.say(f"fix the error first: {p.status(self.doc.graph)}", error=True)
            return False
        return True

    def _run_report(self, title: str, fn, *args) -> None:
        if not self._require_ok():
            return
        graph = self.doc.graph.copy()
        self.say(f"{title}: running…")

        def work() -> None:
            try:
                text = fn(graph, *args)
            except GraphError as err:
                self.call_from_thread(self.say, f"{title}: {err.message}", True)
                return
            except Exception as err:  # a stage bug must not end the session
                self.call_from_thread(
                    self.say, f"{title} failed: {type(err).__name__}: {err}", True
                )
                return
            self.call_from_thread(self._report_done, title, text)

        self.run_worker(work, thread=True, group="actions", exclusive=False)

    def _report_done(self, title: str, text: str) -> None:
        if "\n" in text:
            self.push_screen(TextScreen(title, text))
            self.say(f"{title}: done")
        else:
            self.say(text)

    def _out_path(self, suffix: str) -> Path:
        base = self.doc.path or Path("untitled.gc")
        return base.with_suffix(suffix)

    def action_compile(self) -> None:
        self._run_report("Compile", actions.compile_onnx, self._out_path(".onnx"))

    def action_render(self) -> None:
        mode = "backward" if self.view == "backward" else "forward"
        self._run_report("Render", actions.render_graphviz, self._out_path(".svg"), mode)

    def action_gradcheck(self) -> None:
        self._run_report("Gradcheck", actions.gradcheck_report)

    def action_train(self) -> None:
        if not self._require_ok():
            return
        from graphc.tui.train_screen import TrainScreen, trainer_available

        why = trainer_available()
        if why:
            self.say(f"training not available: {why}", error=True)
            return
        self.push_screen(TrainScreen(self.doc.graph.copy(), self.doc.path))

    # --------------------------------------------------------- files
    def action_save(self) -> None:
        if self.doc.path is None:
            self.action_save_as()
            return
        path = self._guard(self.doc.save)
        if path is not None:
            self.say(f"saved {path}")

    def action_save_as(self) -> None:
        self.push_screen(
            PromptScreen("Save as (path):", str(self.doc.path or "model.gc")), self._save_as
        )

    def _save_as(self, path: str | None) -> None:
        if path:
            saved = self._guard(self.doc.save, path.strip())
            if saved is not None:
                self.say(f"saved {saved}")

    def action_new_file(self) -> None:
        def start(path: str | None) -> None:
            if not path:
                return
            p = Path(path.strip())
            if p.exists():
                self.say(f"{p} exists; open it with graphc edit {p}", error=True)
                return
            self.doc = Document.new(p)
            self.groups.clear()
            self.refresh_view()
            self.say(f"new graph {p} (a: add op, i: add input)")

        self._ask_unsaved(
            lambda: self.push_screen(PromptScreen("New graph file (path):", "model.gc"), start)
        )

    def _ask_unsaved(self, then) -> None:
        if not self.doc.dirty:
            then()
            return

        def answer(choice: str) -> None:
            if choice == "save":
                if self.doc.path is None or self._guard(self.doc.save) is None:
                    return
            elif choice != "discard":
                return
            then()

        self.push_screen(
            ConfirmScreen(
                f"{self.doc.title} has unsaved changes.",
                [("save", "Save"), ("discard", "Discard"), ("cancel", "Cancel")],
            ),
            answer,
        )

    async def action_quit(self) -> None:
        def leave() -> None:
            self.doc.discard_autosave()  # saved, or the user chose to discard
            self.exit()

        self._ask_unsaved(leave)

    def _autosave(self) -> None:
        try:
            self.doc.autosave()
        except GraphError as err:
            self.say(f"autosave failed: {err.message}", error=True)

    def _watch_disk(self) -> None:
        if self._asking_disk or not self.doc.changed_on_disk():
            return
        self._asking_disk = True

        def answer(choice: str) -> None:
            self._asking_disk = False
            if choice == "reload":
                self._guard(self.doc.reload)
                self.refresh_view()
                self.say("reloaded from disk (u undoes)")

        self.push_screen(
            ConfirmScreen(
                f"{self.doc.title} was changed outside the editor.",
                [("reload", "Reload it"), ("keep", "Keep mine")],
            ),
            answer,
        )

    # --------------------------------------------------------- palette
    def get_system_commands(self, screen: Screen):
        yield from super().get_system_commands(screen)
        for _, action, _, title, _ in KEYS:
            yield SystemCommand(title, f"action {action}", partial(self.run_action, action))


def _esc(text: str) -> str:
    return text.replace("[", r"\[")
