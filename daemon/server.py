"""hyperlexd's server: a ROUTER socket for requests, a PUB socket for events, one loop thread.

The loop thread owns both sockets, the job store and the event history. Other threads (job
readers, the chat thread, slow request handlers) hand their results to an inbox queue and wake
the loop through a pipe that the ZeroMQ poller watches, so no socket is ever shared between
threads. Every request gets a reply: invalid or unknown messages get an error reply and the
loop carries on.

This module knows nothing of the console.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import logging
import os
import queue
import re
import signal
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from daemon import __version__, services
from daemon import protocol as proto
from daemon.chat_scheduler import Chat, ChatScheduler
from daemon.connection import (
    ConnectionInfo,
    InstanceLock,
    allowed_keys_dir,
    connection_file_path,
    ensure_keypair,
    is_loopback_tcp,
    load_keypair,
    new_key,
    write_connection_file,
)
from daemon.events import HEARTBEAT_TOPIC, STATUS_TOPIC, EventHistory
from daemon.jobs import FINAL_STATES, JOB_KINDS, JobLog, JobStore, job_kind
from daemon.workers import JobProcess, kill_leftover_group
from engine.errors import ConfigError, HyperlexError, NotAvailableError
from engine.paths import Dirs, dirs

log = logging.getLogger("hyperlexd")

PARAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
# Requests answered on a worker thread because they may load models or indexes.
OFFLOADED = {"tokenize", "memory_search", "route", "profile_list", "profile_use",
             "tokenizer_suite", "ab_rating", "status"}
JOB_REF = re.compile(r"job:(\d+)")
# Job states a job_resume request may restart.
RESUMABLE = ("failed", "cancelled", "interrupted")


class BadRequest(HyperlexError):
    title = "bad request"


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
    event_hwm: int = 200_000


def settings_from_profile(profile: str) -> DaemonSettings:
    """Defaults, then the profile's `daemon` section, then `HYPERLEX_DAEMON_<KNOB>` variables."""
    settings = DaemonSettings()
    try:
        section = getattr(importlib.import_module("engine.profiles").load_profile(profile),
                          "daemon", None)
    except ModuleNotFoundError:
        section = None
    for name in settings.__dataclass_fields__:
        if section is not None and hasattr(section, name):
            setattr(settings, name, getattr(section, name))
        raw = os.environ.get(f"HYPERLEX_DAEMON_{name.upper()}")
        if raw is not None:
            kind = type(getattr(DaemonSettings(), name))
            try:
                value = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
            except ValueError:
                raise ConfigError(f"HYPERLEX_DAEMON_{name.upper()}={raw!r} is not a "
                                  f"{kind.__name__}") from None
            setattr(settings, name, value)
    return settings


@dataclass
class ServerOptions:
    """How to start: where to bind and what to use."""

    profile: str = "default"
    bind: str | None = None          # tcp://HOST:PORT; None means ipc in the runtime dir
    curve: bool = True               # TCP only; refused off for non-loopback addresses
    settings: DaemonSettings | None = None
    home: Dirs | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _arg(content: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None,
         required: bool = False) -> Any:
    """A typed field of a request's content, or BadRequest naming the key."""
    if name not in content or content[name] is None:
        if required:
            raise BadRequest(f"missing required field '{name}'")
        return default
    value = content[name]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise BadRequest(f"field '{name}' must be {getattr(kind, '__name__', kind)}, got bool")
    if not isinstance(value, kind):
        raise BadRequest(f"field '{name}' must be {getattr(kind, '__name__', kind)}, "
                         f"got {type(value).__name__}")
    return value


class Server:
    """The daemon. `start()` binds and recovers, `serve_forever()` runs the loop."""

    def __init__(self, options: ServerOptions):
        self.options = options
        self.dirs = (options.home or dirs()).ensure()
        self.profile = options.profile
        self.settings = options.settings or settings_from_profile(options.profile)
        self.epoch = proto.new_id()
        self.started_at = time.time()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.history = EventHistory()
        self.seq_guard = proto.SeqGuard()
        self.inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.running: dict[int, JobProcess] = {}
        self.cancelling: set[int] = set()
        self.recent_chats: OrderedDict[str, str] = OrderedDict()
        self.last_progress_write: dict[int, float] = {}
        self.counters: dict[str, int] = {}
        self.job_counts: dict[str, int] = {}
        self._next_heartbeat = 0.0
        self._wake_pending = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4,
                                                           thread_name_prefix="request")
        self.lock = InstanceLock(self.dirs.runtime / "hyperlexd.lock")
        self.ctx = zmq.Context()
        self.auth: Any = None
        self._handlers: dict[str, Callable[[dict[str, Any], proto.Message], dict[str, Any]]] = {
            name[len("on_"):]: getattr(self, name) for name in dir(self) if name.startswith("on_")}

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
        self.router = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME_BYTES)
        self.pub.setsockopt(zmq.SNDHWM, self.settings.event_hwm)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        self.router.setsockopt(zmq.RCVHWM, 100_000)
        request, events, server_key = self._bind()
        self.store = JobStore(self.dirs.state / "jobs.sqlite3", self.dirs.state / "jobs")
        self._recover_jobs()
        self._refresh_job_counts()
        self.models = ChatScheduler(self.publish_threadsafe, self.profile,
                                    keep_alive_s=self.settings.keep_alive_s,
                                    router=services.router,
                                    memory=lambda profile, name:
                                    services.open_memory(profile, self.dirs.state, name))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.info = ConnectionInfo(request=request, events=events, key=self.session.key.decode(),
                                   pid=os.getpid(), curve_server_key=server_key)
        self.connection_file = write_connection_file(self.info,
                                                     connection_file_path(self.dirs))
        log.info("hyperlexd %s serving %s (events %s), pid %s, profile %s", __version__, request,
                 events, os.getpid(), self.profile)
        return self.info

    def _bind(self) -> tuple[str, str, str | None]:
        bind = self.options.bind
        if not bind:
            for name in ("req", "ev"):  # a socket file left by a killed daemon
                (self.dirs.runtime / name).unlink(missing_ok=True)
            request = f"ipc://{self.dirs.runtime / 'req'}"
            events = f"ipc://{self.dirs.runtime / 'ev'}"
            self.router.bind(request)
            self.pub.bind(events)
            for name in ("req", "ev"):
                os.chmod(self.dirs.runtime / name, 0o600)
            return request, events, None
        if not bind.startswith("tcp://"):
            raise ConfigError(f"cannot bind {bind!r}: only tcp://HOST:PORT is accepted")
        if not self.options.curve and not is_loopback_tcp(bind):
            raise ConfigError(f"refusing to bind {bind} without CURVE: it is not a loopback "
                              "address", hint="drop --no-curve, or bind 127.0.0.1")
        host, port = bind[len("tcp://"):].rsplit(":", 1)
        request, events = f"tcp://{host}:{port}", f"tcp://{host}:{int(port) + 1}"
        server_key = None
        if self.options.curve:
            server_key = self._setup_curve()
        self.router.bind(request)
        self.pub.bind(events)
        return request, events, server_key

    def _setup_curve(self) -> str:
        from zmq.auth.thread import ThreadAuthenticator

        _, server_secret = ensure_keypair("server", self.dirs.state / "keys")
        public, secret = load_keypair(server_secret)
        # This machine's own CLI and console use the `local` keypair; allow it.
        local_public, _ = ensure_keypair("local")
        allowed = allowed_keys_dir(self.dirs)
        allowed.mkdir(parents=True, exist_ok=True)
        os.chmod(allowed, 0o700)
        (allowed / "local.key").write_text(local_public.read_text())
        self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("hyperlexd.zap"))
        self.auth.start()
        self.auth.configure_curve(domain="*", location=str(allowed))
        for sock in (self.router, self.pub):
            sock.curve_server = True
            sock.curve_secretkey = secret
            sock.curve_publickey = public
        return public.decode()

    def _recover_jobs(self) -> None:
        for job in self.store.mark_interrupted():
            killed = kill_leftover_group(job.get("pid"), job.get("run_dir"))
            log.warning("job %s was running when the daemon died: interrupted%s", job["id"],
                        " (killed its leftover processes)" if killed else "")
            JobLog(Path(job["run_dir"])).append(f"{time.strftime('%F %T')} [daemon] "
                                                "interrupted: the daemon stopped")
        if self.settings.resume_interrupted:
            for job in self.store.requeue_for_resume():
                log.info("job %s will resume from %s", job["id"], job["checkpoint"])

    def request_stop(self) -> None:
        """Stop gracefully: take nothing new, let jobs checkpoint, then exit the loop."""
        if not self.stopping:
            log.info("stopping: checkpointing %d running job(s)", len(self.running))
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.cancel_grace_s
            for proc in self.running.values():
                proc.terminate()
        self._wake()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self, "models"):
            self.models.stop()
        if hasattr(self, "store"):
            self.store.close()
        if self.auth is not None:
            self.auth.stop()
        if hasattr(self, "connection_file"):
            self.connection_file.unlink(missing_ok=True)
        for sock in (getattr(self, "router", None), getattr(self, "pub", None)):
            if sock is not None:
                sock.close(0)
        if not self.options.bind:
            for name in ("req", "ev"):
                (self.dirs.runtime / name).unlink(missing_ok=True)
        self.ctx.term()
        self.lock.release()
        log.info("stopped")

    # --- the loop -------------------------------------------------------------------------------

    def serve_forever(self, install_signals: bool = True) -> None:
        if install_signals:
            signal.signal(signal.SIGTERM, lambda *_: self.request_stop())
            signal.signal(signal.SIGINT, lambda *_: self.request_stop())
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self._schedule()
        try:
            while True:
                self._heartbeat_if_due()
                now = time.monotonic()
                timeout_ms = max(0, min(200, int((self._next_heartbeat - now) * 1000)))
                ready = dict(poller.poll(timeout_ms))
                if self._wake_r in ready:
                    self._wake_pending = False  # before draining: later puts wake us again
                    try:
                        os.read(self._wake_r, 65536)
                    except BlockingIOError:
                        pass
                self._drain_inbox()
                if self.router in ready:
                    for _ in range(1000):  # a burst, then let events and timers run
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle_frames(frames)
                    self._drain_inbox()
                self._check_timers()
                if self.stopping and not self.running:
                    break
        finally:
            self.close()

    def _heartbeat_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self.publish(HEARTBEAT_TOPIC, {"epoch": self.epoch, "time": time.time(),
                                           "jobs_running": len(self.running),
                                           "seqs": self.history.recent()})
            self._next_heartbeat = now + self.settings.heartbeat_s

    def _wake(self) -> None:
        """Wake the loop (from any thread, after putting an item in the inbox).

        One write per batch: a chat streaming tokens does not cost a syscall and a loop
        wake-up per token while the loop has not drained the inbox yet.
        """
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake already

    def _check_timers(self) -> None:
        grace = self.settings.cancel_grace_s
        for proc in self.running.values():
            if proc.kill_if_overdue(grace):
                log.warning("job %s did not stop within %.0f s: SIGKILL", proc.job_id, grace)

    # --- events ---------------------------------------------------------------------------------

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Number, keep and send an event. Loop thread only."""
        event = self.history.record(topic, data)
        # An event is named by its topic and seq: no random id needed.
        header = self.session.header("event", msg_id=f"{topic}#{event.seq}", seq=event.seq,
                                     topic=topic)
        header["session"] = self.epoch
        frames = self.session.serialize(header, data, topic=topic.encode())
        try:
            self.pub.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # over the high-water mark: subscribers see the gap and resync

    def publish_threadsafe(self, topic: str, data: dict[str, Any]) -> None:
        self.inbox.put(("publish", topic, data))
        self._wake()

    def _drain_inbox(self) -> None:
        # A job's plain output lines are published and written to its log file in one go per
        # drain: a chatty job prints thousands a second, and one event of many lines costs
        # subscribers one message. Any other item flushes them first, so the file and the
        # stream keep the order in which things happened.
        lines: dict[int, list[str]] = {}
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                break
            kind = item[0]
            if kind == "line":
                lines.setdefault(item[1], []).append(item[2])
                continue
            if lines:
                self._write_job_lines(lines)
                lines = {}
            try:
                if kind == "publish":
                    self.publish(item[1], item[2])
                elif kind == "reply":
                    self._send_reply(item[1], item[2], item[3])
                else:
                    self._on_job_item(kind, item[1], item[2])
            except Exception:
                log.exception("while handling %s", kind)
        if lines:
            self._write_job_lines(lines)

    def _write_job_lines(self, lines: dict[int, list[str]]) -> None:
        stamp = time.strftime("%F %T")
        for job_id, batch in lines.items():
            self.publish(f"job.{job_id}.log", {"lines": batch})
            proc = self.running.get(job_id)
            try:
                run_dir = proc.run_dir if proc is not None else self.store.get(job_id)["run_dir"]
                JobLog(Path(run_dir)).append_many(f"{stamp} {line}" for line in batch)
            except Exception:
                log.exception("while writing %d log line(s) of job %s", len(batch), job_id)

    # --- requests -------------------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1

    def _send_reply(self, routing: list[bytes], parent: dict[str, Any],
                    content: dict[str, Any]) -> None:
        msg_type = proto.reply_type(str(parent.get("msg_type", "")))
        header = self.session.header(msg_type)
        frames = self.session.serialize(header, content, parent, routing=routing)
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone or not keeping up; it will retry

    def _handle_frames(self, frames: list[bytes]) -> None:
        routing = frames[:1]
        try:
            msg = self.session.deserialize(frames)
            routing = msg.routing
            self.seq_guard.check(msg.header["session"], msg.header["seq"])
        except proto.ProtocolError as exc:
            self._count(exc.kind)
            parent = exc.header if isinstance(exc.header, dict) else {}
            self._send_reply(routing, parent, proto.error_content(exc.kind, exc.message))
            return
        msg_type = msg.msg_type
        verb = msg_type[: -len("_request")] if msg_type.endswith("_request") else None
        handler = self._handlers.get(verb) if verb else None
        if handler is None:
            self._count("UnknownType")
            self._send_reply(routing, msg.header,
                             proto.error_content("UnknownType", f"unknown message type "
                                                 f"{msg_type[:80]!r}"))
            return
        if self.stopping and verb not in ("hello", "status", "snapshot"):
            self._count("ShuttingDown")
            self._send_reply(routing, msg.header, proto.error_content(
                "ShuttingDown", "the daemon is shutting down"))
            return
        if verb in OFFLOADED:
            self._pool.submit(self._run_offloaded, handler, msg, routing)
            return
        self._send_reply(routing, msg.header, self._call(handler, msg))

    def _call(self, handler: Callable[..., dict[str, Any]], msg: proto.Message) -> dict[str, Any]:
        try:
            result = handler(msg.content, msg)
            self._count("ok")
            return {"status": "ok", **result}
        except HyperlexError as exc:
            self._count(type(exc).__name__)
            return proto.error_content(type(exc).__name__, exc.message, hint=exc.hint)
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("request %s failed", msg.msg_type)
            self._count("InternalError")
            return proto.error_content("InternalError", f"{type(exc).__name__}: {exc}")

    def _run_offloaded(self, handler: Callable[..., dict[str, Any]], msg: proto.Message,
                       routing: list[bytes]) -> None:
        self.inbox.put(("reply", routing, msg.header, self._call(handler, msg)))
        self._wake()

    # --- handlers: one per request type ---------------------------------------------------------

    def on_hello(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        version = proto.negotiate(content.get("versions", [msg.header["version"]]))
        if version is None:
            raise HyperlexError(f"no common protocol version: client offers "
                                f"{content.get('versions')!r}, daemon speaks "
                                f"{list(proto.SUPPORTED_VERSIONS)}")
        return {"version": version, "daemon_version": __version__, "epoch": self.epoch,
                "pid": os.getpid(), "events": self.info.events, "profile": self.profile}

    def on_status(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        # Answered on a worker thread (it reads /proc and CUDA), so the job counts come from
        # the numbers the loop thread keeps, never from the loop thread's SQLite connection.
        return {"pid": os.getpid(), "epoch": self.epoch, "profile": self.profile,
                "uptime_s": round(time.time() - self.started_at, 3),
                "jobs": dict(self.job_counts),
                "models": self.models.status(), "stopping": self.stopping,
                "counters": dict(self.counters),
                "job_kinds": {name: kind.available() for name, kind in JOB_KINDS.items()},
                **services.device_status(self._job_pids())}

    def _job_pids(self) -> list[int]:
        try:
            return [proc.pid for proc in tuple(self.running.values())]
        except RuntimeError:  # the loop thread changed the dict meanwhile: skip this once
            return []

    def _refresh_job_counts(self) -> None:
        self.job_counts = {state: self.store.count(state) for state in
                           ("queued", "running", "interrupted")}

    def on_profile_list(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        profiles = _engine("engine.profiles", "profiles")
        return {"profiles": [{"name": Path(p).stem, "path": str(p)}
                             for p in profiles.list_profiles()], "current": self.profile}

    def on_profile_use(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        name = _arg(content, "name", str, required=True)
        try:
            profiles = importlib.import_module("engine.profiles")
            profiles.load_profile(name)  # validate before switching
        except ModuleNotFoundError:
            pass  # without engine.profiles every profile uses the packaged chat model
        self.profile = name
        self.models.switch_profile(name)
        self.publish_threadsafe(STATUS_TOPIC, {"event": "profile", "profile": name})
        return {"profile": name}

    def on_snapshot(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        prefix = _arg(content, "prefix", str, default="")
        since = _arg(content, "since", dict, default={})
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in since.values()):
            raise BadRequest("field 'since' must map topics to integers")
        return {"epoch": self.epoch, **self.history.snapshot(prefix, since)}

    def on_sync_probe(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Publish one event on `sync.<token>`: tells a subscriber its subscription is live."""
        token = _arg(content, "token", str, required=True)
        self.publish(f"sync.{token[:64]}", {})
        return {}

    def on_event_burst(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Publish `count` events on `bench.<name>`: measures and tests event delivery."""
        count = _arg(content, "count", int, default=1000)
        size = _arg(content, "size", int, default=16)
        name = _arg(content, "name", str, default=proto.new_id()[:8])
        if not 0 < count <= 1_000_000 or not 0 <= size <= 65536:
            raise BadRequest("count must be in 1..1000000 and size in 0..65536")
        topic, pad = f"bench.{name}", "x" * size
        for i in range(count):
            self.publish(topic, {"i": i, "pad": pad})
            if i % 1000 == 999:
                self._heartbeat_if_due()  # a long burst must not look like a dead daemon
        return {"topic": topic, "count": count}

    def on_job_submit(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        kind = _arg(content, "kind", str, required=True)
        params = _arg(content, "params", dict, default={})
        profile = _arg(content, "profile", str, default=self.profile)
        request_id = _arg(content, "request_id", str)
        for key, value in params.items():
            # Params become `--key value` flags of the recipe's command line.
            if not PARAM_NAME.fullmatch(key) or not isinstance(value, (str, int, float, bool)):
                raise BadRequest(f"job param {key[:40]!r}: names are lower_snake_case and "
                                 "values are strings, numbers or booleans")
        if isinstance(params.get("adapter"), str) and JOB_REF.fullmatch(params["adapter"]):
            params["adapter"] = self._resolve_adapter(params["adapter"])["path"]
        job_kind(kind).command({"params": {}, "profile": profile, "run_dir": "", "resume": False})
        job, created = self.store.submit(kind, profile, dict(params), request_id,
                                         self.settings.max_queue)
        if created:
            JobLog(Path(job["run_dir"])).append(f"{time.strftime('%F %T')} [daemon] queued "
                                                f"{kind} with {params}")
            self._publish_state(job["id"], "queued")
            self._schedule()
            job = self.store.get(job["id"])
        return {"job": job, "created": created}

    def on_job_list(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        state = _arg(content, "state", str)
        limit = _arg(content, "limit", int, default=100)
        return {"jobs": self.store.list(state, max(1, min(limit, 1000)))}

    def on_job_get(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        return {"job": self.store.get(_arg(content, "id", int, required=True))}

    def on_job_cancel(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        job = self.store.get(_arg(content, "id", int, required=True))
        if job["state"] in ("queued", "interrupted"):
            self.store.update(job["id"], state="cancelled", finished=time.time())
            self._publish_state(job["id"], "cancelled")
        elif job["state"] == "running" and job["id"] in self.running:
            self.cancelling.add(job["id"])
            self.running[job["id"]].terminate()
        return {"job": self.store.get(job["id"])}

    def on_job_logs(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        job = self.store.get(_arg(content, "id", int, required=True))
        offset = max(0, _arg(content, "offset", int, default=0))
        limit = max(1, min(_arg(content, "limit", int, default=200), 5000))
        return JobLog(Path(job["run_dir"])).read(offset, limit)

    def on_chat(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        chat_id = _arg(content, "chat_id", str, default=proto.new_id())
        if chat_id in self.recent_chats:  # a retried request: the chat already exists
            return {"chat_id": chat_id, "topic": f"chat.{chat_id}.token", "created": False}
        messages = _arg(content, "messages", list)
        if messages is None:
            messages = [{"role": "user", "content": _arg(content, "prompt", str, required=True)}]
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                   and isinstance(m.get("role"), str) for m in messages):
            raise BadRequest("messages must be a non-empty list of {role, content} strings")
        options = {k: content[k] for k in ("max_tokens", "temperature", "top_p", "seed")
                   if k in content}
        for key in ("max_tokens", "seed"):
            _arg(options, key, int)
        for key in ("temperature", "top_p"):
            _arg(options, key, (int, float))
        rag_k = _arg(content, "rag_k", int, default=0)
        if not 0 <= rag_k <= 20:
            raise BadRequest("field 'rag_k' is the number of scenes to retrieve, 0 to 20")
        if rag_k:
            options["rag_k"] = rag_k
            memory = _arg(content, "memory", str, default="default")
            if not PARAM_NAME.fullmatch(memory):
                raise BadRequest("field 'memory' names a memory under the state dir "
                                 "(lower_snake)")
            options["memory"] = memory
        adapter = _arg(content, "adapter", str)
        if _arg(content, "route", bool, default=False):
            if adapter and adapter != "base":
                raise BadRequest("give either 'adapter' or 'route', not both")
            options["route"] = True
        elif adapter and adapter != "base":
            options["adapter"] = self._resolve_adapter(adapter)
        self.recent_chats[chat_id] = msg.header["session"]
        while len(self.recent_chats) > 10_000:
            self.recent_chats.popitem(last=False)
        chat = self.models.submit(Chat(chat_id, msg.header["session"], messages, options))
        return {"chat_id": chat.chat_id, "topic": chat.topic, "created": True}

    def on_chat_cancel(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        return {"cancelled": self.models.cancel(_arg(content, "chat_id", str, required=True))}

    def on_tokenize(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Token ids and pieces of `text` under a profile's hypertokenizer (cached per profile)."""
        text = _arg(content, "text", str, required=True)
        profile_name = _arg(content, "profile", str, default=self.profile)
        _engine("engine.tokenizer", "tokenizer tests")
        tokenizer = services.hypertokenizer(profile_name)
        ids = tokenizer.encode_text(text)
        return {"ids": ids, "pieces": tokenizer.pieces(ids), "count": len(ids),
                "hypertoken_ids": [i for i in ids if tokenizer.is_hypertoken_id(i)]}

    def on_memory_search(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Scenes nearest to `query` in the scene memory under the daemon's state dir."""
        query = _arg(content, "query", str, required=True)
        k = _arg(content, "k", int, default=5)
        if not 1 <= k <= 1000:
            raise BadRequest("k must be within 1..1000")
        filters = {}
        for key, kind in (("register", str), ("doc", str), ("level", int)):
            value = content.get(key)
            values = value if isinstance(value, list) else [value] if value is not None else []
            if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
                raise BadRequest(f"field '{key}' must be a {kind.__name__} or a list of them")
            if values:
                filters[key] = values
        memory = _arg(content, "memory", str, default="default")
        if not PARAM_NAME.fullmatch(memory):
            raise BadRequest("field 'memory' names a memory under the state dir (lower_snake)")
        profile = _arg(content, "profile", str, default=self.profile)
        _engine("engine.memory", "scene memory search")
        result = services.memory_search(profile, self.dirs.state, query, k, filters, memory)
        # `results` is engine.memory's SearchResult.to_dict() shape, as front ends read it.
        return {**result, "results": {"hits": result["hits"], "hint": result["hint"]}}

    def on_route(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """The router's decision for `prompt` (scores, adapter or base/mix), or a hint."""
        prompt = _arg(content, "prompt", str, required=True)
        profile = _arg(content, "profile", str, default=self.profile)
        _engine("engine.routing", "adapter routing")
        return services.route(profile, prompt)

    def on_tokenizer_suite(self, content: dict[str, Any], msg: proto.Message
                           ) -> dict[str, Any]:
        """engine.tokenizer's edge-case suite on the profile's hypertokenizer."""
        profile = _arg(content, "profile", str, default=self.profile)
        _engine("engine.tokenizer", "tokenizer tests")
        return services.tokenizer_suite(profile)

    def on_ab_rating(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Keep a person's A/B judgement: `{prompt, answers, rating}` appended as JSONL."""
        prompt = _arg(content, "prompt", str, required=True)
        answers = _arg(content, "answers", (list, dict), required=True)
        rating = content.get("rating")
        if rating is None or not isinstance(rating, (str, int, float, dict, list)):
            raise BadRequest("field 'rating' is required: a string, number, list or object")
        record = {"prompt": prompt, "answers": answers, "rating": rating,
                  "profile": _arg(content, "profile", str, default=self.profile)}
        for key in ("adapters", "note", "chat_ids"):
            if key in content:
                record[key] = content[key]
        return services.save_ab_rating(self.dirs.state, record)

    def on_adapters(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Adapters loaded on the chat model, and known ones (succeeded train jobs)."""
        known = []
        for job in self.store.list("succeeded", limit=1000):
            adapter_dir = (job.get("result") or {}).get("adapter_dir")
            if job["kind"] == "train" and adapter_dir and Path(adapter_dir).is_dir():
                known.append({"name": f"job-{job['id']}", "ref": f"job:{job['id']}",
                              "job": job["id"], "path": adapter_dir, "profile": job["profile"],
                              "final_loss": job["result"].get("final_loss"),
                              "finished": job["finished"]})
        status = self.models.status()
        return {"loaded": self.models.loaded_adapters(), "known": known,
                "active": status["active_adapter"], "model_loaded": status["loaded"] is not None,
                "profile": status["profile"]}

    def on_job_resume(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        """Queue a failed, cancelled or interrupted job again, from its checkpoint.

        Without a checkpoint it is refused unless `restart` is true (then it starts over).
        """
        job = self.store.get(_arg(content, "id", int, required=True))
        restart = _arg(content, "restart", bool, default=False)
        if job["state"] not in RESUMABLE:
            raise BadRequest(f"job {job['id']} is {job['state']}: only "
                             f"{', '.join(RESUMABLE)} jobs can be resumed")
        if not job["checkpoint"] and not restart:
            raise BadRequest(f"job {job['id']} has no checkpoint to resume from",
                             hint="send restart=true to run it again from the start")
        resume = bool(job["checkpoint"])
        self.store.update(job["id"], state="queued", resume=int(resume), finished=None,
                          pid=None, error=None)
        JobLog(Path(job["run_dir"])).append(
            f"{time.strftime('%F %T')} [daemon] queued again "
            + (f"to resume from {job['checkpoint']}" if resume else "to restart"))
        self._publish_state(job["id"], "queued", resume=resume)
        self._schedule()
        return {"job": self.store.get(job["id"]), "resume": resume}

    def _resolve_adapter(self, spec: str) -> dict[str, str]:
        """A chat's adapter: "job:ID" (a succeeded train job), a PEFT dir or GGUF LoRA path, or
        the name of an adapter already loaded. Returns `{name, path?}`."""
        match = JOB_REF.fullmatch(spec)
        if match:
            job = self.store.get(int(match.group(1)))
            adapter_dir = (job.get("result") or {}).get("adapter_dir")
            if job["state"] != "succeeded" or not adapter_dir:
                raise BadRequest(f"job {job['id']} ({job['kind']}, {job['state']}) has no "
                                 "adapter", hint="use a succeeded train job")
            return {"name": f"job-{job['id']}", "path": adapter_dir}
        path = Path(spec).expanduser()
        if "/" in spec or path.exists():
            if not path.exists():
                raise BadRequest(f"adapter {spec} does not exist")
            path = path.resolve()
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:6]
            # PEFT adapter names become module keys: no dots or slashes.
            stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.name)[:40] or "adapter"
            return {"name": f"{stem}-{digest}", "path": str(path)}
        return {"name": spec}

    def on_shutdown(self, content: dict[str, Any], msg: proto.Message) -> dict[str, Any]:
        self.request_stop()
        return {"stopping": True, "running_jobs": len(self.running)}

    # --- jobs -----------------------------------------------------------------------------------

    def _publish_state(self, job_id: int, state: str, **extra: Any) -> None:
        self._refresh_job_counts()
        self.publish(f"job.{job_id}.progress", {"event": "state", "state": state, **extra})
        self.publish(STATUS_TOPIC, {"event": "job", "id": job_id, "state": state})

    def _schedule(self) -> None:
        if self.stopping:
            return
        heavy = sum(1 for p in self.running.values() if getattr(p, "heavy", False))
        light = len(self.running) - heavy
        for job in self.store.next_queued():
            if job["heavy"] and heavy >= self.settings.heavy_jobs:
                continue
            if not job["heavy"] and light >= self.settings.light_jobs:
                continue
            if self._start_job(job):
                heavy += job["heavy"]
                light += not job["heavy"]

    def _start_job(self, job: dict[str, Any]) -> bool:
        joblog = JobLog(Path(job["run_dir"]))
        try:
            argv = job_kind(job["kind"]).command(job)
        except HyperlexError as exc:
            self.store.update(job["id"], state="failed", finished=time.time(), error=exc.message)
            self._publish_state(job["id"], "failed", error=exc.message)
            return False
        joblog.append(f"{time.strftime('%F %T')} [daemon] start: {' '.join(argv)}")
        proc = JobProcess(job["id"], argv, Path(job["run_dir"]), self._post_job_item)
        proc.heavy = job["heavy"]  # type: ignore[attr-defined]
        self.running[job["id"]] = proc
        self.store.update(job["id"], state="running", started=time.time(), pid=proc.pid,
                          attempts=job["attempts"] + 1)
        self._publish_state(job["id"], "running", resume=job["resume"])
        return True

    def _post_job_item(self, item: tuple[str, int, Any]) -> None:
        self.inbox.put(item)
        self._wake()

    def _on_job_item(self, kind: str, job_id: int, payload: Any) -> None:
        stamp = time.strftime("%F %T")
        proc = self.running.get(job_id)
        if kind == "event" and proc is not None:  # the hot path: no database read per step
            self._on_job_event(job_id, payload, JobLog(Path(proc.run_dir)), stamp)
            return
        job = self.store.get(job_id)
        joblog = JobLog(Path(job["run_dir"]))
        if kind == "event":
            self._on_job_event(job_id, payload, joblog, stamp)
        elif kind == "exit":
            self._on_job_exit(job, int(payload), joblog, stamp)

    def _on_job_event(self, job_id: int, event: dict[str, Any], joblog: JobLog,
                      stamp: str) -> None:
        name = event["event"]
        if name == "log":
            joblog.append(f"{stamp} {event.get('message', '')}")
            self.publish(f"job.{job_id}.log", {"lines": [str(event.get("message", ""))]})
            return
        self.publish(f"job.{job_id}.progress", event)
        if name in ("step", "progress"):
            now = time.monotonic()
            if now - self.last_progress_write.get(job_id, 0.0) > 0.5:
                self.store.update(job_id, progress=event)
                self.last_progress_write[job_id] = now
        elif name == "checkpoint":
            self.store.update(job_id, checkpoint=str(event.get("path")), progress=event)
            joblog.append(f"{stamp} [daemon] checkpoint at step {event.get('step')}: "
                          f"{event.get('path')}")
        elif name == "done":
            self.store.update(job_id, result=event)

    def _on_job_exit(self, job: dict[str, Any], rc: int, joblog: JobLog, stamp: str) -> None:
        job_id = job["id"]
        self.running.pop(job_id, None)
        self.last_progress_write.pop(job_id, None)
        error = None
        if job_id in self.cancelling:
            state = "cancelled"
            self.cancelling.discard(job_id)
        elif self.stopping:
            state = "interrupted"
        elif rc == 0:
            state = "succeeded"
        else:
            state = "failed"
            tail = joblog.read(max(0, joblog.read(0, 1)["total"] - 3), 3)["lines"]
            error = f"exit code {rc}" + (f": {tail[-1]}" if tail else "")
        self.store.update(job_id, state=state, finished=time.time(), error=error)
        joblog.append(f"{stamp} [daemon] {state} (exit code {rc})")
        self._publish_state(job_id, state, exit_code=rc, **({"error": error} if error else {}))
        if state in FINAL_STATES:
            log.info("job %s %s", job_id, state)
        self._schedule()


def _engine(module: str, purpose: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            raise NotAvailableError(f"{purpose} is not available: {module} is not part of "
                                    "this build") from None
        raise
