"""The daemon's sockets: a ROUTER for requests and a PUB for events, bound on ipc or TCP (with
CURVE and a ZAP authenticator on TCP), signing everything it sends with one session key.

Every method is called from the daemon's loop thread only: ZeroMQ sockets are not shared
between threads. This module knows the wire protocol and the connection files; nothing of
requests, jobs or models.

Memory is bounded in bytes on both sockets, with one exception. Requests: ZeroMQ hands over a
multipart message only once all of it has arrived and no option caps its frame count, so one
message of many frames (each under `MAX_FRAME_BYTES`) is held whole by ZeroMQ before the first
frame can be read; that is the exception, open only to a peer that can connect at all (the same
user on ipc, a CURVE-authorised key on TCP). Frames past `MAX_FRAMES` are then dropped without a
copy, and after an oversized message freed memory is handed back to the system
(`_give_back_freed_memory`) rather than kept by the allocator. Each peer's queue holds at most
`REQUEST_HWM` messages (ZeroMQ then stops reading that peer). Events: ZeroMQ counts messages, not
bytes, so an event whose frames exceed `event_max_bytes` is not sent (subscribers see a gap and
fetch it from the history with a snapshot) and the PUB high-water mark is
`event_buffer_bytes // event_max_bytes`: a subscriber that stops reading holds at most
`event_buffer_bytes` in the daemon, then loses events (a gap it resyncs) instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import zmq

from daemon import protocol as proto
from daemon.connection import allowed_keys_dir, ensure_keypair, is_loopback_tcp, load_keypair
from daemon.zmqio import send_frames
from engine.errors import ConfigError
from engine.paths import Dirs

# Requests queued per peer before ZeroMQ stops reading it (backpressure, nothing is dropped).
# A client waits for its replies, so 64 is far more than one ever has in flight; for messages
# of at most MAX_FRAMES frames it bounds a peer's backlog at 64 x 12 x 4 MiB.
REQUEST_HWM = 64
# A refused message at least this big is followed by handing freed memory back to the system:
# glibc keeps freed frames in its heap, and a 600 MiB message left the daemon's RSS 1 GB up.
TRIM_AFTER_BYTES = 32 * 1024 * 1024


_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
# Consecutive events of one topic leave as one message of at most this many (and at most
# `event_max_bytes`): a job's log lines or a burst then cost one header, signature and send a
# batch, not one an event. Measured (bench/daemon.py, 64-byte events): one event a message
# reached 0.2x a bare PUB/SUB pair, batches more than that pair.
BATCH_EVENTS = 256
# An event's frames besides its data and topic (delimiter, signature, header, parent), about:
# with the data and the topic (sent in the topic frame and twice in the header), its size on
# the wire sent alone, which the history accounts and `event_max_bytes` bounds.
EVENT_FRAMES_BYTES = 220


@dataclass
class _Batch:
    """Events of one topic with consecutive seqs, encoded, waiting to be sent together."""

    topic: str
    last: int
    data: list[bytes]
    size: int


def _give_back_freed_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim); a no-op elsewhere."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes
        import ctypes.util

        try:
            _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc: its allocator decides alone
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim: Any = None  # glibc's malloc_trim, looked up once; False when there is none


class Transport:
    """Binds, sends replies and events, closes.

    Args:
        dirs: the daemon's home (runtime dir for ipc sockets, state dir for keys).
        bind: tcp://HOST:PORT, or None for ipc sockets in the runtime dir.
        curve: encrypt and authenticate TCP with CURVE (refused off for non-loopback).
        session: signs what is sent; its session id is the daemon's epoch.
        event_hwm: events queued per subscriber before ZeroMQ drops (a gap clients resync), at
            most `event_buffer_bytes // event_max_bytes`.
        event_buffer_bytes: what one subscriber that stops reading may hold in the daemon.
        event_max_bytes: the largest event sent on the PUB socket.
    """

    def __init__(self, dirs: Dirs, bind: str | None, curve: bool, session: proto.Session,
                 event_hwm: int, event_buffer_bytes: int = 256 * 1024 * 1024,
                 event_max_bytes: int = 64 * 1024):
        self.dirs = dirs
        self.bind_spec = bind
        self.curve = curve
        self.session = session
        self.ctx = zmq.Context()
        self.auth: Any = None
        self.router = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME_BYTES)
        self.event_max_bytes = event_max_bytes
        self.event_hwm = max(1, min(event_hwm, event_buffer_bytes // max(1, event_max_bytes)))
        self.events_oversize = 0  # events kept in the history but not sent (too large)
        self._batch: _Batch | None = None  # events gathered to be sent as one message
        self.pub.setsockopt(zmq.SNDHWM, self.event_hwm)
        self.router.setsockopt(zmq.SNDHWM, 100_000)
        self.router.setsockopt(zmq.RCVHWM, REQUEST_HWM)

    # Set by the server before bind: plain TCP is allowed only with this and only on loopback,
    # since any local user could then connect and read every event.
    insecure_loopback_for_tests = False

    def bind(self) -> tuple[str, str, str | None]:
        """Bind both sockets: (request endpoint, events endpoint, CURVE server key or None).

        Raises:
            ConfigError: not tcp://, or a TCP bind without CURVE on a non-loopback address or
                without `insecure_loopback_for_tests`.
        """
        bind = self.bind_spec
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
        if not self.curve and not is_loopback_tcp(bind):
            raise ConfigError(f"refusing to bind {bind} without CURVE: it is not a loopback "
                              "address", hint="drop --no-curve, or bind 127.0.0.1")
        if not self.curve and not self.insecure_loopback_for_tests:
            raise ConfigError(f"refusing to bind {bind} without CURVE: any local user could "
                              "connect and read every event",
                              hint="drop --no-curve; tests that need plain TCP on loopback add "
                                   "--insecure-loopback-for-tests")
        host, port = bind[len("tcp://"):].rsplit(":", 1)
        request, events = f"tcp://{host}:{port}", f"tcp://{host}:{int(port) + 1}"
        server_key = self._setup_curve() if self.curve else None
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

    def recv(self) -> list[bytes] | None:
        """One waiting request's frames, or None when none waits.

        Read frame by frame: past `MAX_FRAMES + 1` frames the rest are received and discarded
        without a copy (the protocol then refuses the message as BadFrames). ZeroMQ held the
        whole message already; when what was dropped is big, the memory is given back.
        """
        # Asking first is cheaper than the exception a read of nothing raises (1.6 against
        # 4 us), and every burst of requests ends with one such read.
        if not self.router.getsockopt(_EVENTS) & _POLLIN:
            return None
        try:
            frame = self.router.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        frames = [frame.bytes]
        dropped = 0
        while frame.more:  # the rest of a message has arrived with its first frame
            frame = self.router.recv(copy=False)
            if len(frames) <= proto.MAX_FRAMES:
                frames.append(frame.bytes)
            else:
                dropped += len(frame.buffer)
        if dropped >= TRIM_AFTER_BYTES:
            del frame
            _give_back_freed_memory()
        return frames

    def send_reply(self, routing: list[bytes], parent: dict[str, Any],
                   content: dict[str, Any]) -> None:
        msg_type = proto.reply_type(str(parent.get("msg_type", "")))
        header = self.session.header(msg_type)
        frames = self.session.serialize(header, content, parent, routing=routing)
        try:
            send_frames(self.router, frames)
        except zmq.ZMQError:
            pass  # the client is gone or not keeping up; it will retry

    def send_event(self, topic: str, seq: int, data: dict[str, Any]) -> int:
        """Publish one event; returns its size in bytes (what the history accounts).

        It joins the batch being gathered when it is the next event of the batch's topic and
        fits; otherwise that batch is sent first, so events leave in the order published.
        The loop sends what is left with `flush_events` before it waits.
        """
        encoded = proto.dumps(data)
        size = len(encoded) + 3 * len(topic) + EVENT_FRAMES_BYTES
        batch = self._batch
        if batch is not None and (batch.topic != topic or batch.last + 1 != seq
                                  or len(batch.data) >= BATCH_EVENTS
                                  or batch.size + len(encoded) + 1 > self.event_max_bytes):
            self.flush_events()
            batch = None
        if size > self.event_max_bytes:
            self.events_oversize += 1
            return size  # kept in the history: the gap makes subscribers fetch it by snapshot
        if batch is None:
            self._batch = _Batch(topic, seq, [encoded], size)
        else:
            batch.data.append(encoded)
            batch.last = seq
            batch.size += len(encoded) + 1
        return size

    def flush_events(self) -> None:
        """Send the batch being gathered, if any: one signed message for all its events."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        count = len(batch.data)
        # An event is named by its topic and seq: no random id needed.
        extra = {"earlier": count - 1} if count > 1 else {}
        header = self.session.header("event", msg_id=f"{batch.topic}#{batch.last}",
                                     seq=batch.last, topic=batch.topic, **extra)
        earlier = b"[" + b",".join(batch.data[:-1]) + b"]" if count > 1 else None
        frames = self.session.serialize(header, batch.data[-1], topic=batch.topic.encode(),
                                        earlier=earlier)
        try:
            send_frames(self.pub, frames)
        except zmq.Again:
            pass  # over the high-water mark: subscribers see the gap and resync

    def close(self) -> None:
        self.flush_events()
        if self.auth is not None:
            self.auth.stop()
        for sock in (self.router, self.pub):
            sock.close(0)
        if not self.bind_spec:
            for name in ("req", "ev"):
                (self.dirs.runtime / name).unlink(missing_ok=True)
        self.ctx.term()
