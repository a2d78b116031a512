"""`python -m engine.training.run`: the training recipe as a process, for the daemon and launchers.

    python -m engine.training.run --profile P --run-dir DIR [--data scenes.jsonl] [--mode M]
        [--max-steps N] [--resume] [--stop-at-step N] --progress-jsonl

With `--progress-jsonl`, stdout carries only JSON objects, one a line:
`{"event":"step",...}`, `{"event":"eval",...}`, `{"event":"checkpoint",...}`,
`{"event":"log","message":...}`, `{"event":"done",...}`, and on failure
`{"event":"error","type":...,"message":...,"hint":...}`. Anything else a library prints goes to
stderr. Exit codes: 0 done; 1 a reported error; 143 stopped by SIGTERM after writing a
checkpoint (continue with `--resume`). Under `torchrun` or `accelerate launch` only rank 0
prints. Without `--data` the demo corpus is used. This module knows nothing of the daemon.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from engine.data.formats import MODES
from engine.errors import HyperlexError
from engine.events import json_event_stream
from engine.training.recipe import STOPPED_EXIT_CODE, RunConfig, main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.training.run",
                                     description="Train a LoRA adapter with a profile.")
    parser.add_argument("--profile", required=True, help="profile name or .toml path")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="the run directory (default: <state>/runs/<time>-<profile>-<mode>)")
    parser.add_argument("--data", type=Path, default=None,
                        help="scenes JSONL (default: the synthetic demo corpus)")
    parser.add_argument("--mode", choices=MODES, default=None, help="overrides training.mode")
    parser.add_argument("--max-steps", type=int, default=None, help="overrides training.max_steps")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its latest checkpoint")
    parser.add_argument("--stop-at-step", type=int, default=None,
                        help="stop after this step with a checkpoint, as SIGTERM would")
    parser.add_argument("--progress-jsonl", action="store_true",
                        help="print one JSON event per line on stdout, nothing else")
    return parser.parse_args(argv)


def _event_writer(stream: TextIO, as_json: bool):
    def write(event: dict[str, Any]) -> None:
        if as_json:
            stream.write(json.dumps(event, ensure_ascii=False) + "\n")
        elif event["event"] == "step":
            stream.write(f"step {event['step']}/{event['max_steps']}  loss {event['loss']:.4f}  "
                         f"lr {event['lr']:.2e}  {event['tokens_per_s']:.0f} tok/s  "
                         f"eta {event['eta_s']:.0f}s\n")
        elif event["event"] == "eval":
            stream.write(f"eval  step {event['step']}  held-out loss {event['eval_loss']}\n")
        else:
            stream.write(" ".join(f"{k}={v}" for k, v in event.items() if k != "event") + "\n")
        stream.flush()
    return write


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parse_args(argv)
    events = sys.stdout
    if args.progress_jsonl:
        events = json_event_stream()
    write = _event_writer(events, args.progress_jsonl)
    rank = int(os.environ.get("RANK", "0"))
    try:
        from engine.profiles import load_profile

        profile = load_profile(args.profile)
        result = main(RunConfig(profile=profile, run_dir=args.run_dir, data=args.data,
                                mode=args.mode, max_steps=args.max_steps, resume=args.resume,
                                stop_at_step=args.stop_at_step, on_event=write),
                      handle_sigterm=True)
    except HyperlexError as error:
        if rank == 0:
            write({"event": "error", **error.to_dict()})
            print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return STOPPED_EXIT_CODE if result.stopped else 0


if __name__ == "__main__":
    sys.exit(cli())
