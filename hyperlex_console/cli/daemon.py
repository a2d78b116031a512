"""`hyperlex daemon start|stop|status|logs`: run and inspect hyperlexd on this machine."""

from __future__ import annotations

import os
import signal
import sys
import time

import click

from daemon.client import Client
from daemon.connection import AlreadyRunningError, connection_file_path, holder_pid
from daemon.launch import log_file_path, serve, spawn_detached
from engine.errors import HyperlexError
from engine.paths import dirs
from hyperlex_console.cli.common import emit_json, handles_errors, json_option, stdout


def _lock_holder() -> int | None:
    return holder_pid(dirs().runtime / "hyperlexd.lock")


@click.group("daemon")
def group() -> None:
    """The daemon that runs jobs and chats: start, stop, status, logs."""


@group.command("start")
@click.option("--profile", "-p", "profile_name", default="default", show_default=True,
              help="Profile the daemon starts with.")
@click.option("--bind", metavar="tcp://HOST:PORT", help="Listen on TCP with CURVE (default: ipc).")
@click.option("--foreground", is_flag=True, help="Stay attached and log to the terminal.")
@click.option("--recover", is_flag=True,
              help="Move a corrupt job database aside and start with an empty job queue.")
@handles_errors
def start_command(profile_name: str, bind: str | None, foreground: bool, recover: bool) -> None:
    """Start hyperlexd in the background (or in the foreground)."""
    # As the systemd unit's UMask=0077: the daemon's files are the user's alone, from the
    # first directory it makes.
    os.umask(0o077)
    holder = _lock_holder()
    if holder:
        raise AlreadyRunningError(f"hyperlexd is already running (pid {holder})",
                                  hint="`hyperlex daemon status` shows it")
    if foreground:
        serve(profile_name, bind, recover=recover)
        return
    pid = spawn_detached(["--profile", profile_name] + (["--bind", bind] if bind else [])
                         + (["--recover"] if recover else []))
    stdout.print(f"hyperlexd started (pid {pid}); logs: {log_file_path()}")


@group.command("stop")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for it to stop.")
@handles_errors
def stop_command(timeout: float) -> None:
    """Stop hyperlexd gracefully: running jobs checkpoint first."""
    holder = _lock_holder()
    if not holder:
        stdout.print("hyperlexd is not running")
        return
    try:
        with Client(timeout=5.0, retries=1) as client:
            client.shutdown()
    except (HyperlexError, TimeoutError):
        os.kill(holder, signal.SIGTERM)  # no answer: the signal does the same, gracefully
    deadline = time.monotonic() + timeout
    while _lock_holder():
        if time.monotonic() > deadline:
            raise HyperlexError(f"hyperlexd (pid {holder}) did not stop within {timeout:g} s",
                                hint=f"kill {holder}")
        time.sleep(0.1)
    stdout.print(f"hyperlexd (pid {holder}) stopped")


@group.command("status")
@json_option
@handles_errors
def status_command(as_json: bool) -> None:
    """Show whether hyperlexd runs, its profile, jobs and loaded model."""
    if not _lock_holder():
        if as_json:
            emit_json({"running": False})
        else:
            stdout.print("hyperlexd is not running")
        sys.exit(1)
    with Client(timeout=5.0) as client:
        status = client.status()
    status.pop("status", None)
    if as_json:
        emit_json({"running": True, **status})
        return
    jobs = status["jobs"]
    stdout.print(f"hyperlexd running: pid {status['pid']}, profile {status['profile']}, "
                 f"up {status['uptime_s']:.0f} s")
    stdout.print(f"jobs: {jobs['running']} running, {jobs['queued']} queued, "
                 f"{jobs['interrupted']} interrupted")
    stdout.print(f"model: {status['models']['loaded'] or 'none loaded'}")
    stdout.print(f"connection file: {connection_file_path()}")


@group.command("logs")
@click.option("--lines", "-n", default=50, show_default=True, help="How many lines.")
@click.option("--job", "job_id", type=int, help="A job's log instead of the daemon's.")
@handles_errors
def logs_command(lines: int, job_id: int | None) -> None:
    """Print the end of the daemon's log, or of a job's log (kept across restarts)."""
    if job_id is not None:
        with Client(timeout=5.0) as client:
            total = client.job_logs(job_id, 0, 1)["total"]
            page = client.job_logs(job_id, max(0, total - lines), lines)
        for line in page["lines"]:
            click.echo(line)
        return
    path = log_file_path()
    if not path.exists():
        raise HyperlexError(f"no daemon log at {path}", hint="start it: `hyperlex daemon start`")
    for line in path.read_text(errors="replace").splitlines()[-lines:]:
        click.echo(line)
