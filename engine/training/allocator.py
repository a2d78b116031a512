"""Keep freed host memory in the process for reuse: a CPU training step stops page-faulting.

torch allocates CPU tensors with plain `malloc`, with no cache of its own. glibc serves a block
above its mmap threshold (dynamic, between 128 KiB and 32 MiB) with a fresh `mmap` and unmaps it
on free, and gives the top of its heap back to the system once more than twice that threshold is
free there. A training step allocates and frees the same few hundred activations and gradients
(2 to 64 MiB each for SmolLM2-135M at 4 x 512 tokens) again and again, so each one costs its
pages' first-touch faults every time: measured on a 2-core EPYC, copying a [341 x 49167] fp32
tensor took 29 ms fresh against 5.6 ms with the memory kept, and one bf16 step of SmolLM2-135M
went from 7.25 to 6.37 s with only this setting changed.

`keep_freed_memory` sets the mmap threshold to its maximum (32 MiB: everything smaller comes from
the heap and goes back to it) and the trim threshold high, so the process keeps its high-water
mark instead of returning and re-faulting it. Peak memory is the step's peak either way; what
changes is that RSS does not fall between steps. Only glibc has `mallopt`; elsewhere this does
nothing and says so. Knows nothing of models or recipes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound on 64-bit (4 MiB x sizeof(long))
TRIM_THRESHOLD = 1 << 30       # free memory at the heap's top kept, at most, before trimming

_done: str | None = None


def keep_freed_memory() -> str:
    """Set glibc's malloc to keep freed blocks (once per process); returns what it did."""
    global _done
    if _done is not None:
        return _done
    if not sys.platform.startswith("linux"):
        _done = f"allocator: left as it is ({sys.platform} has no glibc mallopt)"
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        _done = "allocator: left as it is (this C library has no mallopt)"
        return _done
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    trim_ok = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if mmap_ok and trim_ok:
        _done = (f"allocator: freed blocks under {MMAP_THRESHOLD_MAX >> 20} MiB are kept for "
                 f"reuse (glibc mmap threshold {MMAP_THRESHOLD_MAX >> 20} MiB, trim threshold "
                 f"{TRIM_THRESHOLD >> 20} MiB)")
    else:
        _done = (f"allocator: mallopt refused (mmap threshold {'set' if mmap_ok else 'refused'}, "
                 f"trim threshold {'set' if trim_ok else 'refused'})")
    return _done
