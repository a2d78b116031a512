"""Where hyperlex keeps its files: config, state, cache and runtime directories.

`HYPERLEX_HOME` moves all four under one root, so tests and several instances never touch the
user's real directories. Without it the platform's own directories (XDG on Linux) are used.

Directories created here are private (0700): they hold jobs, logs, keys and sockets. The
runtime dir is checked every time it is ensured, since its fallback sits in the shared temp
dir where another user could plant it first: a symlink, a directory owned by someone else, or
one open to group or others is refused, never used or repaired.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from engine.errors import ConfigError

APP_NAME = "hyperlex"
HOME_ENV = "HYPERLEX_HOME"


@dataclass(frozen=True)
class Dirs:
    """The four directories hyperlex writes to."""

    config: Path
    state: Path
    cache: Path
    runtime: Path

    def ensure(self) -> Dirs:
        """Create the directories (0700 when created here) and check the runtime dir.

        Raises:
            ConfigError: the runtime dir is a symlink, not a directory, not owned by this
                user, or open to group or others (see `private_runtime_dir`).
        """
        for path in (self.config, self.state, self.cache):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_runtime_dir(self.runtime)
        return self


def private_runtime_dir(path: Path, create: bool = True) -> Path:
    """Create `path` as a 0700 directory, or check that the existing one is private.

    It holds the daemon's sockets and its connection file (the session key), so it must be
    a real directory of this user that nobody else can enter. An existing one is refused
    rather than repaired: a wrong one in the shared temp dir may have been planted.

    Args:
        path: the runtime dir.
        create: False to only check (a client reading the connection file).

    Raises:
        ConfigError: a symlink, not a directory, owned by another user, or group/other bits.
        FileNotFoundError: it does not exist and `create` is False.
    """
    created = False
    if create:
        try:
            path.mkdir(mode=0o700, parents=True)
            created = True
        except FileExistsError:
            pass
    info = os.lstat(path)
    hint = f"remove {path} (hyperlex creates it again as a private directory)"
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"refusing the runtime dir {path}: it is a symbolic link", hint=hint)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"refusing the runtime dir {path}: it is not a directory", hint=hint)
    if info.st_uid != os.getuid():
        raise ConfigError(f"refusing the runtime dir {path}: it belongs to uid {info.st_uid}, "
                          f"not to this user (uid {os.getuid()})", hint=hint)
    if created:
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask; make it exactly 0700
    elif info.st_mode & 0o077:
        raise ConfigError(f"refusing the runtime dir {path}: other users may enter it "
                          f"(mode {stat.S_IMODE(info.st_mode):04o})",
                          hint=f"`chmod 700 {path}` if it is yours, or {hint}")
    return path


def dirs() -> Dirs:
    """The directories for this process, honouring `HYPERLEX_HOME`.

    Returns:
        The `Dirs`; nothing is created until `Dirs.ensure()` is called.
    """
    home = os.environ.get(HOME_ENV)
    if home:
        root = Path(home).expanduser().resolve()
        return Dirs(config=root / "config", state=root / "state", cache=root / "cache",
                    runtime=root / "run")
    # platformdirs warns and guesses when XDG_RUNTIME_DIR is unset (headless servers, CI);
    # a per-user directory under the temp dir is the usual fallback for sockets.
    if os.environ.get("XDG_RUNTIME_DIR"):
        runtime = platformdirs.user_runtime_dir(APP_NAME)
    else:
        runtime = os.path.join(tempfile.gettempdir(), f"{APP_NAME}-{os.getuid()}")
    return Dirs(
        config=Path(platformdirs.user_config_dir(APP_NAME)),
        state=Path(platformdirs.user_state_dir(APP_NAME)),
        cache=Path(platformdirs.user_cache_dir(APP_NAME)),
        runtime=Path(runtime),
    )


def project_root() -> Path:
    """The source checkout's root (where `profiles/` lives)."""
    return Path(__file__).resolve().parent.parent
