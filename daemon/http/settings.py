"""The HTTP gateway's settings: where it binds, which keys it accepts, its limits.

They come from the profile's `[http]` section, then `HYPERLEX_HTTP_<KNOB>` variables, then
`hyperlexd --http HOST:PORT`. Keys are never stored in the clear: a keys file holds one sha256
hex digest a line (`hyperlex http key new` makes a key, prints it once and appends its digest).
With no key configured the gateway makes a user key and an admin key at start, writes them
(0600) into the private runtime dir for the owner's local clients, and binds to loopback only:
a gateway reachable from another machine needs keys its operator chose.

This module knows nothing of FastAPI or the daemon's server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from daemon.connection import (
    HTTP_INFO_FILE,
    add_http_key,
    http_key_digest,
    http_keys_file,
    is_loopback_host,
    new_http_key,
    read_http_digests,
)
from engine.errors import ConfigError
from engine.paths import Dirs

USER_KEY_FILE = "http.key"        # in the runtime dir, when the gateway made its own keys
ADMIN_KEY_FILE = "http-admin.key"
INFO_FILE = HTTP_INFO_FILE        # in the runtime dir: where the gateway serves
digest, new_key, add_key, read_digests = http_key_digest, new_http_key, add_http_key, \
    read_http_digests
default_keys_file = http_keys_file


def parse_bind(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8000` for IPv6) as (host, port).

    Raises:
        ConfigError: no port, or a port outside 0-65535.
    """
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"HTTP bind {text!r} is not HOST:PORT",
                          hint="e.g. --http 127.0.0.1:8000 (port 0 picks a free one)")
    return host, int(port)


is_loopback = is_loopback_host


@dataclass
class HttpSettings:
    """What the gateway needs to serve; see the profile's `[http]` section for each knob."""

    host: str = "127.0.0.1"
    port: int = 8000
    user_digests: frozenset[str] = frozenset()
    admin_digests: frozenset[str] = frozenset()
    cors_origins: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrent: int = 16
    request_timeout_s: float = 600.0
    adapter_roots: list[Path] = field(default_factory=list)
    # Keys the gateway made itself (no keys configured): written to the runtime dir.
    generated: dict[str, str] = field(default_factory=dict)

    def check(self) -> HttpSettings:
        """Refuse what would expose the daemon.

        Raises:
            ConfigError: a non-loopback bind without configured keys; a CORS origin that
                is not a full origin.
        """
        if not is_loopback(self.host) and (self.generated or not (self.user_digests
                                                                  or self.admin_digests)):
            raise ConfigError(
                f"refusing to serve HTTP on {self.host}: only loopback is served without "
                "a configured key",
                hint="create one with `hyperlex http key new` (and `--admin` for jobs and "
                     "adapters), or bind 127.0.0.1")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"[http] cors_origins: {origin!r} is not an origin",
                                  hint="write origins as https://host[:port]")
        return self


def _env(name: str) -> str | None:
    return os.environ.get(f"HYPERLEX_HTTP_{name.upper()}")


def http_settings(profile_name: str, home: Dirs, bind: str | None = None) -> HttpSettings | None:
    """The gateway's settings, or None when it is off (no `--http` and `[http] enabled` false).

    Raises:
        ConfigError: a bad bind, keys file, variable or an exposing combination.
    """
    from engine.profiles import load_profile

    section = load_profile(profile_name).http
    enabled = section.enabled if _env("enabled") is None else \
        _env("enabled").lower() in ("1", "true", "yes")  # type: ignore[union-attr]
    if bind is None and not enabled:
        return None
    text = bind or _env("bind") or section.bind
    host, port = parse_bind(text)

    def number(name: str, default: float, kind: type) -> float:
        raw = _env(name)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"HYPERLEX_HTTP_{name.upper()}={raw!r} is not a "
                              f"{kind.__name__}") from None

    def paths(name: str, default: list[str], sep: str = os.pathsep) -> list[str]:
        raw = _env(name)
        return [p.strip() for p in raw.split(sep) if p.strip()] if raw is not None \
            else list(default)

    keys_file = _env("keys_file") or section.keys_file
    admin_file = _env("admin_keys_file") or section.admin_keys_file
    users = read_digests(Path(keys_file).expanduser() if keys_file else
                         default_keys_file(home), required=bool(keys_file))
    admins = read_digests(Path(admin_file).expanduser() if admin_file else
                          default_keys_file(home, admin=True), required=bool(admin_file))
    settings = HttpSettings(
        host=host, port=port, user_digests=users, admin_digests=admins,
        cors_origins=paths("cors_origins", section.cors_origins, ","),
        max_body_bytes=int(number("max_body_bytes", section.max_body_bytes, int)),
        max_concurrent=int(number("max_concurrent", section.max_concurrent, int)),
        request_timeout_s=float(number("request_timeout_s", section.request_timeout_s, float)),
        adapter_roots=[Path(p).expanduser().resolve() for p in
                       paths("adapter_roots", section.adapter_roots)] or [home.state.resolve()])
    if not users and not admins:
        settings.generated = {"user": new_key(), "admin": new_key()}
        settings.user_digests = frozenset({digest(settings.generated["user"])})
        settings.admin_digests = frozenset({digest(settings.generated["admin"])})
    return settings.check()


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (a key, for local clients)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
