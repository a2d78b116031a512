"""Event topics with per-topic sequence numbers and a bounded history for snapshots.

The daemon publishes `(topic, seq, data)`; `seq` counts from 1 per topic within one daemon
`epoch`. A subscriber that sees a gap asks for a snapshot: the retained events of a topic after the
last `seq` it holds (the zguide Clone pattern). Topics used: `job.<id>.progress`, `job.<id>.log`,
`chat.<id>.token`, `daemon.status`, `daemon.heartbeat`.

The history is bounded by count and by bytes, in total and per topic; the oldest events go first
and a snapshot that misses dropped ones says `complete: false`. Sizes are the bytes an event
took on the wire, which the publisher reports with `account` after sending it.

The history is owned by the daemon's event loop thread; nothing here is thread-safe or knows
about sockets.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

HEARTBEAT_TOPIC = "daemon.heartbeat"
STATUS_TOPIC = "daemon.status"
UNKEPT_PREFIX = "sync."


@dataclass
class Event:
    topic: str
    seq: int
    data: dict[str, Any]
    size: int = 0  # bytes on the wire, once accounted

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "seq": self.seq, "data": self.data}


class EventHistory:
    """Numbers events per topic and keeps the last `per_topic` of the last `max_topics` topics,
    within `max_bytes` in all and `per_topic_bytes` per topic.

    Heartbeats and subscription probes are numbered but not kept: nobody needs old ones.
    """

    def __init__(self, per_topic: int = 20000, max_topics: int = 512,
                 max_bytes: int = 128 * 1024 * 1024, per_topic_bytes: int = 16 * 1024 * 1024):
        self._seq: dict[str, int] = {}
        self._kept: OrderedDict[str, deque[Event]] = OrderedDict()
        self._touched: OrderedDict[str, float] = OrderedDict()  # topic -> last publish time
        self._topic_bytes: dict[str, int] = {}
        self.total_bytes = 0
        self.per_topic = per_topic
        self.max_topics = max_topics
        self.max_bytes = max_bytes
        self.per_topic_bytes = per_topic_bytes

    def account(self, event: Event, size: int) -> None:
        """Charge a kept event its `size` and drop the oldest events past the byte caps (the
        newest event of a topic stays, whatever its size)."""
        topic = event.topic
        kept = self._kept.get(topic)
        if not kept or kept[-1] is not event:
            return  # not kept (heartbeat, probe) or already dropped
        event.size = size
        self._charge(topic, size)
        while self._topic_bytes[topic] > self.per_topic_bytes and len(kept) > 1:
            self._charge(topic, -kept.popleft().size)
        if self.total_bytes <= self.max_bytes:
            return
        for name in list(self._kept):  # least recently published topics first
            old = self._kept[name]
            while old and self.total_bytes > self.max_bytes and old[0] is not event:
                self._charge(name, -old.popleft().size)
            if self.total_bytes <= self.max_bytes:
                return

    def _charge(self, topic: str, size: int) -> None:
        self._topic_bytes[topic] = self._topic_bytes.get(topic, 0) + size
        self.total_bytes += size

    def record(self, topic: str, data: dict[str, Any]) -> Event:
        """Give the event the topic's next seq and keep it."""
        if topic.startswith(UNKEPT_PREFIX):
            return Event(topic, 1, data)  # one-off topics: nothing to number or keep
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        event = Event(topic, seq, data)
        self._touched[topic] = time.monotonic()
        self._touched.move_to_end(topic)
        if len(self._touched) > self.max_topics:
            self._touched.popitem(last=False)
        if topic != HEARTBEAT_TOPIC:
            kept = self._kept.get(topic)
            if kept is None:
                kept = self._kept[topic] = deque()
            if len(kept) >= self.per_topic:
                self._charge(topic, -kept.popleft().size)
            kept.append(event)
            self._kept.move_to_end(topic)
            while len(self._kept) > self.max_topics:
                old, _ = self._kept.popitem(last=False)
                self._seq.pop(old, None)
                self.total_bytes -= self._topic_bytes.pop(old, 0)
        return event

    def last_seq(self, topic: str) -> int:
        return self._seq.get(topic, 0)

    def recent(self, within_s: float = 10.0, limit: int = 256) -> dict[str, int]:
        """Last seqs of the topics that changed in the last `within_s` seconds.

        Heartbeats carry these, so a subscriber notices a lost *last* event of a topic too
        (a gap is otherwise seen only when a later event arrives).
        """
        cutoff = time.monotonic() - within_s
        out: dict[str, int] = {}
        for topic in reversed(self._touched):
            if self._touched[topic] < cutoff or len(out) >= limit:
                break
            out[topic] = self._seq.get(topic, 0)
        return out

    def snapshot(self, prefix: str, since: dict[str, int] | None = None,
                 max_bytes: int = 1_000_000) -> dict[str, Any]:
        """Retained events of topics starting with `prefix`, after `since[topic]`, one page.

        Returns:
            `{"topics": {topic: {"seq", "events", "complete", "more"}}}`: `complete` is false
            when events after `since` were already dropped from the history; `more` is true
            when the page filled up (ask again with the new seqs).
        """
        since = since or {}
        topics: dict[str, Any] = {}
        budget = max_bytes
        for topic, kept in self._kept.items():
            if not topic.startswith(prefix):
                continue
            after = int(since.get(topic, 0))
            oldest = kept[0].seq if kept else self._seq.get(topic, 0) + 1
            events, more = [], False
            start = max(0, after + 1 - oldest)  # seqs in a deque are consecutive
            for index in range(start, len(kept)):
                if budget <= 0:
                    more = True
                    break
                event = kept[index]
                budget -= 64 + len(json.dumps(event.data))
                events.append(event.to_dict())
            topics[topic] = {"seq": self._seq.get(topic, 0), "events": events,
                             "complete": oldest <= after + 1, "more": more}
        return {"topics": topics}
