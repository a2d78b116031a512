"""A scene's card: register, span, fields, markers, links and its exact source text."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


def scene_table(scene: dict[str, Any]) -> Table:
    table = Table.grid(padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    for key in ("id", "doc", "span", "register", "level", "parent"):
        if scene.get(key) is not None:
            table.add_row(key, str(scene[key]))
    for name, value in (scene.get("fields") or {}).items():
        table.add_row(f"field {name}", ", ".join(map(str, value)) if isinstance(value, list)
                      else str(value))
    if scene.get("markers"):
        table.add_row("markers", ", ".join(map(str, scene["markers"])))
    for link in scene.get("links") or []:
        table.add_row("link", f"{link.get('kind', '?')} → {link.get('to', '?')}")
    return table


class SceneCardScreen(ModalScreen[None]):
    """Read-only; Esc closes it."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, scene: dict[str, Any]) -> None:
        super().__init__()
        self.scene = scene

    def compose(self):
        with VerticalScroll(id="scene-card", classes="dialog"):
            yield Label(f"[b]scene {self.scene.get('id', '?')}[/b]")
            yield Static(scene_table(self.scene))
            yield Static(self.scene.get("text") or "", classes="scene-text")
