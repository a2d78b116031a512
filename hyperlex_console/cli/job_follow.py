"""Following a daemon job to its end from the CLI: a progress bar on a terminal, lines otherwise.

`follow_job` reads the job's events (`job.<id>.progress`, `job.<id>.log`) until a state event
names an end state, asking the daemon for the job whenever the stream is quiet, so that an end
whose event was missed is still seen. Everything it shows goes to stderr: stdout stays for the
command's result.

It knows daemon.client's event stream and nothing of the console.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from daemon.client import Client, EventStream
from hyperlex_console.cli.common import stderr

# Where following stops: `interrupted` too, since a stopping daemon leaves its jobs there.
END_STATES = ("succeeded", "failed", "cancelled", "interrupted")
QUIET_S = 1.0             # ask for the job after this long without an event
PLAIN_STEP_EVERY_S = 1.0  # plain output: at most one step line a second (and the last step)


def progress_text(progress: dict[str, Any] | None) -> str:
    """`step 5/20 loss 1.2345` or `documents 3/10` from a step or progress event ('' if none)."""
    if not progress:
        return ""
    if "step" in progress and "max_steps" in progress:
        text = f"step {progress['step']}/{progress['max_steps']}"
        return text + (f" loss {progress['loss']:.4f}" if isinstance(progress.get("loss"),
                                                                      (int, float)) else "")
    if "step" in progress:
        return f"step {progress['step']}"
    if "done" in progress:
        total = progress.get("total")
        return f"{progress.get('stage', 'progress')} {progress['done']}" + \
            (f"/{total}" if total else "")
    return ""


class _JobLines:
    """One line on stderr per state change, checkpoint, log line; steps at most once a second."""

    def __init__(self, job_id: int, show_logs: bool):
        self.job_id, self.show_logs = job_id, show_logs
        self.last_step_at = 0.0

    def __enter__(self) -> _JobLines:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def say(self, text: str) -> None:
        print(f"job {self.job_id}: {text}", file=sys.stderr, flush=True)

    def log(self, line: str) -> None:
        if self.show_logs:
            print(line, file=sys.stderr, flush=True)

    def progress(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        last = event.get("step") == event.get("max_steps") or \
            (event.get("total") and event.get("done") == event.get("total"))
        if last or now - self.last_step_at >= PLAIN_STEP_EVERY_S:
            self.last_step_at = now
            self.say(progress_text(event))


class _JobBar(_JobLines):
    """A rich progress bar on stderr; state changes and log lines print above it."""

    def __init__(self, job_id: int, show_logs: bool, label: str):
        super().__init__(job_id, show_logs)
        self.label = label
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(), console=stderr,
                            transient=True)
        self.task = self.bar.add_task(label, total=None)

    def __enter__(self) -> _JobBar:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def say(self, text: str) -> None:
        self.bar.console.print(f"job {self.job_id}: {text}", markup=False, highlight=False)

    def log(self, line: str) -> None:
        if self.show_logs:
            self.bar.console.print(line, markup=False, highlight=False, style="dim")

    def progress(self, event: dict[str, Any]) -> None:
        done = event.get("step", event.get("done"))
        total = event.get("max_steps", event.get("total"))
        loss = event.get("loss")
        description = self.label + (f" loss {loss:.4f}" if isinstance(loss, (int, float))
                                    else f" {event['stage']}" if event.get("stage") else "")
        self.bar.update(self.task, completed=done, total=total or None, description=description)


def follow_job(client: Client, job_id: int, stream: EventStream, *, label: str = "",
               show_logs: bool = True, bar: bool | None = None) -> dict[str, Any]:
    """Show a job's progress until it ends; returns the job as the daemon has it then.

    Args:
        client: the daemon's client.
        job_id: the job.
        stream: an event stream under `job.<id>.`, opened before the job could have ended
            (after `job_submit`, with replay; before `job_resume`, without).
        label: the bar's description (default `job ID`).
        show_logs: show the job's log lines too.
        bar: a progress bar (True) or plain lines (False); default: a bar on a terminal.
    """
    bar = sys.stderr.isatty() if bar is None else bar
    view = (_JobBar(job_id, show_logs, label or f"job {job_id}") if bar
            else _JobLines(job_id, show_logs))
    with view:
        while True:
            event = stream.next(timeout=QUIET_S)
            if event is None:
                job = client.job_get(job_id)["job"]
                if job["state"] in END_STATES:
                    return job
                continue
            data = event.data
            if event.topic.endswith(".log"):
                for line in data.get("lines", []):
                    view.log(str(line))
                continue
            name = data.get("event")
            if name == "state":
                if data.get("state") != "queued" or data.get("resume"):
                    view.say(str(data.get("state")) + (" (resuming)" if data.get("resume")
                                                       else ""))
                if data.get("state") in END_STATES:
                    return client.job_get(job_id)["job"]
            elif name in ("step", "progress"):
                view.progress(data)
            elif name == "checkpoint":
                view.say(f"checkpoint at step {data.get('step')}")
            elif name == "eval":
                view.say(f"eval loss {data.get('eval_loss')}")
            elif name == "error":
                view.say(f"error: {data.get('message')}"
                         + (f" ({data['hint']})" if data.get("hint") else ""))
