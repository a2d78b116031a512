"""`hyperlex profile list|show|check`: the TOML profiles that switch the whole setup."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from engine.errors import HyperlexError
from engine.profiles import find_profile, list_profiles, load_profile, validate_profile
from hyperlex_console.cli.common import emit_json, handles_errors, json_option, stdout


@click.group("profile")
def group() -> None:
    """Profiles: list them, show one resolved, or check files for mistakes."""


@group.command("list")
@json_option
@handles_errors
def list_command(as_json: bool) -> None:
    """List the profiles found (the project's profiles/, then the user's config dir)."""
    rows = []
    for path in list_profiles():
        check = validate_profile(path)
        profile = check.profile
        rows.append({"name": path.stem, "path": str(path), "valid": check.ok,
                     "description": profile.description if profile else "",
                     "base": profile.model.base if profile else None,
                     "problems": len(check.problems), "warnings": check.warnings})
    if as_json:
        emit_json({"profiles": rows})
        return
    table = Table("name", "base model", "valid", "description")
    for row in rows:
        table.add_row(row["name"], row["base"] or "-",
                      "yes" if row["valid"] else f"[red]{row['problems']} problem(s)[/]",
                      row["description"])
    stdout.print(table)


@group.command("show")
@click.argument("name", default="default")
@json_option
@handles_errors
def show_command(name: str, as_json: bool) -> None:
    """Show a profile with `extends` resolved and every default filled in."""
    profile = load_profile(name)
    data = profile.to_dict()
    if as_json:
        emit_json(data)
        return
    stdout.print(f"[bold]{profile.name}[/]  ({profile.path})")
    if profile.description:
        stdout.print(profile.description)
    for section, values in data.items():
        if isinstance(values, dict):
            stdout.print(f"\n[bold cyan][{section}][/]")
            for key, value in values.items():
                stdout.print(f"  {key} = {value!r}", markup=False)


@group.command("check")
@click.argument("files", nargs=-1, required=True)
@json_option
def check_command(files: tuple[str, ...], as_json: bool) -> None:
    """Validate profile files (or names); report every problem, with FILE:LINE and key path.

    Weights not downloaded yet are warnings (the profile is valid; using it will fail until
    they are there). Exits 1 when any profile has a problem.
    """
    results = []
    for item in files:
        try:
            path = find_profile(item)
        except HyperlexError as error:
            results.append({"file": item, "ok": False, "problems": [error.message],
                            "warnings": []})
            continue
        check = validate_profile(Path(path))
        results.append({"file": str(path), "ok": check.ok, "problems": check.problems,
                        "warnings": check.warnings})
    failed = [r for r in results if not r["ok"]]
    if as_json:
        emit_json({"ok": not failed, "results": results})
    else:
        for result in results:
            if result["ok"]:
                stdout.print(f"[green]ok[/]    {result['file']}", soft_wrap=True)
                for warning in result["warnings"]:
                    stdout.print(f"      warning: {warning}", markup=False, soft_wrap=True)
            else:
                stdout.print(f"[red]FAIL[/]  {result['file']}: {len(result['problems'])} problem(s)",
                             soft_wrap=True)
                for problem in result["problems"]:
                    stdout.print(f"      {problem}", markup=False, soft_wrap=True)
    sys.exit(1 if failed else 0)
