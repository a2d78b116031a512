"""The jobs pane: a live table of the daemon's jobs, and submit, cancel, resume, logs, run card.

Rows come from `job_list` and stay live through `job.<id>.progress` and `daemon.status` events.
Only changed cells are redrawn, and a batch of step events for one job costs one update.
"""

from __future__ import annotations

import re
from typing import Any

from textual import on, work
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Static

from hyperlex_console.widgets.pane import Pane

COLUMNS = (("id", "ID"), ("kind", "KIND"), ("profile", "PROFILE"), ("state", "STATE"),
           ("progress", "PROGRESS"), ("loss", "LOSS"), ("tps", "TOK/S"), ("eta", "ETA"))
STATE_STYLE = {"queued": "yellow", "running": "bold cyan", "succeeded": "green",
               "failed": "bold red", "cancelled": "magenta", "interrupted": "red"}
JOB_TOPIC = re.compile(r"^job\.(\d+)\.(progress|log)$")


def progress_bar(step: int | None, total: int | None, width: int = 10) -> str:
    """`████░░░░░░  40%` for a step of a total; empty when unknown."""
    if not step or not total:
        return ""
    frac = max(0.0, min(1.0, step / total))
    filled = round(frac * width)
    return "█" * filled + "░" * (width - filled) + f" {frac:4.0%}"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def eval_summary(job: dict[str, Any]) -> list[str]:
    """An eval job's summary lines (its headline differences), empty for other jobs."""
    result = job.get("result") or {}
    return [str(line) for line in result.get("summary") or []] if job.get("kind") == "eval" \
        else []


def _eval_progress(progress: dict[str, Any]) -> str:
    bar = progress_bar(progress.get("done"), progress.get("total"), width=6)
    return f"{progress.get('task', '')} {bar}".strip()


def job_row(job: dict[str, Any]) -> dict[str, str]:
    """The table cells of one job record (as `job_list` or live events left it)."""
    progress = job.get("progress") or {}
    result = job.get("result") or {}
    state = str(job.get("state", "?"))
    if job.get("kind") == "eval":
        headline = next(iter(result.get("differences") or []), None)
        loss = (f"Δ{headline['metric'].split('.')[-1]} {headline['delta']:+.3g}"
                if headline and isinstance(headline.get("delta"), (int, float)) else "")
        return {"id": str(job["id"]), "kind": "eval", "profile": str(job.get("profile", "")),
                "state": f"[{STATE_STYLE.get(state, '')}]{state}[/]",
                "progress": "done" if state == "succeeded" else _eval_progress(progress),
                "loss": loss, "tps": "", "eta": ""}
    loss = progress.get("loss", result.get("final_loss"))
    tps = progress.get("tokens_per_s")
    return {"id": str(job["id"]), "kind": str(job.get("kind", "")),
            "profile": str(job.get("profile", "")),
            "state": f"[{STATE_STYLE.get(state, '')}]{state}[/]",
            "progress": "done" if state == "succeeded" else
            progress_bar(progress.get("step"), progress.get("max_steps")),
            "loss": f"{loss:.4f}" if isinstance(loss, (int, float)) else "",
            "tps": f"{tps:.0f}" if isinstance(tps, (int, float)) else "",
            "eta": format_eta(progress.get("eta_s")) if state == "running" else ""}


class JobsPane(Pane):
    """The live jobs table."""

    title = "Jobs"
    BINDINGS = [
        Binding("s", "submit", "Submit"),
        Binding("c", "cancel", "Cancel"),
        Binding("r", "resume", "Resume"),
        Binding("l", "open_logs", "Logs"),
        Binding("enter", "open_card", "Card", show=False),
        Binding("o", "open_report", "Report"),
        Binding("g", "refresh", "Refresh", show=False),
    ]

    class JobSelected(Message):
        """The highlighted job changed (the logs and loss panes follow it)."""

        def __init__(self, job_id: int) -> None:
            super().__init__()
            self.job_id = job_id

    class LogsRequested(Message):
        """Open the logs of a job."""

        def __init__(self, job_id: int) -> None:
            super().__init__()
            self.job_id = job_id

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jobs: dict[int, dict[str, Any]] = {}
        self.job_kinds: dict[str, bool] = {}
        self._shown: dict[int, dict[str, str]] = {}
        self._note_job: int | None = None  # the job whose state the note shows, if any

    def compose(self):
        table: DataTable = DataTable(id="jobs-table", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static("", id="jobs-note", classes="pane-note")

    @property
    def table(self) -> DataTable:
        return self.query_one("#jobs-table", DataTable)

    def note(self, text: str, job: int | None = None) -> None:
        """Show `text` under the table; with `job`, later state changes of that job replace it."""
        self._note_job = job
        self.query_one("#jobs-note", Static).update(text)

    def _note_state(self, job_id: int) -> None:
        job = self.jobs[job_id]
        self.note(f"job {job_id} ({job.get('kind', 'job')}) {job.get('state')}", job=job_id)

    @property
    def selected_job(self) -> int | None:
        table = self.table
        if not table.row_count:
            return None
        row_key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key
        return int(str(row_key.value))

    # --- data -----------------------------------------------------------------------------------

    def handle_connected(self) -> None:
        self.action_refresh()

    @work(exclusive=True, group="jobs-refresh", exit_on_error=False)
    async def action_refresh(self) -> None:
        try:
            reply = await self.request("job_list", limit=200)
            status = await self.request("status")
        except Exception as exc:
            self.note(self.explain(exc, "listing jobs"))
            return
        self.job_kinds = dict(status.get("job_kinds") or {})
        for job in reply["jobs"]:
            known = self.jobs.get(job["id"])
            if known and known.get("progress") and job.get("state") == "running":
                job["progress"] = known["progress"]  # live events are newer than the store
            self.jobs[job["id"]] = job
        self.redraw()
        self.note(f"{len(self.jobs)} jobs" if self.jobs else
                  "no jobs yet: press s to submit one")

    def handle_events(self, events: list[Any]) -> None:
        changed = False
        unknown = False
        for event in events:
            match = JOB_TOPIC.match(event.topic)
            if match is None:
                if event.topic == "daemon.status" and event.data.get("event") == "job":
                    unknown |= self._apply(int(event.data["id"]), {"state": event.data["state"]})
                    changed = True
                continue
            if match.group(2) != "progress":
                continue
            job_id, data = int(match.group(1)), event.data
            name = data.get("event")
            if name == "state":
                unknown |= self._apply(job_id, {"state": data.get("state")})
            elif name == "step" or (name == "progress" and "task" in data):
                unknown |= self._apply(job_id, {"progress": data})
            elif name == "done":
                unknown |= self._apply(job_id, {"result": data})
            changed = True
        if unknown:
            self.action_refresh()
        elif changed:
            if self.shown:
                self.redraw()
            else:
                self.stale = True

    def handle_shown(self) -> None:
        if self.stale:
            self.redraw()

    def _apply(self, job_id: int, fields: dict[str, Any]) -> bool:
        """Update a known job; True when the job is new to the table (a refresh is needed)."""
        job = self.jobs.get(job_id)
        if job is None:
            return True
        if "progress" in fields:
            merged = dict(job.get("progress") or {})
            merged.update(fields.pop("progress"))
            job["progress"] = merged
        job.update(fields)
        if "state" in fields and job_id == self._note_job:
            self._note_state(job_id)
        return False

    def redraw(self) -> None:
        """Add new rows (newest first) or update only the cells that changed."""
        self.stale = False
        table = self.table
        order = sorted(self.jobs, reverse=True)
        if list(self._shown) != order:
            selected = self.selected_job
            table.clear()
            self._shown = {}
            for job_id in order:
                cells = job_row(self.jobs[job_id])
                table.add_row(*cells.values(), key=str(job_id))
                self._shown[job_id] = cells
            if selected in self._shown:
                table.move_cursor(row=order.index(selected))
            return
        for job_id in order:
            cells = job_row(self.jobs[job_id])
            old = self._shown[job_id]
            for key, value in cells.items():
                if old.get(key) != value:
                    table.update_cell(str(job_id), key, value, update_width=True)
            self._shown[job_id] = cells

    @on(DataTable.RowHighlighted, "#jobs-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value is not None:
            job_id = int(event.row_key.value)
            self.post_message(self.JobSelected(job_id))
            summary = eval_summary(self.jobs.get(job_id, {}))
            if summary:
                self.note("\n".join(summary[:4]) + "\n[dim]o: open the report[/]")

    @on(DataTable.RowSelected, "#jobs-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_card()

    # --- actions --------------------------------------------------------------------------------

    def action_open_report(self) -> None:
        """Open the selected eval job's report.html in the browser (it is self-contained)."""
        job = self.jobs.get(self.selected_job or -1) or {}
        report = (job.get("result") or {}).get("report")
        if not report:
            self.note("the selected job has no report: only finished eval jobs write one")
            return
        import webbrowser
        from pathlib import Path

        opened = webbrowser.open(Path(report).resolve().as_uri())
        self.note(f"report: {report}" + ("" if opened else " (no browser here: open it yourself)"))

    def action_submit(self) -> None:
        from hyperlex_console.screens.submit_job import SubmitJobScreen

        profile = getattr(self.app, "profile", None)
        self.app.push_screen(SubmitJobScreen(self.job_kinds, profile), self._submit)

    def _submit(self, form: dict[str, Any] | None) -> None:
        if form:
            self._send_submit(form["kind"], form["params"], form.get("profile"))

    @work(group="jobs-submit", exit_on_error=False)
    async def _send_submit(self, kind: str, params: dict[str, Any], profile: str | None) -> None:
        try:
            reply = await self.request("job_submit", kind, params, profile=profile)
        except Exception as exc:
            self.note(self.explain(exc, f"submitting a {kind} job"))
            self.app.notify(self.explain(exc, f"submitting a {kind} job"), severity="error")
            return
        job = reply["job"]
        self.jobs[job["id"]] = job
        self.redraw()
        self.table.move_cursor(row=0)
        self.note(f"job {job['id']} ({kind}) {job['state']}", job=job["id"])
        self.app.notify(f"job {job['id']} ({kind}) queued")

    @work(group="jobs-cancel", exit_on_error=False)
    async def action_cancel(self) -> None:
        job_id = self.selected_job
        if job_id is None:
            return
        try:
            reply = await self.request("job_cancel", job_id)
        except Exception as exc:
            self.note(self.explain(exc, f"cancelling job {job_id}"))
            return
        self._apply(job_id, {"state": reply["job"]["state"]})
        self.redraw()
        self.note(f"job {job_id}: cancel requested ({reply['job']['state']})", job=job_id)

    @work(group="jobs-submit", exit_on_error=False)
    async def action_resume(self) -> None:
        """Resume a failed, cancelled or interrupted job from its checkpoint (`job_resume`).

        A job without a checkpoint starts over; a succeeded one runs again as a new job with
        the same kind, params and profile.
        """
        job_id = self.selected_job
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is None:
            return
        if job.get("state") in ("queued", "running"):
            self.note(f"job {job_id} is {job['state']}: nothing to resume")
            return
        if job.get("state") != "succeeded":
            try:
                reply = await self.request("job_resume", job_id, restart=True)
            except Exception as exc:
                self.note(f"[red]{self.explain(exc, f'resuming job {job_id}')}[/]")
                return
            self.jobs[job_id] = reply["job"]
            self.redraw()
            self.note(f"job {job_id} queued again " + (
                "to resume from its checkpoint" if reply["resume"] else "from the start"),
                job=job_id)
            return
        params = dict(job.get("params") or {})
        self._send_submit(job["kind"], params, job.get("profile"))

    def action_open_logs(self) -> None:
        job_id = self.selected_job
        if job_id is not None:
            self.post_message(self.LogsRequested(job_id))

    def action_open_card(self) -> None:
        from hyperlex_console.screens.job_card import JobCardScreen

        job_id = self.selected_job
        if job_id is not None:
            self.app.push_screen(JobCardScreen(self.jobs[job_id]))
