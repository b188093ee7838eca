"""graphc.tui: the Textual graph editor behind `graphc edit` (see docs/editor.md)."""
