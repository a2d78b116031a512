"""`hyperlex http key new|list` and `hyperlex http info`: keys and the address of the daemon's
HTTP gateway (OpenAI-compatible; `hyperlexd --http HOST:PORT`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from daemon.connection import add_http_key as add_key
from daemon.connection import http_info_path, new_http_key, read_http_digests
from daemon.connection import http_keys_file as default_keys_file
from engine.errors import ConfigError, HyperlexError
from engine.paths import dirs
from hyperlex_console.cli.common import (
    emit_json,
    handles_errors,
    json_option,
    profile_option,
    stdout,
)


@click.group("http")
def group() -> None:
    """The daemon's HTTP gateway: API keys, and where it serves.

    Start it with `hyperlexd --http 127.0.0.1:8000` or `[http] enabled = true` in the profile.
    Clients send `Authorization: Bearer KEY`; the OpenAI client takes the key as `api_key` and
    `http://HOST:PORT/v1` as `base_url`.
    """


@group.group("key")
def key_group() -> None:
    """API keys: the daemon stores only their sha256, so a key is shown once, when made."""


def _keys_file(profile_name: str, admin: bool, file: Path | None) -> Path:
    if file is not None:
        return file.expanduser()
    from engine.profiles import load_profile

    # The same order the daemon reads them in: HYPERLEX_HTTP_*, then the profile's [http].
    section = load_profile(profile_name).http
    configured = os.environ.get("HYPERLEX_HTTP_ADMIN_KEYS_FILE" if admin
                                else "HYPERLEX_HTTP_KEYS_FILE") or \
        (section.admin_keys_file if admin else section.keys_file)
    return Path(configured).expanduser() if configured else default_keys_file(dirs(), admin)


@key_group.command("new")
@click.option("--admin", is_flag=True, help="An admin key: also opens jobs and adapter "
                                            "load/unload.")
@click.option("--file", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="The keys file to add its digest to (default: the profile's [http] "
                   "keys_file / admin_keys_file, else <state>/http/*.sha256).")
@click.option("--label", default="", help="A note stored beside the digest (who holds it).")
@profile_option
@json_option
@handles_errors
def new_command(admin: bool, file: Path | None, label: str, profile_name: str,
                as_json: bool) -> None:
    """Make a key, store its digest, and print the key (once: it is not kept in the clear).

    A running daemon reads its keys files when it starts: restart it to use the new key.
    """
    path = _keys_file(profile_name, admin, file)
    if "\n" in label or "#" in label:
        raise ConfigError("--label may not hold a newline or '#'")
    key = new_http_key()
    add_key(path, key, label)
    if as_json:
        emit_json({"key": key, "role": "admin" if admin else "user", "file": str(path)})
        return
    stdout.print(f"{'admin ' if admin else ''}key: {key}")
    stdout.print(f"its sha256 is in {path}; the key itself is shown only now. Restart the "
                 "daemon to use it.")


@key_group.command("list")
@profile_option
@json_option
@handles_errors
def list_command(profile_name: str, as_json: bool) -> None:
    """How many keys each keys file holds (digests only: keys are never stored)."""
    out = {}
    for role, admin in (("user", False), ("admin", True)):
        path = _keys_file(profile_name, admin, None)
        out[role] = {"file": str(path), "keys": len(read_http_digests(path, required=False))}
    if as_json:
        emit_json(out)
        return
    for role, info in out.items():
        stdout.print(f"{role} keys: {info['keys']} in {info['file']}")


@group.command("info")
@json_option
@handles_errors
def info_command(as_json: bool) -> None:
    """Where the running daemon's gateway serves, and its key files if it made its own keys."""
    path = http_info_path()
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HyperlexError(f"no HTTP gateway is running (no {path})",
                            hint="start one: `hyperlexd --http 127.0.0.1:8000`") from None
    except ValueError:
        raise HyperlexError(f"{path} is not JSON", hint="restart the daemon") from None
    if as_json:
        emit_json(info)
        return
    stdout.print(f"url: {info['url']}   (OpenAI base_url: {info['openai_base_url']})")
    if info.get("key_file"):
        stdout.print(f"key: in {info['key_file']}; admin key: in {info['admin_key_file']}")
