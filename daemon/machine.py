"""The machine's figures for the status reply: resident memory of the daemon and its jobs, and
the CUDA devices torch sees. Reads /proc and torch; knows nothing of sockets or jobs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def rss_bytes(pid: int | str = "self") -> int | None:
    """Resident memory of a process from /proc (None where /proc is absent or it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def device_status(job_pids: list[int]) -> dict[str, Any]:
    """The daemon's and its jobs' resident memory, and CUDA devices when torch sees any.

    torch is only asked when it is already imported (a model is or was loaded): the status
    request must stay fast and not load torch by itself.
    """
    memory: dict[str, Any] = {"rss_bytes": rss_bytes(),
                              "jobs_rss_bytes": {str(p): rss_bytes(p) for p in job_pids}}
    device: dict[str, Any] = {"cuda": None, "devices": []}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            available = bool(torch.cuda.is_available())
            device["cuda"] = available
            device["count"] = torch.cuda.device_count() if available else 0
            # Asking for figures would create a CUDA context (hundreds of MiB) in a daemon that
            # may not use the GPU itself: only report them once torch has initialised CUDA.
            device["initialized"] = bool(available and torch.cuda.is_initialized())
            for index in range(device["count"] if device["initialized"] else 0):
                free, total = torch.cuda.mem_get_info(index)
                device["devices"].append({
                    "index": index, "name": torch.cuda.get_device_name(index),
                    "total_bytes": int(total), "free_bytes": int(free),
                    "allocated_bytes": int(torch.cuda.memory_allocated(index)),
                    "reserved_bytes": int(torch.cuda.memory_reserved(index))})
        except Exception as exc:  # a broken driver is a status line, not a failed request
            device["error"] = str(exc)
    else:
        device["note"] = "torch not loaded yet: CUDA is reported once a model has loaded"
    return {"memory": memory, "device": device}
