"""The loop thread's inbox: other threads hand it items and wake the loop through a pipe.

Job reader threads, the chat thread and request workers never touch the sockets, the job store
or the event history; they `post` a tuple and the loop thread handles it when it drains. The
pipe's read end is what the loop's ZeroMQ poller watches.

The inbox is bounded in bytes (strings and bytes in an item are counted, plus a fixed cost per
item). Past `max_bytes`, a post of a job's items ("line", "event", ...) waits until the loop has
drained: the job's reader thread stops reading, and the job blocks on its own full pipe. Replies,
publishes and loop calls (`NEVER_WAIT`) are never refused nor delayed: they come from requests
the dispatcher already bounds, and losing one would lose a reply. The loop thread itself never
waits. This module knows nothing else of what the items mean.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from typing import Any

# Items that never wait for room (see the module docstring).
NEVER_WAIT = frozenset({"reply", "publish", "call"})
ITEM_COST = 100  # bytes charged per item besides its strings: the tuple and its references


def item_size(item: tuple[Any, ...]) -> int:
    """What an item is charged: its top-level strings and bytes, plus ITEM_COST."""
    return ITEM_COST + sum(len(part) for part in item if isinstance(part, (str, bytes)))


class Inbox:
    """A thread-safe queue of tuples and the pipe that wakes the loop.

    Args:
        max_bytes: what waiting items may hold before job items wait for the loop.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False
        self.max_bytes = max_bytes
        self.bytes = 0  # charged for items waiting; under _room
        self.waits = 0  # posts that had to wait for room
        self._room = threading.Condition()
        self._loop_thread: int | None = None  # the thread that drains; it never waits
        self._closed = False

    def post(self, item: tuple[Any, ...]) -> None:
        """Hand the loop an item (from any thread); a job's item waits while the inbox is full."""
        size = item_size(item)
        with self._room:
            if self.bytes + size > self.max_bytes and item[0] not in NEVER_WAIT \
                    and threading.get_ident() != self._loop_thread:
                self.waits += 1
                self.wake()
                while self.bytes > 0 and self.bytes + size > self.max_bytes \
                        and not self._closed:
                    self._room.wait(1.0)
            self.bytes += size
        self._queue.put((size, item))
        self.wake()

    def wake(self) -> None:
        """Wake the loop. One write per batch: a chat streaming tokens does not cost a syscall
        and a loop wake-up per token while the loop has not drained the inbox yet."""
        if self._wake_pending:
            return
        self._wake_pending = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop is awake already

    def woken(self) -> None:
        """The loop saw the pipe readable: empty it (before draining, so later posts wake it
        again)."""
        self._wake_pending = False
        try:
            os.read(self.wake_fd, 65536)
        except BlockingIOError:
            pass

    def drain(self) -> Iterator[tuple[Any, ...]]:
        """The items waiting now, oldest first (loop thread only)."""
        self._loop_thread = threading.get_ident()
        if self._queue.empty():  # most passes: cheaper than the Empty a get raises
            return
        while True:
            try:
                size, item = self._queue.get_nowait()
            except queue.Empty:
                return
            with self._room:
                self.bytes -= size
                self._room.notify_all()
            yield item

    def close(self) -> None:
        with self._room:
            self._closed = True
            self._room.notify_all()
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
