"""The stdout of a job process: JSON events only, one a line, for the daemon to read.

Knows nothing of the daemon: it only keeps stdout clean.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO


def json_event_stream() -> TextIO:
    """A stream on the real stdout for events, with fd 1 and `sys.stdout` sent to stderr.

    Whatever else is printed, by Python or C code (a library's progress bar, llama.cpp's log),
    then goes to stderr and cannot break the JSON-lines contract.
    """
    events = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return events
