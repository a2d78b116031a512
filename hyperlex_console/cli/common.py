"""Shared plumbing for CLI commands: errors, JSON output, progress bars, profile options.

Every command reports a `HyperlexError` the same way: the message (and hint) on stderr and a
non-zero exit; with `--json`, the error is also a JSON object on stdout so scripts can read it.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from engine.errors import HyperlexError

F = TypeVar("F", bound=Callable[..., Any])
stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def emit_json(data: Any) -> None:
    """Print one JSON document on stdout (non-ASCII kept readable)."""
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


def report_error(error: HyperlexError, as_json: bool = False) -> None:
    """Show an error to a person (stderr), and to a script (stdout JSON) when asked."""
    if as_json:
        emit_json({"error": error.to_dict()})
    stderr.print(f"[bold red]error:[/] {error.message}", markup=True, soft_wrap=True)
    if error.hint:
        stderr.print(f"[yellow]hint:[/] {error.hint}", markup=True, soft_wrap=True)


def handles_errors(func: F) -> F:
    """Decorator: turn a HyperlexError into a clean message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HyperlexError as error:
            report_error(error, as_json=bool(kwargs.get("as_json")))
            sys.exit(error.exit_code)

    return wrapper  # type: ignore[return-value]


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print machine-readable JSON on stdout instead of text.")
profile_option = click.option("--profile", "-p", "profile_name", default="default",
                              show_default=True, metavar="NAME|FILE",
                              help="Profile name (see `hyperlex profile list`) or a .toml path.")


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True
                 ) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields `advance_to(done)`. Silent when disabled."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=stderr,
                  transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)
