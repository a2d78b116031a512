"""The base of every pane: access to the daemon link, read-only checks, plain error lines.

A pane gets daemon events and connection changes from the main screen by method calls
(`handle_events`, `handle_connected`, `handle_shown`); it sends requests with
`await self.request(...)` from its own async workers, never on the UI thread's critical path.
A pane whose tab is not open keeps its data current but leaves its widgets alone (`shown` is
False) and draws once when its tab opens: a stream of events then costs no layout or render
work off screen.
"""

from __future__ import annotations

from typing import Any

from textual.containers import Vertical

from hyperlex_console.link import DaemonLink, describe, is_unavailable

# Actions that change the daemon's state: hidden and refused in read-only mode.
MUTATING_ACTIONS = {"submit", "cancel", "resume", "use_profile", "send", "stop"}


class Pane(Vertical):
    """A tab's content."""

    title = "pane"
    shown = False  # set by the main screen: this pane's tab is the open one
    stale = False  # something changed while hidden: draw it in `handle_shown`

    @property
    def link(self) -> DaemonLink:
        return self.app.link  # type: ignore[attr-defined]

    @property
    def read_only(self) -> bool:
        return bool(getattr(self.app, "read_only", False))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.read_only and action in MUTATING_ACTIONS:
            return False
        return True

    async def request(self, verb: str, *args: Any, lane: str = "control", **kwargs: Any) -> Any:
        """One daemon request (raises what `DaemonLink.call` raises)."""
        return await self.link.call(verb, *args, lane=lane, **kwargs)

    def handle_connected(self) -> None:
        """The link is (again) connected: reload what the pane shows."""

    def handle_events(self, events: list[Any]) -> None:
        """A batch of daemon events arrived."""

    def handle_shown(self) -> None:
        """The pane's tab opened: draw what changed while it was hidden."""

    def explain(self, exc: BaseException, what: str) -> str:
        """A line for the pane: "not available" stated plainly, other failures as failures."""
        if is_unavailable(exc):
            return f"{what} is not available on this daemon: {describe(exc)}"
        return f"{what} failed: {describe(exc)}"
