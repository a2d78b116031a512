"""`hyperlex doctor`: can this machine run hyperlex's llama.cpp? CPU, build, smoke generation."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from engine.errors import HyperlexError
from engine.inference.smoke import diagnose
from engine.models import gguf_path
from engine.profiles import load_profile
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stdout,
)


@click.command("doctor")
@profile_option
@click.option("--model", "model_file", type=click.Path(dir_okay=False), default=None,
              help="GGUF for the smoke generation (default: the profile's).")
@click.option("--no-smoke", is_flag=True, help="Skip the smoke generation (only report).")
@click.option("--quiet", "-q", is_flag=True, help="Print only problems; the exit code tells.")
@json_option
@handles_errors
def group(profile_name: str, model_file: str | None, no_smoke: bool, quiet: bool,
          as_json: bool) -> None:
    """Check that llama.cpp runs on this CPU: a short generation in a subprocess.

    Prints the CPU model and its vector flags, llama.cpp's system-info line (which kernels the
    build has), how it was built, and the outcome of a smoke generation on the profile's GGUF.
    A crash in llama.cpp (SIGILL from kernels this CPU cannot run, say) is reported, not
    suffered. Exit code 0 when all is well, 1 otherwise. ./install.sh runs this after the build.

    \b
    Examples:
      hyperlex doctor
      hyperlex doctor --json | jq .system_info
    """
    path: Path | None = Path(model_file) if model_file else None
    if path is None and not no_smoke:
        try:
            profile = load_profile(profile_name)
            path = gguf_path(profile.model.gguf or profile.model.base)
        except HyperlexError as error:
            if not quiet:
                stdout.print(f"[yellow]no smoke generation:[/] {error.message}")
    report = diagnose(path, smoke=not no_smoke)
    if as_json:
        emit_json(report.to_dict())
    elif quiet:
        for problem in report.problems:
            click.echo(f"doctor: {problem}", err=True)
    else:
        stdout.print(f"[bold]CPU[/]          {escape(report.cpu.line())}")
        stdout.print(f"[bold]llama.cpp[/]    llama-cpp-python {report.llama_cpp_version or '-'}"
                     f" (build {report.build or 'not recorded'})")
        stdout.print(f"[bold]system info[/]  {escape(report.system_info or '-')}",
                     soft_wrap=True)
        if report.smoke is not None:
            smoke = report.smoke
            if smoke.ok:
                stdout.print(f"[bold]smoke[/]        [green]passed[/]: {smoke.tokens} tokens in "
                             f"{smoke.seconds} s ({smoke.tokens_per_s} tok/s) from "
                             f"{Path(smoke.model).name}: {escape(repr(smoke.text.strip()))}")
            else:
                stdout.print(f"[bold]smoke[/]        [red]FAILED[/]: {escape(smoke.error)}")
        for warning in report.warnings:
            stdout.print(f"[yellow]warning:[/] {escape(warning)}")
        for problem in report.problems:
            stdout.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
    sys.exit(0 if report.ok else 1)
