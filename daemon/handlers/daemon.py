"""The daemon's own requests: hello, status, snapshot, sync probes, event bursts, shutdown."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from daemon import __version__, api, machine
from daemon import protocol as proto
from daemon.jobs import JOB_KINDS
from engine.errors import HyperlexError

if TYPE_CHECKING:
    from daemon.server import Server


def hello(server: Server, req: api.HelloRequest, msg: proto.Message) -> api.HelloReply:
    versions = req.versions if req.versions is not None else [msg.header["version"]]
    version = proto.negotiate(versions)
    if version is None:
        raise HyperlexError(f"no common protocol version: client offers {req.versions!r}, "
                            f"daemon speaks {list(proto.SUPPORTED_VERSIONS)}")
    return api.HelloReply(version=version, daemon_version=__version__, epoch=server.epoch,
                          pid=os.getpid(), events=server.info.events, profile=server.profile)


def status(server: Server, req: api.Empty, msg: proto.Message) -> api.StatusReply:
    # A worker thread (it reads /proc and CUDA): job counts come from the numbers the loop
    # thread keeps, never from the loop thread's SQLite connection, and counters are copied.
    scheduler = server.scheduler
    return api.StatusReply(
        pid=os.getpid(), epoch=server.epoch, profile=server.profile,
        uptime_s=round(time.time() - server.started_at, 3), jobs=dict(scheduler.job_counts),
        models=server.chats.status(), stopping=server.stopping,
        counters=dict(server.dispatcher.counters),
        job_kinds={name: kind.available() for name, kind in JOB_KINDS.items()},
        **machine.device_status(scheduler.job_pids()))


def snapshot(server: Server, req: api.SnapshotRequest, msg: proto.Message) -> api.SnapshotReply:
    return api.SnapshotReply(epoch=server.epoch,
                             extra=server.history.snapshot(req.prefix, req.since))


def sync_probe(server: Server, req: api.SyncProbeRequest, msg: proto.Message) -> api.NoReply:
    """Publish one event on `sync.<token>`: tells a subscriber its subscription is live."""
    server.publish(f"sync.{req.token[:64]}", {})
    return api.NoReply()


def event_burst(server: Server, req: api.EventBurstRequest,
                msg: proto.Message) -> api.EventBurstReply:
    """Publish `count` events on `bench.<name>`: measures and tests event delivery.

    A test hook: refused unless the daemon was started with `test_hooks` (a burst blocks the
    loop for as long as it lasts).
    """
    if not server.settings.test_hooks:
        raise api.BadRequest("event_burst is a test hook, off in this daemon",
                             hint="start the daemon with HYPERLEX_DAEMON_TEST_HOOKS=1 to use it")
    name = req.name if req.name is not None else proto.new_id()[:8]
    topic, pad = f"bench.{name}", "x" * req.size
    for i in range(req.count):
        server.publish(topic, {"i": i, "pad": pad})
        if i % 1000 == 999:
            server.heartbeat_if_due()  # a long burst must not look like a dead daemon
    return api.EventBurstReply(topic=topic, count=req.count)


def shutdown(server: Server, req: api.Empty, msg: proto.Message) -> api.ShutdownReply:
    server.request_stop()
    return api.ShutdownReply(stopping=True, running_jobs=len(server.running))
