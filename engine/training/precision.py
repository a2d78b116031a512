"""`device.precision = "auto"`: bf16 where this device runs bf16 fast, fp32 elsewhere, and why.

CUDA with bf16 support picks bf16. On CPU the flags (AVX512-BF16, AMX-BF16) say only that bf16
instructions exist, not that torch's oneDNN kernels use them well on this build, so the choice
rests on a measured matmul: bf16 is picked when it runs at least `BF16_SPEEDUP_NEEDED` times the
fp32 GFLOP/s (an AVX512-BF16 EPYC measured 481 against 80, an AMX Xeon 1914 against 212; a CPU
without bf16 instructions emulates it, slower than fp32). The probe takes about a second and is
cached per machine in the cache dir, keyed by the CPU model, its whole flag set, the core count
and the torch version, so a new torch or another CPU measures again.

bf16 here means the base weights in bf16 and the LoRA weights, trainable token rows and the
optimizer state in fp32 (`engine.training.model.build_model` keeps them so; docs/training.md has
the measurement behind this over autocast). This module knows nothing of data, runs or files
other than its cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

AUTO = "auto"
BF16_SPEEDUP_NEEDED = 1.5  # "clearly faster": within noise of fp32 is not worth the rounding
CACHE_NAME = "precision-probe.json"


@dataclass(frozen=True)
class Probe:
    """One measurement of this machine's matmul speed in fp32 and bf16 (GFLOP/s; None: cannot)."""

    fp32_gflops: float | None
    bf16_gflops: float | None
    key: str  # what it was cached under
    cached: bool = False  # read from the cache rather than measured now

    @property
    def speedup(self) -> float | None:
        """bf16 over fp32 GFLOP/s, None when either could not be measured."""
        if not self.fp32_gflops or self.bf16_gflops is None:
            return None
        return self.bf16_gflops / self.fp32_gflops


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run uses, what was asked for, and why (said in the log and the card)."""

    precision: str  # fp32 | bf16 | int8 | int4
    requested: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def machine_key(cpuinfo: str | None = None, torch_version: str | None = None) -> str:
    """The cache key of this machine: a hash of CPU model, whole flag set and torch version."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    model = flags = ""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name == "model name" and not model:
            model = value.strip()
        elif name in ("flags", "Features") and not flags:
            flags = " ".join(sorted(value.split()))
    if not model:
        import platform

        model = platform.processor() or platform.machine()
    if torch_version is None:
        import torch

        torch_version = torch.__version__
    text = f"{model}\n{flags}\ntorch {torch_version}\ncores {os.cpu_count()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _default_cache_file() -> Path:
    from engine.paths import dirs

    return dirs().cache / CACHE_NAME


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def measure() -> tuple[float | None, float | None]:
    """fp32 and bf16 matmul GFLOP/s, measured now (engine.machine's probe, best of 10 runs)."""
    from engine.machine import matmul_gflops

    return matmul_gflops("float32", repeats=10), matmul_gflops("bfloat16", repeats=10)


def cpu_probe(cache_file: Path | None = None, key: str | None = None) -> Probe:
    """This machine's probe: from the cache when it holds one for this key, else measured.

    Args:
        cache_file: the JSON cache (default: `<cache>/precision-probe.json`).
        key: the machine key (default: `machine_key()`).
    """
    path = cache_file or _default_cache_file()
    key = key or machine_key()
    cache = _read_cache(path)
    entry = cache.get(key)
    if isinstance(entry, dict) and "fp32_gflops" in entry and "bf16_gflops" in entry:
        return Probe(entry["fp32_gflops"], entry["bf16_gflops"], key, cached=True)
    fp32, bf16 = measure()
    cache[key] = {"fp32_gflops": fp32, "bf16_gflops": bf16}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(cache, indent=1) + "\n")
        temporary.replace(path)
    except OSError:
        pass  # a read-only cache only costs the next run another second
    return Probe(fp32, bf16, key)


def _gflops(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def choose_cpu(probe: Probe) -> PrecisionChoice:
    """bf16 when the probe's bf16 matmul is `BF16_SPEEDUP_NEEDED` times fp32's, else fp32."""
    speedup = probe.speedup
    measured = (f"measured matmul bf16 {_gflops(probe.bf16_gflops)} vs fp32 "
                f"{_gflops(probe.fp32_gflops)} GFLOP/s"
                + (f" ({speedup:.1f}x)" if speedup is not None else "")
                + ("; cached probe" if probe.cached else ""))
    if speedup is not None and speedup >= BF16_SPEEDUP_NEEDED:
        return PrecisionChoice("bf16", AUTO, f"this CPU runs bf16 fast: {measured}; bf16 base "
                                             "weights, fp32 LoRA weights and optimizer state")
    return PrecisionChoice("fp32", AUTO, f"this CPU does not run bf16 clearly faster than fp32 "
                                         f"(needs {BF16_SPEEDUP_NEEDED}x): {measured}")


def resolve_precision(wanted: str, device: str, cache_file: Path | None = None
                      ) -> PrecisionChoice:
    """Turn `device.precision` into the precision a run on `device` uses, with the reason.

    Args:
        wanted: the profile's `device.precision` (`auto`, `fp32`, `bf16`, `int8`, `int4`).
        device: the resolved device, `cpu` or `cuda[:N]`.
        cache_file: where the CPU probe is cached (default: the cache dir).

    Returns:
        The choice; anything but `auto` is kept as asked.
    """
    if wanted != AUTO:
        return PrecisionChoice(wanted, wanted, "set in the profile")
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        name = torch.cuda.get_device_name(index)
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice("bf16", AUTO, f"CUDA device {name} supports bf16")
        return PrecisionChoice("fp32", AUTO, f"CUDA device {name} does not support bf16")
    return choose_cpu(cpu_probe(cache_file))
