"""The editor's editing commands, as a mixin of the App: add, connect, delete, rename,
attributes, outputs and loss, undo/redo, find, jump to errors, folds.

Each command reads the selection, asks for what it needs in a dialog, and makes
one Document edit; the App redraws. Kept apart from app.py so each file reads
as one responsibility: this one is "what the keys do to the model".
"""

from __future__ import annotations

import re
from functools import partial

from graphc import Graph, GraphError
from graphc.ops.registry import all_ops, get_op
from graphc.tui import edits
from graphc.tui.inspector import Inspector
from graphc.tui.scene import fold_all_blocks, fold_all_clusters, grad_nodes, residual_block
from graphc.tui.screens import PromptScreen


class EditingMixin:
    """Editing actions of GraphApp (uses its doc, canvas, inspector, say, refresh_view)."""

    def _guard(self, fn, *args, **kwargs):
        """Run an edit; a GraphError becomes a message, not a crash."""
        try:
            return fn(*args, **kwargs)
        except GraphError as err:
            self.say(err.message + (f" — {err.hint}" if err.hint else ""), error=True)
            return None

    def _edit(self, fn, *args, select: str | None = None, **kwargs):
        if self.view != "forward":
            self.view = "forward"
        out = self._guard(fn, *args, **kwargs)
        self.refresh_view()
        if select is not None:
            self.canvas.select(select)
        if self.doc.result.problems:
            self.bell()
        return out

    def _read_only(self) -> bool:
        if self.view == "forward":
            return False
        self.say(
            f"the {self.view} view is read-only: press 1 for the forward graph to edit it",
            error=True,
        )
        return True

    def _need_selection(self, what: str = "node", edit: bool = True) -> str | None:
        if edit and self._read_only():
            return None
        sel = self.selected
        if sel is None:
            self.say(f"select a {what} first (click it, or use the arrow keys)", error=True)
        elif (
            edit
            and sel not in self.doc.graph.nodes
            and sel not in self.doc.graph.inputs
            and sel not in self.groups
        ):
            self.say(f"'{sel}' is not part of the model", error=True)
            return None
        return sel

    def action_add_op(self) -> None:
        if self._read_only():
            return
        ops = all_ops()
        cmds = [
            (name, partial(self._add_op, name), f"{op.category}: {op.doc}")
            for name, op in ops.items()
        ]
        self.search_commands(cmds, placeholder="Add op… (type to search the op registry)")

    def action_insert_op(self) -> None:
        sel = self._need_selection()
        if sel is None or sel in self.groups:
            return
        cmds = [
            (name, partial(self._add_op, name, True), f"{op.category}: {op.doc}")
            for name, op in all_ops().items()
        ]
        self.search_commands(cmds, placeholder=f"Insert op after {sel} (its readers move to it)…")

    def _add_op(self, opname: str, insert: bool = False) -> None:
        sel = self.selected
        inputs = []
        if sel is not None and (sel in self.doc.graph.nodes or sel in self.doc.graph.inputs):
            inputs = [sel]
        if insert and inputs:
            name = self._edit(self.doc.insert_after, opname, sel)
        else:
            name = self._edit(
                self.doc.add_node,
                opname,
                inputs,
                None,
                None,
                sel if sel in self.doc.graph.nodes else None,
            )
        if name:
            self.canvas.select(name)
            if any(a.required for a in get_op(opname).attrs.values()):
                self.action_edit()

    def action_add_input(self) -> None:
        if self._read_only():
            return
        self.push_screen(
            PromptScreen("New graph input: NAME [SHAPE] DTYPE", "x [N, 2] float32"), self._add_input
        )

    def _add_input(self, text: str | None) -> None:
        if not text:
            return
        m = re.fullmatch(r"\s*(\w+)\s*(\[[^\]]*\])?\s*(\w+)?\s*", text)
        if not m:
            self.say("write it as: name [N, 2] float32", error=True)
            return
        shape = self._guard(edits.parse_shape, m.group(2) or "")
        if shape is None:
            return
        self._edit(
            self.doc.add_input, m.group(1), shape, m.group(3) or "float32", select=m.group(1)
        )

    def action_connect(self) -> None:
        sel = self._need_selection()
        if sel is None:
            return
        if sel not in self.doc.graph.nodes:
            self.say(
                f"'{sel}' has no inputs: select the node that should read it, then c", error=True
            )
            return
        slots = edits.data_slots(self.doc.graph, sel)
        desc = ", ".join(f"{s}←{v or '·'}" for s, v in slots)
        values = sorted(
            self.doc.graph.value_names()
            - set(self.doc.graph.params)
            - set(self.doc.graph.constants)
            - set(self.doc.graph.nodes[sel].outputs)
        )
        self.push_screen(
            PromptScreen(
                f"Connect into {sel} ({desc}). Type VALUE or SLOT=VALUE", suggestions=values
            ),
            partial(self._connect, sel),
        )

    def _connect(self, node: str, text: str | None) -> None:
        if not text:
            return
        slots = edits.data_slots(self.doc.graph, node)
        names = [s for s, _ in slots]
        if "=" in text:
            slot_name, value = (s.strip() for s in text.split("=", 1))
            if slot_name not in names:
                self.say(
                    f"{node} has no input '{slot_name}' (inputs: {', '.join(names)})", error=True
                )
                return
            slot = names.index(slot_name)
        else:
            value = text.strip()
            free = [i for i, (_, v) in enumerate(slots) if not v]
            op = get_op(self.doc.graph.nodes[node].op)
            slot = free[0] if free else (len(slots) if op.variadic else 0)
        self._edit(self.doc.connect, node, slot, value, select=node)

    def action_disconnect(self) -> None:
        sel = self._need_selection()
        if sel is None or sel not in self.doc.graph.nodes:
            return
        slots = [(i, s) for i, (s, v) in enumerate(edits.data_slots(self.doc.graph, sel)) if v]
        if len(slots) == 1:
            self._edit(self.doc.disconnect, sel, slots[0][0], select=sel)
            return
        self.push_screen(
            PromptScreen(f"Disconnect which input of {sel}?", suggestions=[s for _, s in slots]),
            partial(self._disconnect, sel),
        )

    def _disconnect(self, node: str, slot_name: str | None) -> None:
        names = [s for s, _ in edits.data_slots(self.doc.graph, node)]
        if slot_name and slot_name.strip() in names:
            self._edit(self.doc.disconnect, node, names.index(slot_name.strip()), select=node)

    def action_delete(self, subtree: bool = False) -> None:
        sel = self._need_selection()
        if sel is None:
            return
        if sel in self.groups:
            members = self.groups.pop(sel)
            self._edit(self._delete_many, members)
            return
        self._edit(self.doc.delete, sel, subtree)
        self.say(f"deleted {sel}{' and what depends on it' if subtree else ''} (u undoes)")

    def _delete_many(self, names: list[str]) -> None:
        def fn(g: Graph) -> None:
            for n in names:
                if n in g.nodes:
                    edits.delete(g, n)

        self.doc.apply(f"delete {len(names)} nodes", fn)

    def action_delete_subtree(self) -> None:
        self.action_delete(subtree=True)

    def action_rename(self) -> None:
        sel = self._need_selection()
        if sel is not None and (sel in self.doc.graph.nodes or sel in self.doc.graph.inputs):
            self.push_screen(PromptScreen(f"Rename {sel} to:", sel), partial(self._rename, sel))

    def _rename(self, old: str, new: str | None) -> None:
        if new and new != old:
            self._edit(self.doc.rename, old, new, select=new.strip())

    def action_toggle_output(self) -> None:
        sel = self._need_selection()
        if sel is not None and sel not in self.groups:
            on = self._edit(self.doc.toggle_output, sel, select=sel)
            self.say(f"{sel} is {'now' if on else 'no longer'} a graph output")

    def action_set_loss(self) -> None:
        sel = self._need_selection()
        if sel is not None and sel not in self.groups:
            new = None if self.doc.graph.loss == sel else sel
            self._edit(self.doc.set_loss, new, select=sel)
            self.say(f"minimize({new})" if new else "no loss set")

    def action_edit(self) -> None:
        if self._need_selection() is None:
            return
        self.inspector.focus_next_show = True
        self._update_side()

    def on_inspector_attrs_changed(self, event: Inspector.AttrsChanged) -> None:
        self._edit(self.doc.set_attrs, event.node, event.attrs, select=event.node)
        self.canvas.focus()

    def on_inspector_input_type_changed(self, event: Inspector.InputTypeChanged) -> None:
        self._edit(self.doc.set_input_type, event.name, event.shape, event.dtype, select=event.name)
        self.canvas.focus()

    def action_undo(self) -> None:
        sel = self.selected
        label = self.doc.undo()
        self.refresh_view()
        self.canvas.select(sel if sel in self.canvas.scene.boxes else None)
        self.say(f"undid: {label}" if label else "nothing to undo")

    def action_redo(self) -> None:
        sel = self.selected
        label = self.doc.redo()
        self.refresh_view()
        self.canvas.select(sel if sel in self.canvas.scene.boxes else None)
        self.say(f"redid: {label}" if label else "nothing to redo")

    # ---------------------------------------------------- find, errors, fold
    def action_find(self) -> None:
        names = list(self.view_graph.nodes) + list(self.view_graph.inputs)
        self.push_screen(PromptScreen("Find node (name or op):", suggestions=names), self._find)

    def _find(self, text: str | None) -> None:
        if not text:
            return
        q = text.strip().lower()
        g = self.view_graph
        hits = [
            n
            for n in list(g.inputs) + list(g.nodes)
            if q in n.lower() or (n in g.nodes and q in g.nodes[n].op.lower())
        ]
        self.matches = hits
        self.canvas.matches = set(hits)
        if not hits:
            self.say(f"no node matches '{text}'", error=True)
            return
        self.canvas.select(hits[0])
        self.say(f"{len(hits)} match(es) for '{text}' (n: next)")

    def action_next_match(self) -> None:
        if not self.matches:
            return
        sel = self.selected
        i = self.matches.index(sel) + 1 if sel in self.matches else 0
        self.canvas.select(self.matches[i % len(self.matches)])

    def action_next_error(self) -> None:
        probs = [p for p in self.doc.result.problems if p.node]
        if not probs:
            self.say("no errors")
            return
        if self.view != "forward":
            self.view = "forward"
            self.refresh_view()
        names = [p.node for p in probs]
        sel = self.selected
        i = names.index(sel) + 1 if sel in names else 0
        self.canvas.select(names[i % len(names)])

    def action_collapse(self) -> None:
        sel = self._need_selection(edit=False)
        if sel is None:
            return
        if sel in self.groups:
            del self.groups[sel]
            self.refresh_view()
            return
        if self.view == "backward" and sel in self.view_graph.nodes:
            members = [n.name for n in grad_nodes(self.view_graph, sel)]
            name = f"∇{sel}"
        else:
            members = sorted(residual_block(self.view_graph, sel))
            name = f"{sel}…"
        if not members:
            self.say(
                "z folds the block between a node with several consumers and the node "
                "where its paths meet again (select such a fork)",
                error=True,
            )
            return
        self.groups[name] = members
        self.refresh_view()
        self.canvas.select(name)

    def action_fold_all(self) -> None:
        """Fold every residual block (forward) or every node's gradient cluster and every
        expanded composite (backward, optimized); with folds present, unfold them all."""
        if self.groups:
            self.groups.clear()
        else:
            self.groups = (
                fold_all_blocks(self.view_graph)
                if self.view == "forward"
                else fold_all_clusters(self.view_graph)
            )
        sel = self.selected
        self.refresh_view()
        if sel is not None and sel in self.canvas.scene.boxes:
            self.canvas.select(sel)
        else:
            self.canvas.select(None)
            self.canvas.reveal_first()
        self.say(f"{len(self.groups)} fold(s); Z again unfolds" if self.groups else "unfolded")
