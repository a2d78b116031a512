"""Job worker processes: one subprocess per job, in its own process group.

A worker's stdout carries the JSON-lines progress contract; its stderr is log text. Two reader
threads turn lines into `(kind, job_id, payload)` items handed to `post`, the daemon's inbox;
all bookkeeping (database, events) happens on the daemon's loop thread.

Stopping: SIGTERM to the whole group (the recipe checkpoints and exits), then SIGKILL once the
grace period has passed. This module knows nothing of sockets or SQLite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.paths import project_root

Post = Callable[[tuple[str, int, Any]], None]
MAX_LINE = 64 * 1024  # a plain output line longer than this is logged cut short
MAX_SHOWN = 2000
# A line of a job's output is read at most this far (a progress event with a large result fits);
# the rest of a longer one is skipped, so a job printing without newlines cannot fill the daemon.
MAX_READ = 16 * 1024 * 1024
SKIP_READ = 1024 * 1024


def bounded_lines(stream: Any, limit: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Each line of `stream` as (its first `limit` bytes, its length in bytes without the
    newline)."""
    limit = limit or MAX_READ
    while True:
        line = stream.readline(limit)
        if not line:
            return
        size, chunk, step = len(line), line, min(limit, SKIP_READ)
        while len(chunk) == (limit if chunk is line else step) and not chunk.endswith(b"\n"):
            chunk = stream.readline(step)  # cut short: the rest is skipped, a block at a time
            size += len(chunk)
        yield line, size - chunk.endswith(b"\n")


def _shown(line: str, size: int) -> str:
    """`line` as it is logged: whole, or cut short with its full length."""
    if len(line) <= MAX_LINE and size <= MAX_LINE:
        return line
    return line[:MAX_SHOWN] + f"... ({max(size, len(line))} characters)"


def parse_event(line: str) -> dict[str, Any] | None:
    """The progress event a stdout line carries, or None when it is a plain line.

    Anything `json.loads` raises makes it a plain line: not only ValueError, but RecursionError
    for deeply nested arrays (`[` x 100,000), which would otherwise kill the reader thread.
    """
    if not line.lstrip().startswith("{"):
        return None
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


class JobProcess:
    """A running job.

    Args:
        job_id: the job's id.
        argv: the command line.
        run_dir: the job's directory (its working directory).
        post: called from reader threads with `("event"|"line"|"exit", job_id, payload)`.
    """

    def __init__(self, job_id: int, argv: list[str], run_dir: Path, post: Post):
        self.job_id = job_id
        self.post = post
        self.run_dir = run_dir
        env = dict(os.environ)
        # Workers import the same engine as the daemon, wherever their working directory is.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(project_root()), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            argv, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True)
        self.pgid = self.proc.pid  # start_new_session: the leader's pid is the group id
        self.term_sent_at: float | None = None
        self.kill_sent = False
        self._stderr_done = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True,
                         name=f"job-{job_id}-stderr").start()
        threading.Thread(target=self._read_stdout, daemon=True,
                         name=f"job-{job_id}-stdout").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        rc: int | None = None
        try:
            for raw, size in bounded_lines(self.proc.stdout):
                self._post_line(raw, size)
        except Exception as exc:  # never let one line end the job's bookkeeping
            self.post(("line", self.job_id, f"[daemon] stopped reading the job's output: "
                                            f"{type(exc).__name__}: {exc}"[:MAX_SHOWN]))
            self.proc.stdout.close()
        finally:
            # Always posted, whatever happened above: without it the job stays `running`.
            try:
                rc = self.proc.wait()
                self._stderr_done.wait(timeout=5)
            finally:
                self.post(("exit", self.job_id, rc if rc is not None else -1))

    def _post_line(self, raw: bytes, size: int) -> None:
        cut = size > len(raw) - raw.endswith(b"\n")
        line = raw.decode("utf-8", errors="replace").rstrip("\n")
        event = None if cut else parse_event(line)
        if event is not None:
            self.post(("event", self.job_id, event))
        elif line:
            # A line that only looked like JSON (too deep to parse, say) is logged cut short.
            self.post(("line", self.job_id, _shown(line, size)))

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        try:
            for raw, size in bounded_lines(self.proc.stderr):
                line = raw.decode("utf-8", errors="replace").rstrip()
                self.post(("line", self.job_id, _shown(line, size)))
        except Exception:
            pass  # the job's exit is posted by the stdout reader whatever happens here
        finally:
            self._stderr_done.set()

    def terminate(self) -> None:
        """Ask the job's whole process group to checkpoint and stop."""
        if self.term_sent_at is None:
            self.term_sent_at = time.monotonic()
            signal_group(self.pgid, signal.SIGTERM)

    def kill_if_overdue(self, grace_s: float) -> bool:
        """SIGKILL the group when SIGTERM was sent more than `grace_s` ago."""
        if self.term_sent_at is not None and not self.kill_sent \
                and time.monotonic() - self.term_sent_at > grace_s:
            self.kill_sent = True
            signal_group(self.pgid, signal.SIGKILL)
            return True
        return False


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it is already gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_leftover_group(pgid: int | None, run_dir: str | None) -> bool:
    """Kill a worker group left by a dead daemon, if its leader still runs this job.

    The leader's command line must mention the job's run dir, so a recycled pid is never hit.
    """
    if not pgid or not run_dir:
        return False
    try:
        cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if run_dir not in cmdline.replace("\0", " "):
        return False
    signal_group(pgid, signal.SIGKILL)
    return True
