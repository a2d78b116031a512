"""A/B ratings a person gives in the console: appended to `<state>/ab_ratings.jsonl`, one JSON
object a line, which engine.evals.human reads back. Knows nothing of sockets.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

# Ratings come from request worker threads: one append (and count) at a time.
_lock = threading.Lock()


def save_ab_rating(state: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Append one A/B rating to `<state>/ab_ratings.jsonl` (flushed and fsynced).

    Returns:
        `{"saved": True, "path": str, "count": lines in the file}`.
    """
    path = state / "ab_ratings.jsonl"
    line = json.dumps({"time": round(time.time(), 3), **record}, ensure_ascii=False)
    with _lock:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        with open(path, encoding="utf-8") as f:
            count = sum(1 for _ in f)
    return {"saved": True, "path": str(path), "count": count}
