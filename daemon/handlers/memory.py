"""Scene memory and A/B rating requests (worker threads): they write under the state dir.

A search never creates a memory: an unknown name is an error naming it and how to build one,
and the default memory, before anything was added, is an empty result with a hint.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import api, loaded, ratings
from daemon import protocol as proto

if TYPE_CHECKING:
    from daemon.server import Server


def _jsonable_scene(scene: dict[str, Any]) -> dict[str, Any]:
    # A scene's vector is hundreds of floats the front ends never show.
    return {k: v for k, v in scene.items() if k != "vector"}


def memory_search(profile_name: str, state: Path, query: str, k: int = 5,
                  filters: dict[str, Any] | None = None, memory: str = "default"
                  ) -> dict[str, Any]:
    """Search the profile's scene memory.

    Returns:
        `{"hits": [{"scene_id", "score", "scene"}], "hint": str|None, "memory": path,
        "scenes": count}`; an empty memory gives no hits and a hint.

    Raises:
        daemon.loaded.UnknownMemoryError: no memory of that name exists (nothing is created).
    """
    path = loaded.memory_dir(state, memory)
    if not path.is_dir():
        if memory == "default":  # the one every front end searches before adding anything
            from engine.memory.scene_memory import EMPTY_HINT

            return {"hits": [], "hint": EMPTY_HINT, "memory": str(path), "scenes": 0}
        loaded.require_memory(state, memory)
    # The memory's own embedder (fixed by its first write) may differ from the profile's.
    with loaded.open_memory(profile_name, state, memory) as scene_memory:
        result = scene_memory.search(query, k, {f: v for f, v in (filters or {}).items() if v})
        count = len(scene_memory)
    hits = [{"scene_id": h.scene_id, "score": round(float(h.score), 6),
             "scene": _jsonable_scene(h.scene)} for h in result.hits]
    return {"hits": hits, "hint": result.hint, "memory": str(path), "scenes": count}


def search(server: Server, req: api.MemorySearchRequest,
           msg: proto.Message) -> api.MemorySearchReply:
    """Scenes nearest to `query` in the scene memory under the daemon's state dir."""
    result = memory_search(req.profile or server.profile, server.dirs.state, req.query, req.k,
                           req.filters(), req.memory)
    return api.MemorySearchReply(**result)


def ab_rating(server: Server, req: api.AbRatingRequest,
              msg: proto.Message) -> api.AbRatingReply:
    """Keep a person's A/B judgement: `{prompt, answers, rating}` appended as JSONL."""
    record: dict[str, Any] = {"prompt": req.prompt, "answers": req.answers,
                              "rating": req.rating, "profile": req.profile or server.profile}
    for key in ("adapters", "note", "chat_ids"):
        if getattr(req, key) is not None:
            record[key] = getattr(req, key)
    return api.AbRatingReply(**ratings.save_ab_rating(server.dirs.state, record))
