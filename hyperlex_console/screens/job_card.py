"""The run card of one job: its parameters, state, progress, result, error and run directory."""

from __future__ import annotations

import json
from typing import Any

from rich.syntax import Syntax
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


class JobCardScreen(ModalScreen[None]):
    """A read-only card; Esc closes it."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__()
        self.job = job

    def compose(self):
        job = self.job
        with VerticalScroll(id="job-card", classes="dialog"):
            yield Label(f"[b]job {job['id']}[/b]  {job.get('kind')}  {job.get('state')}")
            if job.get("error"):
                yield Static(f"[red]{job['error']}[/]")
            summary = (job.get("result") or {}).get("summary") if job.get("kind") == "eval" \
                else None
            if summary:
                yield Static("\n".join(str(line) for line in summary), id="job-card-summary",
                             markup=False)
                yield Label(f"report: {job['result'].get('report')}  (o in the jobs pane opens it)")
            yield Static(Syntax(json.dumps(job, indent=2, sort_keys=True, default=str), "json",
                                word_wrap=True, background_color="default"))
