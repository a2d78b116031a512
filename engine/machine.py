"""The machine a figure was measured on: CPU model, the SIMD flags that matter, cores, threads, matmul speed.

`describe_machine()` returns a `MachineInfo`; `machine_line()` formats it as the one "machine:"
line every benchmark prints beside its ratio, and `MachineInfo.as_dict()` is its `--json` form,
so a figure from one machine can be read against another. The flags come from /proc/cpuinfo
("unknown" where there is none); the GFLOP/s come from a short measured matmul, since flags
alone do not say whether oneDNN really runs bf16 fast. This module knows nothing of jobs, the
daemon or the console, and imports torch only inside the probe, so importing it is cheap.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# /proc/cpuinfo flag -> the name printed; order is the order printed.
_FLAGS_THAT_MATTER = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_bf16", "AVX512-BF16"),
    ("amx_tile", "AMX-TILE"),
    ("amx_bf16", "AMX-BF16"),
    ("amx_int8", "AMX-INT8"),
)

# The probe's shape: one projection of a SmolLM2-135M-sized layer over a 2048-token batch.
_PROBE_M, _PROBE_K, _PROBE_N = 2048, 576, 1536
_PROBE_REPEATS = 5


@dataclass(frozen=True)
class CpuFlags:
    """The CPU model and which of the flags that matter it has (None: not known)."""

    model: str
    flags: dict[str, bool] | None


@dataclass(frozen=True)
class MachineInfo:
    """What a benchmark figure should be read against.

    Attributes:
        cpu_model: the CPU's model name, or "unknown".
        flags: printed flag name -> present; None when /proc/cpuinfo could not be read.
        physical_cores: distinct (package, core) pairs, or None when unknown.
        logical_cpus: CPUs the OS reports, or None when unknown.
        torch_threads: `torch.get_num_threads()`, or None without torch.
        fp32_gflops: measured fp32 matmul GFLOP/s, or None without torch.
        bf16_gflops: measured bf16 matmul GFLOP/s, or None where torch cannot run bf16 here.
    """

    cpu_model: str
    flags: dict[str, bool] | None
    physical_cores: int | None
    logical_cpus: int | None
    torch_threads: int | None
    fp32_gflops: float | None
    bf16_gflops: float | None

    def as_dict(self) -> dict:
        """A JSON-ready dict of every field (None stays null)."""
        return asdict(self)


def parse_cpuinfo(text: str) -> CpuFlags:
    """Read the CPU model and the flags that matter from /proc/cpuinfo text.

    Args:
        text: the whole of /proc/cpuinfo (an empty string when there is none).

    Returns:
        The model ("unknown" when absent) and a flag dict, or None flags when the text names no
        flags line at all (so "absent" is never confused with "not known").
    """
    model = "unknown"
    present: set[str] | None = None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip() or "unknown"
        elif key in ("flags", "Features") and present is None:  # x86 / ARM spelling
            present = set(value.split())
    if present is None:
        return CpuFlags(model=model, flags=None)
    return CpuFlags(model=model, flags={name: flag in present for flag, name in _FLAGS_THAT_MATTER})


def parse_physical_cores(text: str) -> int | None:
    """Count distinct (physical id, core id) pairs in /proc/cpuinfo text; None when not stated."""
    cores: set[tuple[str, str]] = set()
    physical = core = None
    for line in [*text.splitlines(), ""]:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            core = value.strip()
        elif not line.strip():  # a blank line ends one processor's block
            if core is not None:
                cores.add((physical or "0", core))
            physical = core = None
    return len(cores) or None


@functools.cache
def usable_physical_cores() -> int:
    """Physical cores this process may run on: the CPUs its affinity allows, counted in
    physical cores (/proc/cpuinfo's cores per logical CPU); the logical count where cpuinfo
    does not say. Worked out once: llama.cpp asks before every generation."""
    logical = os.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = logical
    physical = parse_physical_cores(_read_cpuinfo() or "") or logical
    return max(1, round(allowed * min(physical, logical) / logical))


def other_runnable_tasks(samples: int = 3, gap_s: float = 0.002) -> int | None:
    """Tasks besides the caller ready to run on this machine now: the fewest of a few
    samples of /proc/loadavg's runnable count (an instant figure, not the averages), less the
    caller; None where there is no /proc."""
    counts = []
    for index in range(samples):
        if index:
            time.sleep(gap_s)
        try:
            field = Path("/proc/loadavg").read_text().split()[3]
            counts.append(int(field.split("/", 1)[0]))
        except (OSError, IndexError, ValueError):
            return None
    return max(0, min(counts) - 1)


def machine_is_busy() -> bool:
    """Whether other work keeps at least half of this machine's CPUs running now."""
    others = other_runnable_tasks()
    return others is not None and others >= max(1, (os.cpu_count() or 1) // 2)


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def matmul_gflops(dtype_name: str, repeats: int = _PROBE_REPEATS) -> float | None:
    """Measure a 2048x576 @ 576x1536 matmul in `dtype_name` ("float32" or "bfloat16").

    One warm-up, then the best of `repeats` timed runs (well under a second in all on any CPU
    that trains). Returns None without torch or where torch cannot multiply in that dtype here.
    """
    try:
        import torch
    except ImportError:
        return None
    try:
        dtype = getattr(torch, dtype_name)
        a = torch.randn(_PROBE_M, _PROBE_K).to(dtype)
        b = torch.randn(_PROBE_K, _PROBE_N).to(dtype)
        with torch.no_grad():
            torch.matmul(a, b)  # warm-up: oneDNN picks and caches its kernel here
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                torch.matmul(a, b)
                best = min(best, time.perf_counter() - started)
    except (RuntimeError, TypeError, AttributeError):
        return None  # e.g. "not implemented for 'BFloat16'" on an old build
    return 2 * _PROBE_M * _PROBE_K * _PROBE_N / max(best, 1e-9) / 1e9


def describe_machine(probe: bool = True, cpuinfo: str | None = None) -> MachineInfo:
    """Describe this machine.

    Args:
        probe: run the matmul probe (about a second at most); False leaves the GFLOP/s None.
        cpuinfo: /proc/cpuinfo text to read instead of the real one (for tests).

    Returns:
        The `MachineInfo`, with "unknown"/None wherever this machine does not say.
    """
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    parsed = parse_cpuinfo(text or "")
    model = parsed.model
    if model == "unknown":
        model = platform.processor() or "unknown"
    torch_threads = fp32 = bf16 = None
    if probe:
        fp32 = matmul_gflops("float32")
        bf16 = matmul_gflops("bfloat16")
    if probe or "torch" in sys.modules:  # without the probe, never pay for importing torch
        try:
            import torch

            torch_threads = torch.get_num_threads()
        except ImportError:
            pass
    return MachineInfo(
        cpu_model=model, flags=parsed.flags, physical_cores=parse_physical_cores(text or ""),
        logical_cpus=os.cpu_count(), torch_threads=torch_threads, fp32_gflops=fp32,
        bf16_gflops=bf16)


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def _gflops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def machine_line(info: MachineInfo) -> str:
    """The two-line "machine:" text a benchmark prints beside its ratio."""
    if info.flags is None:
        flags = "unknown"
    else:
        flags = " ".join(name for name, present in info.flags.items() if present) or "none"
    return (f"machine: {info.cpu_model}; flags: {flags}; cores {_or_unknown(info.physical_cores)} "
            f"physical / {_or_unknown(info.logical_cpus)} logical; torch threads "
            f"{_or_unknown(info.torch_threads)}\n"
            f"machine: matmul {_PROBE_M}x{_PROBE_K} @ {_PROBE_K}x{_PROBE_N}: fp32 "
            f"{_gflops(info.fp32_gflops)} GFLOP/s, bf16 {_gflops(info.bf16_gflops)} GFLOP/s")


def print_machine() -> dict:
    """Describe this machine, print its "machine:" lines, and return the `--json` dict."""
    info = describe_machine()
    print(machine_line(info), flush=True)
    return info.as_dict()


if __name__ == "__main__":
    print_machine()
