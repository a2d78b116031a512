"""Dispatch over the request table: check a request's frames, find its verb in daemon.api,
refuse it while stopping when the table says so, validate its content, run its handler on the
loop thread or a worker thread, and reply. Every request gets one reply.

`counters` (outcomes by name, reported by `status`) is owned by the loop thread: a worker
thread's outcome travels back with its reply through the inbox and is counted when the loop
sends it. Slow requests wait for a worker thread in a bounded queue: past `max_pending` a request
is answered `Busy`. No message can take the loop down: whatever one raises is counted, logged in
one line and answered when it can be. This module knows the table and the wire protocol; the
handlers know the domains.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

from daemon import api
from daemon import protocol as proto
from engine.errors import HyperlexError, disk_full

log = logging.getLogger("hyperlexd")
# (routing, parent header, content) -> sends a reply; loop thread only.
SendReply = Callable[[list[bytes], dict[str, Any], dict[str, Any]], None]


class Dispatcher:
    """Requests in, replies out.

    Args:
        server: what handlers are given (daemon.server.Server).
        session: checks the frames' signature.
        send_reply: the transport's, loop thread only.
        post: the inbox's post, for replies computed on worker threads.
        stopping: whether the daemon stops (requests not allowed then are refused).
        verbs: the request table (daemon.api.VERBS).
        workers: threads that run slow requests.
        max_pending: slow requests queued or running before more are answered Busy.
    """

    def __init__(self, server: Any, session: proto.Session, send_reply: SendReply,
                 post: Callable[[tuple[Any, ...]], None], stopping: Callable[[], bool],
                 verbs: dict[str, api.Verb] = api.VERBS, workers: int = 4,
                 max_pending: int = 64):
        self.server = server
        self.session = session
        self.send_reply = send_reply
        self.post = post
        self.stopping = stopping
        self.verbs = verbs
        self.handlers = {name: verb.resolve() for name, verb in verbs.items()}
        self.seq_guard = proto.SeqGuard()
        self.counters: dict[str, int] = {}  # loop thread only
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                          thread_name_prefix="request")
        self.max_pending = max_pending
        self._pending = 0  # slow requests submitted and not finished; under _pending_lock
        self._pending_lock = threading.Lock()

    def count(self, outcome: str) -> None:
        self.counters[outcome] = self.counters.get(outcome, 0) + 1

    def reply(self, routing: list[bytes], parent: dict[str, Any], content: dict[str, Any],
              outcome: str) -> None:
        """Count and send one reply (loop thread). A reply that cannot be encoded (a handler
        returned something JSON cannot carry) becomes an InternalError reply: never none."""
        try:
            self.send_reply(routing, parent, content)
        except Exception as exc:
            log.error("reply to %s could not be sent: %s: %s", str(parent.get("msg_type"))[:80],
                      type(exc).__name__, str(exc)[:200])
            outcome = "InternalError"
            error = proto.error_content("InternalError", f"the reply could not be encoded: "
                                        f"{type(exc).__name__}")
            try:
                self.send_reply(routing, parent, error)
            except Exception:
                self.send_reply(routing, {}, error)  # the parent header itself was the problem
        self.count(outcome)

    def handle_frames(self, frames: list[bytes]) -> None:
        """Answer one request's frames (loop thread). Never raises."""
        try:
            self._handle(frames)
        except Exception as exc:  # one message must never take the loop down
            self.count("InternalError")
            log.error("message dropped: %s: %s", type(exc).__name__, str(exc)[:200])
            try:
                self.send_reply(frames[:1], {}, proto.error_content(
                    "InternalError", f"{type(exc).__name__} while reading the request"))
            except Exception:
                pass  # nothing more can be done for this peer

    def _handle(self, frames: list[bytes]) -> None:
        routing = frames[:1]
        try:
            msg = self.session.deserialize(frames)
            routing = msg.routing
            self.seq_guard.check(msg.header["session"], msg.header["seq"], msg.header["date"])
        except proto.ProtocolError as exc:
            parent = exc.header if isinstance(exc.header, dict) else {}
            self.reply(routing, parent, proto.error_content(exc.kind, exc.message), exc.kind)
            return
        msg_type = msg.msg_type
        name = msg_type[: -len("_request")] if msg_type.endswith("_request") else None
        verb = self.verbs.get(name) if name else None
        if verb is None:
            self.reply(routing, msg.header, proto.error_content(
                "UnknownType", f"unknown message type {msg_type[:80]!r}"), "UnknownType")
            return
        if self.stopping() and not verb.while_stopping:
            self.reply(routing, msg.header, proto.error_content(
                "ShuttingDown", "the daemon is shutting down"), "ShuttingDown")
            return
        if verb.runs == "pool":
            with self._pending_lock:
                busy = self._pending >= self.max_pending
                if not busy:
                    self._pending += 1
            if busy:
                self.reply(routing, msg.header, proto.error_content(
                    "Busy", f"{self.max_pending} slow requests are already waiting",
                    hint="try again shortly"), "Busy")
                return
            self.pool.submit(self._run_on_worker, verb, msg, routing)
            return
        content, outcome = self.call(verb, msg)
        self.reply(routing, msg.header, content, outcome)

    def call(self, verb: api.Verb, msg: proto.Message) -> tuple[dict[str, Any], str]:
        """Validate and run one request: (reply content, outcome to count)."""
        try:
            request = api.parse(verb.request, msg.content)
            result = self.handlers[verb.name](self.server, request, msg)
            return {"status": "ok", **result.content()}, "ok"
        except HyperlexError as exc:
            return proto.error_content(type(exc).__name__, exc.message,
                                       hint=exc.hint), type(exc).__name__
        except Exception as exc:  # a bug must not take the daemon down
            full = disk_full(exc, getattr(getattr(self.server, "dirs", None), "state", None))
            if full is not None:  # not a bug: named, one log line, no traceback
                log.warning("request %s: %s", msg.msg_type, full.message)
                return proto.error_content(type(full).__name__, full.message,
                                           hint=full.hint), type(full).__name__
            log.exception("request %s failed", msg.msg_type)
            return proto.error_content("InternalError", f"{type(exc).__name__}: {exc}"), \
                "InternalError"

    def _run_on_worker(self, verb: api.Verb, msg: proto.Message, routing: list[bytes]) -> None:
        try:
            content, outcome = self.call(verb, msg)
        finally:
            with self._pending_lock:
                self._pending -= 1
        self.post(("reply", routing, msg.header, content, outcome))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
