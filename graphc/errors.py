"""User-facing errors: every failure says where it happened and what would fix it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceLoc:
    """A place in a model file: 1-based line, 0-based column, and the line's text."""

    file: str | None
    line: int
    col: int
    end_col: int | None = None
    text: str | None = None

    def __str__(self) -> str:
        return f"{self.file or '<string>'}:{self.line}:{self.col + 1}"


class GraphError(Exception):
    """A problem in a graph or model file, with its location and a hint."""

    def __init__(
        self,
        message: str,
        *,
        loc: SourceLoc | None = None,
        node: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.node = node
        self.hint = hint

    def with_context(self, *, loc: SourceLoc | None = None, node: str | None = None) -> GraphError:
        """Fill in a location or node name that the raiser did not know."""
        if self.loc is None and loc is not None:
            self.loc = loc
        if self.node is None and node is not None:
            self.node = node
        return self

    def format(self) -> str:
        """The message as the CLI prints it: `where: error: what`, the source line, a hint."""
        where = str(self.loc) if self.loc else (f"node '{self.node}'" if self.node else "graphc")
        head = f"{where}: error: {self.message}"
        if self.loc and self.node and f"'{self.node}'" not in self.message:
            head += f" (node '{self.node}')"
        lines = [head]
        if self.loc and self.loc.text is not None:
            text = self.loc.text.rstrip("\n")
            lines.append(f"    {text}")
            width = max(1, (self.loc.end_col or self.loc.col + 1) - self.loc.col)
            lines.append("    " + " " * self.loc.col + "^" * width)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def closest(name: str, candidates) -> str | None:
    """The candidate nearest to `name` (for 'did you mean …?' hints), or None."""
    import difflib

    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None
