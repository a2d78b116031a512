"""Starting hyperlexd, in this process or in the background, and where its own log is.

- `serve` runs the daemon here until it stops, logging to its file and to stderr.
- `spawn_detached` runs `python -m daemon --foreground ARGS` in a new session and returns once
  that process has written the connection file.
- `log_file_path` is the rotated log both write.

Front ends (`hyperlex daemon start`, the console's embedded daemon, the benches) start the
daemon through this module; `daemon.__main__` is only the `hyperlexd` command line over it.
It loads the server only in `serve`, and knows nothing of the console.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import subprocess
import sys
import time
from pathlib import Path

from daemon.connection import connection_file_path, read_connection_file
from engine.errors import HyperlexError
from engine.paths import dirs, project_root


def log_file_path() -> Path:
    """The daemon's own log (rotated), read by `hyperlex daemon logs`."""
    return dirs().state / "hyperlexd.log"


def serve(profile: str, bind: str | None = None, curve: bool = True) -> None:
    """Run hyperlexd in this process until it is stopped (`shutdown`, SIGTERM or SIGINT).

    Raises:
        HyperlexError: it could not start (another daemon holds the lock, a bad bind address,
            an unknown profile); the message says which.
    """
    # Imported here: starting a daemon in the background must not load the whole server.
    from daemon.server import Server, ServerOptions

    _log_to_file_and_stderr()
    server = Server(ServerOptions(profile=profile, bind=bind, curve=curve))
    server.start()
    server.serve_forever()


def _log_to_file_and_stderr() -> None:
    dirs().ensure()  # the state dir the log lives in
    handlers: list[logging.Handler] = [
        logging.handlers.RotatingFileHandler(log_file_path(), maxBytes=2_000_000, backupCount=3),
        logging.StreamHandler(sys.stderr)]
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def spawn_detached(args: list[str], wait_s: float = 30.0) -> int:
    """Start `hyperlexd --foreground ARGS` in the background; return its pid once it serves.

    Raises:
        HyperlexError: it exited early or did not write its connection file in time.
    """
    path = connection_file_path()
    before = path.stat().st_mtime_ns if path.exists() else None
    log_path = log_file_path()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(project_root()),
                                                    env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "--foreground", *args],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HyperlexError(f"hyperlexd exited with code {proc.returncode}",
                                hint=f"see {log_path}")
        # A connection file left by an earlier daemon does not count: it must be this one's.
        if path.exists() and path.stat().st_mtime_ns != before:
            try:
                if read_connection_file(path).pid == proc.pid:
                    return proc.pid
            except HyperlexError:
                pass
        time.sleep(0.05)
    raise HyperlexError(f"hyperlexd did not start within {wait_s:.0f} s", hint=f"see {log_path}")
