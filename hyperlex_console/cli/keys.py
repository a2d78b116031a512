"""`hyperlex keys gen|allow|list`: CURVE keys for reaching a daemon over TCP."""

from __future__ import annotations

from pathlib import Path

import click

from daemon.connection import allow_client_key, allowed_keys_dir, ensure_keypair, keys_dir
from hyperlex_console.cli.common import emit_json, handles_errors, json_option, stdout


@click.group("keys")
def group() -> None:
    """CURVE keys: make a client keypair, allow a client's public key on the daemon's machine."""


@group.command("gen")
@click.option("--name", default="local", show_default=True, help="Keypair name.")
@json_option
@handles_errors
def gen_command(name: str, as_json: bool) -> None:
    """Create (once) a keypair; give the public `.key` file to the daemon's owner."""
    public, secret = ensure_keypair(name)
    if as_json:
        emit_json({"public": str(public), "secret": str(secret)})
        return
    stdout.print(f"public key: {public}   (copy this to the daemon's machine)")
    stdout.print(f"secret key: {secret}   (stays here, mode 0600)")


@group.command("allow")
@click.argument("public_key", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Name to file it under (default: the file's name).")
@handles_errors
def allow_command(public_key: Path, name: str | None) -> None:
    """Allow a client's public key to connect (takes effect when the daemon restarts)."""
    target = allow_client_key(public_key, name)
    stdout.print(f"allowed: {target}")


@group.command("list")
@json_option
@handles_errors
def list_command(as_json: bool) -> None:
    """List this machine's keypairs and the allowed client keys."""
    own = sorted(p.name for p in keys_dir().glob("*.key")) if keys_dir().exists() else []
    allowed_dir = allowed_keys_dir()
    allowed = sorted(p.name for p in allowed_dir.glob("*.key")) if allowed_dir.exists() else []
    if as_json:
        emit_json({"keypairs": own, "allowed": allowed})
        return
    stdout.print("keypairs: " + (", ".join(own) or "none"))
    stdout.print("allowed clients: " + (", ".join(allowed) or "none"))
