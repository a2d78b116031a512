"""The loop thread's inbox: other threads hand it items and wake the loop through a pipe.

Job reader threads, the chat thread and request workers never touch the sockets, the job store
or the event history; they `post` a tuple and the loop thread handles it when it drains. The
pipe's read end is what the loop's ZeroMQ poller watches. This module knows nothing of what the
items mean.
"""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from typing import Any


class Inbox:
    """A thread-safe queue of tuples and the pipe that wakes the loop."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)
        self._wake_pending = False

    def post(self, item: tuple[Any, ...]) -> None:
        """Hand the loop an item (from any thread)."""
        self._queue.put(item)
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
        while True:
            try:
                yield self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
