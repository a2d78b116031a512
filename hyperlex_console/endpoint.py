"""Where the console's daemon lives: this machine's, a connection file, or one over SSH.

`find_or_start_local` is what `hyperlex-console` runs before the first frame: it reuses the
daemon serving this HYPERLEX_HOME or starts one (the "embedded" daemon) and says so. Opening
clients goes through daemon.client only. Nothing here knows about Textual.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.client import AsyncClient, Client, connect
from daemon.connection import connection_file_path, read_connection_file
from engine.errors import HyperlexError


@dataclass
class Endpoint:
    """How to reach the daemon.

    Attributes:
        kind: `local` (this home's daemon), `file` (a connection file) or `ssh`.
        target: the connection file path or `user@host`.
        started_pid: the pid of a daemon this console started (the embedded daemon).
    """

    kind: str = "local"
    target: str | None = None
    started_pid: int | None = None

    @property
    def label(self) -> str:
        """What the status bar shows."""
        if self.kind == "ssh":
            return f"ssh {self.target}"
        if self.kind == "file":
            return f"connect {Path(str(self.target)).name}"
        return "local (embedded)" if self.started_pid else "local"

    @property
    def is_local(self) -> bool:
        return self.kind == "local"

    def open_async(self, timeout: float = 15.0) -> AsyncClient:
        """A new AsyncClient; blocking (it reads files, or opens an SSH tunnel).

        Raises:
            FileNotFoundError: no connection file (no daemon).
            HyperlexError: the tunnel or the connection file is unusable.
        """
        return self.open(timeout, asynchronous=True)

    def open(self, timeout: float = 15.0, asynchronous: bool = False) -> Any:
        """A new Client (the CLI's), or AsyncClient; raises as `open_async` does."""
        if self.kind == "ssh":
            return connect(ssh=self.target, asynchronous=asynchronous, timeout=timeout,
                           retries=1)
        path = Path(self.target) if self.kind == "file" else connection_file_path()
        return connect(read_connection_file(path), asynchronous=asynchronous, timeout=timeout,
                       retries=1)


def daemon_pid_alive() -> bool:
    """Whether this home's connection file names a live process."""
    try:
        pid = read_connection_file(connection_file_path()).pid
    except (FileNotFoundError, HyperlexError, ValueError, OSError):
        return False
    if not pid:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def local_daemon_answers(timeout: float = 1.5) -> dict[str, Any] | None:
    """The running local daemon's `hello` reply, or None when none answers."""
    if not daemon_pid_alive():
        return None
    try:
        with Client(read_connection_file(connection_file_path()), timeout=timeout,
                    retries=0) as client:
            return client.hello()
    except (TimeoutError, HyperlexError, OSError):
        return None


def start_local_daemon(profile: str | None) -> int:
    """Start hyperlexd for this home as a background process; returns its pid once it serves.

    Raises:
        HyperlexError: it did not start (the message names its log file).
    """
    from daemon.launch import spawn_detached

    return spawn_detached(["--profile", profile] if profile else [])


def find_or_start_local(profile: str | None, may_start: bool = True) -> tuple[Endpoint, str]:
    """The local endpoint, starting a daemon when none answers; and a line saying what happened.

    Args:
        profile: the profile a newly started daemon uses.
        may_start: False in read-only mode: never start anything.
    """
    hello = local_daemon_answers()
    if hello is not None:
        return Endpoint("local"), f"using the running hyperlexd (pid {hello.get('pid')})"
    if not may_start:
        return Endpoint("local"), "no hyperlexd is running (read-only: not starting one)"
    pid = start_local_daemon(profile)
    return Endpoint("local", started_pid=pid), \
        f"no hyperlexd was running: started one for this console (pid {pid})"
