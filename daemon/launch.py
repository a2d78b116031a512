"""Starting hyperlexd, in this process or in the background, and where its own log is.

- `serve` runs the daemon here until it stops, logging to its file (and to stderr when
  attached). It sets the umask to 077 first, as the systemd unit does: everything the daemon
  and its jobs write (job dirs, the job database, logs, ratings, adapters) is the user's alone.
- `spawn_detached` runs `python -m daemon --foreground --log-file-only ARGS` in a new session
  and returns once that process has written the connection file.
- `log_file_path` is the rotated log, written only through the logging handler: one line once,
  and no descriptor left on a rotated-away file. `out_file_path` takes a detached daemon's raw
  stdout and stderr (a traceback before logging starts, a crash, a library's own prints); it is
  truncated at each start, so it holds the last start's only.

The log's rotation is `HYPERLEX_DAEMON_LOG_MAX_BYTES` (default 2,000,000) and
`HYPERLEX_DAEMON_LOG_BACKUPS` (default 3); they are read here, before any profile is loaded.

Front ends (`hyperlex daemon start`, the console's embedded daemon, the benches) start the
daemon through this module; `daemon.__main__` is only the `hyperlexd` command line over it.
It loads the server only in `serve`, and knows nothing of the console.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from daemon.connection import connection_file_path, read_connection_file
from engine.errors import ConfigError, HyperlexError
from engine.paths import dirs, project_root

log = logging.getLogger("hyperlexd")

PRIVATE_UMASK = 0o077
LOG_MAX_BYTES_ENV = "HYPERLEX_DAEMON_LOG_MAX_BYTES"
LOG_BACKUPS_ENV = "HYPERLEX_DAEMON_LOG_BACKUPS"
OUT_TAIL_LINES = 20  # lines of the raw output quoted when a detached start fails


def log_file_path() -> Path:
    """The daemon's own log (rotated), read by `hyperlex daemon logs`."""
    return dirs().state / "hyperlexd.log"


def out_file_path() -> Path:
    """A detached daemon's raw stdout and stderr, from its last start only."""
    return dirs().state / "hyperlexd.out"


def serve(profile: str, bind: str | None = None, curve: bool = True, *,
          log_to_stderr: bool = True, recover: bool = False,
          insecure_loopback_for_tests: bool = False, http: str | None = None) -> None:
    """Run hyperlexd in this process until it is stopped (`shutdown`, SIGTERM or SIGINT).

    Args:
        profile: the profile to start with.
        bind: tcp://HOST:PORT, or None for ipc in the runtime dir.
        curve: CURVE on TCP; off only with `insecure_loopback_for_tests` on a loopback address.
        log_to_stderr: also log to stderr (attached); a detached daemon logs to its file only.
        recover: move a corrupt job database aside and start with an empty one.
        insecure_loopback_for_tests: allow `curve=False` on a loopback address.
        http: serve the HTTP gateway on HOST:PORT (None: as the profile's `[http]` says).

    Raises:
        HyperlexError: it could not start (another daemon holds the lock, a bad bind address,
            an unknown profile, a corrupt job database); the message says which.
    """
    # Imported here: starting a daemon in the background must not load the whole server.
    from daemon.server import Server, ServerOptions

    os.umask(PRIVATE_UMASK)
    _setup_logging(log_to_stderr)
    _tighten_state_dir()
    server = Server(ServerOptions(profile=profile, bind=bind, curve=curve, recover=recover,
                                  insecure_loopback_for_tests=insecure_loopback_for_tests,
                                  http=http))
    try:
        server.start()
    except BaseException as exc:
        # The log says why this start failed, next to the lines of the starts before it.
        log.error("could not start: %s", exc)
        server.close()
        raise
    try:
        server.serve_forever()
    except HyperlexError as exc:
        log.error("stopped: %s", exc)
        raise
    except Exception:
        # The command line prints one line; the log keeps the whole story.
        log.exception("stopped on an unexpected error")
        raise


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def _setup_logging(log_to_stderr: bool) -> None:
    dirs().ensure()  # the state dir the log lives in
    handlers: list[logging.Handler] = [logging.handlers.RotatingFileHandler(
        log_file_path(), maxBytes=_env_int(LOG_MAX_BYTES_ENV, 2_000_000),
        backupCount=_env_int(LOG_BACKUPS_ENV, 3))]
    if log_to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _tighten_state_dir() -> None:
    """Close a state dir created open (before the daemon set its umask) to other users."""
    state = dirs().state
    mode = stat.S_IMODE(state.stat().st_mode)
    if mode & 0o077:
        os.chmod(state, 0o700)
        log.warning("the state dir %s was open to other users (mode %04o): now 0700", state,
                    mode)


def spawn_detached(args: list[str], wait_s: float = 30.0) -> int:
    """Start `hyperlexd --foreground ARGS` in the background; return its pid once it serves.

    It runs under umask 077 and logs only to `log_file_path()`; what it prints goes to
    `out_file_path()`, emptied first.

    Raises:
        HyperlexError: it exited early (the message quotes its last output) or did not write
            its connection file in time.
    """
    path = connection_file_path()
    before = path.stat().st_mtime_ns if path.exists() else None
    out_path = out_file_path()
    old_umask = os.umask(PRIVATE_UMASK)
    try:
        out_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root()),
                                                        env.get("PYTHONPATH", "")) if p)
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--foreground", "--log-file-only", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                start_new_session=True, umask=PRIVATE_UMASK)
    finally:
        os.umask(old_umask)
    hint = f"see {out_path} and {log_file_path()}"
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HyperlexError(f"hyperlexd exited with code {proc.returncode}"
                                + _tail(out_path), hint=hint)
        # A connection file left by an earlier daemon does not count: it must be this one's.
        if path.exists() and path.stat().st_mtime_ns != before:
            try:
                if read_connection_file(path).pid == proc.pid:
                    return proc.pid
            except HyperlexError:
                pass
        time.sleep(0.05)
    raise HyperlexError(f"hyperlexd did not start within {wait_s:.0f} s", hint=hint)


def _tail(path: Path) -> str:
    """The last lines of a detached daemon's output, indented, for an error message."""
    try:
        lines = path.read_text(errors="replace").strip().splitlines()[-OUT_TAIL_LINES:]
    except OSError:
        return ""
    return (":\n" + "\n".join(f"    {line}" for line in lines)) if lines else ""


def stop_detached(client: Any, pid: int, wait_s: float = 20.0) -> bool:
    """Ask a daemon started with `spawn_detached` to shut down (SIGTERM if it cannot be
    asked), close `client`, and wait for the process to go; True once it has."""
    try:
        client.shutdown()
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    client.close()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
