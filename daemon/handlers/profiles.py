"""Profile requests: list them, switch the daemon to one (both on a worker thread)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from daemon import api
from daemon import protocol as proto

if TYPE_CHECKING:
    from daemon.server import Server


def list_(server: Server, req: api.Empty, msg: proto.Message) -> api.ProfileListReply:
    from engine.profiles import list_profiles

    return api.ProfileListReply(profiles=[{"name": Path(p).stem, "path": str(p)}
                                          for p in list_profiles()], current=server.profile)


def use(server: Server, req: api.ProfileUseRequest, msg: proto.Message) -> api.ProfileUseReply:
    from engine.profiles import load_profile

    load_profile(req.name)  # validate here, on the worker: it reads and checks files
    # The profile belongs to the loop thread: it switches there, before this reply is sent.
    server.on_loop(lambda: server.set_profile(req.name))
    return api.ProfileUseReply(profile=req.name)
