"""The status bar: endpoint, profile, device and memory, connection state, read-only flag.

It only renders what it is given (`set_connection`, `set_status`); it does no I/O.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

STATE_STYLE = {"connected": ("●", "green"), "connecting": ("◌", "yellow"),
               "reconnecting": ("◌", "red")}


def describe_device(device: Any, fallback: str = "") -> str:
    """`cuda:0 H200 12.3/139.0 GiB`, `cpu`, or the profile's device when the daemon is silent."""
    if not isinstance(device, dict):
        return fallback
    gpus = device.get("devices") or []
    if gpus:
        gpu = gpus[0]
        used = (gpu["total_bytes"] - gpu["free_bytes"]) / 2**30
        return f"cuda:{gpu['index']} {gpu['name']} {used:.1f}/{gpu['total_bytes'] / 2**30:.1f} GiB"
    if device.get("cuda") is False:
        return "cpu"
    return fallback


class StatusBar(Static):
    """One line at the bottom of the screen."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    """

    state: reactive[str] = reactive("connecting")
    endpoint: reactive[str] = reactive("local")
    profile: reactive[str] = reactive("?")
    device: reactive[str] = reactive("")
    memory: reactive[str] = reactive("")
    model: reactive[str] = reactive("")
    detail: reactive[str] = reactive("")

    def __init__(self, read_only: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.read_only = read_only

    def set_connection(self, state: str, endpoint: str, detail: str = "") -> None:
        self.state, self.endpoint, self.detail = state, endpoint, detail

    def set_status(self, status: dict[str, Any], device: str = "") -> None:
        self.profile = str(status.get("profile", "?"))
        loaded = (status.get("models") or {}).get("loaded")
        self.model = f"model {loaded.rsplit('/', 1)[-1]}" if loaded else "no model loaded"
        rss = status.get("rss_mb")
        memory = status.get("memory") or {}
        if isinstance(memory.get("rss_bytes"), int):  # the daemon's own figure, remote too
            jobs = sum(v for v in (memory.get("jobs_rss_bytes") or {}).values()
                       if isinstance(v, int))
            rss = (memory["rss_bytes"] + jobs) / 2**20
        self.memory = f"{rss:.0f} MB" if isinstance(rss, (int, float)) else ""
        self.device = describe_device(status.get("device"), device)

    def render(self) -> Text:
        mark, colour = STATE_STYLE.get(self.state, ("?", "yellow"))
        label = "reconnecting…" if self.state == "reconnecting" else self.state
        parts: list[Text] = [Text.assemble((f"{mark} {label}", f"bold {colour}"))]
        parts.append(Text(self.endpoint))
        parts.append(Text(f"profile {self.profile}", style="bold"))
        parts += [Text(p) for p in (self.device, self.memory, self.model) if p]
        if self.read_only:
            parts.append(Text("read-only", style="bold reverse"))
        line = Text(" │ ", style="dim").join(parts)
        if self.state != "connected" and self.detail:
            line.append(f"  {self.detail}", style="dim")
        return line
