"""The Textual app: compose the main screen, start the daemon link, route its messages.

Kept thin: panes do their own work; this file wires the link to the screen, fills the
command palette with every action, and holds the console's options (profile, read-only).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.screen import Screen

from hyperlex_console.endpoint import Endpoint
from hyperlex_console.link import DaemonLink, describe
from hyperlex_console.messages import ConnectionChanged, EventsReceived, StatusUpdated
from hyperlex_console.screens.main import PANES, MainScreen
from hyperlex_console.widgets.pane import MUTATING_ACTIONS
from hyperlex_console.widgets.status_bar import StatusBar

# (title, help, pane, action): one command-palette entry per action.
PALETTE = [
    ("Jobs: submit a job", "train, eval, export, scenes, memory or selftest", "jobs", "submit"),
    ("Jobs: cancel the selected job", "SIGTERM, checkpoint, stop", "jobs", "cancel"),
    ("Jobs: resume the selected job", "run it again with the same parameters", "jobs",
     "resume"),
    ("Jobs: open the selected job's logs", "follow it in the logs pane", "jobs", "open_logs"),
    ("Jobs: open the selected job's run card", "parameters, result, error", "jobs",
     "open_card"),
    ("Jobs: refresh", "reload the job list", "jobs", "refresh"),
    ("Logs: filter", "show only lines containing some text", "logs", "filter"),
    ("Logs: pause or resume", "hold the view still", "logs", "pause"),
    ("Logs: jump to the end", "follow new lines again", "logs", "jump_end"),
    ("Logs: load older lines", "page history from the daemon", "logs", "older"),
    ("Tokenizer: run the edge-case suite", "round trips and hypertoken injection", "tokenizer",
     "edge_suite"),
    ("Chat: stop the answer", "cancel streaming", "chat", "stop"),
    ("Chat: copy the last answer", "to the clipboard", "chat", "copy"),
    ("Chat: toggle A/B mode", "base and adapter side by side", "chat", "toggle_ab"),
    ("Chat: next target", "base, routed, or an adapter from a training job", "chat",
     "next_target"),
    ("Scenes: search the scene memory", "nearest scenes to a query", "scenes", "focus_query"),
    ("Profiles: use the highlighted profile", "the daemon unloads and reloads", "profiles",
     "use_profile"),
    ("Profiles: check the highlighted profile", "validate its TOML", "profiles", "check"),
]


class HyperlexConsole(App):
    """The operator console.

    Args:
        endpoint: where the daemon is.
        profile: the profile the daemon should use (switched on connect unless read-only).
        read_only: watch only: no submit, cancel, chat or profile switch.
        startup_note: what start-up did (shown once as a notification).
        connect: False for tests that render panes without a daemon.
    """

    CSS_PATH = "console.tcss"
    TITLE = "hyperlex"
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", priority=True),
                Binding("colon", "command_palette", "Commands", show=False)]

    def __init__(self, endpoint: Endpoint | None = None, profile: str | None = None,
                 read_only: bool = False, startup_note: str = "", connect: bool = True) -> None:
        super().__init__()
        self.endpoint = endpoint or Endpoint()
        self.profile = profile
        self.requested_profile = profile
        self.read_only = read_only
        self.startup_note = startup_note
        self.link = DaemonLink(self.endpoint, self.post_message, may_start=not read_only)
        self._connect = connect
        self._devices: dict[str, str] = {}

    def get_default_screen(self) -> Screen:
        return MainScreen(read_only=self.read_only)

    @property
    def main(self) -> MainScreen:
        """The main screen (always at the bottom of the stack, under any modal)."""
        return self.screen_stack[0]  # type: ignore[return-value]

    def on_mount(self) -> None:
        if self.startup_note:
            self.notify(self.startup_note, title="hyperlexd")

    def on_main_screen_panes_mounted(self, message: MainScreen.PanesMounted) -> None:
        # Connected only once every pane is there: each then sees the connection and events.
        if self._connect:
            self.run_worker(self.link.run(), name="daemon-link", exit_on_error=False)

    def on_unmount(self) -> None:
        self.link.close()

    # --- link messages --------------------------------------------------------------------------

    def _status_bar(self) -> StatusBar | None:
        """The status bar, or None while the screen is not (or no longer) composed."""
        try:
            return self.main.status_bar
        except (NoMatches, IndexError):
            return None

    def on_connection_changed(self, message: ConnectionChanged) -> None:
        bar = self._status_bar()
        if bar is None:  # a link message that arrives while the app shuts down
            return
        bar.set_connection(message.state, message.endpoint, message.detail)
        if message.state == "connected":
            self.profile = self.link.hello.get("profile", self.profile)
            bar.profile = str(self.profile)
            if self.requested_profile and self.requested_profile != self.profile \
                    and not self.read_only:
                self.run_worker(self._use_requested_profile(), exit_on_error=False)
            self.main.dispatch_connected()

    async def _use_requested_profile(self) -> None:
        name, self.requested_profile = self.requested_profile, None
        try:
            reply = await self.link.call("profile_use", name)
        except Exception as exc:
            self.notify(f"could not switch to profile {name}: {describe(exc)}", severity="error")
            return
        self.profile = reply["profile"]
        self.main.status_bar.profile = str(self.profile)
        self.notify(f"the daemon now uses profile {self.profile}")

    def on_events_received(self, message: EventsReceived) -> None:
        if self._status_bar() is not None:
            self.main.dispatch_events(message.events)

    def on_status_updated(self, message: StatusUpdated) -> None:
        self.profile = message.status.get("profile", self.profile)
        bar = self._status_bar()
        if bar is not None:
            bar.set_status(message.status, self._device(str(self.profile)))

    def _device(self, profile: str) -> str:
        """The profile's device, read locally (remote profiles may not exist here)."""
        if not self.endpoint.is_local:
            return ""
        if profile not in self._devices:
            try:
                from engine.profiles import load_profile

                self._devices[profile] = str(load_profile(profile).device.device)
            except Exception:
                self._devices[profile] = ""
        return self._devices[profile]

    # --- command palette ------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for i, (name, title, _) in enumerate(PANES):
            yield SystemCommand(f"Go to {title}", f"key {i + 1}",
                                partial(self.main.action_show_tab, name))
        for title, help_text, pane, action in PALETTE:
            if self.read_only and action in MUTATING_ACTIONS:
                continue
            yield SystemCommand(title, help_text, partial(self.main.run_pane_action, pane,
                                                          action))
