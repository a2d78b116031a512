"""`hyperlexd`: start the daemon (in the foreground, or detached with --detach).

    hyperlexd [--foreground] [--profile P] [--bind tcp://HOST:PORT] [--no-curve]
    hyperlexd --print-connection      # the running daemon's connection file, for SSH clients

It knows nothing of the console.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import subprocess
import sys
import time

from daemon.connection import connection_file_path, read_connection_file
from engine.errors import HyperlexError
from engine.paths import dirs, project_root


def log_file_path():
    """The daemon's own log (rotated), read by `hyperlex daemon logs`."""
    return dirs().state / "hyperlexd.log"


def _setup_logging(foreground: bool) -> None:
    d = dirs().ensure()
    handler = logging.handlers.RotatingFileHandler(d.state / "hyperlexd.log",
                                                   maxBytes=2_000_000, backupCount=3)
    handlers: list[logging.Handler] = [handler]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
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
        if path.exists() and path.stat().st_mtime_ns != before:
            try:
                if read_connection_file(path).pid == proc.pid:
                    return proc.pid
            except HyperlexError:
                pass
        time.sleep(0.05)
    raise HyperlexError(f"hyperlexd did not start within {wait_s:.0f} s", hint=f"see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperlexd", description=__doc__.splitlines()[0])
    parser.add_argument("--foreground", action="store_true", help="stay attached, log to stderr")
    parser.add_argument("--profile", default=os.environ.get("HYPERLEX_PROFILE", "default"))
    parser.add_argument("--bind", help="tcp://HOST:PORT (requires CURVE); default ipc")
    parser.add_argument("--no-curve", action="store_true",
                        help="plain TCP, only accepted on a loopback address")
    parser.add_argument("--print-connection", action="store_true",
                        help="print the running daemon's connection file and exit")
    args = parser.parse_args(argv)

    try:
        if args.print_connection:
            print(connection_file_path().read_text())
            return 0
        if not args.foreground:
            passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
            pid = spawn_detached(passthrough)
            print(f"hyperlexd started (pid {pid})")
            return 0
        from daemon.server import Server, ServerOptions

        _setup_logging(foreground=True)
        server = Server(ServerOptions(profile=args.profile, bind=args.bind,
                                      curve=not args.no_curve))
        server.start()
        server.serve_forever()
        return 0
    except FileNotFoundError:
        print(f"hyperlexd: no daemon is running (no {connection_file_path()})", file=sys.stderr)
        return 1
    except HyperlexError as exc:
        print(f"hyperlexd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
