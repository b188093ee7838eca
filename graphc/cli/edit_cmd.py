"""graphc edit FILE: the terminal graph editor (Textual)."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "edit",
        help="draw, edit, inspect and train a graph in the terminal",
        description="Open FILE (or start it, if it does not exist) in the Textual graph "
        "editor. Shapes are re-inferred on every edit; saving writes canonical "
        ".gc text atomically. Press ? inside for the keys.",
    )
    p.add_argument("file", help="a .gc model file (created on first save if missing)")
    p.add_argument(
        "--layout",
        choices=("auto", "dot", "simple"),
        default="auto",
        help="layout engine: Graphviz dot (default when installed) or the "
        "built-in layered fallback",
    )
    p.add_argument(
        "--autosave",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="autosave interval beside the file (0 turns it off)",
    )
    return p


def run(args) -> int:
    from graphc.tui.app import GraphApp
    from graphc.tui.document import Document

    doc = Document.open(args.file)  # a file that does not parse is reported before start-up
    GraphApp(document=doc, engine=args.layout, autosave_s=args.autosave).run()
    return 0
