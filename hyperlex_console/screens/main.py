"""The main screen: one tab per pane, the status bar and the footer.

It routes: daemon events and connection changes go to every pane; the job highlighted in the
jobs pane is followed by the logs and loss panes. It does no I/O itself.
"""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, TabbedContent, TabPane

from hyperlex_console.widgets.chat_pane import ChatPane
from hyperlex_console.widgets.jobs_pane import JobsPane
from hyperlex_console.widgets.logs_pane import LogsPane
from hyperlex_console.widgets.loss_pane import LossPane
from hyperlex_console.widgets.pane import Pane
from hyperlex_console.widgets.profiles_pane import ProfilesPane
from hyperlex_console.widgets.scenes_pane import ScenesPane
from hyperlex_console.widgets.status_bar import StatusBar
from hyperlex_console.widgets.tokenizer_pane import TokenizerPane

PANES: list[tuple[str, type[Pane]]] = [
    ("jobs", JobsPane), ("logs", LogsPane), ("loss", LossPane), ("tokenizer", TokenizerPane),
    ("chat", ChatPane), ("scenes", ScenesPane), ("profiles", ProfilesPane)]
# What gets the focus when a tab opens.
FOCUS = {"jobs": "#jobs-table", "logs": "#logs-view", "loss": "#loss-plot",
         "tokenizer": "#tok-input", "chat": "#chat-input", "scenes": "#scenes-query",
         "profiles": "#profiles-table"}


class MainScreen(Screen):
    """Tabs of panes; keys 1-7 (or F1-F7) switch tabs."""

    # Digits switch tabs unless a text box has the focus; F1-F7 always do.
    BINDINGS = [Binding(str(i + 1), f"show_tab('{name}')", name.capitalize(), show=False)
                for i, (name, _) in enumerate(PANES)] + \
        [Binding(f"f{i + 1}", f"show_tab('{name}')", name.capitalize(), show=False,
                 priority=True) for i, (name, _) in enumerate(PANES)]

    def __init__(self, read_only: bool = False) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self):
        with TabbedContent(id="tabs"):
            for i, (name, pane_class) in enumerate(PANES):
                with TabPane(f"{i + 1} {pane_class.title}", id=f"tab-{name}"):
                    yield pane_class(id=f"pane-{name}")
        yield StatusBar(read_only=self.read_only, id="status-bar")
        yield Footer()

    def on_mount(self) -> None:
        self._panes = self.panes  # looked up once: events arrive many times a second
        self.call_after_refresh(self.action_show_tab, "jobs")

    def pane(self, name: str) -> Any:
        return self.query_one(f"#pane-{name}", Pane)

    @property
    def panes(self) -> list[Pane]:
        return [self.pane(name) for name, _ in PANES]

    @property
    def status_bar(self) -> StatusBar:
        return self.query_one(StatusBar)

    def action_show_tab(self, name: str) -> None:
        self.query_one(TabbedContent).active = f"tab-{name}"
        target = self.pane(name).query(FOCUS[name])
        if target:
            target.first().focus()

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        name = str(event.pane.id).removeprefix("tab-")
        for other, _ in PANES:
            pane = self.pane(other)
            was_shown, pane.shown = pane.shown, other == name
            if pane.shown and not was_shown:
                pane.handle_shown()
        target = self.pane(name).query(FOCUS.get(name, "*"))
        if target and not (self.focused and self.pane(name) in self.focused.ancestors):
            target.first().focus()

    def run_pane_action(self, pane: str, action: str) -> None:
        """Open a pane and run one of its actions (the command palette's entries)."""
        self.action_show_tab(pane)
        self.call_after_refresh(self.pane(pane).run_action, action)

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
