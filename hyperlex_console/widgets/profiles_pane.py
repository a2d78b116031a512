"""The profiles pane: list, show, check and switch the daemon's profile.

Switching asks the daemon (`profile_use`): it drops the loaded model and loads the new
profile's lazily; the pane shows each step. Showing and checking read the profile file when it
is on this machine (over SSH the daemon's paths may not exist here, which the pane says).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.syntax import Syntax
from textual import on, work
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import DataTable, Static

from hyperlex_console.widgets.pane import Pane


def check_profile(path: str) -> tuple[bool, str]:
    """(ok, report) from validating a profile file with engine.profiles."""
    from engine.errors import HyperlexError
    from engine.profiles import load_profile

    try:
        profile = load_profile(path)
    except HyperlexError as exc:
        problems = getattr(exc, "problems", None) or []
        return False, "\n".join([exc.message, *map(str, problems)])
    return True, f"ok: model {profile.model.base}, device {profile.device.device}"


class ProfilesPane(Pane):
    """Profiles table with the highlighted profile shown beside it."""

    title = "Profiles"
    BINDINGS = [Binding("u", "use_profile", "Use"),
                Binding("k", "check", "Check"),
                Binding("g", "refresh", "Refresh", show=False)]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.paths: dict[str, str] = {}
        self.current: str | None = None

    def compose(self):
        yield Static("", id="profiles-note", classes="pane-note")
        with Horizontal():
            table: DataTable = DataTable(id="profiles-table", cursor_type="row")
            table.add_column("", key="mark", width=1)
            table.add_column("PROFILE", key="name")
            yield table
            with VerticalScroll(id="profiles-detail"):
                yield Static("", id="profiles-check")
                yield Static("", id="profiles-show")

    def note(self, text: str) -> None:
        self.query_one("#profiles-note", Static).update(text)

    @property
    def selected(self) -> str | None:
        table = self.query_one("#profiles-table", DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value)

    def handle_connected(self) -> None:
        self.action_refresh()

    @work(exclusive=True, group="profiles", exit_on_error=False)
    async def action_refresh(self) -> None:
        try:
            reply = await self.request("profile_list", lane="profiles")
        except Exception as exc:
            self.note(self.explain(exc, "listing profiles"))
            return
        # The reply: {profiles: [{name, path}], current}.
        self.paths = {entry["name"]: entry["path"] for entry in reply["profiles"]}
        self.current = reply["current"]
        table = self.query_one("#profiles-table", DataTable)
        selected = self.selected
        table.clear()
        for name in self.paths:
            table.add_row("●" if name == self.current else "", name, key=name)
        names = list(self.paths)
        if selected in names:
            table.move_cursor(row=names.index(selected))
        self.note(f"daemon profile: [b]{self.current}[/b] · u uses the highlighted one, "
                  "k checks it")

    @on(DataTable.RowHighlighted, "#profiles-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        name = str(event.row_key.value) if event.row_key else None
        path = self.paths.get(name or "")
        show = self.query_one("#profiles-show", Static)
        self.query_one("#profiles-check", Static).update("")
        if path and Path(path).is_file():
            show.update(Syntax(Path(path).read_text(), "toml", background_color="default"))
        else:
            show.update(f"{path}: not on this machine (the daemon is remote)")

    def action_check(self) -> None:
        name = self.selected
        if not name or not Path(self.paths.get(name, "")).is_file():
            return
        ok, report = check_profile(self.paths[name])
        self.query_one("#profiles-check", Static).update(
            f"[green]{report}[/]" if ok else f"[red]{report}[/]")

    @work(exclusive=True, group="profiles", exit_on_error=False)
    async def action_use_profile(self) -> None:
        name = self.selected
        if not name or name == self.current:
            return
        self.note(f"switching to [b]{name}[/b]: unloading the current model…")
        try:
            reply = await self.request("profile_use", name, lane="profiles")
        except Exception as exc:
            self.note(f"[red]{self.explain(exc, f'switching to {name}')}[/]")
            return
        self.app.profile = reply["profile"]  # type: ignore[attr-defined]
        self.note(f"switched to [b]{reply['profile']}[/b]: its model loads on first use")
        self.app.notify(f"profile {reply['profile']}")
        self.action_refresh()
