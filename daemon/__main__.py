"""`hyperlexd`: start the daemon (in the foreground, or detached with --detach).

    hyperlexd [--foreground] [--profile P] [--bind tcp://HOST:PORT] [--recover]
    hyperlexd --bind tcp://127.0.0.1:PORT --no-curve --insecure-loopback-for-tests
    hyperlexd --print-connection      # the running daemon's connection file, for SSH clients
    hyperlexd --http 127.0.0.1:8000   # also serve the OpenAI-compatible HTTP gateway

It is only the command line: serving and starting in the background live in daemon.launch,
which front ends import. Every failure is one message naming its cause (the file, the address,
the profile) and exit code 1; only --print-connection says that no daemon is running. It knows
nothing of the console.
"""

from __future__ import annotations

import argparse
import os
import sys

from daemon.connection import check_runtime_file, connection_file_path
from daemon.launch import serve, spawn_detached
from engine.errors import HyperlexError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hyperlexd", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--foreground", action="store_true", help="stay attached, log to stderr")
    parser.add_argument("--log-file-only", action="store_true",
                        help="log to the daemon's log file only, not to stderr (detached)")
    parser.add_argument("--profile", default=os.environ.get("HYPERLEX_PROFILE", "default"))
    parser.add_argument("--bind", help="tcp://HOST:PORT (requires CURVE); default ipc")
    parser.add_argument("--no-curve", action="store_true",
                        help="plain TCP: refused unless --insecure-loopback-for-tests is given "
                             "and the address is a loopback one")
    parser.add_argument("--insecure-loopback-for-tests", action="store_true",
                        help="allow --no-curve on a loopback address: any local user can then "
                             "connect and read every event")
    parser.add_argument("--recover", action="store_true",
                        help="move a corrupt job database aside (jobs.sqlite3.corrupt-TIME) "
                             "and start with an empty one")
    parser.add_argument("--http", metavar="HOST:PORT",
                        help="also serve the OpenAI-compatible HTTP gateway there (port 0: a "
                             "free one; see <runtime>/http.json). Anything but loopback needs "
                             "a key: `hyperlex http key new`")
    parser.add_argument("--print-connection", action="store_true",
                        help="print the running daemon's connection file and exit")
    args = parser.parse_args(argv)

    if args.print_connection:
        path = connection_file_path()
        try:
            check_runtime_file(path)
            print(path.read_text())
        except FileNotFoundError:
            print(f"hyperlexd: no daemon is running (no {path})", file=sys.stderr)
            return 1
        except HyperlexError as exc:
            print(f"hyperlexd: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        if not args.foreground:
            passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
            pid = spawn_detached(passthrough)
            print(f"hyperlexd started (pid {pid})")
            return 0
        serve(args.profile, args.bind, curve=not args.no_curve,
              log_to_stderr=not args.log_file_only, recover=args.recover,
              insecure_loopback_for_tests=args.insecure_loopback_for_tests, http=args.http)
        return 0
    except HyperlexError as exc:
        print(f"hyperlexd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # A file or directory the daemon needed (a job's run dir, the state dir, a socket
        # path): name it, since "No such file" alone does not say which.
        where = f": {exc.filename}" if exc.filename else ""
        print(f"hyperlexd: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
