"""One chat message: who said it, the text (growing while tokens stream), and a footer line."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

ROLE_STYLE = {"user": "bold green", "assistant": "bold cyan", "error": "bold red",
              "context": "bold yellow"}


class ChatMessage(Static):
    """A message; `append` adds streamed text, `finish` adds the footer (tokens/s, reason)."""

    DEFAULT_CSS = """
    ChatMessage { padding: 0 1; margin: 0 0 1 0; }
    """

    def __init__(self, role: str, label: str, text: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.role = role
        self.label = label
        self.text = text
        self.footer = ""
        self.stale = False  # text arrived while hidden: `_draw` when shown

    def on_mount(self) -> None:
        self._draw()

    def _draw(self) -> None:
        self.stale = False
        body = Text.assemble((f"{self.label}\n", ROLE_STYLE.get(self.role, "bold")),
                             (self.text or ("…" if self.role == "assistant" else ""),
                              "red" if self.role == "error" else ""))
        if self.footer:
            body.append(f"\n{self.footer}", style="dim")
        self.update(body)

    def append(self, text: str, draw: bool = True) -> None:
        self.text += text
        if draw:
            self._draw()
        else:
            self.stale = True

    def finish(self, footer: str, error: str | None = None) -> None:
        if error:
            self.role = "error"
            self.text = f"{self.text}\n{error}" if self.text else error
        self.footer = footer
        self._draw()
