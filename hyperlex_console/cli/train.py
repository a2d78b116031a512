"""`hyperlex train`: train a LoRA adapter with a profile, with a progress bar.

The command runs the engine's recipe in this process (the daemon runs the same recipe through
`python -m engine.training.run`). Ctrl-C stops after the current step and writes a checkpoint;
`--resume RUN` continues it exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from engine.data.formats import MODES
from engine.errors import ConfigError
from engine.paths import dirs
from engine.profiles import load_profile
from engine.training import STOPPED_EXIT_CODE, RunConfig, main
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stderr,
)


def _run_dir(resume: str | None) -> Path | None:
    if resume is None:
        return None
    path = Path(resume).expanduser()
    if path.is_dir():
        return path
    named = dirs().state / "runs" / resume
    if named.is_dir():
        return named
    raise ConfigError(f"no run {resume!r} to resume",
                      hint=f"give a run directory, or a run name under {dirs().state / 'runs'}")


class _TrainProgress:
    """Turns the recipe's events into a rich progress bar and short log lines on stderr."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task: Any = None
        self.last_eval: float | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "step":
            self._step(event)
        elif kind == "eval" and event.get("eval_loss") is not None:
            self.last_eval = event["eval_loss"]
            self._say(f"held-out loss at step {event['step']}: {event['eval_loss']:.4f}")
        elif kind == "log":
            self._say(event["message"])
        elif kind == "checkpoint":
            self._say(f"checkpoint: {event['path']}")

    def _say(self, message: str) -> None:
        if self.quiet:
            return
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            stderr.print(message, markup=False, highlight=False)

    def _step(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        if self.progress is None:
            self.progress = Progress(
                TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  {task.fields[speed]:.0f} tok/s"),
                TimeRemainingColumn(), console=stderr, transient=False,
                disable=not sys.stderr.isatty())
            self.progress.start()
            self.task = self.progress.add_task("train", total=event["max_steps"],
                                               completed=event["step"] - 1, loss=0.0, speed=0.0)
        self.progress.update(self.task, completed=event["step"], loss=event["loss"],
                             speed=event["tokens_per_s"])
        if not sys.stderr.isatty() and event["step"] % 10 == 0:
            stderr.print(f"step {event['step']}/{event['max_steps']} loss {event['loss']:.4f}",
                         highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@click.command("train")
@profile_option
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="Training mode (profile default: training.mode).")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (profile default).")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Scenes JSONL to train on (default: the synthetic demo corpus).")
@click.option("--resume", "resume", metavar="RUN", default=None,
              help="Continue a stopped run: its directory or its name under <state>/runs.")
@click.option("--run-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the run (default: <state>/runs/<time>-<profile>-<mode>).")
@json_option
@handles_errors
def group(profile_name: str, mode: str | None, max_steps: int | None, data: Path | None,
          resume: str | None, run_dir: Path | None, as_json: bool) -> None:
    """Train a LoRA adapter on scenes with a profile's recipe.

    Prints progress on stderr; at the end, where the adapter is and both losses. With --json,
    the last line on stdout is {"run_dir", "adapter_dir", "final_loss", "eval_loss"}. Ctrl-C
    stops after the current step with a checkpoint; --resume RUN continues it exactly.

    \b
    Examples:
      hyperlex train --profile tiny-test --max-steps 4
      hyperlex train --profile default --mode bridge --data scenes.jsonl
      hyperlex train --profile default --resume 20250101-120000-default-output-only
    """
    profile = load_profile(profile_name)
    display = _TrainProgress(quiet=False)
    try:
        result = main(RunConfig(profile=profile, run_dir=_run_dir(resume) or run_dir, data=data,
                                mode=mode, max_steps=max_steps, resume=resume is not None,
                                on_event=display), handle_sigint=True)
    finally:
        display.close()
    if result.stopped:
        stderr.print(f"stopped at step {result.steps}; continue with: hyperlex train "
                     f"--profile {profile_name} --resume {result.run_dir}", highlight=False)
    if as_json:
        emit_json(result.to_dict())
    else:
        base = f"{result.base_eval_loss:.4f} → " if result.base_eval_loss is not None else ""
        held = f"{result.eval_loss:.4f}" if result.eval_loss is not None else "n/a"
        click.echo(f"run:      {result.run_dir}")
        click.echo(f"adapter:  {result.adapter_dir or '(none: stopped before the end)'}")
        click.echo(f"loss:     {result.final_loss:.4f} (training, last steps)")
        click.echo(f"held-out: {base}{held}")
    if result.stopped:
        sys.exit(STOPPED_EXIT_CODE)
