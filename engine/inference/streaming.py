"""Text streaming shared by the backends: stop strings that may span tokens.

A stop string can arrive split over several tokens, so text that could be the start of one is
held back until it is clear; what is emitted never contains a stop string. Knows no backend.
"""

from __future__ import annotations


class StopScanner:
    """Feed generated text in; get back what is safe to show, and whether a stop was hit."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return the part that can be emitted now (nothing after a stop)."""
        if self.stopped:
            return ""
        self._pending += text
        if not self.stops:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0),
                  default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        hold = self._held_suffix()
        out = self._pending[:len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold:]
        return out

    def _held_suffix(self) -> int:
        """Length of the longest tail of the pending text that starts some stop string."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:size]):
                    best = max(best, size)
                    break
        return best

    def flush(self) -> str:
        """What is still held back, at the end of generation."""
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out
