"""The one client library for hyperlexd: the CLI, the console and scripts all use it.

- `AsyncClient` (asyncio, for Textual) and `Client` (blocking) have one method per request;
  each returns the reply's content, raises `DaemonError` for an error reply and `TimeoutError`
  when no reply comes.
- Requests that are safe to repeat are retried the Lazy Pirate way (drop the socket, reconnect,
  resend). `job_submit` and `chat` carry a client-chosen id, so a retry never runs anything twice.
- `events()` returns a stream of `(topic, seq, data)` that detects gaps, resyncs from a snapshot,
  watches heartbeats and reconnects with exponential backoff.
- `connect(ssh="user@host")` reaches a remote daemon through an OpenSSH tunnel (see daemon.ssh).

The client is written once, async-first: `AsyncClient` and `AsyncEventStream` hold all the
logic. `Client` and `EventStream` derive from them (as jupyter_client's blocking client does):
each blocking call runs the async one to completion on the client's own private event loop, in
the calling thread, or on a helper thread when the calling thread already runs a loop (a Textual
handler). A zmq.asyncio socket belongs to the loop that first uses it, so a `Client`'s sockets
are only ever touched while its private loop runs, and an `AsyncClient` must stay on one loop.
On that private loop nothing else waits, so the blocking client waits for a reply in ZeroMQ
itself (`wait_in_zmq`): the same code, without asyncio's reader callbacks on the hot path.

It knows nothing of the console.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import zmq
import zmq.asyncio

from daemon import api
from daemon import protocol as proto
from daemon.api import IDEMPOTENT, SLOW
from daemon.connection import ConnectionInfo, ensure_keypair, load_keypair, read_connection_file
from daemon.events import HEARTBEAT_TOPIC
from daemon.zmqio import recv_frames, send_frames
from engine.errors import HyperlexError

# --- What the client knows of each verb: read from daemon.api's request table. ---------------

# Requests whose first call may load a model or an index (the table's `slow` verbs) get this long
# per try.
SLOW_TIMEOUT_S = 120.0

# --- Event stream timing. --------------------------------------------------------------------

# How long a new subscription waits for its sync probe before probing again (doubles up to 1 s).
SYNC_WINDOW_S = 0.1
# A lost stream retries its reconnect after this long, doubling up to the cap: a daemon that is
# restarting gets a few quick tries, one that is gone is not hammered.
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 2.0
# The most events read off the socket in one go before `next` returns one (bounds latency).
DRAIN_BATCH = 1000

T = TypeVar("T")


def per_try_timeout(verb: str, default: float) -> float:
    """Seconds one try of `verb` waits for its reply, given the client's own timeout."""
    return SLOW_TIMEOUT_S if verb in SLOW else default


def tries(verb: str, retries: int) -> int:
    """How many times `verb` is sent at most: once, or 1 + retries when it is idempotent."""
    return 1 + (retries if verb in IDEMPOTENT else 0)


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


class _RequestMethods(abc.ABC):
    """One method per request verb, written once for both clients.

    Each method checks its arguments, builds the request content and hands it to `_call`:
    `AsyncClient._call` returns a coroutine (so the method is awaited), `Client._call` waits
    for the reply (so the method blocks). Per-verb timeouts and retries live in the table at
    the top of this module, not here.
    """

    @abc.abstractmethod
    def _call(self, verb: str, content: dict[str, Any]) -> Any:
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
        return self._call("profile_use", {"name": name})

    def job_submit(self, kind: str, params: dict[str, Any] | None = None,
                   profile: str | None = None, request_id: str | None = None) -> Any:
        """Queue a job (`train`, `eval`, `export`, `scenes`, `memory-add`, `selftest`).

        The request id makes retries safe: the daemon returns the job it already queued.
        """
        content = {"kind": kind, "params": dict(params or {}),
                   "request_id": request_id or proto.new_id()}
        if profile:
            content["profile"] = profile
        return self._call("job_submit", content)

    def job_list(self, state: str | None = None, limit: int = 100) -> Any:
        return self._call("job_list", {"state": state, "limit": limit})

    def job_get(self, job_id: int) -> Any:
        return self._call("job_get", {"id": job_id})

    def job_cancel(self, job_id: int) -> Any:
        """Cancel: a queued job at once; a running one gets SIGTERM, then SIGKILL."""
        return self._call("job_cancel", {"id": job_id})

    def job_logs(self, job_id: int, offset: int = 0, limit: int = 200) -> Any:
        return self._call("job_logs", {"id": job_id, "offset": offset,
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
        content = {"text": text}
        if profile:
            content["profile"] = profile
        return self._call("tokenize", content)

    def memory_search(self, query: str, k: int = 5, **filters: Any) -> Any:
        """Nearest scenes: `{hits: [{scene_id, score, scene}], hint, memory, scenes}`.

        Filters: `register`, `doc`, `level` (a value or a list), `memory` (a name), `profile`.
        """
        return self._call("memory_search", {"query": query, "k": k,
                                            **filters})

    def route(self, prompt: str, profile: str | None = None) -> Any:
        """The router's decision: `{route: {register, scores, mode, adapter, ...}|None, hint}`."""
        content = {"prompt": prompt}
        if profile:
            content["profile"] = profile
        return self._call("route", content)

    def adapters(self) -> Any:
        """`{loaded: [{name, path, active}], known: [{name, ref, job, path, ...}], active,
        model_loaded, profile}`."""
        return self._call("adapters", {})

    def job_resume(self, job_id: int, restart: bool = False) -> Any:
        """Queue a failed/cancelled/interrupted job again from its checkpoint: `{job, resume}`."""
        return self._call("job_resume", {"id": job_id,
                                         "restart": restart})

    def ab_rating(self, prompt: str, answers: list[Any] | dict[str, Any], rating: Any,
                  **extra: Any) -> Any:
        """Store an A/B judgement in the daemon's state dir: `{saved, path, count}`."""
        return self._call("ab_rating", {"prompt": prompt,
                                        "answers": answers, "rating": rating, **extra})

    def tokenizer_suite(self, profile: str | None = None) -> Any:
        """The tokenizer edge-case suite: `{profile, tokenizer, cases, round_trip_rate, ...}`."""
        return self._call("tokenizer_suite", {"profile": profile} if profile else {})

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


# --- The client, written once: asyncio. ------------------------------------------------------

class AsyncClient(_RequestMethods):
    """The asyncio client (for Textual workers): one awaitable method per request.

    Args:
        connection: a ConnectionInfo, a connection file path, or None for this home's daemon.
        timeout: seconds to wait for each reply.
        retries: how many times an idempotent request is resent after a timeout.
        client_secret: a CURVE `.key_secret` certificate for TCP daemons (default: `local`).
        tunnel: an open SSH tunnel that `close()` closes too.
        context: an asyncio context owned by someone else (the blocking client); `close()` then
            closes only this client's sockets and leaves the context to its owner.
    """

    def __init__(self, connection: ConnectionInfo | str | Path | None = None, *,
                 timeout: float = 10.0, retries: int = 3, client_secret: Path | None = None,
                 tunnel: Any = None, context: zmq.asyncio.Context | None = None):
        self.info = _resolve(connection)
        self.session = proto.Session(self.info.key_bytes)
        self.timeout = timeout
        self.retries = retries
        self.client_secret = client_secret
        self.tunnel = tunnel
        self._owns_ctx = context is None
        self.ctx = zmq.asyncio.Context() if context is None else context
        self._sockets: weakref.WeakSet[zmq.asyncio.Socket] = weakref.WeakSet()
        self.sock = self._new_socket(zmq.DEALER, self.info.request)
        # One request in flight per socket keeps reply matching simple.
        self._lock = asyncio.Lock()
        # Set by the blocking `Client`: this client runs on a private loop where nothing else
        # waits, so a reply is waited for in ZeroMQ itself rather than through asyncio's
        # reader callbacks (a round trip through them cost about 0.1-0.3 ms more per request).
        self.wait_in_zmq = False
        self._plain_sock: tuple[zmq.asyncio.Socket, zmq.Socket] | None = None

    def _new_socket(self, kind: int, endpoint: str, rcvhwm: int = 200_000) -> zmq.asyncio.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME_BYTES)
        if kind == zmq.SUB:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        _curve_options(sock, self.info, self.client_secret)
        sock.connect(endpoint)
        self._sockets.add(sock)
        return sock

    async def _call(self, verb: str, content: dict[str, Any]) -> Any:
        # The daemon's own request types check the content before it is sent: a wrong argument
        # fails here with the BadRequest the daemon would answer, and costs no round trip.
        try:
            api.parse(api.VERBS[verb].request, content)
        except api.BadRequest as exc:
            raise DaemonError({"type": "BadRequest", "message": exc.message}) from None
        reply = await self.request(f"{verb}_request", content,
                                   per_try_timeout(verb, self.timeout))
        if reply.get("status") != "ok":
            raise DaemonError(reply.get("error") or {"message": "malformed reply"})
        return reply

    async def request(self, msg_type: str, content: dict[str, Any],
                      timeout: float | None = None) -> dict[str, Any]:
        """Send one request and return the reply's content (status ok or error).

        Raises:
            TimeoutError: no reply after the retries.
        """
        timeout = self.timeout if timeout is None else timeout
        attempts = tries(msg_type[: -len("_request")], self.retries)
        msg_id = proto.new_id()
        async with self._lock:
            for attempt in range(attempts):
                # Each try is a new message (fresh seq, so not a replay) answering the same id.
                _, frames = self.session.request(msg_type, content, msg_id=msg_id)
                deadline = time.monotonic() + timeout
                sent = await self._send(frames, timeout)
                while sent and (left := deadline - time.monotonic()) > 0:
                    frames = await self._receive(int(left * 1000) + 1)
                    if frames is None:
                        break
                    reply = self._decode_reply(frames, msg_id)
                    if reply is not None:
                        return reply
                if attempt + 1 < attempts:
                    # Lazy Pirate: a fresh socket drops whatever was stuck.
                    self.sock.close(0)
                    self.sock = self._new_socket(zmq.DEALER, self.info.request)
        raise TimeoutError(f"no reply to {msg_type} from {self.info.request} after "
                           f"{attempts} tr{'y' if attempts == 1 else 'ies'} of {timeout:g} s")

    def _plain(self) -> zmq.Socket:
        """The request socket as a plain ZeroMQ socket (for `wait_in_zmq`)."""
        if self._plain_sock is None or self._plain_sock[0] is not self.sock:
            self._plain_sock = (self.sock, zmq.Socket.shadow(self.sock.underlying))
        return self._plain_sock[1]

    async def _send(self, frames: list[bytes], timeout: float) -> bool:
        """Send one request; False when it could not leave within `timeout` seconds (no peer
        takes it, or the queue to it is full): the try then counts as unanswered."""
        if self.wait_in_zmq:
            try:
                send_frames(self._plain(), frames)
                return True
            except zmq.Again:
                pass  # over the high-water mark: wait for room the asyncio way
        try:
            await asyncio.wait_for(self.sock.send_multipart(frames), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _receive(self, timeout_ms: int) -> list[bytes] | None:
        """The next message on the request socket, or None after `timeout_ms`."""
        if not self.wait_in_zmq:
            if not await self.sock.poll(timeout_ms):
                return None
            return await self.sock.recv_multipart()
        plain = self._plain()
        if not zmq.zmq_poll([(plain, zmq.POLLIN)], timeout_ms):
            return None
        return recv_frames(plain)

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

    async def events(self, *prefixes: str, liveness_s: float = 3.0, rcvhwm: int = 200_000,
                     replay: bool = True) -> AsyncEventStream:
        """A gap-free stream of the events under `prefixes`, starting with what is retained.

        Args:
            prefixes: topic prefixes (`job.3.`, `chat.<id>.`); none means every topic.
            liveness_s: reconnect when no heartbeat came for this long.
            rcvhwm: events buffered before ZeroMQ drops (a drop shows as a gap and resyncs).
            replay: start with the retained events (True) or with the next new one (False:
                for a reader that loads the current state itself, as the console does).
        """
        stream = AsyncEventStream(self, list(prefixes), liveness_s, rcvhwm=rcvhwm, replay=replay)
        await stream.connect()
        return stream

    async def wait_job(self, job_id: int, timeout: float = 60.0,
                       poll_s: float = 0.1) -> dict[str, Any]:
        """Wait until a job reaches a final state (or `interrupted`); returns the job."""
        deadline = time.monotonic() + timeout
        while True:
            job = (await self.job_get(job_id))["job"]
            if job["state"] in ("succeeded", "failed", "cancelled", "interrupted"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:g} s")
            await asyncio.sleep(poll_s)

    async def chat_stream(self, prompt: str, timeout: float = 120.0, chat_id: str | None = None,
                          **options: Any) -> AsyncIterator[Event]:
        """Run a chat and yield its events (`start`, `token`..., `done` or `error`).

        A caller that may cancel the chat before its `start` event picks the `chat_id` itself.
        """
        chat_id = chat_id or proto.new_id()
        async with await self.events(f"chat.{chat_id}.") as stream:  # subscribed before asking
            await self.chat(prompt, chat_id=chat_id, **options)
            deadline = time.monotonic() + timeout
            while True:
                event = await stream.next(timeout=max(0.0, deadline - time.monotonic()))
                if event is None:
                    raise TimeoutError(f"chat {chat_id} gave no event for {timeout:g} s")
                yield event
                if event.data.get("event") in ("done", "error"):
                    return

    def close(self) -> None:
        """Close the client, its event streams and its SSH tunnel, if any."""
        if self._owns_ctx:
            self.ctx.destroy(linger=0)
        else:
            for sock in list(self._sockets):
                sock.close(0)
        if self.tunnel is not None:
            self.tunnel.close()


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


class AsyncEventStream:
    """The event stream, written once: `await stream.next()` or `async for event in stream`.

    Gap detection, snapshot resync, the sync probe, heartbeat liveness and reconnecting with
    backoff all live here; `EventStream` runs these same coroutines from blocking code.
    """

    def __init__(self, client: AsyncClient, prefixes: list[str], liveness_s: float = 3.0, *,
                 rcvhwm: int = 200_000, replay: bool = True):
        self.client = client
        self.state = _StreamState(prefixes, replay)
        self.liveness_s = liveness_s
        self.rcvhwm = rcvhwm
        self.sock: zmq.asyncio.Socket | None = None
        self.last_heard = time.monotonic()
        self.reconnects = 0
        self._plain: tuple[zmq.asyncio.Socket, zmq.Socket] | None = None

    async def connect(self) -> None:
        """Subscribe, make sure the subscription is live, then catch up from a snapshot.

        On failure the half-made subscription is dropped again (`sock` is None) and the error
        raised: TimeoutError or DaemonError.
        """
        self.sock = sock = self.client._new_socket(zmq.SUB, self.client.info.events,
                                                   rcvhwm=self.rcvhwm)
        try:
            token, wanted = self.state.subscribe(sock)
            await self._confirm(sock, token, wanted)
            sock.setsockopt(zmq.UNSUBSCRIBE, f"sync.{token}".encode())
            await self.resync()
        except BaseException:
            self.disconnect()
            raise
        self.last_heard = time.monotonic()

    async def _confirm(self, sock: zmq.asyncio.Socket, token: str, wanted: bytes) -> None:
        """Probe until the sync topic's event arrives: from then on nothing is missed."""
        for window_end in _probe_windows(self.client.timeout):
            await self.client.sync_probe(token)
            while (left := window_end - time.monotonic()) > 0 \
                    and await sock.poll(int(left * 1000) + 1):
                if (await sock.recv_multipart())[0] == wanted:
                    return
        raise TimeoutError("no events from the daemon: cannot subscribe")

    async def resync(self) -> None:
        """Fetch what the snapshot holds past our last seqs (every page, every prefix)."""
        self.state.resyncs += 1
        for prefix in self.state.prefixes:
            more = True
            while more:
                since = {t: s for t, s in self.state.last.items() if t.startswith(prefix)}
                more = self.state.apply_snapshot(await self.client.snapshot(prefix, since))
        self.state.replay = True  # from here on a resync fills gaps

    def disconnect(self) -> None:
        """Drop the subscription (as a network failure would); `connect()` resumes."""
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None
            self._plain = None

    async def next(self, timeout: float = 10.0) -> Event | None:
        """The next event in sequence, or None after `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        backoff = RECONNECT_FIRST_S
        while True:
            if self.state.pending:
                return self.state.pending.popleft()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.sock is not None and await self.sock.poll(int(min(left, 0.5) * 1000) + 1):
                await self._drain(self.sock)
                continue
            if self.sock is None or time.monotonic() - self.last_heard > self.liveness_s:
                # Nothing buffered and no heartbeat: the daemon or the link went away.
                self.disconnect()
                try:
                    await self.connect()
                    self.reconnects += 1
                    backoff = RECONNECT_FIRST_S
                except (TimeoutError, DaemonError):
                    await asyncio.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                    backoff = min(backoff * 2, RECONNECT_MAX_S)

    async def _drain(self, sock: zmq.asyncio.Socket) -> None:
        """Read what the socket holds, up to DRAIN_BATCH messages, without waiting.

        One wake-up per batch rather than per event: a burst costs one poll, not thousands.
        """
        # Read through a plain view of the socket: it is this loop's own thread, and a
        # non-blocking read needs no future (an asyncio read cost about 10 us an event).
        if self._plain is None or self._plain[0] is not sock:
            self._plain = (sock, zmq.Socket.shadow(sock.underlying))
        plain = self._plain[1]
        for _ in range(DRAIN_BATCH):
            try:
                frames = recv_frames(plain)
            except zmq.Again:
                return
            await self._receive(frames)

    async def _receive(self, frames: list[bytes]) -> None:
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
                await self.resync()  # the daemon restarted, or a topic's last events were lost
            return
        if not self.state.wants(topic):
            return
        epoch, seq = msg.header["session"], msg.header["seq"]
        if not msg.earlier:
            verdict = self.state.classify(epoch, topic, seq)
            if verdict == "deliver":
                self.state.pending.append(Event(topic, seq, msg.content))
            elif verdict in ("gap", "epoch"):
                await self.resync()
            return
        # A batch: its earlier events, then the last (see daemon.protocol). After a resync the
        # rest of the batch is already held, and classified as duplicates.
        first = seq - len(msg.earlier)
        for offset, data in enumerate([*msg.earlier, msg.content]):
            verdict = self.state.classify(epoch, topic, first + offset)
            if verdict == "deliver":
                self.state.pending.append(Event(topic, first + offset, data))
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
        self.disconnect()

    async def __aenter__(self) -> AsyncEventStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()


# --- The blocking client, derived: each call runs the async one on a private loop. ----------

class _PrivateLoop:
    """An event loop of one blocking client, run to completion once per call.

    It runs in the calling thread, unless that thread already runs a loop (asyncio allows one
    per thread): then on a helper thread of its own. A lock lets one thread at a time in, so a
    client shared between threads queues its calls instead of breaking its sockets.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._helper: concurrent.futures.ThreadPoolExecutor | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if asyncio.events._get_running_loop() is None:
                return self._complete(coro)
            if self._helper is None:
                self._helper = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix="hyperlex-client")
            return self._helper.submit(self._complete, coro).result()

    def _complete(self, coro: Coroutine[Any, Any, T]) -> T:
        # Most calls never wait in asyncio (the reply is waited for in ZeroMQ): such a call is
        # stepped here, with this loop marked running for whatever asks for it, and done.
        # Only a call that does wait is handed, where it stopped, to a task on the loop. A
        # pass through run_until_complete cost 10-20 us of a 150 us round trip.
        asyncio.events._set_running_loop(self.loop)
        try:
            yielded = coro.send(None)
        except StopIteration as done:
            return done.value
        finally:
            asyncio.events._set_running_loop(None)
        task = self.loop.create_task(_finish(coro, yielded))
        try:
            return self.loop.run_until_complete(task)
        except BaseException:
            # Ctrl-C mid-call: cancel the task, or it would wake at the next call and take
            # that call's reply off the socket.
            if not task.done():
                task.cancel()
                try:
                    self.loop.run_until_complete(task)
                except BaseException:
                    pass
            raise

    def close(self) -> None:
        if self._helper is not None:
            self._helper.shutdown(wait=True)
        self.loop.close()


class _Resumed:
    """Awaiting it goes on running a coroutine that was stepped outside a task and stopped,
    having yielded `yielded` (what a task waits on): the task now passes it on."""

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any):
        self.coro = coro
        self.yielded = yielded

    def __await__(self) -> Any:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # a cancellation thrown in by the task
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    return await _Resumed(coro, yielded)


async def _now(function: Callable[[], T]) -> T:
    """Call `function` inside the loop (closing an asyncio socket touches the loop's readers)."""
    return function()


def _drop_sockets(aio: AsyncClient, ctx: zmq.Context) -> None:
    # `aio` is held here, so its sockets are still open objects to close (one collected
    # unclosed would keep its libzmq socket open, and term() would wait for it).
    for sock in [aio.sock, *aio._sockets]:
        if sock is not None and not sock.closed:
            sock.close(0)
    ctx.destroy(linger=0)


class Client(_RequestMethods):
    """A blocking client: `AsyncClient`'s methods, each waited for.

    Takes `AsyncClient`'s arguments (less `context`: it makes its own); `aio` is the async
    client underneath, on this client's private loop.
    """

    def __init__(self, connection: ConnectionInfo | str | Path | None = None, **kwargs: Any):
        self._loop = _PrivateLoop()
        # A plain context owns the sockets; the async client makes them through an asyncio
        # shadow of it, so a plain view of a socket (`sock`, for a monitor) can be had too.
        self.ctx = zmq.Context()
        self.aio = AsyncClient(connection, context=zmq.asyncio.Context.shadow(self.ctx.underlying),
                               **kwargs)
        self.aio.wait_in_zmq = True
        self._plain: tuple[zmq.asyncio.Socket, zmq.Socket] | None = None
        # A client dropped without close(): its sockets belong to the asyncio shadow, which the
        # plain context's own destroy does not see, and terminating a context with open sockets
        # blocks forever. Close them first when the client is collected.
        self._finalizer = weakref.finalize(self, _drop_sockets, self.aio, self.ctx)

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    # The async client's settings, read and set through this one.
    info = property(lambda self: self.aio.info)
    session = property(lambda self: self.aio.session)
    tunnel = property(lambda self: self.aio.tunnel)
    timeout = property(lambda self: self.aio.timeout,
                       lambda self, value: setattr(self.aio, "timeout", value))
    retries = property(lambda self: self.aio.retries,
                       lambda self, value: setattr(self.aio, "retries", value))

    @property
    def sock(self) -> zmq.Socket:
        """The request socket, as a plain blocking socket (it changes on a Lazy Pirate retry)."""
        if self._plain is None or self._plain[0] is not self.aio.sock:
            plain = zmq.Socket.shadow(self.aio.sock.underlying)
            plain.context = self.ctx  # what its monitor socket is made from (and closed by)
            self._plain = (self.aio.sock, plain)
        return self._plain[1]

    def _call(self, verb: str, content: dict[str, Any]) -> Any:
        return self._run(self.aio._call(verb, content))

    def request(self, msg_type: str, content: dict[str, Any],
                timeout: float | None = None) -> dict[str, Any]:
        """`AsyncClient.request`, waited for. Raises TimeoutError."""
        return self._run(self.aio.request(msg_type, content, timeout))

    def events(self, *prefixes: str, liveness_s: float = 3.0,
               rcvhwm: int = 200_000, replay: bool = True) -> EventStream:
        """A gap-free stream of the events under `prefixes` (see `AsyncClient.events`)."""
        return EventStream(self, list(prefixes), liveness_s=liveness_s, rcvhwm=rcvhwm,
                           replay=replay)

    def wait_job(self, job_id: int, timeout: float = 60.0, poll_s: float = 0.1) -> dict[str, Any]:
        """Block until a job reaches a final state (or `interrupted`); returns the job."""
        return self._run(self.aio.wait_job(job_id, timeout, poll_s))

    def chat_stream(self, prompt: str, timeout: float = 120.0, chat_id: str | None = None,
                    **options: Any) -> Iterator[Event]:
        """`AsyncClient.chat_stream`, iterated from blocking code."""
        return self._iterate(self.aio.chat_stream(prompt, timeout, chat_id, **options))

    def _iterate(self, agen: Any) -> Iterator[Any]:
        """An async generator of the async client, stepped from blocking code."""
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(agen.aclose())

    def close(self) -> None:
        """Close the client, its event streams and its SSH tunnel, if any."""
        self._run(_now(self.aio.close))
        self._finalizer.detach()
        self.ctx.destroy(linger=0)  # and what was made from the plain views (monitors)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class EventStream:
    """The blocking event stream: `AsyncEventStream`, each call run on its client's loop."""

    def __init__(self, client: Client, prefixes: list[str], liveness_s: float = 3.0,
                 rcvhwm: int = 200_000, replay: bool = True):
        self.client = client
        self.aio = AsyncEventStream(client.aio, prefixes, liveness_s, rcvhwm=rcvhwm,
                                    replay=replay)
        self.connect()

    state = property(lambda self: self.aio.state)
    reconnects = property(lambda self: self.aio.reconnects)
    last_heard = property(lambda self: self.aio.last_heard)
    liveness_s = property(lambda self: self.aio.liveness_s)

    def connect(self) -> None:
        """Subscribe, make sure the subscription is live, then catch up from a snapshot."""
        self.client._run(self.aio.connect())

    def resync(self) -> None:
        self.client._run(self.aio.resync())

    def disconnect(self) -> None:
        """Drop the subscription (as a network failure would); `connect()` resumes."""
        self.client._run(_now(self.aio.disconnect))

    def next(self, timeout: float = 10.0) -> Event | None:
        """The next event in sequence, or None after `timeout` seconds without one."""
        if self.aio.state.pending:  # already read: no need to enter the loop
            return self.aio.state.pending.popleft()
        return self.client._run(self.aio.next(timeout))

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
