"""`hyperlexd`: start the daemon (in the foreground, or detached with --detach).

    hyperlexd [--foreground] [--profile P] [--bind tcp://HOST:PORT] [--no-curve]
    hyperlexd --print-connection      # the running daemon's connection file, for SSH clients

It is only the command line: serving and starting in the background live in daemon.launch,
which front ends import. It knows nothing of the console.
"""

from __future__ import annotations

import argparse
import os
import sys

from daemon.connection import connection_file_path
from daemon.launch import serve, spawn_detached
from engine.errors import HyperlexError


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
        serve(args.profile, args.bind, curve=not args.no_curve)
        return 0
    except FileNotFoundError:
        print(f"hyperlexd: no daemon is running (no {connection_file_path()})", file=sys.stderr)
        return 1
    except HyperlexError as exc:
        print(f"hyperlexd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
