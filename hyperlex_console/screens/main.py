"""The main screen: one tab per pane, the status bar and the footer.

It routes: daemon events and connection changes go to every pane; the job highlighted in the
jobs pane is followed by the logs and loss panes. It does no I/O itself.

The screen is composed with its tabs, status bar and footer only; the panes are mounted one
a frame after the first frame is on screen, the jobs pane first (the tab bar names them all
from the start), and each pane's module is imported then. `PanesMounted` then tells the app,
which connects to the daemon only from there on, so every pane sees the connection and every
event. Composing all seven up front made the launch to first frame 2.0x a minimal Textual
app's (bench/console.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from textual.binding import Binding
from textual.css.query import NoMatches
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from hyperlex_console.widgets.pane import Pane
from hyperlex_console.widgets.status_bar import StatusBar

if TYPE_CHECKING:
    from hyperlex_console.widgets.jobs_pane import JobsPane

# (name, tab title, the pane's class in hyperlex_console.widgets): a pane's module is imported
# when the pane is mounted, so the first frame waits for the first pane's only.
PANES: list[tuple[str, str, str]] = [
    ("jobs", "Jobs", "jobs_pane.JobsPane"), ("logs", "Logs", "logs_pane.LogsPane"),
    ("loss", "Loss", "loss_pane.LossPane"), ("tokenizer", "Tokenizer",
                                              "tokenizer_pane.TokenizerPane"),
    ("chat", "Chat", "chat_pane.ChatPane"), ("scenes", "Scenes", "scenes_pane.ScenesPane"),
    ("profiles", "Profiles", "profiles_pane.ProfilesPane")]


def pane_class(where: str) -> type[Pane]:
    """The pane class at `module.Class` under hyperlex_console.widgets."""
    module, name = where.rsplit(".", 1)
    return getattr(importlib.import_module(f"hyperlex_console.widgets.{module}"), name)
# What gets the focus when a tab opens.
FOCUS = {"jobs": "#jobs-table", "logs": "#logs-view", "loss": "#loss-plot",
         "tokenizer": "#tok-input", "chat": "#chat-input", "scenes": "#scenes-query",
         "profiles": "#profiles-table"}


class MainScreen(Screen):
    """Tabs of panes; keys 1-7 (or F1-F7) switch tabs."""

    # Digits switch tabs unless a text box has the focus; F1-F7 always do.
    BINDINGS = [Binding(str(i + 1), f"show_tab('{name}')", name.capitalize(), show=False)
                for i, (name, _, _) in enumerate(PANES)] + \
        [Binding(f"f{i + 1}", f"show_tab('{name}')", name.capitalize(), show=False,
                 priority=True) for i, (name, _, _) in enumerate(PANES)]

    class PanesMounted(Message):
        """Every pane is mounted: the app may connect."""

    def __init__(self, read_only: bool = False) -> None:
        super().__init__()
        self.read_only = read_only
        self.panes_mounted = False
        self._panes: list[Pane] = []

    def compose(self):
        with TabbedContent(id="tabs"):
            for i, (name, title, _) in enumerate(PANES):
                yield TabPane(f"{i + 1} {title}", id=f"tab-{name}")
        yield StatusBar(read_only=self.read_only, id="status-bar")
        yield Footer()

    def on_mount(self) -> None:
        self.call_after_refresh(self._mount_pane, 0)

    async def _mount_pane(self, index: int) -> None:
        """Mount pane `index`, then the next after the screen has drawn this one: the first
        frame has the tabs, the next the jobs pane, and so on."""
        name, _, where = PANES[index]
        await self.query_one(f"#tab-{name}", TabPane).mount(pane_class(where)(id=f"pane-{name}"))
        if self.query_one(TabbedContent).active == f"tab-{name}":
            self._show(name)  # its tab opened before the pane was there (the first: at once)
        if index + 1 < len(PANES):
            self.call_after_refresh(self._mount_pane, index + 1)
            return
        self._panes = self.panes  # looked up once: events arrive many times a second
        self.panes_mounted = True
        self.post_message(self.PanesMounted())

    def pane(self, name: str) -> Any:
        return self.query_one(f"#pane-{name}", Pane)

    def _mounted(self, name: str) -> Pane | None:
        try:
            return self.pane(name)
        except NoMatches:  # not mounted yet (just after the first frame)
            return None

    @property
    def panes(self) -> list[Pane]:
        return [pane for name, _, _ in PANES if (pane := self._mounted(name)) is not None]

    @property
    def status_bar(self) -> StatusBar:
        return self.query_one(StatusBar)

    def action_show_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = f"tab-{name}"
        pane = self._mounted(name)
        target = pane.query(FOCUS[name]) if pane is not None else None
        if target:
            target.first().focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._show(str(event.pane.id).removeprefix("tab-"))

    def _show(self, name: str) -> None:
        """`name`'s tab is the open one: tell the panes, focus it."""
        for other in self.panes:
            was_shown, other.shown = other.shown, other.id == f"pane-{name}"
            if other.shown and not was_shown:
                other.handle_shown()
        pane = self._mounted(name)
        if pane is None:
            return  # mounted in a moment; shown then
        target = pane.query(FOCUS.get(name, "*"))
        if target and not (self.focused and pane in self.focused.ancestors):
            target.first().focus()

    def run_pane_action(self, pane: str, action: str) -> None:
        """Open a pane and run one of its actions (the command palette's entries)."""
        self.action_show_tab(pane)
        target = self._mounted(pane)
        if target is not None:
            self.call_after_refresh(target.run_action, action)

    # --- routing --------------------------------------------------------------------------------

    def dispatch_events(self, events: list[Any]) -> None:
        for pane in self._panes:
            pane.handle_events(events)

    def dispatch_connected(self) -> None:
        for pane in self.panes:
            pane.handle_connected()

    def on_jobs_pane_job_selected(self, message: JobsPane.JobSelected) -> None:
        self.pane("logs").follow(message.job_id)
        self.pane("loss").follow(message.job_id)

    def on_jobs_pane_logs_requested(self, message: JobsPane.LogsRequested) -> None:
        self.pane("logs").follow(message.job_id)
        self.action_show_tab("logs")
