"""Chat requests: start and cancel chats (loop thread), the adapters the chat model has, and
the router's decision for a prompt (a worker thread: it may load the router)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import api, loaded
from daemon import protocol as proto
from daemon.chat_scheduler import Chat
from daemon.handlers.jobs import resolve_adapter
from engine.errors import DataError

if TYPE_CHECKING:
    from daemon.server import Server

RECENT_CHATS = 10_000  # chat ids remembered for retried requests


def chat(server: Server, req: api.ChatRequest, msg: proto.Message) -> api.ChatReply:
    chat_id = req.chat_id or proto.new_id()
    if chat_id in server.recent_chats:  # a retried request: the chat already exists
        return api.ChatReply(chat_id=chat_id, topic=f"chat.{chat_id}.token", created=False)
    messages = req.messages or [{"role": "user", "content": req.prompt}]
    options: dict[str, Any] = {key: getattr(req, key) for key in
                               ("max_tokens", "temperature", "top_p", "seed")
                               if getattr(req, key) is not None}
    if req.rag_k:
        options["rag_k"] = req.rag_k
        options["memory"] = req.memory
    if req.route:
        options["route"] = True
    elif req.adapter and req.adapter != "base":
        options["adapter"] = resolve_adapter(server, req.adapter)
    # Submitted first: a chat refused as "daemon busy" must not be remembered, or its retry
    # would be answered as if it had been queued.
    started = server.chats.submit(Chat(chat_id, msg.header["session"], messages, options))
    server.recent_chats[chat_id] = msg.header["session"]
    while len(server.recent_chats) > RECENT_CHATS:
        server.recent_chats.popitem(last=False)
    return api.ChatReply(chat_id=started.chat_id, topic=started.topic, created=True)


def cancel(server: Server, req: api.ChatCancelRequest, msg: proto.Message) -> api.ChatCancelReply:
    return api.ChatCancelReply(cancelled=server.chats.cancel(req.chat_id))


def adapters(server: Server, req: api.Empty, msg: proto.Message) -> api.AdaptersReply:
    """Adapters loaded on the chat model, and known ones (succeeded train jobs)."""
    known = []
    for job in server.store.list("succeeded", limit=1000):
        adapter_dir = (job.get("result") or {}).get("adapter_dir")
        if job["kind"] == "train" and adapter_dir and Path(adapter_dir).is_dir():
            known.append({"name": f"job-{job['id']}", "ref": f"job:{job['id']}",
                          "job": job["id"], "path": adapter_dir, "profile": job["profile"],
                          "final_loss": job["result"].get("final_loss"),
                          "finished": job["finished"]})
    status = server.chats.status()
    return api.AdaptersReply(loaded=server.chats.loaded_adapters(), known=known,
                             active=status["active_adapter"],
                             model_loaded=status["loaded"] is not None,
                             profile=status["profile"])


def route(server: Server, req: api.RouteRequest, msg: proto.Message) -> api.RouteReply:
    """The router's decision for `prompt` (scores, adapter or base/mix), or a hint."""
    return api.RouteReply(**route_prompt(req.profile or server.profile, req.prompt))


def route_prompt(profile_name: str, prompt: str) -> dict[str, Any]:
    """Where a prompt goes: `{"route": decision|None, "hint": str|None}`.

    Without a trained classifier the reply has no decision and a hint naming the command.
    """
    try:
        decision = loaded.router(profile_name).route(prompt)
    except DataError as exc:
        return {"route": None, "hint": f"{exc.message}; {exc.hint}" if exc.hint else exc.message}
    return {"route": decision.to_dict(), "hint": None}
