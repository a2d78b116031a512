"""The logs pane: follows the selected job (or the daemon's own status events).

- `/` filters, `p` pauses, `G`/End jumps to the end and follows again, `o` loads an older page.
- History comes from the daemon a page at a time (`job_logs`), so a job with 100k+ lines never
  reaches the UI whole; on screen the buffer is bounded (`BUFFER_LINES`), oldest lines dropped.
- Live lines arrive in batches from the event stream: a job's `log` events and its steps.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from textual import on, work
from textual.binding import Binding
from textual.widgets import Input, Log, Static

from hyperlex_console.widgets.pane import Pane

BUFFER_LINES = 5000   # what the pane keeps; the daemon keeps the rest
PAGE_LINES = 500      # one request's worth of history


def progress_line(data: dict[str, Any]) -> str | None:
    """A log line for a progress event (steps, evals, checkpoints, state changes)."""
    name = data.get("event")
    if name == "step":
        loss = data.get("loss")
        loss_text = f" loss {loss:.4f}" if isinstance(loss, (int, float)) else ""
        return f"step {data.get('step')}/{data.get('max_steps', '?')}{loss_text}"
    if name == "eval":
        return f"eval at step {data.get('step')}: {data.get('eval_loss', data.get('loss'))}"
    if name == "state":
        return f"[state] {data.get('state')}" + (f": {data['error']}" if data.get("error") else "")
    if name in ("checkpoint", "done"):
        return f"[{name}] " + " ".join(f"{k}={v}" for k, v in data.items() if k != "event")
    return None


class LogsPane(Pane):
    """A bounded, filterable, pausable log view."""

    title = "Logs"
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("p", "pause", "Pause"),
        Binding("G,end", "jump_end", "End"),
        Binding("o", "older", "Older"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.job_id: int | None = None
        self.lines: deque[str] = deque(maxlen=BUFFER_LINES)
        self.first_offset = 0      # daemon offset of the oldest history line held
        self.paused = False
        self.filter_text = ""
        self.history_loaded = True
        self.received = 0
        self.stale = False  # lines arrived while the tab was hidden: redraw when shown

    def compose(self):
        yield Static("", id="logs-header", classes="pane-note")
        yield Input(placeholder="filter (Enter applies, Esc clears)", id="logs-filter")
        yield Log(id="logs-view", max_lines=BUFFER_LINES, auto_scroll=True)

    def on_mount(self) -> None:
        self.query_one("#logs-filter", Input).display = False
        self._header()

    @property
    def view(self) -> Log:
        return self.query_one("#logs-view", Log)

    def _header(self) -> None:
        source = f"job {self.job_id}" if self.job_id is not None else "daemon status"
        flags = ["paused (G resumes)" if self.paused else "following"]
        if self.filter_text:
            flags.append(f"filter '{self.filter_text}'")
        flags.append(f"{len(self.lines)} lines held (from line {self.first_offset})")
        self.query_one("#logs-header", Static).update(f"[b]{source}[/b] · " + " · ".join(flags))

    def _matches(self, line: str) -> bool:
        return not self.filter_text or self.filter_text.lower() in line.lower()

    def handle_shown(self) -> None:
        if self.stale:
            self._rewrite()

    def _rewrite(self) -> None:
        self.stale = False
        view = self.view
        view.clear()
        view.write_lines([line for line in self.lines if self._matches(line)])
        if not self.paused:
            view.scroll_end(animate=False)
        self._header()

    def append(self, lines: list[str]) -> None:
        """Add live lines: kept in the bounded buffer, shown unless paused or filtered out."""
        self.received += len(lines)
        self.lines.extend(lines)
        if not self.shown:
            self.stale = True
            return
        if not self.paused:
            shown = [line for line in lines if self._matches(line)]
            if shown:
                self.view.write_lines(shown)
        self._header()

    # --- sources --------------------------------------------------------------------------------

    def follow(self, job_id: int | None) -> None:
        """Show a job's log (its last page of history, then live lines), or the daemon's."""
        if job_id == self.job_id and self.lines:
            return
        self.job_id = job_id
        self.lines.clear()
        self.first_offset = 0
        self.view.clear()
        self._header()
        if job_id is not None:
            self.history_loaded = False
            self._load_history(job_id)

    @work(exclusive=True, group="logs-history", exit_on_error=False)
    async def _load_history(self, job_id: int) -> None:
        try:
            total = (await self.request("job_logs", job_id, 0, 1, lane="logs"))["total"]
            start = max(0, total - PAGE_LINES)
            page = await self.request("job_logs", job_id, start, PAGE_LINES, lane="logs")
        except Exception as exc:
            self.append([self.explain(exc, f"reading the log of job {job_id}")])
            return
        if job_id != self.job_id:
            return
        self.first_offset = start
        live = list(self.lines)
        self.lines.clear()
        self.lines.extend(page["lines"])
        self.lines.extend(live)
        self.history_loaded = True
        self._rewrite()

    @work(exclusive=True, group="logs-history", exit_on_error=False)
    async def action_older(self) -> None:
        """Load the page before the oldest line held (the newest lines drop off the end)."""
        job_id = self.job_id
        if job_id is None or self.first_offset == 0:
            self.app.notify("no older lines")
            return
        start = max(0, self.first_offset - PAGE_LINES)
        try:
            page = await self.request("job_logs", job_id, start, self.first_offset - start,
                                      lane="logs")
        except Exception as exc:
            self.app.notify(self.explain(exc, "reading older lines"), severity="error")
            return
        self.paused = True  # reading history: stop following so the view holds still
        kept = list(self.lines)[: BUFFER_LINES - len(page["lines"])]
        self.lines.clear()
        self.lines.extend([*page["lines"], *kept])
        self.first_offset = start
        self._rewrite()
        self.view.scroll_home(animate=False)

    def handle_events(self, events: list[Any]) -> None:
        lines: list[str] = []
        stamp = time.strftime("%H:%M:%S")
        if self.job_id is None:
            for event in events:
                if event.topic == "daemon.status":
                    details = " ".join(f"{k}={v}" for k, v in event.data.items())
                    lines.append(f"{stamp} {details}")
        else:
            prefix = f"job.{self.job_id}."
            for event in events:
                if not event.topic.startswith(prefix):
                    continue
                if event.topic.endswith(".log"):
                    lines += [f"{stamp} {line}" for line in event.data.get("lines", ())]
                else:
                    line = progress_line(event.data)
                    if line:
                        lines.append(f"{stamp} {line}")
        if lines:
            self.append(lines)

    # --- keys -----------------------------------------------------------------------------------

    def action_filter(self) -> None:
        box = self.query_one("#logs-filter", Input)
        box.display = True
        box.focus()

    @on(Input.Submitted, "#logs-filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        self._rewrite()
        self.view.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#logs-filter", Input)
        box.value = ""
        box.display = False
        self.filter_text = ""
        self._rewrite()
        self.view.focus()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.view.auto_scroll = not self.paused
        if not self.paused:
            self._rewrite()
        self._header()

    def action_jump_end(self) -> None:
        self.paused = False
        self.view.auto_scroll = True
        self._rewrite()
