"""`hyperlex jobs submit|list|show|logs|cancel|resume`: the daemon's job queue, for scripts.

Every command goes through daemon.client; `--json` prints one JSON object on stdout (`logs -f
--json` one a line). `submit` starts this home's daemon when none runs (saying so on stderr);
the others report that none runs. Errors are the daemon's, with a hint where it gave none.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from daemon.client import Client, DaemonError
from daemon.jobs import JOB_KINDS, STATES
from engine.errors import ConfigError, HyperlexError
from hyperlex_console.cli.common import emit_json, handles_errors, json_option, report_error, stdout
from hyperlex_console.cli.job_follow import END_STATES, follow_job, progress_text
from hyperlex_console.cli.reach import daemon_client, daemon_options

# Hints for daemon errors that come without one, by error type.
HINTS = {
    "JobNotFoundError": "`hyperlex jobs list` shows the jobs",
    "NotAvailableError": "`hyperlex daemon status --json` lists the job kinds of this build",
    "BusyError": "`hyperlex jobs list --state queued` shows the queue",
}
STATE_STYLES = {"queued": "cyan", "running": "yellow", "succeeded": "green", "failed": "red",
                "cancelled": "magenta", "interrupted": "red"}
LOG_PAGE = 5000  # the daemon's largest log page


class JobFailedError(HyperlexError):
    """A followed job ended in another state than `succeeded`."""

    title = "job did not succeed"


def parse_params(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`("max_steps=20", "data=a.jsonl", "resume=true")` -> `{"max_steps": 20, ...}`.

    A value that parses as JSON (numbers, true/false, lists, quoted strings) is that value;
    anything else is the string as given. Dashes in names become underscores.

    Raises:
        ConfigError: every pair without a name and `=`, at once.
    """
    params: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            problems.append(f"{pair!r} is not KEY=VALUE")
            continue
        try:
            params[name] = json.loads(text)
        except ValueError:
            params[name] = text
    if problems:
        raise ConfigError("bad --param", problems=problems,
                          hint="write --param max_steps=20 (numbers, true/false and lists are "
                               "read as JSON, anything else as a string)")
    return params


@contextmanager
def hinted() -> Iterator[None]:
    """Add the CLI's hint to a daemon error that came without one."""
    try:
        yield
    except DaemonError as error:
        if not error.hint:
            error.hint = HINTS.get(error.type)
        raise


@contextmanager
def jobs_client(connect_file: str | None, ssh: str | None, *, may_start: bool = False,
                profile: str | None = None) -> Iterator[Client]:
    with daemon_client(connect_file, ssh, may_start=may_start, profile=profile) as client, \
            hinted():
        yield client


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def _took(job: dict[str, Any]) -> str:
    if not job.get("started"):
        return "-"
    return f"{(job.get('finished') or time.time()) - job['started']:.1f} s"


def _summary(job: dict[str, Any]) -> str:
    """`job 3 (selftest) succeeded in 1.2 s: final_loss=0.1` for a person."""
    line = f"job {job['id']} ({job['kind']}) {job['state']}"
    if job["state"] in END_STATES:
        line += f" in {_took(job)}"
    result = {k: v for k, v in (job.get("result") or {}).items() if k != "event"}
    if result and job["state"] == "succeeded":
        line += ": " + ", ".join(f"{k}={v}" for k, v in result.items())
    return line


def _finish(reply: dict[str, Any], job: dict[str, Any], as_json: bool) -> None:
    """Report a followed job's end; exit 1 unless it succeeded."""
    error = None
    if job["state"] != "succeeded":
        error = JobFailedError(f"job {job['id']} {job['state']}"
                               + (f": {job['error']}" if job.get("error") else ""),
                               hint=f"`hyperlex jobs logs {job['id']}` shows its log")
    if as_json:
        emit_json({**reply, "job": job, **({"error": error.to_dict()} if error else {})})
    else:
        click.echo(_summary(job))
    if error is not None:
        report_error(error)
        sys.exit(error.exit_code)


@click.group("jobs")
def group() -> None:
    """The daemon's jobs: submit, list, show, logs, cancel, resume (each takes --json).

    \b
    Examples:
      hyperlex jobs submit train --param max_steps=200 --profile default --wait
      hyperlex jobs list --state running --json
      hyperlex jobs logs 3 --follow
      hyperlex jobs cancel 3
      hyperlex jobs resume 3
    """


@group.command("submit", help=f"Queue a job of KIND ({', '.join(JOB_KINDS)}); with no "
               "daemon running, starts one (and says so on stderr).")
@click.argument("kind", metavar="KIND")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A job parameter (repeatable): becomes --key value of the kind's module.")
@click.option("--profile", "-p", "profile_name", default=None, metavar="NAME|FILE",
              help="Profile the job runs with (default: the daemon's).")
@click.option("--wait", is_flag=True, help="Follow the job to its end; exit 1 unless it succeeds.")
@daemon_options
@json_option
@handles_errors
def submit_command(kind: str, params: tuple[str, ...], profile_name: str | None, wait: bool,
                   connect_file: str | None, ssh: str | None, as_json: bool) -> None:
    values = parse_params(params)
    with jobs_client(connect_file, ssh, may_start=True, profile=profile_name) as client:
        reply = client.job_submit(kind, values, profile=profile_name)
        reply.pop("status", None)
        job = reply["job"]
        if not wait:
            if as_json:
                emit_json(reply)
            else:
                click.echo(f"queued job {job['id']} ({job['kind']}, profile {job['profile']})"
                           + ("" if reply["created"] else " (already queued)"))
            return
        with client.events(f"job.{job['id']}.") as stream:
            try:
                job = follow_job(client, job["id"], stream, label=f"job {job['id']} {kind}")
            except KeyboardInterrupt:
                print(f"\nstopped following job {job['id']}; it keeps running "
                      f"(`hyperlex jobs cancel {job['id']}` cancels it)", file=sys.stderr)
                sys.exit(130)
        _finish(reply, job, as_json)


@group.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only jobs in this state.")
@click.option("--limit", "-n", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="At most this many, newest first.")
@daemon_options
@json_option
@handles_errors
def list_command(state: str | None, limit: int, connect_file: str | None, ssh: str | None,
                 as_json: bool) -> None:
    """List jobs, newest first."""
    with jobs_client(connect_file, ssh) as client:
        jobs = client.job_list(state, limit)["jobs"]
    if as_json:
        emit_json({"jobs": jobs})
        return
    if not jobs:
        click.echo("no jobs" + (f" {state}" if state else ""))
        return
    notes = any(job.get("error") for job in jobs)
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("id", "kind", "state", "profile", "progress", "created", "took"):
        table.add_column(name, no_wrap=True)
    if notes:
        table.add_column("note")  # the one column that wraps on a narrow screen
    for job in jobs:
        style = STATE_STYLES.get(job["state"], "")
        table.add_row(str(job["id"]), escape(job["kind"]), f"[{style}]{job['state']}[/]",
                      escape(job["profile"]),
                      progress_text(job.get("progress")).removeprefix("step "),
                      time.strftime("%m-%d %H:%M", time.localtime(job["created"])), _took(job),
                      *([escape(job.get("error") or "")] if notes else []))
    stdout.print(table)


@group.command("show")
@click.argument("job_id", metavar="ID", type=int)
@daemon_options
@json_option
@handles_errors
def show_command(job_id: int, connect_file: str | None, ssh: str | None, as_json: bool) -> None:
    """Show one job: params, state, times, progress, result or error."""
    with jobs_client(connect_file, ssh) as client:
        job = client.job_get(job_id)["job"]
    if as_json:
        emit_json({"job": job})
        return
    rows = [("kind", job["kind"]), ("state", job["state"]), ("profile", job["profile"]),
            ("params", json.dumps(job["params"])), ("created", _when(job["created"])),
            ("started", _when(job["started"])), ("finished", _when(job["finished"])),
            ("took", _took(job)), ("attempts", job["attempts"]), ("pid", job["pid"]),
            ("run dir", job["run_dir"]), ("checkpoint", job["checkpoint"]),
            ("progress", progress_text(job.get("progress"))),
            ("result", json.dumps(job["result"]) if job["result"] else None),
            ("error", job["error"])]
    stdout.print(f"job {job['id']}", style="bold")
    for name, value in rows:
        if value not in (None, ""):
            stdout.print(f"  {name:<11}{value}", markup=False, highlight=False, soft_wrap=True)
    stdout.print(f"  log: hyperlex jobs logs {job['id']}", markup=False, style="dim")


@group.command("logs")
@click.argument("job_id", metavar="ID", type=int)
@click.option("--lines", "-n", "last", type=click.IntRange(min=0), default=None,
              help="Only the last N lines (default: all that are kept).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines until the job ends.")
@daemon_options
@json_option
@handles_errors
def logs_command(job_id: int, last: int | None, follow: bool, connect_file: str | None,
                 ssh: str | None, as_json: bool) -> None:
    """Print a job's log (kept on disk across daemon restarts); -f follows it to the job's end.

    With --json: `{"job", "lines", "total"}`; with --follow --json, one `{"line": ...}` object a
    line and a last `{"job": {...}}`.
    """
    with jobs_client(connect_file, ssh) as client:
        total = client.job_logs(job_id, 0, 1)["total"]
        offset = max(0, total - last) if last is not None else 0
        if not follow:
            lines = _read_log(client, job_id, offset)[0]
            if as_json:
                emit_json({"job": job_id, "lines": lines, "total": total})
            else:
                for line in lines:
                    click.echo(line)
            return
        with client.events(f"job.{job_id}.", replay=False) as stream:
            try:
                job = _follow_log(client, job_id, offset, stream, as_json)
            except KeyboardInterrupt:
                sys.exit(130)
        if as_json:
            emit_json({"job": job})


def _read_log(client: Client, job_id: int, offset: int) -> tuple[list[str], int]:
    """Every kept line from `offset` on, paging: (lines, the offset after them)."""
    lines: list[str] = []
    while True:
        page = client.job_logs(job_id, offset, LOG_PAGE)
        lines += page["lines"]
        offset = page["next_offset"]
        if len(page["lines"]) < LOG_PAGE:
            return lines, offset


def _follow_log(client: Client, job_id: int, offset: int, stream: Any,
                as_json: bool) -> dict[str, Any]:
    """Print new lines as the job's events say there are some, until it has ended."""
    def show(lines: list[str], first: int) -> None:
        for index, line in enumerate(lines, first):
            if as_json:
                emit_json({"index": index, "line": line})
            else:
                click.echo(line)

    ended = False
    while True:
        job = client.job_get(job_id)["job"]
        ended = ended or job["state"] in END_STATES
        lines, after = _read_log(client, job_id, offset)
        show(lines, offset)
        offset = after
        sys.stdout.flush()
        if ended:  # the daemon writes a job's last line before it announces the end
            return job
        # Wake on the job's next event, then read the log once per burst, not once per event.
        event = stream.next(timeout=1.0)
        burst_ends = time.monotonic() + 0.25
        while event is not None and not ended:
            ended = event.data.get("event") == "state" and event.data.get("state") in END_STATES
            left = burst_ends - time.monotonic()
            event = stream.next(timeout=left) if left > 0 and not ended else None


@group.command("cancel")
@click.argument("job_id", metavar="ID", type=int)
@daemon_options
@json_option
@handles_errors
def cancel_command(job_id: int, connect_file: str | None, ssh: str | None,
                   as_json: bool) -> None:
    """Cancel a job: a queued one at once; a running one checkpoints and stops."""
    with jobs_client(connect_file, ssh) as client:
        before = client.job_get(job_id)["job"]
        if before["state"] in ("succeeded", "failed"):
            raise HyperlexError(f"job {job_id} already {before['state']}: nothing to cancel",
                                hint=f"`hyperlex jobs show {job_id}` shows it")
        job = client.job_cancel(job_id)["job"]
    if as_json:
        emit_json({"job": job})
    elif before["state"] == "cancelled":
        click.echo(f"job {job_id} was already cancelled")
    elif job["state"] == "running":
        click.echo(f"job {job_id}: cancelling (it checkpoints, then stops); "
                   f"`hyperlex jobs show {job_id}` shows when")
    else:
        click.echo(f"job {job_id} {job['state']}")


@group.command("resume")
@click.argument("job_id", metavar="ID", type=int)
@click.option("--restart", is_flag=True, help="Run it from the start when it has no checkpoint.")
@click.option("--wait", is_flag=True, help="Follow the job to its end; exit 1 unless it succeeds.")
@daemon_options
@json_option
@handles_errors
def resume_command(job_id: int, restart: bool, wait: bool, connect_file: str | None,
                   ssh: str | None, as_json: bool) -> None:
    """Queue a failed, cancelled or interrupted job again, from its last checkpoint."""
    with jobs_client(connect_file, ssh) as client:
        # Subscribed before the job is queued again, without replay: the job's earlier end
        # is in the retained events and must not end the following at once.
        with client.events(f"job.{job_id}.", replay=False) if wait else nullcontext() as stream:
            try:
                reply = client.job_resume(job_id, restart=restart)
            except DaemonError as error:
                if "checkpoint" in error.message and not restart:
                    error.hint = f"`hyperlex jobs resume {job_id} --restart` runs it again " \
                                 "from the start"
                raise
            reply.pop("status", None)
            job = reply["job"]
            how = "resuming from its checkpoint" if reply["resume"] else "starting over"
            if not wait:
                if as_json:
                    emit_json(reply)
                else:
                    click.echo(f"job {job_id} queued again, {how}")
                return
            print(f"job {job_id} queued again, {how}", file=sys.stderr)
            try:
                job = follow_job(client, job_id, stream, label=f"job {job_id} {job['kind']}")
            except KeyboardInterrupt:
                sys.exit(130)
        _finish(reply, job, as_json)
