"""`hyperlex eval`: did the adapter learn? Paired A/B against the base, another adapter or a sweep.

Runs the engine's eval in this process (the daemon runs the same through
`python -m engine.evals.run`) and writes metrics.json, records.jsonl, report.md and a
self-contained report.html to `-o DIR`. `hyperlex eval plain-vs-hyper` trains an adapter on the
plain texts and one on hypertoken scenes with the same budget, then compares them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.paths import dirs
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stderr,
)

TASK_HELP = "loss, reverse, test, register, density, assoc, roundtrip"


class _EvalProgress:
    """Eval events as one progress bar per task on stderr."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and stderr.is_terminal
        self.progress: Progress | None = None
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "log":
            stderr.print(f"[dim]{event['message']}[/]", highlight=False)
        elif kind == "progress" and self.enabled:
            if self.progress is None:
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                         MofNCompleteColumn(), TimeElapsedColumn(),
                                         console=stderr, transient=True)
                self.progress.start()
            name = event.get("task", "eval")
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=event.get("total"))
            self.progress.update(self.tasks[name], completed=event.get("done", 0),
                                 total=event.get("total"))

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _default_out(profile_name: str) -> Path:
    return dirs().state / "evals" / f"{time.strftime('%Y%m%d-%H%M%S')}-{profile_name}"


def _print_result(result: Any, as_json: bool) -> None:
    from engine.evals.report import summary_lines
    from engine.evals.run import done_event

    if as_json:
        emit_json({**done_event(result), "out_dir": str(Path(result.paths["html"]).parent),
                   "metrics_by_side": result.metrics["metrics"]})
        return
    for line in summary_lines(result.metrics):
        click.echo(line)
    for note in result.metrics.get("notes", []):
        click.echo(f"note: {note}")
    click.echo(f"report:   {result.paths['html']}")
    click.echo(f"records:  {result.paths['records']}")


@click.group("eval", invoke_without_command=True)
@profile_option
@click.option("--adapter", "adapters", multiple=True, metavar="[NAME=]DIR",
              help="A PEFT adapter dir to evaluate (repeat for several).")
@click.option("--vs", default="base", show_default=True, metavar="base|NAME",
              help="The side the others are compared against.")
@click.option("--sweep", type=click.Path(path_type=Path), default=None, metavar="RUN",
              help="A run dir: every checkpoint of it becomes a side.")
@click.option("--tests", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Manual tests (JSONL: prompt, register, must_contain, ...).")
@click.option("--backend", type=click.Choice(["hf", "llamacpp", "openai"]), default="hf",
              show_default=True,
              help="What scores the sides: transformers, or llama.cpp on the profile's GGUF "
                   "(logits of every position). An OpenAI-style server is refused for "
                   "perplexity: it cannot return prompt log-probabilities.")
@click.option("--reverse-path", type=click.Choice(["sceneformer", "bridge"]),
              default="sceneformer", show_default=True,
              help="Reversibility's way out: the sceneformer's structure, or the structure the "
                   "side writes itself (text -> scene -> text through the bridge adapter).")
@click.option("--judge", default=None, metavar="PROFILE[:BACKEND]",
              help="A pairwise judge: that profile's model, asked in both orders at "
                   "temperature 0 (e.g. qwen:llamacpp, or a profile with an openai_url).")
@click.option("--ratings", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="People's blind A/B ratings (the daemon's <state>/ab_ratings.jsonl): "
                   "ranked with Bradley-Terry.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Scenes JSONL (default: what the adapter was trained on).")
@click.option("--tasks", default=None, help=f"Comma-separated tasks ({TASK_HELP}).")
@click.option("--limit", type=int, default=None, help="At most this many held-out examples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("--n-resamples", type=int, default=2000, show_default=True,
              help="Bootstrap resamples.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Report dir (default: <state>/evals/<time>-<profile>).")
@json_option
@click.pass_context
@handles_errors
def group(ctx: click.Context, profile_name: str, adapters: tuple[str, ...], vs: str,
          sweep: Path | None, tests: Path | None, backend: str, reverse_path: str,
          judge: str | None,
          ratings: Path | None,
          data: Path | None, tasks: str | None,
          limit: int | None, seed: int, n_resamples: int, out_dir: Path | None,
          as_json: bool) -> None:
    """Evaluate adapters on held-out examples, paired against the base (or --vs NAME).

    Every side scores the same held-out examples, split as the adapter's training split them.
    Perplexity is exp(sum NLL / sum tokens) on the answer tokens; every difference comes with
    its 95% interval (paired bootstrap), p, n and win/tie/loss. "No significant difference" is
    an answer. Writes metrics.json, records.jsonl, report.md and report.html to -o DIR.

    \b
    Examples:
      hyperlex eval --profile default --adapter ~/.local/state/hyperlex/runs/RUN/adapter
      hyperlex eval --adapter a=RUN_A/adapter --adapter b=RUN_B/adapter --vs a -o out/
      hyperlex eval --sweep RUN --json
      hyperlex eval --adapter RUN/adapter --tests my-tests.jsonl
    """
    if ctx.invoked_subcommand is not None:
        return
    import argparse

    from engine.evals.compare import run_eval
    from engine.evals.run import config_from_args

    if not adapters and sweep is None:
        raise click.UsageError("give --adapter DIR (or --sweep RUN); see --help")
    out_dir = out_dir or _default_out(profile_name)
    args = argparse.Namespace(profile=profile_name, adapter=list(adapters), vs=vs, sweep=sweep,
                              tests=tests, backend=backend, reverse_path=reverse_path,
                              judge=judge, ratings=ratings,
                              data=data, mode=None,
                              tasks=tasks, limit=limit,
                              seed=seed, n_resamples=n_resamples, run_dir=out_dir)
    display = _EvalProgress(enabled=True)
    try:
        result = run_eval(config_from_args(args, on_event=display))
    finally:
        display.close()
    _print_result(result, as_json)


@group.command("plain-vs-hyper")
@profile_option
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Scenes JSONL (default: the synthetic demo corpus).")
@click.option("--max-steps", type=int, default=None,
              help="Steps for each of the two trainings (profile default).")
@click.option("--tests", type=click.Path(path_type=Path), default=None, metavar="FILE",
              help="Manual tests for register agreement (e.g. the shipped held-out set).")
@click.option("--limit", type=int, default=None, help="At most this many held-out examples.")
@click.option("--reverse-limit", type=int, default=24, show_default=True,
              help="Scenes whose text is written back from structure, per side.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Dir for both runs and the report (default: <state>/evals/<time>-...).")
@json_option
@handles_errors
def plain_vs_hyper_command(profile_name: str, data: Path | None, max_steps: int | None,
                           tests: Path | None, limit: int | None, reverse_limit: int, seed: int,
                           out_dir: Path | None, as_json: bool) -> None:
    """Train on plain texts and on hypertoken scenes with one budget, then compare.

    Both adapters learn from the same texts with the same steps, batch, sequence length and
    split. The eval scores them and the base on the same held-out examples: perplexity of the
    plain texts (text.ppl), of the scenes with structure (loss.ppl), reversibility and, with
    --tests, register agreement. Differences are hyper - plain with 95% intervals. Running it
    again reuses finished trainings and resumes stopped ones.

    \b
    Examples:
      hyperlex eval plain-vs-hyper --profile tiny-test --max-steps 4
      hyperlex eval plain-vs-hyper --profile default --max-steps 60 -o out/pvh
    """
    from engine.evals.plain_vs_hyper import plain_vs_hyper
    from engine.profiles import load_profile

    out_dir = out_dir or _default_out(f"{profile_name}-plain-vs-hyper")
    display = _EvalProgress(enabled=True)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "step" and event["step"] % 10 == 0:
            stderr.print(f"  {event.get('side')}: step {event['step']}/{event['max_steps']} "
                         f"loss {event['loss']:.3f}", highlight=False)
        elif event.get("event") in ("log", "progress"):
            display(event)
    try:
        result = plain_vs_hyper(load_profile(profile_name), out_dir, data=data,
                                max_steps=max_steps, tests=tests, limit=limit,
                                reverse_limit=reverse_limit, seed=seed,
                                on_event=on_event)
    finally:
        display.close()
    _print_result(result, as_json)
