"""Event topics with per-topic sequence numbers and a bounded history for snapshots.

The daemon publishes `(topic, seq, data)`; `seq` counts from 1 per topic within one daemon
`epoch`. A subscriber that sees a gap asks for a snapshot: the retained events of a topic after the
last `seq` it holds (the zguide Clone pattern). Topics used: `job.<id>.progress`, `job.<id>.log`,
`chat.<id>.token`, `daemon.status`, `daemon.heartbeat`.

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

    def to_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "seq": self.seq, "data": self.data}


class EventHistory:
    """Numbers events per topic and keeps the last `per_topic` of the last `max_topics` topics.

    Heartbeats and subscription probes are numbered but not kept: nobody needs old ones.
    """

    def __init__(self, per_topic: int = 20000, max_topics: int = 512):
        self._seq: dict[str, int] = {}
        self._kept: OrderedDict[str, deque[Event]] = OrderedDict()
        self._touched: OrderedDict[str, float] = OrderedDict()  # topic -> last publish time
        self.per_topic = per_topic
        self.max_topics = max_topics

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
                kept = self._kept[topic] = deque(maxlen=self.per_topic)
            kept.append(event)
            self._kept.move_to_end(topic)
            while len(self._kept) > self.max_topics:
                old, _ = self._kept.popitem(last=False)
                self._seq.pop(old, None)
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
