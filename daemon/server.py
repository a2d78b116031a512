"""hyperlexd's server: one loop thread that owns the sockets, the job store and the event
history, and the parts it is built from.

- daemon.transport: the ROUTER and PUB sockets, ipc or TCP with CURVE and ZAP;
- daemon.inbox: how other threads hand the loop their results and wake it;
- daemon.dispatch: requests over the table in daemon.api, answered on the loop or a worker;
- daemon.handlers: one module per domain (jobs, chat, memory, profiles, tokenizer, daemon);
- daemon.scheduler: the job processes.

Thread ownership: everything on `Server` is written by the loop thread only. Worker threads
(slow requests), job readers and the chat thread `post` items to the inbox instead; a worker
that must change loop state (the profile) posts a `call`, which the loop runs before it sends
that worker's reply. Workers only read atomically replaced values (`profile`, `stopping`,
`scheduler.job_counts`). Every request gets a reply: invalid or unknown messages get an error
reply and the loop carries on.

This module knows nothing of the console.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from daemon import __version__, loaded
from daemon import protocol as proto
from daemon.api import BadRequest
from daemon.chat_scheduler import ChatScheduler, open_profile_backend
from daemon.connection import (
    ConnectionInfo,
    InstanceLock,
    connection_file_path,
    new_key,
    write_connection_file,
)
from daemon.dispatch import Dispatcher
from daemon.events import HEARTBEAT_TOPIC, STATUS_TOPIC, EventHistory
from daemon.inbox import Inbox
from daemon.jobs import JobStore
from daemon.scheduler import JobScheduler, Runner
from daemon.transport import Transport
from daemon.workers import JobProcess
from engine.errors import ConfigError
from engine.paths import Dirs, dirs

log = logging.getLogger("hyperlexd")

__all__ = ["BadRequest", "DaemonSettings", "Server", "ServerOptions", "settings_from_profile"]


@dataclass
class DaemonSettings:
    """Daemon knobs; the profile's `daemon` section overrides the defaults when present."""

    keep_alive_s: float = 300.0
    max_queue: int = 64
    heavy_jobs: int = 1
    light_jobs: int = 4
    resume_interrupted: bool = True
    cancel_grace_s: float = 10.0
    heartbeat_s: float = 1.0
    # Events queued per subscriber before ZeroMQ drops; a drop is a gap the client resyncs.
    # At most event_buffer_bytes // event_max_bytes (4096 with the defaults) take effect.
    event_hwm: int = 200_000
    # Chats waiting for the model, in count and in bytes of prompt and history; past either,
    # a chat is answered "daemon busy" (daemon.chat_scheduler.ChatQueueFullError).
    max_queued_chats: int = 64
    max_queued_chat_bytes: int = 16 * 1024 * 1024
    # What one subscriber that stops reading may hold in the daemon before it loses events:
    # 256 MiB, so a stalled console costs memory a workstation has, never gigabytes.
    event_buffer_bytes: int = 256 * 1024 * 1024
    # The largest event sent on the PUB socket (frames included); a larger one stays in the
    # history and subscribers fetch it by snapshot. 64 KiB holds any token, progress or
    # status event and a batch of hundreds of log lines.
    event_max_bytes: int = 64 * 1024
    # Event history kept for snapshots, in all and per topic: 128 MiB holds minutes of the
    # busiest job's log; 16 MiB per topic keeps one chatty job from pushing out all others.
    history_bytes: int = 128 * 1024 * 1024
    history_topic_bytes: int = 16 * 1024 * 1024
    # Slow requests queued or running on worker threads before more are answered Busy: 64 is
    # 16 per worker, far more than the console and a few CLI calls send at once.
    max_pending_requests: int = 64
    # What job output waiting for the loop may hold before job readers wait (the job then
    # blocks on its own pipe): 64 MiB is seconds of the chattiest job's output.
    inbox_bytes: int = 64 * 1024 * 1024
    # Test and benchmark hooks (event_burst): off, so an ordinary client cannot flood the loop;
    # tests and bench/daemon.py start their daemon with HYPERLEX_DAEMON_TEST_HOOKS=1.
    test_hooks: bool = False
    # Where a remote (TCP) client's job paths may point; empty: the state and cache dirs.
    path_roots: tuple[str, ...] = ()


def settings_from_profile(profile: str) -> DaemonSettings:
    """Defaults, then the profile's `daemon` section, then `HYPERLEX_DAEMON_<KNOB>` variables."""
    from engine.profiles import load_profile

    settings = DaemonSettings()
    section = getattr(load_profile(profile), "daemon", None)
    for name in settings.__dataclass_fields__:
        if section is not None and hasattr(section, name):
            setattr(settings, name, getattr(section, name))
        raw = os.environ.get(f"HYPERLEX_DAEMON_{name.upper()}")
        if raw is not None:
            kind = type(getattr(DaemonSettings(), name))
            try:
                value = raw.lower() in ("1", "true", "yes") if kind is bool else \
                    tuple(filter(None, raw.split(os.pathsep))) if kind is tuple else kind(raw)
            except ValueError:
                raise ConfigError(f"HYPERLEX_DAEMON_{name.upper()}={raw!r} is not a "
                                  f"{kind.__name__}") from None
            setattr(settings, name, value)
    return settings


@dataclass
class ServerOptions:
    """How to start: where to bind and what to use.

    `chat_opener` (profile name -> (backend, profile)) and `job_runner` replace the engine's
    backend and the job subprocess: tests run the whole server in-process with fakes.
    `recover` moves a corrupt job database aside and starts with an empty one (hyperlexd
    --recover). `curve=False` on TCP needs `insecure_loopback_for_tests` and a loopback address.
    """

    profile: str = "default"
    bind: str | None = None          # tcp://HOST:PORT; None means ipc in the runtime dir
    curve: bool = True               # TCP only; refused off for non-loopback addresses
    settings: DaemonSettings | None = None
    home: Dirs | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    chat_opener: Callable[[str], tuple[Any, Any]] | None = None
    job_runner: Runner | None = None
    recover: bool = False
    insecure_loopback_for_tests: bool = False
    # The HTTP gateway's HOST:PORT (hyperlexd --http); None: the profile's [http] decides.
    http: str | None = None
    http_preload: bool = True        # load the chat model when the gateway starts


class Server:
    """The daemon. `start()` binds and recovers, `serve_forever()` runs the loop."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.dirs = (options.home or dirs()).ensure()
        self.profile = options.profile  # loop thread writes (see set_profile); workers read
        self.settings = options.settings or settings_from_profile(options.profile)
        self.epoch = proto.new_id()
        self.started_at = time.time()
        self.stopping = False
        self.history = EventHistory(max_bytes=self.settings.history_bytes,
                                    per_topic_bytes=self.settings.history_topic_bytes)
        self.inbox = Inbox(max_bytes=self.settings.inbox_bytes)
        # chat id -> session, for retried chat requests (loop thread only).
        self.recent_chats: OrderedDict[str, str] = OrderedDict()
        self._next_heartbeat = 0.0
        self.lock = InstanceLock(self.dirs.runtime / "hyperlexd.lock")

    # --- start and stop -------------------------------------------------------------------------

    def start(self) -> ConnectionInfo:
        """Take the lock, bind, recover the job queue and write the connection file.

        Raises:
            AlreadyRunningError: another daemon holds this home.
            ConfigError: a TCP bind without CURVE on a non-loopback address.
        """
        self.lock.acquire()
        if self.lock.recovered_from:
            log.warning("recovered a stale lock left by pid %s", self.lock.recovered_from)
        self.session = proto.Session(new_key().encode(), session_id=self.epoch)
        self.transport = Transport(self.dirs, self.options.bind, self.options.curve,
                                   self.session, self.settings.event_hwm,
                                   event_buffer_bytes=self.settings.event_buffer_bytes,
                                   event_max_bytes=self.settings.event_max_bytes)
        self.transport.insecure_loopback_for_tests = self.options.insecure_loopback_for_tests
        request, events, server_key = self.transport.bind()
        self.store = JobStore(self.dirs.state / "jobs.sqlite3", self.dirs.state / "jobs",
                              recover=self.options.recover)
        if self.store.moved_aside:
            log.warning("the job database %s was corrupt: moved it aside to %s and started "
                        "with an empty job queue", self.store.path, self.store.moved_aside)
        self.scheduler = JobScheduler(
            self.store, self.publish, self.inbox.post, heavy_jobs=self.settings.heavy_jobs,
            light_jobs=self.settings.light_jobs, cancel_grace_s=self.settings.cancel_grace_s,
            runner=self.options.job_runner or JobProcess)
        self.scheduler.recover(self.settings.resume_interrupted)
        self.chats = ChatScheduler(self.publish_threadsafe, self.profile,
                                   keep_alive_s=self.settings.keep_alive_s,
                                   max_queued=self.settings.max_queued_chats,
                                   max_queued_bytes=self.settings.max_queued_chat_bytes,
                                   opener=self._following_load(
                                       self.options.chat_opener or open_profile_backend),
                                   router=loaded.router,
                                   memory=lambda profile, name:
                                   loaded.open_memory(profile, self.dirs.state, name))
        self.dispatcher = Dispatcher(self, self.session, self.transport.send_reply,
                                     self.inbox.post, lambda: self.stopping,
                                     max_pending=self.settings.max_pending_requests)
        self.info = ConnectionInfo(request=request, events=events, key=self.session.key.decode(),
                                   pid=os.getpid(), curve_server_key=server_key)
        # The gateway first: a client that sees the connection file finds http.json too.
        self.http = self._start_http()
        self.connection_file = write_connection_file(self.info,
                                                     connection_file_path(self.dirs))
        log.info("hyperlexd %s serving %s (events %s), pid %s, profile %s", __version__, request,
                 events, os.getpid(), self.profile)
        return self.info

    def _start_http(self) -> Any:
        """The HTTP gateway, when `--http` or the profile's `[http] enabled` asks for it."""
        from daemon.http.settings import http_settings

        settings = http_settings(self.profile, self.dirs, self.options.http)
        if settings is None:
            return None
        from daemon.http.service import HttpService

        service = HttpService(self, settings, preload=self.options.http_preload)
        service.start()
        log.info("HTTP gateway on %s", service.url)
        return service

    def _following_load(self, opener: Callable[[str], tuple[Any, Any]]
                        ) -> Callable[[str], tuple[Any, Any]]:
        """`opener`, whose backends are told whether a job runs: llama.cpp decodes on every
        physical core when none does and on fewer beside one. Light jobs count too: a
        selftest or scenes job needs a core as well, and with chats on every core the soak's
        jobs drained too slowly to finish in time."""
        def open_backend(profile_name: str) -> tuple[Any, Any]:
            backend, profile = opener(profile_name)
            if hasattr(backend, "busy"):
                # Read on the chat thread: a dict's truth is one atomic read of its size.
                backend.busy = lambda: bool(self.scheduler.running)
            return backend, profile
        return open_backend

    @property
    def running(self) -> dict[int, Any]:
        return self.scheduler.running

    def request_stop(self) -> None:
        """Stop gracefully: take nothing new, let jobs checkpoint, then exit the loop."""
        if not self.stopping:
            log.info("stopping: checkpointing %d running job(s)", len(self.running))
            self.stopping = True
            self.scheduler.stop()
        self.inbox.wake()

    def close(self) -> None:
        if getattr(self, "http", None) is not None:
            self.http.stop()
        if hasattr(self, "dispatcher"):
            self.dispatcher.close()
        if hasattr(self, "chats"):
            self.chats.stop()
        if hasattr(self, "store"):
            self.store.close()
        if hasattr(self, "connection_file"):
            self.connection_file.unlink(missing_ok=True)
        if hasattr(self, "transport"):
            self.transport.close()
        self.inbox.close()
        self.lock.release()
        log.info("stopped")

    # --- the loop -------------------------------------------------------------------------------

    def serve_forever(self, install_signals: bool = True) -> None:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        router = self.transport.router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self.inbox.wake_fd, zmq.POLLIN)
        self.scheduler.schedule()
        try:
            while True:
                self.heartbeat_if_due()
                self.transport.flush_events()  # what this pass published, before waiting
                now = time.monotonic()
                timeout_ms = max(0, min(200, int((self._next_heartbeat - now) * 1000)))
                ready = dict(poller.poll(timeout_ms))
                if self.inbox.wake_fd in ready:
                    self.inbox.woken()
                self._drain_inbox()
                if router in ready:
                    for _ in range(1000):  # a burst, then let events and timers run
                        frames = self.transport.recv()
                        if frames is None:
                            break
                        self.dispatcher.handle_frames(frames)
                    self._drain_inbox()
                self.scheduler.check_timers()
                if self.stopping and not self.running:
                    break
        finally:
            self.close()

    def heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self.publish(HEARTBEAT_TOPIC, {"epoch": self.epoch, "time": time.time(),
                                           "jobs_running": len(self.running),
                                           "seqs": self.history.recent()})
            self._next_heartbeat = now + self.settings.heartbeat_s

    def _drain_inbox(self) -> None:
        # A job's plain output lines are published and written to its log file in one go per
        # drain: a chatty job prints thousands a second, and one event of many lines costs
        # subscribers one message. Any other item flushes them first, so the file and the
        # stream keep the order in which things happened.
        lines: dict[int, list[str]] = {}
        for item in self.inbox.drain():
            kind = item[0]
            if kind == "line":
                lines.setdefault(item[1], []).append(item[2])
                continue
            if lines:
                self.scheduler.write_lines(lines)
                lines = {}
            try:
                if kind == "publish":
                    self.publish(item[1], item[2])
                elif kind == "reply":
                    self.dispatcher.reply(*item[1:])
                elif kind == "call":
                    item[1]()
                else:
                    self.scheduler.on_item(kind, item[1], item[2])
            except Exception:
                log.exception("while handling %s", kind)
        if lines:
            self.scheduler.write_lines(lines)

    # --- events and loop state ------------------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Number, keep and send an event (sent by the end of this pass of the loop, batched
        with the events of its topic published just before and after it). Loop thread only."""
        event = self.history.record(topic, data)
        self.history.account(event, self.transport.send_event(topic, event.seq, data))

    def publish_threadsafe(self, topic: str, data: dict[str, Any]) -> None:
        self.inbox.post(("publish", topic, data))

    def on_loop(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread (from a worker), before that worker's reply is sent."""
        self.inbox.post(("call", fn))

    def set_profile(self, name: str) -> None:
        """Use another profile from now on (loop thread)."""
        self.profile = name
        self.chats.switch_profile(name)
        self.publish(STATUS_TOPIC, {"event": "profile", "profile": name})
