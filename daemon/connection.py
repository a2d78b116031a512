"""Where a daemon can be found and who may talk to it: connection file, lock, CURVE keys.

- The runtime directory (0700) holds the ipc sockets, the lock file and the connection file
  (0600: it carries the HMAC key).
- One daemon per home: an `flock` on the lock file. The kernel drops the lock when its holder
  dies, so a lock file left behind by a killed daemon is recovered simply by locking it again.
- HTTP: the gateway's API keys are stored as sha256 digests (`<state>/http/*.sha256`), and
  `<runtime>/http.json` says where it serves.
- CURVE: the server keypair lives in the state directory; client public keys allowed to connect
  over TCP are files in `config/keys/allowed/`.

This module knows nothing of requests, jobs or models.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from engine.errors import ConfigError, HyperlexError
from engine.paths import Dirs, dirs, private_runtime_dir

CONNECTION_FILE = "hyperlexd.json"
LOCK_FILE = "hyperlexd.lock"


class AlreadyRunningError(HyperlexError):
    """Another daemon holds this home's lock."""

    title = "daemon already running"


@dataclass
class ConnectionInfo:
    """What a client needs to reach a daemon. Written as JSON, mode 0600."""

    request: str
    events: str
    key: str
    pid: int = 0
    signature_scheme: str = "hmac-sha256"
    curve_server_key: str | None = None

    @property
    def key_bytes(self) -> bytes:
        return self.key.encode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionInfo:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def runtime_dir(d: Dirs | None = None) -> Path:
    """The private runtime directory, created 0700."""
    d = (d or dirs()).ensure()
    return d.runtime


def connection_file_path(d: Dirs | None = None) -> Path:
    return (d or dirs()).runtime / CONNECTION_FILE


def new_key() -> str:
    """A fresh HMAC key (hex, 256 bits)."""
    return secrets.token_hex(32)


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON readable only by its owner: created 0600, fsynced, renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, json.dumps(data, indent=1).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_connection_file(info: ConnectionInfo, path: Path | None = None) -> Path:
    path = path or connection_file_path()
    write_private_json(path, info.to_dict())
    return path


def check_runtime_file(path: Path) -> None:
    """Refuse a file of the runtime dir that another user could have planted.

    The connection file names the sockets and the key a client trusts; in the shared temp dir
    fallback another user could create the directory first. Files elsewhere (a path a person
    gave) are not checked.

    Raises:
        ConfigError: the runtime dir is not private, or the file is a symlink or not ours.
        FileNotFoundError: there is no runtime dir or no such file.
    """
    runtime = dirs().runtime
    if Path(path).parent != runtime:
        return
    private_runtime_dir(runtime, create=False)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"refusing {path}: it is a symbolic link or belongs to another user",
                          hint="remove it; the daemon writes it again when it starts")


def read_connection_file(path: Path | str | None = None) -> ConnectionInfo:
    """Read a connection file.

    Raises:
        HyperlexError: no file (no daemon running) or an unreadable one.
    """
    path = Path(path) if path else connection_file_path()
    try:
        check_runtime_file(path)
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HyperlexError(f"no daemon connection file at {path}",
                            hint="start one with `hyperlex daemon start`") from None
    except ValueError as exc:
        raise HyperlexError(f"connection file {path} is not JSON: {exc}") from None
    return ConnectionInfo.from_dict(data)


class InstanceLock:
    """An exclusive `flock` on the lock file, holding the owner's pid for error messages."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None
        self.recovered_from: int | None = None

    def acquire(self) -> InstanceLock:
        """Take the lock or raise AlreadyRunningError naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunningError(
                f"another hyperlexd (pid {holder}) holds {self.path}",
                hint="use `hyperlex daemon status`, or stop it with `hyperlex daemon stop`") from None
        # The lock is ours. A pid left in the file names a daemon that died without cleaning up.
        previous = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if previous.isdigit() and int(previous) != os.getpid():
            self.recovered_from = int(previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def holder_pid(path: Path) -> int | None:
    """The pid of the live daemon holding `path`, or None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def is_loopback_tcp(endpoint: str) -> bool:
    """True for tcp://127.x.x.x:port, tcp://[::1]:port and tcp://localhost:port."""
    return is_loopback_host(urlparse(endpoint).hostname or "")


def is_loopback_host(host: str) -> bool:
    """True for 127.x.x.x, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- CURVE keys ---------------------------------------------------------------------------------

def keys_dir(d: Dirs | None = None) -> Path:
    d = (d or dirs())
    return d.config / "keys"


def allowed_keys_dir(d: Dirs | None = None) -> Path:
    return keys_dir(d) / "allowed"


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_keypair(name: str, directory: Path | None = None) -> tuple[Path, Path]:
    """Create (once) a CURVE keypair `name.key` / `name.key_secret` in the keys directory.

    Returns:
        The public and secret certificate paths; the secret one is 0600.
    """
    import zmq.auth

    directory = _private_dir(directory or keys_dir())
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if not secret.exists():
        zmq.auth.create_certificates(directory, name)
    os.chmod(secret, 0o600)
    return public, secret


def load_keypair(secret_path: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a `.key_secret` certificate."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(secret_path)
    if secret is None:
        raise HyperlexError(f"{secret_path} holds no secret key")
    return public, secret


def load_public_key(path: Path) -> bytes:
    import zmq.auth

    public, _ = zmq.auth.load_certificate(path)
    return public


def allow_client_key(public_path: Path, name: str | None = None) -> Path:
    """Copy a client's public certificate into the allow-list directory.

    Raises:
        HyperlexError: the file is not a CURVE public certificate.
    """
    try:
        load_public_key(Path(public_path))
    except Exception as exc:  # zmq.auth raises plain errors for any malformed file
        raise HyperlexError(f"{public_path} is not a CURVE public key certificate: {exc}",
                            hint="make one with `hyperlex keys gen` on the client") from None
    target_dir = _private_dir(allowed_keys_dir())
    target = target_dir / f"{name or Path(public_path).stem}.key"
    target.write_text(Path(public_path).read_text())
    os.chmod(target, 0o600)
    return target


# --- the HTTP gateway's keys (stored as digests) and its address file ----------------------

HTTP_KEY_PREFIX = "hlx-"
HTTP_INFO_FILE = "http.json"  # in the runtime dir: where the gateway serves, while it does


def http_key_digest(key: str) -> str:
    """The stored form of an HTTP API key: its sha256, hex."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def new_http_key() -> str:
    """A new random HTTP API key (256 bits)."""
    return HTTP_KEY_PREFIX + secrets.token_urlsafe(32)


def http_keys_file(home: Dirs | None = None, admin: bool = False) -> Path:
    """Where the gateway's key digests live unless `[http] keys_file` says otherwise."""
    return (home or dirs()).state / "http" / ("admin_keys.sha256" if admin else "keys.sha256")


def http_info_path(home: Dirs | None = None) -> Path:
    return runtime_dir(home) / HTTP_INFO_FILE


def read_http_digests(path: Path, *, required: bool) -> frozenset[str]:
    """The digests in a keys file: one sha256 hex a line, `#` comments and blanks ignored.

    Raises:
        ConfigError: a configured file that is missing, or a line that is not a digest
            (with its line number; a key pasted in the clear is refused, not hashed).
    """
    if not path.is_file():
        if required:
            raise ConfigError(f"the HTTP keys file {path} does not exist",
                              hint="create keys with `hyperlex http key new`, or fix "
                                   "[http] keys_file / admin_keys_file")
        return frozenset()
    found = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip().lower().removeprefix("sha256:")
        if not text:
            continue
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ConfigError(f"{path}:{number}: not a sha256 hex digest",
                              hint="the file holds digests, never keys: add keys with "
                                   "`hyperlex http key new`")
        found.add(text)
    return frozenset(found)


def add_http_key(path: Path, key: str, label: str = "") -> None:
    """Append a key's digest to a keys file (made 0600 with its dir 0700)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(f"{http_key_digest(key)}{'  # ' + label if label else ''}\n")
