"""`hyperlex export`: an adapter as a GGUF LoRA, merged into its base, or as a full GGUF model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from engine.errors import ConfigError
from engine.profiles import load_profile
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stdout,
)


@click.group("export")
def group() -> None:
    """Export adapters and merged models (GGUF LoRA, merged HF dir, full GGUF).

    \b
    Examples:
      hyperlex export gguf-lora --adapter runs/demo/adapter -o demo-lora.gguf
      hyperlex export merge --adapter runs/demo/adapter -o merged/
      hyperlex export gguf --adapter runs/demo/adapter -o demo.gguf
    """


def _base_gguf(profile_name: str, base: str | None) -> Path:
    from engine.models import gguf_path

    profile = load_profile(profile_name)
    return gguf_path(base or profile.model.gguf or profile.model.base)


def _report(data: dict, as_json: bool, what: str) -> None:  # type: ignore[type-arg]
    if as_json:
        emit_json(data)
        return
    stdout.print(f"wrote {what}: {data['path']}")
    for key, value in data.items():
        if key != "path":
            stdout.print(f"  {key}: {value}")


@group.command("gguf-lora")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(path_type=Path),
              help="PEFT adapter dir.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The .gguf LoRA file to write.")
@click.option("--base", default=None, help="Base GGUF spec (default: the profile's).")
@profile_option
@json_option
@handles_errors
def gguf_lora(adapter_dir: Path, out: Path, base: str | None, profile_name: str,
              as_json: bool) -> None:
    """Write a PEFT LoRA adapter as a GGUF LoRA that llama.cpp loads next to the base GGUF.

    An adapter trained with hypertokens carries its token rows in the LoRA; it runs on the
    extended base (the base GGUF with the added tokens), which is built once, cached, and
    named in the output as `extended_base`: load the LoRA onto that file.
    """
    from engine.export.extended_base import extended_base_for
    from engine.export.gguf_lora import export_gguf_lora

    base_gguf = _base_gguf(profile_name, base)
    extended = extended_base_for(adapter_dir, base_gguf)
    result = export_gguf_lora(adapter_dir, extended.path if extended else base_gguf, out)
    data = result.to_dict()
    if extended is not None:
        data["extended_base"] = str(extended.path)
    _report(data, as_json, "GGUF LoRA")


@group.command("merge")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(path_type=Path),
              help="PEFT adapter dir.")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The HF dir to write.")
@click.option("--base", default=None, help="Base model spec (default: the profile's).")
@profile_option
@json_option
@handles_errors
def merge(adapter_dir: Path, out: Path, base: str | None, profile_name: str,
          as_json: bool) -> None:
    """Merge an adapter into its base model and save an HF safetensors dir."""
    from engine.export.merge import merge_adapter

    path = merge_adapter(adapter_dir, base or load_profile(profile_name).model.base, out)
    _report({"path": str(path)}, as_json, "merged model")


@group.command("gguf")
@click.option("--adapter", "adapter_dir", default=None, type=click.Path(path_type=Path),
              help="PEFT adapter dir to merge first.")
@click.option("--model", "model_dir", default=None, type=click.Path(path_type=Path),
              help="An HF model dir to convert as it is (instead of --adapter).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path),
              help="The .gguf model file to write.")
@click.option("--base", default=None, help="Base model spec (default: the profile's).")
@profile_option
@json_option
@handles_errors
def gguf(adapter_dir: Path | None, model_dir: Path | None, out: Path, base: str | None,
         profile_name: str, as_json: bool) -> None:
    """Write a full GGUF model: the adapter merged in, added hypertokens kept as control tokens.

    When the base model is a GGUF, its metadata, tokenizer and untouched tensors are reused.
    """
    from engine.export.gguf_model import export_gguf
    from engine.export.merge import merge_adapter
    from engine.models import resolve_model

    if (adapter_dir is None) == (model_dir is None):
        raise ConfigError("give exactly one of --adapter DIR or --model DIR")
    profile = load_profile(profile_name)
    base_spec = base or profile.model.base
    gguf_spec = base or profile.model.gguf or profile.model.base
    base_gguf = resolve_model(gguf_spec).path if resolve_model(gguf_spec).kind == "gguf" else None
    with tempfile.TemporaryDirectory(prefix="hyperlex-merge-", dir=out.parent if
                                     out.parent.exists() else None) as work:
        source = model_dir or merge_adapter(adapter_dir, base_spec,  # type: ignore[arg-type]
                                            Path(work) / "merged")
        result = export_gguf(source, out, base_gguf=base_gguf)
    _report(result.to_dict(), as_json, "GGUF model")
