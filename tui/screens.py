"""Modal screens: prompts, confirmations, help, and text reports."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, ScrollableContainer, Vertical
from textual.screen import ModalScreen
from textual.suggester import SuggestFromList
from textual.widgets import Button, Input, Label, Static


class PromptScreen(ModalScreen[str | None]):
    """Ask for one line of text (with optional completion); dismisses with it or None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(
        self,
        question: str,
        value: str = "",
        suggestions: list[str] | None = None,
        placeholder: str = "",
    ) -> None:
        super().__init__()
        self.question = question
        self.value = value
        self.suggestions = suggestions or []
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question", markup=False)
            suggester = SuggestFromList(self.suggestions) if self.suggestions else None
            yield Input(
                self.value, placeholder=self.placeholder, suggester=suggester, id="prompt-input"
            )
            if self.suggestions:
                shown = ", ".join(self.suggestions[:12])
                more = " …" if len(self.suggestions) > 12 else ""
                yield Static(f"{shown}{more}", classes="hint", markup=False)
            yield Label("enter: ok   tab: complete   esc: cancel", classes="hint")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[str]):
    """A question with a few answers (buttons); dismisses with the chosen key."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "choose('cancel')", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.question = question
        self.choices = choices  # (key, label)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, classes="question", markup=False)
            with Horizontal(classes="buttons"):
                for key, label in self.choices:
                    yield Button(label, id=f"choice-{key}")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id.removeprefix("choice-"))

    def action_choose(self, key: str) -> None:
        self.dismiss(key)


class TextScreen(ModalScreen[None]):
    """A scrolling page of text (help, reports)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "close", "Close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="page"):
            yield Label(self.title_text, classes="question")
            with ScrollableContainer(classes="report"):
                yield Static(self.text, markup=False, classes="report-text")
            yield Label("esc: close", classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
