"""`hyperlex-console`: find (or start) the daemon, then run the Textual console.

    hyperlex-console [--profile P] [--connect CONNECTION_FILE] [--ssh user@host] [--read-only]

With no daemon serving this HYPERLEX_HOME it starts one (the embedded daemon) and says so;
on exit it stops that daemon again unless jobs are still queued or running.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.errors import HyperlexError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hyperlex-console",
                                     description="The hyperlex operator console.")
    parser.add_argument("--profile", default=os.environ.get("HYPERLEX_PROFILE"),
                        help="profile for the daemon (default: the daemon's, or 'default')")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--connect", metavar="CONNECTION_FILE",
                       help="a daemon's connection file (from `hyperlexd --print-connection`)")
    where.add_argument("--ssh", metavar="USER@HOST", help="a daemon on another machine, "
                       "through an OpenSSH tunnel")
    parser.add_argument("--read-only", action="store_true",
                        help="watch only: no submit, cancel, chat or profile switch")
    return parser.parse_args(argv)


def stop_embedded(pid: int) -> str:
    """Stop the daemon this console started, unless it still has work; a line saying what."""
    from daemon.client import Client
    from daemon.connection import connection_file_path, read_connection_file

    try:
        with Client(read_connection_file(connection_file_path()), timeout=3.0,
                    retries=0) as client:
            status = client.status()
            if status.get("pid") != pid:
                return ""
            busy = status["jobs"]["running"] + status["jobs"]["queued"]
            if busy:
                return f"hyperlexd (pid {pid}) keeps running: {busy} job(s) queued or running"
            client.shutdown()
            return f"stopped the hyperlexd this console started (pid {pid})"
    except (OSError, TimeoutError, HyperlexError):
        return ""


def main(argv: list[str] | None = None) -> int:
    """Run the console; returns the exit code."""
    from hyperlex_console.endpoint import Endpoint, find_or_start_local

    args = parse_args(argv)
    try:
        if args.ssh:
            endpoint, note = Endpoint("ssh", args.ssh), f"connecting to {args.ssh} over SSH"
        elif args.connect:
            if not Path(args.connect).is_file():
                raise HyperlexError(f"--connect {args.connect}: no such connection file",
                                    hint="on the daemon's machine: hyperlexd --print-connection"
                                         " > hyperlexd.json")
            endpoint, note = Endpoint("file", args.connect), f"using {args.connect}"
        else:
            print("hyperlex-console: looking for hyperlexd…", file=sys.stderr, flush=True)
            endpoint, note = find_or_start_local(args.profile, may_start=not args.read_only)
            print(f"hyperlex-console: {note}", file=sys.stderr, flush=True)
    except HyperlexError as exc:
        print(f"hyperlex-console: {exc}", file=sys.stderr)
        return 1
    from hyperlex_console.app import HyperlexConsole

    app = HyperlexConsole(endpoint, profile=args.profile, read_only=args.read_only,
                          startup_note=note)
    app.run()
    if endpoint.started_pid:
        line = stop_embedded(endpoint.started_pid)
        if line:
            print(f"hyperlex-console: {line}", file=sys.stderr)
    return int(app.return_code or 0)


if __name__ == "__main__":
    sys.exit(main())
