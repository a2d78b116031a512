"""App-wide messages: what the daemon link tells the screens (past-tense names).

Messages that belong to one widget live nested in that widget's class instead. Nothing here does
I/O or knows about panes.
"""

from __future__ import annotations

from typing import Any

from textual.message import Message


class ConnectionChanged(Message):
    """The link to the daemon changed state: `connecting`, `connected` or `reconnecting`."""

    def __init__(self, state: str, endpoint: str, detail: str = "") -> None:
        super().__init__()
        self.state = state
        self.endpoint = endpoint
        self.detail = detail


class EventsReceived(Message):
    """A batch of daemon events (`daemon.client.Event`), in arrival order."""

    def __init__(self, events: list[Any]) -> None:
        super().__init__()
        self.events = events


class StatusUpdated(Message):
    """A fresh reply to the daemon's `status` request, plus what the console measured itself."""

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__()
        self.status = status
