"""The `hyperlex` command line: one click group, one module per command group.

Offline commands call the engine directly; commands that need the daemon go through
daemon.client. Each module in COMMAND_MODULES exposes `group`, a click command or group.
"""

from __future__ import annotations

import importlib

import click

from engine import __version__

COMMAND_MODULES = [
    "model", "profile", "chat", "corpus", "scenes", "tokenizer", "train", "memory", "route",
    "export", "demo", "daemon", "jobs", "keys", "http", "doctor", "eval",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hyperlex")
def main() -> None:
    """hyperlex: teach a language model new ways of reasoning from your own texts with LoRA.

    The flow is text -> scenes -> tokens -> LoRA -> text. Every command takes --help; most take
    --json for scripts and --profile to pick a setup (see `hyperlex profile list`).
    """


for _name in COMMAND_MODULES:
    _module = importlib.import_module(f"hyperlex_console.cli.{_name}")
    main.add_command(_module.group)
