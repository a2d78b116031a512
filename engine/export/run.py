"""`python -m engine.export.run`: export an adapter as a process, for the daemon.

    python -m engine.export.run --profile P --adapter DIR [--format gguf-lora|merge|gguf]
        [--output PATH] [--base SPEC] [--run-dir DIR] --progress-jsonl

Formats: `gguf-lora` (a GGUF LoRA next to the base GGUF, or next to the extended base for an
adapter with hypertoken rows, whose path the `done` event names; the default), `merge` (the adapter
merged into its base, an HF safetensors dir) and `gguf` (a full GGUF model with added hypertokens
kept). The output defaults to a file or dir in the run dir. Events (`engine.job_entry` keeps
the contract): `progress` as each stage starts, then `done` (`path`, `format`) or `error`
(exit 1). `--resume` exports again (writes are atomic). Knows nothing of the daemon.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.job_entry import Events, job_parser, run_job

FORMATS = ("gguf-lora", "merge", "gguf")
DEFAULT_OUTPUT = {"gguf-lora": "adapter-lora.gguf", "merge": "merged", "gguf": "model.gguf"}


def parser() -> argparse.ArgumentParser:
    """The command line of an export job."""
    parser = job_parser("python -m engine.export.run", "Export a LoRA adapter.")
    parser.add_argument("--profile", default="default", help="profile name or .toml path")
    parser.add_argument("--adapter", type=Path, required=True, help="PEFT adapter dir")
    parser.add_argument("--format", choices=FORMATS, default="gguf-lora")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--base", default=None, help="base model spec (default: the profile's)")
    parser.add_argument("--run-dir", type=Path, default=Path("."))
    parser.add_argument("--resume", action="store_true", help="export again")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def run(args: argparse.Namespace, events: Events | None = None) -> dict[str, Any]:
    """Export; returns the `done` event. Progress goes to `events` (default: JSON on stdout)."""
    from engine.export.merge import merge_adapter
    from engine.models import gguf_path, resolve_model
    from engine.profiles import load_profile

    emit = events or Events(sys.stdout)
    profile = load_profile(args.profile)
    out = args.output or args.run_dir / DEFAULT_OUTPUT[args.format]
    out.parent.mkdir(parents=True, exist_ok=True)
    base_spec = args.base or profile.model.base
    gguf_spec = args.base or profile.model.gguf or profile.model.base
    if args.format == "gguf-lora":
        from engine.export.extended_base import extended_base_for
        from engine.export.gguf_lora import export_gguf_lora

        emit.progress("base-gguf", 0, 2)
        base_gguf = gguf_path(gguf_spec)
        # An adapter with hypertoken rows runs on the extended base, built once and cached.
        extended = extended_base_for(args.adapter, base_gguf)
        emit.progress("gguf-lora", 1, 2)
        data = export_gguf_lora(args.adapter, extended.path if extended else base_gguf,
                                out).to_dict()
        if extended is not None:
            data["extended_base"] = str(extended.path)
    elif args.format == "merge":
        emit.progress("merge", 0, 1)
        data = {"path": str(merge_adapter(args.adapter, base_spec, out))}
    else:
        from engine.export.gguf_model import export_gguf

        resolved = resolve_model(gguf_spec)
        base_gguf = resolved.path if resolved.kind == "gguf" else None
        with tempfile.TemporaryDirectory(prefix="hyperlex-merge-", dir=out.parent) as work:
            emit.progress("merge", 0, 2)
            merged = merge_adapter(args.adapter, base_spec, Path(work) / "merged")
            emit.progress("gguf", 1, 2)
            data = export_gguf(merged, out, base_gguf=base_gguf).to_dict()
    return {"event": "done", "format": args.format, **data,
            "path": str(data.get("path", out))}


def cli(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    return run_job(parser(), run, argv)


if __name__ == "__main__":
    sys.exit(cli())
