"""`python -m engine.memory.run`: add scenes to a scene memory as a process, for the daemon.

    python -m engine.memory.run --profile P --input scenes.jsonl [--memory DIR] [--run-dir DIR]
        [--resume] --progress-jsonl

With `--progress-jsonl`, stdout carries one JSON object a line: `{"event":"progress",...}` per
stage of the add (embed, index), `{"event":"log","message":...}`, `{"event":"done",...}` with the
add report, and on failure `{"event":"error","type":...,"message":...,"hint":...}` (exit 1).
When some input lines are bad they are named in `log` events, the good scenes are still added,
and the exit code is 2. A
write is atomic, so a killed add leaves the previous index usable; running it again (`--resume`)
costs only what was not committed, thanks to the embedding cache. Bad lines of the input are
reported with their line numbers and the good ones are added. Knows nothing of the daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.errors import HyperlexError

BAD_LINES_EXIT_CODE = 2  # some input lines were bad; the good ones were added


def emit(event: dict[str, Any]) -> None:
    """One progress event on stdout."""
    sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.memory.run",
                                     description="Add scenes to a scene memory.")
    parser.add_argument("--profile", default="default", help="profile name or .toml path")
    parser.add_argument("--input", type=Path, required=True, help="scenes JSONL")
    parser.add_argument("--memory", type=Path, default=None,
                        help="memory dir (default: <state>/memory/default)")
    parser.add_argument("--run-dir", type=Path, default=None, help="unused; accepted for jobs")
    parser.add_argument("--resume", action="store_true",
                        help="run again; unchanged scenes cost nothing")
    parser.add_argument("--progress-jsonl", action="store_true",
                        help="print JSON events on stdout (always on; kept for the contract)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Read, add, report; returns the `done` event."""
    from engine.memory import MemoryConfig, SceneMemory
    from engine.profiles import load_profile
    from engine.scenes.io import LineError, read_scenes

    config = MemoryConfig.from_profile(load_profile(args.profile))
    errors: list[LineError] = []
    scenes = list(read_scenes(args.input, errors))
    for error in errors:
        emit({"event": "log", "message": f"{args.input}:{error.line}: {error.message}"})
    emit({"event": "log", "message": f"adding {len(scenes)} scenes from {args.input}"})

    def progress(stage: str, done: int, total: int) -> None:
        emit({"event": "progress", "stage": stage, "done": done, "total": total})

    with SceneMemory.open(args.memory, config=config) as memory:
        report = memory.add(scenes, progress=progress)
        stats = {"scenes": len(memory), "path": str(memory.path)}
    return {"event": "done", **asdict(report), "bad_lines": len(errors), "memory": stats}


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parse_args(argv)
    try:
        done = run(args)
    except HyperlexError as error:
        emit({"event": "error", **error.to_dict()})
        print(f"error: {error}", file=sys.stderr)
        return 1
    emit(done)
    if done["bad_lines"]:
        # Bad input exits non-zero even though the good scenes were added.
        print(f"error: {done['bad_lines']} bad line(s) in {args.input} were skipped; "
              f"{done['added'] + done['updated'] + done['unchanged']} good scene(s) kept",
              file=sys.stderr)
        return BAD_LINES_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(cli())
