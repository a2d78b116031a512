"""How CLI commands reach hyperlexd: this home's daemon, a connection file, or one over SSH.

`daemon_options` adds `--connect FILE` and `--ssh USER@HOST` to a command; `daemon_client`
opens a blocking `daemon.client.Client` for it. Commands that run work (`jobs submit`, `jobs
resume`, `chat --daemon`) start this home's daemon when none runs, as the console does, and
say so on stderr; the others report that none runs instead, so that looking at jobs never
starts a daemon (which would also resume interrupted jobs). A reply that never comes becomes a
HyperlexError, so every command reports it the same way.

It holds no command of its own; it knows daemon.client and the console's Endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from daemon.client import Client
from engine.errors import HyperlexError
from hyperlex_console.cli.common import stderr
from hyperlex_console.endpoint import (
    Endpoint,
    daemon_pid_alive,
    local_daemon_answers,
    start_local_daemon,
)

F = TypeVar("F", bound=Callable[..., Any])
REPLY_TIMEOUT_S = 15.0


class DaemonNotRunningError(HyperlexError):
    """No daemon serves this HYPERLEX_HOME and the command does not start one."""

    title = "hyperlexd is not running"


class DaemonUnreachableError(HyperlexError):
    """The daemon did not answer in time."""

    title = "hyperlexd does not answer"


def daemon_options(func: F) -> F:
    """Add `--connect FILE` and `--ssh USER@HOST` (the console's options) to a command."""
    func = click.option("--ssh", metavar="USER@HOST",
                        help="A daemon on another machine, through an OpenSSH tunnel.")(func)
    return click.option("--connect", "connect_file", metavar="FILE",
                        help="A daemon's connection file (from `hyperlexd --print-connection`)."
                        )(func)  # type: ignore[return-value]


def find_endpoint(connect_file: str | None, ssh: str | None, *, may_start: bool,
                  profile: str | None = None) -> Endpoint:
    """Where the daemon is; starts this home's daemon when `may_start` and none answers.

    Args:
        connect_file: a connection file (`--connect`).
        ssh: `user@host` (`--ssh`).
        may_start: start a local daemon when none runs (else raise DaemonNotRunningError).
        profile: the profile a newly started daemon uses (None: the daemon's default).
    """
    if connect_file and ssh:
        raise HyperlexError("give either --connect or --ssh, not both")
    if ssh:
        return Endpoint("ssh", ssh)
    if connect_file:
        if not Path(connect_file).is_file():
            raise HyperlexError(f"--connect {connect_file}: no such connection file",
                                hint="on the daemon's machine: hyperlexd --print-connection "
                                     "> hyperlexd.json")
        return Endpoint("file", connect_file)
    if daemon_pid_alive():
        return Endpoint("local")
    if not may_start:
        raise DaemonNotRunningError("hyperlexd is not running",
                                    hint="start it with `hyperlex daemon start`")
    try:
        pid = start_local_daemon(profile)
    except HyperlexError:
        if local_daemon_answers() is None:  # not another command starting one meanwhile
            raise
        return Endpoint("local")
    stderr.print(f"hyperlex: no hyperlexd was running: started one (pid {pid}); it keeps "
                 "running (`hyperlex daemon stop` stops it)", soft_wrap=True)
    return Endpoint("local", started_pid=pid)


@contextmanager
def daemon_client(connect_file: str | None = None, ssh: str | None = None, *,
                  may_start: bool = False, profile: str | None = None,
                  timeout: float = REPLY_TIMEOUT_S) -> Iterator[Client]:
    """A blocking client for the daemon (see `find_endpoint`), closed afterwards.

    Raises:
        DaemonNotRunningError: no local daemon and `may_start` is False.
        DaemonUnreachableError: a request inside the block got no reply.
    """
    endpoint = find_endpoint(connect_file, ssh, may_start=may_start, profile=profile)
    try:
        client = endpoint.open(timeout)
    except FileNotFoundError:
        raise DaemonNotRunningError("hyperlexd is not running (no connection file)",
                                    hint="start it with `hyperlex daemon start`") from None
    try:
        yield client
    except TimeoutError as exc:
        raise DaemonUnreachableError(f"hyperlexd did not answer: {exc}",
                                     hint="`hyperlex daemon status` and `hyperlex daemon logs` "
                                          "show its state") from None
    finally:
        client.close()
