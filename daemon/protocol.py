"""The hyperlex wire protocol: build, sign, serialise and check every message on the wire.

A message is a list of ZeroMQ frames:

    [routing frames...] DELIMITER signature header parent_header content

`header` is `{msg_id, msg_type, session, seq, date, version}` (events add `topic`), and every
frame is JSON. The signature is HMAC-SHA256 over the length-prefixed frames that follow it (and,
for events, the topic frame before it), keyed from the connection file.

Consecutive events of one topic may travel as one message, a batch: the header's `seq` and the
content are the batch's last event, and a fifth signed frame after the content holds the
events before it, in order (a JSON array of their data, `earlier` of them, numbered
`seq - earlier` to `seq - 1`). A reader that knows only four frames refuses a batch as
BadFrames and, seeing the gap, fetches those events by snapshot: slower, never wrong. Each sending session
numbers its messages with a monotonic `seq`; a receiver rejects a `seq` it has seen (a replay)
and a `date` outside its window (`DATE_WINDOW_S`), so a session it has forgotten cannot replay.
Frames nest at most `MAX_DEPTH` deep: deeper JSON is refused as BadJSON before anything walks it.

Nothing else in hyperlex touches frames. This module knows nothing of sockets, jobs or models.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

PROTOCOL_VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
DELIMITER = b"<HLX|MSG>"
# One frame may be at most this big: ZMQ_MAXMSGSIZE drops a peer that sends more (a chat prompt
# or a page of logs fits comfortably; a model never travels over the wire).
MAX_FRAME_BYTES = 4 * 1024 * 1024
# Routing frames + delimiter + signature + three JSON frames, with room for a few router hops.
MAX_FRAMES = 12
HEADER_KEYS = ("msg_id", "msg_type", "session", "seq", "date", "version")
_HEADER_KEY_SET = frozenset(HEADER_KEYS)
# Arrays and objects nest at most this deep in any frame: real requests nest 3 or 4 levels, and
# a bound far below the interpreter's recursion limit lets every later walk (validation, the
# reply's echo of the header) recurse safely.
MAX_DEPTH = 64
# A request's `date` may differ from the receiver's clock by at most this much. It bounds how
# long the replay guard must remember a session: a message older than the window is refused by
# its date. Five minutes tolerates ordinary clock skew between two machines kept by NTP.
DATE_WINDOW_S = 300.0
# Sessions seen within the window that the guard keeps: past this, new sessions are refused
# (Busy) rather than forgetting a live one (forgetting is what let a replay through). Each costs
# about 200 bytes: 100,000 is 20 MB, far more sessions than ten minutes of CLI calls start.
MAX_LIVE_SESSIONS = 100_000


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
    # A batch of events: the data of the events before this one, oldest first.
    earlier: list[dict[str, Any]] = field(default_factory=list)

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
    """A fresh message or session id: 128 random bits in hex, as a uuid4's hex (and about
    twice as fast to make)."""
    return os.urandom(16).hex()


# orjson writes and reads a frame in about a fifth of the standard library's time (0.2 against
# 2.2 us for a header); the keys of dicts that are not strings become strings, as json does.
# Dataclasses and datetimes are passed to no default, so they fail as they do with json.
_ORJSON_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_DATETIME)


def dumps(obj: Any) -> bytes:
    """`obj` as one frame of compact UTF-8 JSON."""
    try:
        data = orjson.dumps(obj, option=_ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: past 64 bits, a lone surrogate, an object
        return _dumps_std(obj)
    if b"null" in data:
        # orjson writes NaN and the infinities as null; the standard library writes them as
        # NaN and Infinity, which the receiver reads back and refuses by name. A frame with a
        # real null (or the word in a string) only takes the slower path.
        return _dumps_std(obj)
    return data


def _dumps_std(obj: Any) -> bytes:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (an error reply echoing a client's header, say) has no UTF-8 form;
        # ASCII JSON escapes it as \udXXX, which every JSON reader takes back.
        return json.dumps(obj, separators=(",", ":")).encode()


# 19 digits in a row: maybe an integer past 64 bits, which orjson reads as a float. Found by
# mapping every digit to 0 and searching for nineteen of them: a tenth of a regex's time.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


def _loads(frame: bytes) -> Any:
    """A frame's JSON: orjson, or the standard library for what orjson refuses or changes and
    json keeps (NaN, escaped lone surrogates, integers past 64 bits) and for its error message."""
    if _LONG_DIGITS not in frame.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(frame)
        except orjson.JSONDecodeError:
            pass
    return json.loads(frame)


def depth_exceeds(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether arrays and objects in `value` nest deeper than `limit` (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def _loads_object(frame: bytes, name: str, header: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        value = _loads(frame)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("BadJSON", f"{name} frame is not JSON: {exc}", header) from None
    except RecursionError:  # the C decoder recurses per nesting level
        raise ProtocolError("BadJSON", f"{name} frame nests deeper than {MAX_DEPTH}",
                            header) from None
    if not isinstance(value, dict):
        raise ProtocolError("BadJSON", f"{name} frame must be a JSON object", header)
    # Nesting is never deeper than the count of brackets that open it: most frames are
    # cleared by that count (C speed) without walking them.
    if frame.count(b"[") + frame.count(b"{") > MAX_DEPTH and depth_exceeds(value):
        raise ProtocolError("BadJSON", f"{name} frame nests deeper than {MAX_DEPTH}",
                            header if name != "header" else None)
    return value


def major(version: str) -> str:
    """The major part of a protocol version ("1.0" -> "1")."""
    return str(version).split(".", 1)[0]


def parse_date(value: Any) -> float | None:
    """A header's ISO 8601 `date` as a POSIX time, or None when it is not one with a zone."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


class SeqGuard:
    """Refuses replays: a `seq` not after a session's last, or a `date` outside the window.

    A session is remembered for twice the window after its last message: any message of it then
    carries a date older than the window (it was at most `window_s` in the future when
    accepted), so forgetting it cannot let a replay through. Live sessions are never evicted:
    past `max_sessions` a new one is refused as Busy.

    Args:
        max_sessions: live sessions kept before new ones are refused.
        window_s: how far a message's date may be from this clock, either way.
        clock: wall-clock time (tests move it).
    """

    def __init__(self, max_sessions: int = MAX_LIVE_SESSIONS, window_s: float = DATE_WINDOW_S,
                 clock: Any = None):
        self._last: OrderedDict[str, tuple[int, float]] = OrderedDict()  # oldest seen first
        self._max = max_sessions
        self.window_s = window_s
        self._clock = clock or time.time

    def check(self, session: str, seq: int, date: Any) -> None:
        """Accept message `seq` of `session` dated `date`, or raise ProtocolError (Replay,
        BadHeader for an unreadable date, ClockSkew outside the window, Busy when full)."""
        now = self._clock()
        sent = parse_date(date)
        if sent is None:
            raise ProtocolError("BadHeader", "date must be an ISO 8601 time with a zone")
        if abs(now - sent) > self.window_s:
            raise ProtocolError(
                "ClockSkew", f"message dated {date[:40]} is {now - sent:+.0f} s from this "
                f"daemon's clock; at most {self.window_s:.0f} s either way is accepted (a "
                "replayed message, or the clocks of the two machines differ: set them by NTP)")
        last = self._last.get(session)
        if last is not None and seq <= last[0]:
            raise ProtocolError("Replay", f"seq {seq} of session {session[:8]} is not after "
                                f"{last[0]}")
        forget_before = now - 2 * self.window_s
        while self._last:
            oldest = next(iter(self._last))
            if self._last[oldest][1] >= forget_before:
                break
            del self._last[oldest]
        if last is None and len(self._last) >= self._max:
            raise ProtocolError("Busy", f"{len(self._last)} client sessions are live; try "
                                "again in a few minutes")
        self._last[session] = (seq, now)
        self._last.move_to_end(session)

    def __len__(self) -> int:
        return len(self._last)


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
        # HMAC-SHA256 (RFC 2104) from its two keyed hashes, each keyed once and copied per
        # message: every call is then one into C (the hmac module's wrapper cost a
        # microsecond or two a message in Python calls).
        block = key if len(key) <= 64 else hashlib.sha256(key).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self.session_id = session_id or new_id()
        # next() of a count is one C call, atomic under the GIL: no lock needed between the
        # threads that send through one session.
        self._seqs = itertools.count(1)

    def next_seq(self) -> int:
        return next(self._seqs)

    def sign(self, frames: list[bytes]) -> bytes:
        """HMAC-SHA256 over length-prefixed frames (so frame boundaries cannot shift)."""
        inner = self._inner.copy()
        update = inner.update
        for frame in frames:
            update(len(frame).to_bytes(8, "big"))
            update(frame)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()

    def header(self, msg_type: str, *, msg_id: str | None = None, seq: int | None = None,
               **extra: Any) -> dict[str, Any]:
        """A fresh header for a message of `msg_type`."""
        header = {"msg_id": msg_id or new_id(), "msg_type": msg_type,
                  "session": self.session_id, "seq": next(self._seqs) if seq is None else seq,
                  "date": datetime.now(timezone.utc).isoformat(), "version": PROTOCOL_VERSION}
        if extra:
            header.update(extra)
        return header

    def serialize(self, header: dict[str, Any], content: dict[str, Any] | bytes,
                  parent_header: dict[str, Any] | None = None, *,
                  routing: list[bytes] | None = None, topic: bytes | None = None,
                  earlier: bytes | None = None) -> list[bytes]:
        """Frames for one message, signed. `topic` (events) leads and is signed too.

        `content` may come encoded already (an event's data, encoded when it was published);
        `earlier` is a batch's frame of earlier events, a JSON array (see the module doc).
        """
        body = [dumps(header), dumps(parent_header) if parent_header else b"{}",
                content if isinstance(content, bytes) else dumps(content)]
        if earlier is not None:
            body.append(earlier)
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
        if len(frames) > MAX_FRAMES:  # the transport keeps at most MAX_FRAMES + 1 of them
            raise ProtocolError("BadFrames", f"more than {MAX_FRAMES} frames")
        try:
            cut = frames.index(DELIMITER)
        except ValueError:
            raise ProtocolError("BadFrames", "no delimiter frame") from None
        routing, rest = list(frames[:cut]), frames[cut + 1:]
        if len(rest) != 4 and not (topic_frame and len(rest) == 5):
            raise ProtocolError("BadFrames", f"expected 4 frames after the delimiter, got {len(rest)}")
        signature, header_f, parent_f, content_f = rest[:4]
        signed = rest[1:]
        if topic_frame:
            if not routing:
                raise ProtocolError("BadFrames", "event without a topic frame")
            signed = [routing[-1]] + signed
        if not signature:
            raise ProtocolError("BadSignature", "message is not signed")
        if not hmac.compare_digest(signature, self.sign(signed)):
            raise ProtocolError("BadSignature", "signature does not match (wrong key?)")
        header = _loads_object(header_f, "header")
        if not header.keys() >= _HEADER_KEY_SET:
            missing = [k for k in HEADER_KEYS if k not in header]
            raise ProtocolError("BadHeader", f"header lacks {', '.join(missing)}", header)
        if not isinstance(header["msg_type"], str) or not isinstance(header["session"], str) \
                or not isinstance(header["msg_id"], str):
            raise ProtocolError("BadHeader", "msg_id, msg_type and session must be strings", header)
        if not isinstance(header["seq"], int) or isinstance(header["seq"], bool) \
                or header["seq"] < 1:
            raise ProtocolError("BadHeader", "seq must be a positive integer", header)
        if header["version"] != PROTOCOL_VERSION \
                and major(header["version"]) != major(PROTOCOL_VERSION):
            raise ProtocolError("VersionMismatch", f"protocol {header['version']} is not "
                                f"supported (this side speaks {PROTOCOL_VERSION})", header)
        parent = {} if parent_f == b"{}" else _loads_object(parent_f, "parent_header", header)
        content = _loads_object(content_f, "content", header)
        earlier = _loads_earlier(rest[4], header) if len(rest) == 5 else []
        return Message(header=header, parent_header=parent, content=content, routing=routing,
                       earlier=earlier)


def _loads_earlier(frame: bytes, header: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch's frame of earlier events: a JSON array of objects, as many as the header says."""
    try:
        value = _loads(frame)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProtocolError("BadJSON", "earlier-events frame is not JSON", header) from None
    count = header.get("earlier")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ProtocolError("BadJSON", "earlier-events frame must be an array of objects", header)
    if count != len(value) or isinstance(count, bool) or count >= header["seq"]:
        raise ProtocolError("BadHeader", f"header says {count!r} earlier events, the frame "
                            f"holds {len(value)} (before seq {header['seq']})", header)
    if depth_exceeds(value, MAX_DEPTH + 1):
        raise ProtocolError("BadJSON", f"earlier-events frame nests deeper than {MAX_DEPTH}",
                            header)
    return value


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
