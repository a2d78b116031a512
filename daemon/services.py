"""What more than one of the daemon's domains shares: the sentence embedder, scene memories and
routers (requests and the chat scheduler both use them), A/B ratings, and the machine's device
and memory figures. Helpers that serve one domain live in that domain's daemon.handlers module.

Loaded things that are slow to build (the sentence embedder, routers) are cached here, keyed by
what they were built from, and guarded by a lock because requests run on worker threads.

This module knows the engine's public APIs; it knows nothing of sockets or the console.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


def memory_dir(state: Path, name: str = "default") -> Path:
    """A named scene memory under the daemon's state dir (engine.memory's default place)."""
    return state / "memory" / name


def open_memory(profile_name: str, state: Path, name: str = "default") -> Any:
    """A named scene memory for a chat's RAG, with its own embedder loaded only when needed.

    Use it as a context manager; an empty or new memory searches to no hits with a hint.
    """
    from engine.memory import MemoryConfig, SceneMemory
    from engine.profiles import load_profile

    config = MemoryConfig.from_profile(load_profile(profile_name))
    path = memory_dir(state, name)
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


def save_ab_rating(state: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append one A/B rating to `<state>/ab_ratings.jsonl` (flushed and fsynced).

    Returns:
        `{"saved": True, "path": str, "count": lines in the file}`.
    """
    path = state / "ab_ratings.jsonl"
    line = json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False)
    with _lock:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(path, encoding="utf-8") as f:
            count = sum(1 for _ in f)
    return {"saved": True, "path": str(path), "count": count}


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process from /proc (None where /proc is absent or it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_status(job_pids: list[int]) -> dict[str, Any]:
    """The daemon's and its jobs' resident memory, and CUDA devices when torch sees any.

    torch is only asked when it is already imported (a model is or was loaded): the status
    request must stay fast and not load torch by itself.
    """
    memory: dict[str, Any] = {"rss_bytes": rss_bytes(),
                              "jobs_rss_bytes": {str(p): rss_bytes(p) for p in job_pids}}
    device: dict[str, Any] = {"cuda": None, "devices": []}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            available = bool(torch.cuda.is_available())
            device["cuda"] = available
            device["count"] = torch.cuda.device_count() if available else 0
            # Asking for figures would create a CUDA context (hundreds of MiB) in a daemon that
            # may not use the GPU itself: only report them once torch has initialised CUDA.
            device["initialized"] = bool(available and torch.cuda.is_initialized())
            for index in range(device["count"] if device["initialized"] else 0):
                free, total = torch.cuda.mem_get_info(index)
                device["devices"].append({
                    "index": index, "name": torch.cuda.get_device_name(index),
                    "total_bytes": int(total), "free_bytes": int(free),
                    "allocated_bytes": int(torch.cuda.memory_allocated(index)),
                    "reserved_bytes": int(torch.cuda.memory_reserved(index))})
        except Exception as exc:  # a broken driver is a status line, not a failed request
            device["error"] = str(exc)
    else:
        device["note"] = "torch not loaded yet: CUDA is reported once a model has loaded"
    return {"memory": memory, "device": device}
