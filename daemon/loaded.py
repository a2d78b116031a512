"""Engine objects the daemon keeps loaded between requests: the sentence embedder, scene
memories and routers. Requests and the chat scheduler both use them.

They are slow to build, so each is cached here, keyed by what it was built from. Requests run
on worker threads, so the caches are guarded by one lock, and a shared embedder encodes one
batch at a time.

This module knows the engine's public APIs; it knows nothing of sockets or the console.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from engine.errors import HyperlexError

_lock = threading.Lock()
_embedders: dict[str, Any] = {}
_embedder_locks: dict[str, threading.Lock] = {}
_routers: dict[tuple[str, str, float], Any] = {}


class _LockedEmbedder:
    """An embedder shared by request threads: one encode at a time."""

    def __init__(self, embedder: Any, lock: threading.Lock):
        self._embedder = embedder
        self._lock = lock
        self.dim = embedder.dim

    def encode(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return self._embedder.encode(texts, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)


def embedder(spec: str) -> Any:
    """The sentence embedder for `spec`, loaded once per daemon."""
    with _lock:
        if spec not in _embedders:
            from engine.embedding import Embedder

            _embedder_locks[spec] = threading.Lock()
            _embedders[spec] = _LockedEmbedder(Embedder.load(spec=spec), _embedder_locks[spec])
        return _embedders[spec]


class UnknownMemoryError(HyperlexError):
    """A request names a scene memory that was never built."""

    title = "no such memory"


def memory_dir(state: Path, name: str = "default") -> Path:
    """A named scene memory under the daemon's state dir (engine.memory's default place)."""
    return state / "memory" / name


def require_memory(state: Path, name: str) -> Path:
    """The dir of an existing named memory; `default` may be new (it is where scenes go first).

    Raises:
        UnknownMemoryError: any other name without a memory; nothing is created.
    """
    path = memory_dir(state, name)
    if name != "default" and not path.is_dir():
        raise UnknownMemoryError(
            f"no memory named {name!r} (no {path})",
            hint=f"build it with a memory-add job (params {{\"input\": \"scenes.jsonl\", "
                 f"\"memory\": \"{path}\"}}) or `hyperlex memory add scenes.jsonl "
                 f"--memory {path}`")
    return path


def open_memory(profile_name: str, state: Path, name: str = "default") -> Any:
    """A named scene memory for a chat's RAG, with its own embedder loaded only when needed.

    Use it as a context manager; an empty or new default memory searches to no hits with a
    hint.

    Raises:
        UnknownMemoryError: a name other than `default` with no memory (nothing is created).
    """
    from engine.memory import MemoryConfig, SceneMemory
    from engine.profiles import load_profile

    path = require_memory(state, name)
    config = MemoryConfig.from_profile(load_profile(profile_name))
    with SceneMemory.open(path, config=config, load_index=False) as peek:
        spec = peek.embedder_name
    return SceneMemory.open(path, config=config, embedder=_LazyEmbedder(spec))


class _LazyEmbedder:
    """Loads the shared embedder only when a query really needs embedding (not on an empty
    memory)."""

    def __init__(self, spec: str):
        self.spec = spec

    @property
    def dim(self) -> int:
        return int(embedder(self.spec).dim)

    def encode(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        return embedder(self.spec).encode(texts, *args, **kwargs)


def router(profile_name: str, classifier: Path | None = None) -> Any:
    """The profile's router (classifier file + `[router]` settings), cached until the file
    changes.

    Raises:
        DataError: no classifier has been trained yet (with the command that trains one).
    """
    from engine.memory import MemoryConfig
    from engine.profiles import load_profile
    from engine.routing.router import RouterConfig, default_classifier_path, load_router

    profile = load_profile(profile_name)
    path = Path(classifier) if classifier else default_classifier_path()
    mtime = path.stat().st_mtime if path.exists() else 0.0
    key = (profile_name, str(path), mtime)
    with _lock:
        cached = _routers.get(key)
    if cached is not None:
        return cached
    built = load_router(embedder(MemoryConfig.from_profile(profile).embedder),
                        RouterConfig.from_profile(profile), path)
    with _lock:
        _routers[key] = built
    return built
