"""The `selftest` job: a small counting process that honours the training progress contract.

It exists to exercise the job machinery (progress, checkpoints, SIGTERM, resume) on any machine:
it prints `step`, `checkpoint`, `log` and `done` JSON lines exactly as a training recipe does, its
"loss" is a deterministic function of the step, and its checkpoint is a small JSON file written
with temp file, fsync and rename. The process side (arguments, events, exit codes) is
`engine.job_entry`'s, as for every job. It knows nothing of the daemon.

    python -m daemon.selftest_job --run-dir DIR --max-steps 40 --progress-jsonl [--resume]
        [--lines-per-step N]   # also N plain log lines a step

Exit codes: 0 done, or stopped by SIGTERM after a checkpoint; 3 when `--fail-at` asks it to fail
(a crash without an error event, as a killed worker would look).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

from engine.job_entry import Event, Events, Finished, job_parser, run_job

FAIL_EXIT_CODE = 3  # what `--fail-at` exits with: not an engine code, so a test can tell it apart


def loss_at(step: int) -> float:
    """A decreasing curve: what a resumed run must continue exactly."""
    return round(2.0 * math.exp(-step / 25.0) + 0.1, 6)


def save_checkpoint(run_dir: Path, step: int) -> Path:
    target = run_dir / "checkpoints" / f"step-{step:06d}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"step": step, "loss": loss_at(step)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def latest_checkpoint(run_dir: Path) -> int:
    found = sorted((run_dir / "checkpoints").glob("step-*.json"))
    return json.loads(found[-1].read_text())["step"] if found else 0


def parser() -> argparse.ArgumentParser:
    """The command line of the selftest job."""
    parser = job_parser("python -m daemon.selftest_job", "Count steps as a training job would.")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--step-time", type=float, default=0.05)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--fail-at", type=int, default=0)
    parser.add_argument("--ignore-sigterm", action="store_true",
                        help="keep running on SIGTERM (tests the SIGKILL escalation)")
    parser.add_argument("--lines-per-step", type=int, default=0,
                        help="plain log lines printed each step (a log load for benchmarks)")
    parser.add_argument("--resume", action="store_true")
    return parser


def count(args: argparse.Namespace, events: Events) -> Event | Finished:
    """Count to `--max-steps`, checkpointing; on SIGTERM checkpoint and stop."""
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    stop = {"requested": False}
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))

    step = latest_checkpoint(run_dir) if args.resume else 0
    events.log(f"selftest starting at step {step} (resume={args.resume})")
    started = next_at = time.monotonic()
    while step < args.max_steps:
        if stop["requested"]:
            path = save_checkpoint(run_dir, step)
            events({"event": "checkpoint", "step": step, "path": str(path)})
            events.log("stopped by SIGTERM after checkpoint")
            return Finished()
        next_at += args.step_time  # a steady rate: the sleep makes up for the work
        time.sleep(max(0.0, next_at - time.monotonic()))
        step += 1
        if args.fail_at and step == args.fail_at:
            return Finished(exit_code=FAIL_EXIT_CODE,
                            note=f"selftest failing at step {step} as asked")
        if args.lines_per_step:
            # Deliberately not JSON, on the event stream itself: the daemon's reader must pass
            # such lines on as log lines, and this is the load that shows it does.
            events.stream.write("".join(f"selftest step {step} line {i}: the quick brown fox\n"
                                        for i in range(args.lines_per_step)))
            events.stream.flush()
        elapsed = time.monotonic() - started
        events({"event": "step", "step": step, "max_steps": args.max_steps,
                "loss": loss_at(step), "lr": 1e-3, "tokens_per_s": 100.0,
                "eta_s": round((args.max_steps - step) * args.step_time, 3),
                "elapsed_s": elapsed})
        if step % args.checkpoint_every == 0:
            path = save_checkpoint(run_dir, step)
            events({"event": "checkpoint", "step": step, "path": str(path)})
    return {"event": "done", "adapter_dir": str(run_dir), "final_loss": loss_at(step)}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run_job(parser(), count, argv)


if __name__ == "__main__":
    sys.exit(main())
