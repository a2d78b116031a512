"""The one client library for hyperlexd: the CLI, the console and scripts all use it.

- `Client` (blocking) and `AsyncClient` (asyncio, for Textual) have one method per request; each
  returns the reply's content, raises `DaemonError` for an error reply and `TimeoutError` when no
  reply comes.
- Requests that are safe to repeat are retried the Lazy Pirate way (drop the socket, reconnect,
  resend). `job_submit` and `chat` carry a client-chosen id, so a retry never runs anything twice.
- `events()` returns a stream of `(topic, seq, data)` that detects gaps, resyncs from a snapshot,
  watches heartbeats and reconnects with backoff.
- `connect(ssh="user@host")` reaches a remote daemon through an OpenSSH tunnel (see daemon.ssh).

It knows nothing of the console.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from daemon import protocol as proto
from daemon.connection import ConnectionInfo, ensure_keypair, load_keypair, read_connection_file
from daemon.events import HEARTBEAT_TOPIC
from engine.errors import HyperlexError

# Requests that may be sent twice without harm (job_submit and chat: thanks to their ids).
IDEMPOTENT = {"hello", "status", "profile_list", "profile_use", "job_submit", "job_list",
              "job_get", "job_cancel", "job_logs", "chat", "chat_cancel", "tokenize",
              "memory_search", "route", "snapshot", "sync_probe", "adapters",
              "tokenizer_suite"}
# Requests whose first call may load a model or an index: they get this long per try.
SLOW_TIMEOUT_S = 120.0
# How long a new subscription waits for its sync probe before probing again (doubles up to 1 s).
SYNC_WINDOW_S = 0.1


class DaemonError(HyperlexError):
    """The daemon answered with an error; `type` is its error type (`Busy`, `BadRequest`...)."""

    title = "daemon error"

    def __init__(self, error: dict[str, Any]):
        super().__init__(str(error.get("message", "unknown error")), hint=error.get("hint"))
        self.type = str(error.get("type", "Error"))


class DaemonAuthError(HyperlexError):
    """A reply failed its signature check: the client holds the wrong key."""

    title = "daemon authentication failed"


@dataclass
class Event:
    """One event from the daemon."""

    topic: str
    seq: int
    data: dict[str, Any]


def _curve_options(sock: zmq.Socket, info: ConnectionInfo, client_secret: Path | None) -> None:
    if not info.curve_server_key:
        return
    secret_path = client_secret or ensure_keypair("local")[1]
    public, secret = load_keypair(Path(secret_path))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = info.curve_server_key.encode()


def _resolve(connection: ConnectionInfo | str | Path | None) -> ConnectionInfo:
    if isinstance(connection, ConnectionInfo):
        return connection
    return read_connection_file(connection)


class _Requests(abc.ABC):
    """One method per request type; `_call` is blocking or async in the subclasses."""

    @abc.abstractmethod
    def _call(self, verb: str, content: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one request; `Client` waits for the reply, `AsyncClient` returns a coroutine."""

    def hello(self) -> Any:
        """Negotiate the protocol version; returns the daemon's version, epoch and endpoints."""
        return self._call("hello", {"versions": list(proto.SUPPORTED_VERSIONS)})

    def status(self) -> Any:
        """The daemon's state: pid, profile, job counts, loaded model."""
        return self._call("status", {})

    def profile_list(self) -> Any:
        return self._call("profile_list", {})

    def profile_use(self, name: str) -> Any:
        """Switch profile: loaded models are dropped and load lazily from the new profile."""
        return self._call("profile_use", {"name": _check(name, str, "name")})

    def job_submit(self, kind: str, params: dict[str, Any] | None = None,
                   profile: str | None = None, request_id: str | None = None) -> Any:
        """Queue a job (`train`, `eval`, `export`, `scenes`, `memory-add`, `selftest`).

        The request id makes retries safe: the daemon returns the job it already queued.
        """
        content = {"kind": _check(kind, str, "kind"), "params": dict(params or {}),
                   "request_id": request_id or proto.new_id()}
        if profile:
            content["profile"] = profile
        return self._call("job_submit", content)

    def job_list(self, state: str | None = None, limit: int = 100) -> Any:
        return self._call("job_list", {"state": state, "limit": limit})

    def job_get(self, job_id: int) -> Any:
        return self._call("job_get", {"id": _check(job_id, int, "job_id")})

    def job_cancel(self, job_id: int) -> Any:
        """Cancel: a queued job at once; a running one gets SIGTERM, then SIGKILL."""
        return self._call("job_cancel", {"id": _check(job_id, int, "job_id")})

    def job_logs(self, job_id: int, offset: int = 0, limit: int = 200) -> Any:
        return self._call("job_logs", {"id": _check(job_id, int, "job_id"), "offset": offset,
                                       "limit": limit})

    def chat(self, prompt: str | None = None, messages: list[dict[str, str]] | None = None,
             chat_id: str | None = None, **options: Any) -> Any:
        """Start a chat; tokens arrive as events on the returned `topic`."""
        if (prompt is None) == (messages is None):
            raise ValueError("give either prompt or messages")
        content: dict[str, Any] = {"chat_id": chat_id or proto.new_id(), **options}
        content.update({"prompt": prompt} if prompt is not None else {"messages": messages})
        return self._call("chat", content)

    def chat_cancel(self, chat_id: str) -> Any:
        return self._call("chat_cancel", {"chat_id": chat_id})

    def tokenize(self, text: str, profile: str | None = None) -> Any:
        """Token ids and pieces of `text` under the profile's hypertokenizer."""
        content = {"text": _check(text, str, "text")}
        if profile:
            content["profile"] = profile
        return self._call("tokenize", content)

    def memory_search(self, query: str, k: int = 5, **filters: Any) -> Any:
        """Nearest scenes: `{hits: [{scene_id, score, scene}], hint, memory, scenes}`.

        Filters: `register`, `doc`, `level` (a value or a list), `memory` (a name), `profile`.
        """
        return self._call("memory_search", {"query": _check(query, str, "query"), "k": k,
                                            **filters}, timeout=SLOW_TIMEOUT_S)

    def route(self, prompt: str, profile: str | None = None) -> Any:
        """The router's decision: `{route: {register, scores, mode, adapter, ...}|None, hint}`."""
        content = {"prompt": _check(prompt, str, "prompt")}
        if profile:
            content["profile"] = profile
        return self._call("route", content, timeout=SLOW_TIMEOUT_S)

    def adapters(self) -> Any:
        """`{loaded: [{name, path, active}], known: [{name, ref, job, path, ...}], active,
        model_loaded, profile}`."""
        return self._call("adapters", {})

    def job_resume(self, job_id: int, restart: bool = False) -> Any:
        """Queue a failed/cancelled/interrupted job again from its checkpoint: `{job, resume}`."""
        return self._call("job_resume", {"id": _check(job_id, int, "job_id"),
                                         "restart": restart})

    def ab_rating(self, prompt: str, answers: list[Any] | dict[str, Any], rating: Any,
                  **extra: Any) -> Any:
        """Store an A/B judgement in the daemon's state dir: `{saved, path, count}`."""
        return self._call("ab_rating", {"prompt": _check(prompt, str, "prompt"),
                                        "answers": answers, "rating": rating, **extra})

    def tokenizer_suite(self, profile: str | None = None) -> Any:
        """The tokenizer edge-case suite: `{profile, tokenizer, cases, round_trip_rate, ...}`."""
        return self._call("tokenizer_suite", {"profile": profile} if profile else {},
                          timeout=SLOW_TIMEOUT_S)

    def snapshot(self, prefix: str = "", since: dict[str, int] | None = None) -> Any:
        """Retained events of topics under `prefix` after the seqs in `since`."""
        return self._call("snapshot", {"prefix": prefix, "since": since or {}})

    def sync_probe(self, token: str) -> Any:
        return self._call("sync_probe", {"token": token})

    def event_burst(self, count: int, size: int = 16, name: str | None = None) -> Any:
        return self._call("event_burst", {"count": count, "size": size,
                                          **({"name": name} if name else {})})

    def shutdown(self) -> Any:
        """Ask the daemon to stop gracefully (running jobs checkpoint first)."""
        return self._call("shutdown", {})


def _check(value: Any, kind: type, name: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{name} must be {kind.__name__}, got {type(value).__name__}")
    return value


class _Base(_Requests):
    def __init__(self, connection: ConnectionInfo | str | Path | None = None, *,
                 timeout: float = 10.0, retries: int = 3, client_secret: Path | None = None,
                 tunnel: Any = None):
        self.info = _resolve(connection)
        self.session = proto.Session(self.info.key_bytes)
        self.timeout = timeout
        self.retries = retries
        self.client_secret = client_secret
        self.tunnel = tunnel

    def _new_socket(self, ctx: zmq.Context, kind: int, endpoint: str,
                    rcvhwm: int = 200_000) -> zmq.Socket:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME_BYTES)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        _curve_options(sock, self.info, self.client_secret)
        sock.connect(endpoint)
        return sock

    def _decode_reply(self, frames: list[bytes], msg_id: str) -> dict[str, Any] | None:
        """The reply's content when `frames` answer `msg_id`; None for a stale reply."""
        try:
            msg = self.session.deserialize(frames)
        except proto.ProtocolError as exc:
            if exc.kind == "BadSignature":
                raise DaemonAuthError("the daemon's reply failed the signature check: this "
                                      "client holds the wrong key",
                                      hint="read the key from the daemon's connection file") \
                    from None
            raise DaemonError({"type": exc.kind, "message": exc.message}) from None
        if msg.parent_header.get("msg_id") != msg_id:
            return None
        return msg.content

    @staticmethod
    def _result(content: dict[str, Any]) -> dict[str, Any]:
        if content.get("status") != "ok":
            raise DaemonError(content.get("error") or {"message": "malformed reply"})
        return content


class Client(_Base):
    """A blocking client.

    Args:
        connection: a ConnectionInfo, a connection file path, or None for this home's daemon.
        timeout: seconds to wait for each reply.
        retries: how many times an idempotent request is resent after a timeout.
        client_secret: a CURVE `.key_secret` certificate for TCP daemons (default: `local`).
    """

    def __init__(self, connection: ConnectionInfo | str | Path | None = None, **kwargs: Any):
        super().__init__(connection, **kwargs)
        self.ctx = zmq.Context()
        self.sock = self._new_socket(self.ctx, zmq.DEALER, self.info.request)

    def _reconnect(self) -> None:
        self.sock.close(0)
        self.sock = self._new_socket(self.ctx, zmq.DEALER, self.info.request)

    def _call(self, verb: str, content: dict[str, Any], timeout: float | None = None) -> Any:
        return self._result(self.request(f"{verb}_request", content, timeout))

    def request(self, msg_type: str, content: dict[str, Any],
                timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the reply's content (status ok or error).

        Raises:
            TimeoutError: no reply after the retries.
        """
        timeout = self.timeout if timeout is None else timeout
        verb = msg_type[: -len("_request")]
        attempts = 1 + (self.retries if verb in IDEMPOTENT else 0)
        msg_id = proto.new_id()
        for attempt in range(attempts):
            # Each try is a new message (fresh seq, so not a replay) answering the same id.
            _, frames = self.session.request(msg_type, content, msg_id=msg_id)
            self.sock.send_multipart(frames)
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not self.sock.poll(int(left * 1000) + 1):
                    break
                reply = self._decode_reply(self.sock.recv_multipart(), msg_id)
                if reply is not None:
                    return reply
            if attempt + 1 < attempts:
                self._reconnect()  # Lazy Pirate: a fresh socket drops whatever was stuck
        raise TimeoutError(f"no reply to {msg_type} from {self.info.request} after "
                           f"{attempts} tr{'y' if attempts == 1 else 'ies'} of {timeout:g} s")

    def events(self, *prefixes: str, liveness_s: float = 3.0,
               rcvhwm: int = 200_000, replay: bool = True) -> EventStream:
        """A gap-free stream of the events under `prefixes`, starting with what is retained.

        Args:
            prefixes: topic prefixes (`job.3.`, `chat.<id>.`); none means every topic.
            liveness_s: reconnect when no heartbeat came for this long.
            rcvhwm: events buffered before ZeroMQ drops (a drop shows as a gap and resyncs).
            replay: start with the retained events (True) or with the next new one (False:
                for a reader that loads the current state itself, as the console does).
        """
        return EventStream(self, list(prefixes), liveness_s=liveness_s, rcvhwm=rcvhwm,
                           replay=replay)

    def wait_job(self, job_id: int, timeout: float = 60.0, poll_s: float = 0.1) -> dict[str, Any]:
        """Block until a job reaches a final state (or `interrupted`); returns the job."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job_get(job_id)["job"]
            if job["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:g} s")
            time.sleep(poll_s)

    def chat_stream(self, prompt: str, timeout: float = 120.0, chat_id: str | None = None,
                    **options: Any) -> Iterator[Event]:
        """Run a chat and yield its events (`start`, `token`..., `done` or `error`).

        A caller that may cancel the chat before its `start` event picks the `chat_id` itself.
        """
        chat_id = chat_id or proto.new_id()
        with self.events(f"chat.{chat_id}.") as stream:
            self.chat(prompt, chat_id=chat_id, **options)
            deadline = time.monotonic() + timeout
            while True:
                event = stream.next(timeout=max(0.0, deadline - time.monotonic()))
                if event is None:
                    raise TimeoutError(f"chat {chat_id} gave no event for {timeout:g} s")
                yield event
                if event.data.get("event") in ("done", "error"):
                    return

    def close(self) -> None:
        """Close the client, its event streams and its SSH tunnel, if any."""
        self.ctx.destroy(linger=0)
        if self.tunnel is not None:
            self.tunnel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _probe_windows(timeout: float) -> Iterator[float]:
    """When to stop waiting for each sync probe's event, until `timeout` has passed.

    A probe sent before the subscription is live is lost, so each one gets a bounded window
    (SYNC_WINDOW_S, doubling to 1 s) and then another is sent. Other events may keep arriving
    meanwhile (a busy job streams every few ms): they are skipped, the snapshot that follows
    covers them.
    """
    deadline = time.monotonic() + timeout
    window = SYNC_WINDOW_S
    while time.monotonic() < deadline:
        yield min(deadline, time.monotonic() + window)
        window = min(window * 2, 1.0)


class _StreamState:
    """Per-topic sequence bookkeeping shared by the blocking and async event streams."""

    def __init__(self, prefixes: list[str], replay: bool = True):
        self.prefixes = prefixes or [""]
        # False: the first snapshot only marks where the stream starts (no retained events).
        self.replay = replay
        self.last: dict[str, int] = {}
        self.epoch: str | None = None
        self.pending: deque[Event] = deque()
        self.resyncs = 0
        self.gaps = 0
        self.truncated = 0  # resyncs that found events already dropped from the history

    def wants(self, topic: str) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)

    def subscribe(self, sock: Any) -> tuple[str, bytes]:
        """Subscribe `sock` to the prefixes, heartbeats and a fresh sync topic.

        Returns the sync probe's token and the topic its event arrives on.
        """
        token = proto.new_id()
        for prefix in [*self.prefixes, HEARTBEAT_TOPIC, f"sync.{token}"]:
            sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        return token, f"sync.{token}".encode()

    def apply_snapshot(self, reply: dict[str, Any]) -> bool:
        """Queue a snapshot page's new events; True when the daemon has more pages."""
        if self.epoch is not None and reply["epoch"] != self.epoch:
            self.last.clear()  # a new daemon: its seqs start again
        self.epoch = reply["epoch"]
        more = False
        for topic, part in sorted(reply["topics"].items()):
            if not part.get("complete", True) and topic in self.last:
                self.truncated += 1
            for item in part["events"]:
                if item["seq"] > self.last.get(topic, 0):
                    if self.replay:
                        self.pending.append(Event(topic, item["seq"], item["data"]))
                    self.last[topic] = item["seq"]
            more = more or bool(part.get("more"))
        return more

    def behind(self, heartbeat: dict[str, Any]) -> bool:
        """True when a heartbeat names a newer seq of a followed topic than we hold."""
        seqs = heartbeat.get("seqs") or {}
        return any(self.wants(t) and s > self.last.get(t, 0) for t, s in seqs.items())

    def classify(self, epoch: str, topic: str, seq: int) -> str:
        """`deliver`, `duplicate`, `gap` (resync needed) or `epoch` (daemon restarted)."""
        if self.epoch is not None and epoch != self.epoch:
            return "epoch"
        last = self.last.get(topic, 0)
        if seq <= last:
            return "duplicate"
        if seq == last + 1:
            self.last[topic] = seq
            return "deliver"
        self.gaps += 1
        return "gap"


class EventStream:
    """Blocking event stream with gap detection, snapshot resync and heartbeat liveness."""

    def __init__(self, client: Client, prefixes: list[str], liveness_s: float = 3.0,
                 rcvhwm: int = 200_000, replay: bool = True):
        self.client = client
        self.state = _StreamState(prefixes, replay)
        self.liveness_s = liveness_s
        self.rcvhwm = rcvhwm
        self.sock: zmq.Socket | None = None
        self.last_heard = time.monotonic()
        self.reconnects = 0
        self.connect()

    def connect(self) -> None:
        """Subscribe, make sure the subscription is live, then catch up from a snapshot."""
        self.sock = self.client._new_socket(self.client.ctx, zmq.SUB, self.client.info.events,
                                            rcvhwm=self.rcvhwm)
        token, wanted = self.state.subscribe(self.sock)
        synced = False
        for window_end in _probe_windows(self.client.timeout):
            try:
                self.client.sync_probe(token)
            except (TimeoutError, DaemonError):
                self.disconnect()
                raise
            while not synced:
                left = window_end - time.monotonic()
                if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                    break
                synced = self.sock.recv_multipart()[0] == wanted
            if synced:
                break
        if not synced:
            self.disconnect()
            raise TimeoutError("no events from the daemon: cannot subscribe")
        self.sock.setsockopt(zmq.UNSUBSCRIBE, f"sync.{token}".encode())
        try:
            self.resync()
        except (TimeoutError, DaemonError):
            self.disconnect()
            raise
        self.last_heard = time.monotonic()

    def resync(self) -> None:
        self.state.resyncs += 1
        for prefix in self.state.prefixes:
            more = True
            while more:
                since = {t: s for t, s in self.state.last.items() if t.startswith(prefix)}
                more = self.state.apply_snapshot(self.client.snapshot(prefix, since))
        self.state.replay = True  # from here on a resync fills gaps

    def disconnect(self) -> None:
        """Drop the subscription (as a network failure would); `connect()` resumes."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def next(self, timeout: float = 10.0) -> Event | None:
        """The next event in sequence, or None after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        backoff = 0.1
        while True:
            if self.state.pending:
                return self.state.pending.popleft()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.sock is not None and self.sock.poll(int(min(left, 0.5) * 1000) + 1):
                self._receive(self.sock.recv_multipart())
                continue
            if self.sock is None or time.monotonic() - self.last_heard > self.liveness_s:
                # Nothing buffered and no heartbeat: the daemon or the link went away.
                self.disconnect()
                try:
                    self.connect()
                    self.reconnects += 1
                    backoff = 0.1
                except (TimeoutError, DaemonError):
                    time.sleep(min(backoff, max(0.0, left)))
                    backoff = min(backoff * 2, 2.0)

    def _receive(self, frames: list[bytes]) -> None:
        self.last_heard = time.monotonic()
        try:
            msg = self.client.session.deserialize(frames, topic_frame=True)
        except proto.ProtocolError:
            return  # not signed with our key: ignore it
        topic = str(msg.header.get("topic", ""))
        if topic == HEARTBEAT_TOPIC:
            if (self.state.epoch and msg.header["session"] != self.state.epoch) \
                    or self.state.behind(msg.content):
                self.state.gaps += 1
                self.resync()  # the daemon restarted, or a topic's last events were lost
            return
        if not self.state.wants(topic):
            return
        verdict = self.state.classify(msg.header["session"], topic, msg.header["seq"])
        if verdict == "deliver":
            self.state.pending.append(Event(topic, msg.header["seq"], msg.content))
        elif verdict in ("gap", "epoch"):
            self.resync()

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.next()
            if event is None:
                return
            yield event

    def close(self) -> None:
        self.disconnect()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Base):
    """The asyncio client (for Textual workers): the same methods, awaited."""

    def __init__(self, connection: ConnectionInfo | str | Path | None = None, **kwargs: Any):
        super().__init__(connection, **kwargs)
        self.ctx = zmq.asyncio.Context()
        self.sock = self._new_socket(self.ctx, zmq.DEALER, self.info.request)
        self._lock = asyncio.Lock()

    async def _call(self, verb: str, content: dict[str, Any],
                    timeout: float | None = None) -> Any:
        return self._result(await self.request(f"{verb}_request", content, timeout))

    async def request(self, msg_type: str, content: dict[str, Any],
                      timeout: float | None = None) -> dict[str, Any]:
        """Send one request and await its reply's content. Raises TimeoutError."""
        timeout = self.timeout if timeout is None else timeout
        verb = msg_type[: -len("_request")]
        attempts = 1 + (self.retries if verb in IDEMPOTENT else 0)
        msg_id = proto.new_id()
        async with self._lock:  # one request in flight per socket keeps matching simple
            for attempt in range(attempts):
                _, frames = self.session.request(msg_type, content, msg_id=msg_id)
                await self.sock.send_multipart(frames)
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    if not await self.sock.poll(int(left * 1000) + 1):
                        break
                    reply = self._decode_reply(await self.sock.recv_multipart(), msg_id)
                    if reply is not None:
                        return reply
                if attempt + 1 < attempts:
                    self.sock.close(0)
                    self.sock = self._new_socket(self.ctx, zmq.DEALER, self.info.request)
        raise TimeoutError(f"no reply to {msg_type} after {attempts} tries of {timeout:g} s")

    async def events(self, *prefixes: str, liveness_s: float = 3.0,
                     replay: bool = True) -> AsyncEventStream:
        """The asyncio form of `Client.events` (same arguments, less `rcvhwm`)."""
        stream = AsyncEventStream(self, list(prefixes), liveness_s, replay=replay)
        await stream.connect()
        return stream

    def close(self) -> None:
        self.ctx.destroy(linger=0)
        if self.tunnel is not None:
            self.tunnel.close()


class AsyncEventStream:
    """The asyncio form of EventStream: `await stream.next()` or `async for event in stream`."""

    def __init__(self, client: AsyncClient, prefixes: list[str], liveness_s: float = 3.0,
                 replay: bool = True):
        self.client = client
        self.state = _StreamState(prefixes, replay)
        self.liveness_s = liveness_s
        self.sock: zmq.asyncio.Socket | None = None
        self.last_heard = time.monotonic()

    async def connect(self) -> None:
        self.sock = self.client._new_socket(self.client.ctx, zmq.SUB, self.client.info.events)
        token, wanted = self.state.subscribe(self.sock)
        synced = False
        for window_end in _probe_windows(self.client.timeout):
            await self.client.sync_probe(token)
            while not synced:
                left = window_end - time.monotonic()
                if left <= 0 or not await self.sock.poll(int(left * 1000) + 1):
                    break
                synced = (await self.sock.recv_multipart())[0] == wanted
            if synced:
                break
        if not synced:
            self.close()
            raise TimeoutError("no events from the daemon: cannot subscribe")
        await self.resync()
        self.last_heard = time.monotonic()

    async def resync(self) -> None:
        self.state.resyncs += 1
        for prefix in self.state.prefixes:
            more = True
            while more:
                since = {t: s for t, s in self.state.last.items() if t.startswith(prefix)}
                more = self.state.apply_snapshot(await self.client.snapshot(prefix, since))
        self.state.replay = True  # from here on a resync fills gaps

    async def next(self, timeout: float = 10.0) -> Event | None:
        deadline = time.monotonic() + timeout
        while True:
            if self.state.pending:
                return self.state.pending.popleft()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.sock is None or not await self.sock.poll(int(min(left, 0.5) * 1000) + 1):
                if self.sock is None or time.monotonic() - self.last_heard > self.liveness_s:
                    # Nothing buffered and no heartbeat: reconnect and resync.
                    self.close()
                    try:
                        await self.connect()
                    except (TimeoutError, DaemonError):
                        await asyncio.sleep(min(0.5, max(0.0, left)))
                continue
            frames = await self.sock.recv_multipart()
            self.last_heard = time.monotonic()
            try:
                msg = self.client.session.deserialize(frames, topic_frame=True)
            except proto.ProtocolError:
                continue
            topic = str(msg.header.get("topic", ""))
            if topic == HEARTBEAT_TOPIC:
                if (self.state.epoch and msg.header["session"] != self.state.epoch) \
                        or self.state.behind(msg.content):
                    self.state.gaps += 1
                    await self.resync()
                continue
            if not self.state.wants(topic):
                continue
            verdict = self.state.classify(msg.header["session"], topic, msg.header["seq"])
            if verdict == "deliver":
                self.state.pending.append(Event(topic, msg.header["seq"], msg.content))
            elif verdict in ("gap", "epoch"):
                await self.resync()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None


def connect(connection: ConnectionInfo | str | Path | None = None, *, ssh: str | None = None,
            asynchronous: bool = False, ssh_options: list[str] | None = None,
            remote_command: str = "hyperlexd --print-connection", **kwargs: Any) -> Any:
    """A client for this home's daemon, a connection file, or a remote daemon over SSH.

    Args:
        connection: connection info or file (ignored with `ssh`).
        ssh: `user@host` (anything `ssh` accepts, including a host alias from ~/.ssh/config).
        asynchronous: return an AsyncClient instead of a Client.
        ssh_options: extra arguments for `ssh` (for example `["-F", "config"]`).
        remote_command: prints the remote daemon's connection file.
    """
    tunnel = None
    if ssh:
        from daemon.ssh import SSHTunnel

        tunnel = SSHTunnel(ssh, ssh_options or [], remote_command)
        connection = tunnel.open()
    cls = AsyncClient if asynchronous else Client
    return cls(connection, tunnel=tunnel, **kwargs)
