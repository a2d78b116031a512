"""The scenes pane: search the daemon's scene memory; Enter opens a scene's card."""

from __future__ import annotations

from typing import Any

from textual import on, work
from textual.binding import Binding
from textual.widgets import DataTable, Input, Static

from hyperlex_console.widgets.pane import Pane


class ScenesPane(Pane):
    """Query box, results table, scene cards."""

    title = "Scenes"
    BINDINGS = [Binding("slash", "focus_query", "Search"),
                Binding("enter", "open_scene", "Open", show=False)]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hits: list[dict[str, Any]] = []

    def compose(self):
        yield Input(placeholder="search the scene memory (Enter)", id="scenes-query")
        yield Static("", id="scenes-note", classes="pane-note")
        table: DataTable = DataTable(id="scenes-table", cursor_type="row")
        for label in ("SCORE", "SCENE", "REGISTER", "TEXT"):
            table.add_column(label, key=label.lower())
        yield table

    def action_focus_query(self) -> None:
        self.query_one("#scenes-query", Input).focus()

    @on(Input.Submitted, "#scenes-query")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self.search(event.value.strip())

    @work(exclusive=True, group="scenes", exit_on_error=False)
    async def search(self, query: str, k: int = 10) -> None:
        note = self.query_one("#scenes-note", Static)
        table = self.query_one("#scenes-table", DataTable)
        table.clear()
        try:
            reply = await self.request("memory_search", query, k, lane="memory")
        except Exception as exc:
            note.update(f"[yellow]{self.explain(exc, 'scene memory search')}[/]")
            return
        # The reply: {hits: [{scene_id, score, scene}], hint, memory, scenes (the count)}.
        self.hits = reply["hits"]
        hint = reply["hint"]
        note.update(f"{len(self.hits)} scenes for '{query}' (of {reply['scenes']} in memory)"
                    + (f" · {hint}" if hint else ""))
        for i, hit in enumerate(self.hits):
            scene = hit["scene"]
            score = hit["score"]
            table.add_row(f"{score:.3f}",
                          str(hit["scene_id"]), str(scene.get("register") or ""),
                          (scene.get("text") or "").replace("\n", " ")[:60], key=str(i))
        if self.hits:
            table.focus()

    @on(DataTable.RowSelected, "#scenes-table")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_scene()

    def action_open_scene(self) -> None:
        from hyperlex_console.screens.scene_card import SceneCardScreen

        table = self.query_one("#scenes-table", DataTable)
        if self.hits and table.row_count:
            self.app.push_screen(SceneCardScreen(self.hits[table.cursor_row]["scene"]))
