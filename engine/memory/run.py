"""`python -m engine.memory.run`: add scenes to a scene memory as a process, for the daemon.

    python -m engine.memory.run --profile P --input scenes.jsonl [--memory DIR] [--run-dir DIR]
        [--resume] --progress-jsonl

Events (`engine.job_entry` keeps the contract): `progress` per stage of the add (embed, index),
`log`, then `done` with the add report, or `error` (exit 1). When some input lines are bad they
are named in `log` events with their line numbers, the good scenes are still added, and the exit
code is 2. A write is atomic, so a killed add leaves the previous index usable; running it again
(`--resume`) costs only what was not committed, thanks to the embedding cache. Knows nothing of
the daemon.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from engine.job_entry import EXIT_BAD_INPUT, Events, Finished, job_parser, run_job

BAD_LINES_EXIT_CODE = EXIT_BAD_INPUT  # some input lines were bad; the good ones were added


def parser() -> argparse.ArgumentParser:
    """The command line of a memory-add job."""
    parser = job_parser("python -m engine.memory.run", "Add scenes to a scene memory.")
    parser.add_argument("--profile", default="default", help="profile name or .toml path")
    parser.add_argument("--input", type=Path, required=True, help="scenes JSONL")
    parser.add_argument("--memory", type=Path, default=None,
                        help="memory dir (default: <state>/memory/default)")
    parser.add_argument("--run-dir", type=Path, default=None, help="unused; accepted for jobs")
    parser.add_argument("--resume", action="store_true",
                        help="run again; unchanged scenes cost nothing")
    return parser


def add(args: argparse.Namespace, events: Events) -> Finished:
    """Read, add, report: the `done` event, and exit 2 when bad lines were skipped."""
    from engine.memory import MemoryConfig, SceneMemory
    from engine.profiles import load_profile
    from engine.scenes.io import LineError, read_scenes

    config = MemoryConfig.from_profile(load_profile(args.profile))
    errors: list[LineError] = []
    scenes = list(read_scenes(args.input, errors))
    for error in errors:
        events.log(f"{args.input}:{error.line}: {error.message}")
    events.log(f"adding {len(scenes)} scenes from {args.input}")
    with SceneMemory.open(args.memory, config=config) as memory:
        report = memory.add(scenes, progress=events.progress)
        stats = {"scenes": len(memory), "path": str(memory.path)}
    done = {"event": "done", **asdict(report), "bad_lines": len(errors), "memory": stats}
    if not errors:
        return Finished(done)
    # Bad input exits non-zero even though the good scenes were added.
    kept = report.added + report.updated + report.unchanged
    return Finished(done, BAD_LINES_EXIT_CODE,
                    note=f"error: {len(errors)} bad line(s) in {args.input} were skipped; "
                         f"{kept} good scene(s) kept")


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run_job(parser(), add, argv)


if __name__ == "__main__":
    sys.exit(cli())
