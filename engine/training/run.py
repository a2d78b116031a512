"""`python -m engine.training.run`: the training recipe as a process, for the daemon and launchers.

    python -m engine.training.run --profile P --run-dir DIR [--data scenes.jsonl] [--mode M]
        [--max-steps N] [--resume] [--stop-at-step N] --progress-jsonl

Events (`engine.job_entry` keeps the contract): `step`, `eval`, `checkpoint`, `log`, then `done`
or `error`. Exit codes: 0 done; 1 a reported error; 143 stopped by SIGTERM after writing a
checkpoint (continue with `--resume`). Under `torchrun` or `accelerate launch` only rank 0
prints. Without `--progress-jsonl` the events are lines for a person. Without `--data` the demo
corpus is used. This module knows nothing of the daemon.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.data.formats import MODES
from engine.job_entry import Event, Events, Finished, job_parser, run_job
from engine.training.recipe import STOPPED_EXIT_CODE, RunConfig, main


def parser() -> argparse.ArgumentParser:
    """The command line of a training job."""
    parser = job_parser("python -m engine.training.run", "Train a LoRA adapter with a profile.")
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
    return parser


def human_line(event: Event) -> str:
    """An event as a line for a person at a terminal."""
    if event["event"] == "step":
        return (f"step {event['step']}/{event['max_steps']}  loss {event['loss']:.4f}  "
                f"lr {event['lr']:.2e}  {event['tokens_per_s']:.0f} tok/s  "
                f"eta {event['eta_s']:.0f}s")
    if event["event"] == "eval":
        return f"eval  step {event['step']}  held-out loss {event['eval_loss']}"
    return " ".join(f"{k}={v}" for k, v in event.items() if k != "event")


def train(args: argparse.Namespace, events: Events) -> Finished:
    """Run the recipe; it emits its own `done` event."""
    from engine.profiles import load_profile

    profile = load_profile(args.profile)
    result = main(RunConfig(profile=profile, run_dir=args.run_dir, data=args.data,
                            mode=args.mode, max_steps=args.max_steps, resume=args.resume,
                            stop_at_step=args.stop_at_step, on_event=events),
                  handle_sigterm=True)
    return Finished(exit_code=STOPPED_EXIT_CODE if result.stopped else 0)


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run_job(parser(), train, argv, human=human_line)


if __name__ == "__main__":
    sys.exit(cli())
