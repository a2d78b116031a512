"""Scene memory and A/B rating requests (worker threads): they write under the state dir."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from daemon import api, services
from daemon import protocol as proto

if TYPE_CHECKING:
    from daemon.server import Server


def search(server: Server, req: api.MemorySearchRequest,
           msg: proto.Message) -> api.MemorySearchReply:
    """Scenes nearest to `query` in the scene memory under the daemon's state dir."""
    result = services.memory_search(req.profile or server.profile, server.dirs.state,
                                    req.query, req.k, req.filters(), req.memory)
    return api.MemorySearchReply(**result)


def ab_rating(server: Server, req: api.AbRatingRequest,
              msg: proto.Message) -> api.AbRatingReply:
    """Keep a person's A/B judgement: `{prompt, answers, rating}` appended as JSONL."""
    record: dict[str, Any] = {"prompt": req.prompt, "answers": req.answers,
                              "rating": req.rating, "profile": req.profile or server.profile}
    for key in ("adapters", "note", "chat_ids"):
        if getattr(req, key) is not None:
            record[key] = getattr(req, key)
    return api.AbRatingReply(**services.save_ab_rating(server.dirs.state, record))
