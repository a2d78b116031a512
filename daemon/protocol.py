"""The hyperlex wire protocol: build, sign, serialise and check every message on the wire.

A message is a list of ZeroMQ frames:

    [routing frames...] DELIMITER signature header parent_header content

`header` is `{msg_id, msg_type, session, seq, date, version}` (events add `topic`), and every
frame is JSON. The signature is HMAC-SHA256 over the length-prefixed frames that follow it (and,
for events, the topic frame before it), keyed from the connection file. Each sending session
numbers its messages with a monotonic `seq`; a receiver rejects a `seq` it has seen (a replay).

Nothing else in hyperlex touches frames. This module knows nothing of sockets, jobs or models.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

PROTOCOL_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
DELIMITER = b"<HLX|MSG>"
# One frame may be at most this big: ZMQ_MAXMSGSIZE drops a peer that sends more (a chat prompt
# or a page of logs fits comfortably; a model never travels over the wire).
MAX_FRAME_BYTES = 4 * 1024 * 1024
# Routing frames + delimiter + signature + three JSON frames, with room for a few router hops.
MAX_FRAMES = 12
HEADER_KEYS = ("msg_id", "msg_type", "session", "seq", "date", "version")


class ProtocolError(Exception):
    """A message broke the protocol; `kind` names how, for the error reply and for counting."""

    def __init__(self, kind: str, message: str, header: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.header = header or {}


@dataclass
class Message:
    """A decoded message: its routing frames, header, parent header and content."""

    header: dict[str, Any]
    parent_header: dict[str, Any]
    content: dict[str, Any]
    routing: list[bytes] = field(default_factory=list)

    @property
    def msg_type(self) -> str:
        return self.header["msg_type"]

    @property
    def msg_id(self) -> str:
        return self.header["msg_id"]


def now_iso() -> str:
    """The current UTC time as ISO 8601, as headers carry it."""
    return datetime.now(timezone.utc).isoformat()


def new_id() -> str:
    """A fresh message or session id."""
    return uuid.uuid4().hex


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _loads_object(frame: bytes, name: str, header: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        value = json.loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("BadJSON", f"{name} frame is not JSON: {exc}", header) from None
    if not isinstance(value, dict):
        raise ProtocolError("BadJSON", f"{name} frame must be a JSON object", header)
    return value


def major(version: str) -> str:
    """The major part of a protocol version ("1.0" -> "1")."""
    return str(version).split(".", 1)[0]


class SeqGuard:
    """Remembers the last `seq` of each sending session and rejects anything not newer.

    Bounded: the least recently seen sessions are forgotten past `max_sessions`.
    """

    def __init__(self, max_sessions: int = 4096):
        self._last: OrderedDict[str, int] = OrderedDict()
        self._max = max_sessions

    def check(self, session: str, seq: int) -> None:
        """Accept `seq` for `session` or raise ProtocolError("Replay")."""
        last = self._last.get(session)
        if last is not None and seq <= last:
            raise ProtocolError("Replay", f"seq {seq} of session {session[:8]} is not after {last}")
        self._last[session] = seq
        self._last.move_to_end(session)
        while len(self._last) > self._max:
            self._last.popitem(last=False)


class Session:
    """Signs and checks messages with one HMAC key; numbers what it sends.

    Args:
        key: the shared HMAC key (bytes); an empty key is refused.
        session_id: this sender's session id (fresh by default).
    """

    def __init__(self, key: bytes, session_id: str | None = None):
        if not key:
            raise ValueError("an HMAC key is required")
        self.key = key
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # keyed once, copied per message
        self.session_id = session_id or new_id()
        self._seq = 0
        self._lock = threading.Lock()

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def sign(self, frames: list[bytes]) -> bytes:
        """HMAC-SHA256 over length-prefixed frames (so frame boundaries cannot shift)."""
        mac = self._mac.copy()
        for frame in frames:
            mac.update(len(frame).to_bytes(8, "big"))
            mac.update(frame)
        return mac.hexdigest().encode()

    def header(self, msg_type: str, *, msg_id: str | None = None, seq: int | None = None,
               **extra: Any) -> dict[str, Any]:
        """A fresh header for a message of `msg_type`."""
        return {"msg_id": msg_id or new_id(), "msg_type": msg_type, "session": self.session_id,
                "seq": self.next_seq() if seq is None else seq, "date": now_iso(),
                "version": PROTOCOL_VERSION, **extra}

    def serialize(self, header: dict[str, Any], content: dict[str, Any],
                  parent_header: dict[str, Any] | None = None, *,
                  routing: list[bytes] | None = None, topic: bytes | None = None) -> list[bytes]:
        """Frames for one message, signed. `topic` (events) leads and is signed too."""
        body = [_dumps(header), _dumps(parent_header or {}), _dumps(content)]
        signed = ([topic] if topic is not None else []) + body
        prefix = list(routing or []) + ([topic] if topic is not None else [])
        return prefix + [DELIMITER, self.sign(signed)] + body

    def request(self, msg_type: str, content: dict[str, Any],
                msg_id: str | None = None) -> tuple[dict[str, Any], list[bytes]]:
        """A signed request; returns its header (to match the reply) and its frames."""
        header = self.header(msg_type, msg_id=msg_id)
        return header, self.serialize(header, content)

    def deserialize(self, frames: list[bytes], *, topic_frame: bool = False) -> Message:
        """Check and decode frames; raises ProtocolError naming what is wrong.

        Args:
            frames: all frames received, routing frames included.
            topic_frame: the frame before the delimiter is a signed event topic.
        """
        if len(frames) > MAX_FRAMES:
            raise ProtocolError("BadFrames", f"{len(frames)} frames, at most {MAX_FRAMES}")
        try:
            cut = frames.index(DELIMITER)
        except ValueError:
            raise ProtocolError("BadFrames", "no delimiter frame") from None
        routing, rest = list(frames[:cut]), frames[cut + 1:]
        if len(rest) != 4:
            raise ProtocolError("BadFrames", f"expected 4 frames after the delimiter, got {len(rest)}")
        signature, header_f, parent_f, content_f = rest
        signed = [header_f, parent_f, content_f]
        if topic_frame:
            if not routing:
                raise ProtocolError("BadFrames", "event without a topic frame")
            signed = [routing[-1]] + signed
        if not signature:
            raise ProtocolError("BadSignature", "message is not signed")
        if not hmac.compare_digest(signature, self.sign(signed)):
            raise ProtocolError("BadSignature", "signature does not match (wrong key?)")
        header = _loads_object(header_f, "header")
        missing = [k for k in HEADER_KEYS if k not in header]
        if missing:
            raise ProtocolError("BadHeader", f"header lacks {', '.join(missing)}", header)
        if not isinstance(header["msg_type"], str) or not isinstance(header["session"], str) \
                or not isinstance(header["msg_id"], str):
            raise ProtocolError("BadHeader", "msg_id, msg_type and session must be strings", header)
        if not isinstance(header["seq"], int) or isinstance(header["seq"], bool) \
                or header["seq"] < 1:
            raise ProtocolError("BadHeader", "seq must be a positive integer", header)
        if major(header["version"]) != major(PROTOCOL_VERSION):
            raise ProtocolError("VersionMismatch", f"protocol {header['version']} is not "
                                f"supported (this side speaks {PROTOCOL_VERSION})", header)
        parent = _loads_object(parent_f, "parent_header", header)
        content = _loads_object(content_f, "content", header)
        return Message(header=header, parent_header=parent, content=content, routing=routing)


def reply_type(msg_type: str) -> str:
    """`job_get_request` -> `job_get_reply`; anything else gets `error_reply`."""
    if msg_type.endswith("_request"):
        return msg_type[: -len("_request")] + "_reply"
    return "error_reply"


def error_content(kind: str, message: str, **extra: Any) -> dict[str, Any]:
    """The content of an error reply."""
    return {"status": "error", "error": {"type": kind, "message": message, **extra}}


def negotiate(versions: Any) -> str | None:
    """The highest version both sides speak, or None."""
    if not isinstance(versions, list):
        return None
    offered = {str(v) for v in versions}
    common = [v for v in SUPPORTED_VERSIONS if v in offered]
    return max(common, key=lambda v: tuple(int(p) for p in v.split("."))) if common else None
