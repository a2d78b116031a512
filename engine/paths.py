"""Where hyperlex keeps its files: config, state, cache and runtime directories.

`HYPERLEX_HOME` moves all four under one root, so tests and several instances never touch the
user's real directories. Without it the platform's own directories (XDG on Linux) are used.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs

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
        """Create the directories; the runtime dir is private (0700) since it holds sockets."""
        for path in (self.config, self.state, self.cache):
            path.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(parents=True, exist_ok=True)
        os.chmod(self.runtime, 0o700)
        return self


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
