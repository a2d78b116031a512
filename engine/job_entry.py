"""The one entry point of a job process: `python -m engine.<stage>.run` and the selftest job.

A stage declares its arguments on `job_parser(...)` and writes one function, its *work*, that
takes the parsed arguments and an `Events` emitter; `run_job(parser, work)` does the rest. The
contract every job process keeps, which the daemon's worker reader relies on:

- **stdout**: with `--progress-jsonl`, JSON objects only, one a line, each with an `"event"` key:
  `step`, `eval`, `checkpoint`, `progress` (`stage`, `done`, `total`), `log` (`message`), then
  one final `done` (the result) or `error` (`type`, `title`, `message`, `hint`). Whatever else the
  process prints, from Python or from C code, goes to stderr. Without the flag the same JSON goes
  to stdout as is, unless the stage gives a human format (training does).
- **stderr**: log text; on an error its last line is `error: <message>` (the daemon shows the
  last line of a failed job), after the traceback when the error was unexpected.
- **exit codes**: see `EXIT_*` below. Bad arguments exit 2 from argparse, before any event.
- Under `torchrun` or `accelerate launch` (`RANK` set) only rank 0 prints events.

Arguments are never abbreviated (`allow_abbrev=False`): `--max` is an error, not `--max-steps`,
so a flag added later cannot silently change what an old command line means.

This module knows nothing of the daemon and nothing of any stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from engine.errors import HyperlexError, disk_full

EXIT_OK = 0  # the work finished; the last event is `done`
EXIT_ERROR = 1  # an error was reported (the last event is `error`); HyperlexError.exit_code
EXIT_BAD_INPUT = 2  # the work finished but skipped bad input (memory: bad scene lines)
EXIT_STOPPED = 143  # 128 + SIGTERM: stopped on request after writing a checkpoint; `--resume`

Event = dict[str, Any]


@dataclass(frozen=True)
class Finished:
    """How a job's work ends when it is more than a `done` event and exit 0.

    Args:
        done: the `done` event to emit, or None when the work emitted its own.
        exit_code: the process's exit code (one of `EXIT_*`, or a stage's own).
        note: a last line for stderr, after the `done` event (why the code is not 0).
    """

    done: Event | None = None
    exit_code: int = EXIT_OK
    note: str | None = None


Work = Callable[[argparse.Namespace, "Events"], "Event | Finished"]


class Events:
    """The emitter a job's work writes its events through; call it with an event dict.

    Args:
        stream: where the lines go.
        human: turns an event into a line for a person; None writes JSON.
        quiet: print nothing (a rank other than 0).
    """

    def __init__(self, stream: TextIO, *, human: Callable[[Event], str] | None = None,
                 quiet: bool = False):
        self.stream = stream
        self.human = human
        self.quiet = quiet

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if self.human is not None:
            line = self.human(event)
        else:
            # default=str: a Path or a date in a result is written as text, not a crash.
            line = json.dumps(event, ensure_ascii=False, default=str)
        self.stream.write(line + "\n")
        self.stream.flush()

    def log(self, message: str) -> None:
        """A `log` event: a line for the job's log."""
        self({"event": "log", "message": message})

    def progress(self, stage: str, done: int, total: int | None, **extra: Any) -> None:
        """A `progress` event: `done` of `total` (None when unknown) in `stage`."""
        self({"event": "progress", "stage": stage, "done": done, "total": total, **extra})


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of a job process, with `--progress-jsonl` already declared.

    Args:
        prog: how the process is started, e.g. `python -m engine.export.run`.
        description: one line saying what the job does.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False)
    parser.add_argument("--progress-jsonl", action="store_true",
                        help="print one JSON event per line on stdout, nothing else")
    return parser


def json_event_stream() -> TextIO:
    """A stream on the real stdout for events, with fd 1 and `sys.stdout` sent to stderr.

    Whatever else is printed, by Python or C code (a library's progress bar, llama.cpp's log),
    then goes to stderr and cannot break the JSON-lines contract.
    """
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events


def run_job(parser: argparse.ArgumentParser, work: Work, argv: list[str] | None = None, *,
            human: Callable[[Event], str] | None = None) -> int:
    """Parse the arguments, run `work`, report how it ended; returns the exit code.

    Args:
        parser: from `job_parser`, with the stage's arguments added.
        work: the stage's work; returns its `done` event (exit 0) or a `Finished`.
        argv: the arguments (default: the command line).
        human: the stage's format for a person, used without `--progress-jsonl`.
    """
    args = parser.parse_args(argv)
    as_json = bool(getattr(args, "progress_jsonl", False))
    stream = json_event_stream() if as_json else sys.stdout
    rank = int(os.environ.get("RANK", "0"))
    events = Events(stream, human=None if as_json else human, quiet=rank != 0)
    try:
        outcome = work(args, events)
    except HyperlexError as error:
        return _report(events, error.to_dict(), f"error: {error}", error.exit_code, rank)
    except Exception as error:  # noqa: BLE001 - the envelope is the contract, whatever failed
        full = disk_full(error, getattr(args, "run_dir", None))
        if full is not None:  # not a bug: say so, with no traceback
            return _report(events, full.to_dict(), f"error: {full}", full.exit_code, rank)
        traceback.print_exc(file=sys.stderr)
        envelope = {"type": type(error).__name__, "title": "unexpected error",
                    "message": str(error) or type(error).__name__,
                    "hint": "this is a bug: the traceback is in the job's log; report it with "
                            "the command line that was run"}
        return _report(events, envelope, f"error: unexpected {type(error).__name__}: {error}",
                       EXIT_ERROR, rank)
    finished = outcome if isinstance(outcome, Finished) else Finished(done=outcome)
    if finished.done is not None:
        events(finished.done)
    if finished.note and rank == 0:
        print(finished.note, file=sys.stderr)
    return finished.exit_code


def _report(events: Events, envelope: dict[str, Any], line: str, code: int, rank: int) -> int:
    """The `error` event and the last stderr line; rank 0 alone speaks."""
    events({"event": "error", **envelope})
    if rank == 0:
        print(line, file=sys.stderr)
    return code
