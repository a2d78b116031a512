"""`python -m engine.evals.run`: an eval as a process, for the daemon's `eval` jobs.

    python -m engine.evals.run --profile P --adapter [NAME=]DIR [--adapter ...] [--vs base|NAME]
        [--sweep RUN] [--tests FILE] [--judge PROFILE[:BACKEND]] [--ratings FILE]
        [--data scenes.jsonl] [--tasks loss,reverse,...]
        [--limit N] [--seed S] [--run-dir DIR | -o DIR] --progress-jsonl

The report (metrics.json, records.jsonl, report.md, report.html, plots/) goes to the run dir.
Events (`engine.job_entry` keeps the contract): `log`, `progress` (`task`, `done`, `total`),
then `done` (`summary` lines, `report`, `metrics`, `differences`) or `error` (exit 1). Knows
nothing of the daemon.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.job_entry import Events, job_parser, run_job


def parse_adapters(values: list[str]) -> list[tuple[str, Path]]:
    """`["a=/x", "/runs/r/adapter"]` → `[("a", /x), ("r", /runs/r/adapter)]` (commas split too).

    An unnamed adapter is named after its run dir (`<run>/adapter` → `<run>`'s name) or its own.

    Raises:
        ConfigError: two adapters with one name.
    """
    out: list[tuple[str, Path]] = []
    for value in values:
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, _, path = item.rpartition("=")
            directory = Path(path)
            if not name:
                name = directory.parent.name if directory.name == "adapter" else directory.name
            out.append((name or "adapter", directory))
    names = [name for name, _ in out]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ConfigError(f"two adapters are named {', '.join(duplicates)}",
                          hint="name them: --adapter A=DIR --adapter B=DIR")
    return out


def parser() -> argparse.ArgumentParser:
    """The command line of an eval job."""
    parser = job_parser("python -m engine.evals.run",
                        "Evaluate adapters against the base or each other.")
    parser.add_argument("--profile", required=True, help="profile name or .toml path")
    parser.add_argument("--adapter", action="append", default=[],
                        help="[NAME=]DIR of a PEFT adapter (repeat, or comma-separate)")
    parser.add_argument("--vs", default="base", help="the side to compare against (base)")
    parser.add_argument("--sweep", type=Path, default=None, help="a run dir: every checkpoint")
    parser.add_argument("--tests", type=Path, default=None, help="a manual test file (JSONL)")
    parser.add_argument("--backend", default="hf", choices=("hf", "llamacpp", "openai"),
                        help="what scores the sides (llamacpp: the profile's GGUF)")
    parser.add_argument("--reverse-path", default="sceneformer", choices=("sceneformer", "bridge"),
                        help="reversibility's way out: the scene's structure, or the side's")
    parser.add_argument("--judge", default=None,
                        help="PROFILE[:BACKEND] of a pairwise judge (asked in both orders)")
    parser.add_argument("--ratings", type=Path, default=None,
                        help="people's A/B ratings (ab_ratings.jsonl) to rank")
    parser.add_argument("--data", type=Path, default=None,
                        help="scenes JSONL (default: the adapter's training data)")
    parser.add_argument("--mode", default=None, help="the held-out format (default: trained)")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks to run")
    parser.add_argument("--limit", type=int, default=None, help="held-out examples at most")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--n-resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--run-dir", "-o", type=Path, default=None, help="where the report goes")
    parser.add_argument("--resume", action="store_true", help="accepted for jobs; runs again")
    return parser


def config_from_args(args: argparse.Namespace, on_event: Any = None) -> Any:
    """The `EvalConfig` the arguments ask for."""
    from engine.evals.compare import DEFAULT_TASKS, EvalConfig
    from engine.profiles import load_profile

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks \
        else DEFAULT_TASKS
    if args.tests is None:
        tasks = tuple(t for t in tasks if t not in ("test", "register"))
    out_dir = args.run_dir
    return EvalConfig(profile=load_profile(args.profile), adapters=parse_adapters(args.adapter),
                      vs=args.vs, sweep=args.sweep, tests=args.tests, data=args.data,
                      mode=args.mode, tasks=tasks, limit=args.limit, seed=args.seed,
                      n_resamples=args.n_resamples, out_dir=out_dir,
                      judge=getattr(args, "judge", None), ratings=getattr(args, "ratings", None),
                      backend=getattr(args, "backend", "hf"),
                      reverse_path=getattr(args, "reverse_path", "sceneformer"),
                      work_dir=(out_dir / "work") if out_dir else None, on_event=on_event)


def done_event(result: Any) -> dict[str, Any]:
    """The `done` event: the summary lines, the report's paths and the headline figures."""
    from engine.evals.report import summary_lines

    return {"event": "done", "summary": summary_lines(result.metrics),
            "report": str(result.paths.get("html", "")) or None,
            "metrics": str(result.paths.get("metrics", "")) or None,
            "differences": [{key: d[key] for key in ("metric", "a", "b", "delta", "low", "high",
                                                      "p", "n", "verdict")}
                            for d in result.metrics["differences"]]}


def evaluate(args: argparse.Namespace, events: Events) -> dict[str, Any]:
    """Run the eval, its progress through `events`; returns the `done` event."""
    from engine.evals.compare import run_eval

    return done_event(run_eval(config_from_args(args, on_event=events)))


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run_job(parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(cli())
