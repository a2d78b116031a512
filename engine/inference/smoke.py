"""Does llama.cpp run on this CPU? Its system-info line, the CPU's flags, and a smoke generation.

llama.cpp is built for the CPU it is installed on. A build can still die on that CPU: on some
Xeons in VMs the kernel reports AMX and grants the tile state, yet llama.cpp's AMX kernels
(`ggml_backend_amx_mul_mat`, `tilezero`) fault with SIGILL and take the whole process with them.
So the smoke generation runs in a subprocess: a fault is reported as the signal that killed it,
with the CPU flags and the build that faulted, instead of killing the caller.

`install.sh` runs this (through `hyperlex doctor`) after building llama.cpp and rebuilds it
portable when it fails. Knows llama-cpp-python and the OS; nothing of profiles' other stages,
the daemon or the console.
"""

from __future__ import annotations

import json
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The CPU features that decide which llama.cpp kernels run (and which can fault).
WATCHED_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")
SMOKE_PROMPT = "The capital of France is"
SMOKE_TOKENS = 8


@dataclass
class CpuInfo:
    """The CPU model and the flags among WATCHED_FLAGS it reports."""

    model: str
    flags: list[str]

    def line(self) -> str:
        return f"{self.model} [{' '.join(self.flags) or 'no vector flags'}]"


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Read the CPU model and its vector-extension flags (Linux; elsewhere only the model)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return CpuInfo(model, [])
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return CpuInfo(model, [flag for flag in WATCHED_FLAGS if flag in flags])


def _build_record() -> str | None:
    """What install.sh recorded about the llama.cpp build (flags id), if anything."""
    stamp = Path(sys.prefix) / ".hyperlex-llama-build"
    try:
        return stamp.read_text().strip() or None
    except OSError:
        return None


@dataclass
class SmokeResult:
    """The outcome of one smoke generation in a subprocess."""

    ok: bool
    model: str
    text: str = ""
    tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    returncode: int | None = None
    signal: str | None = None
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """Everything `hyperlex doctor` shows."""

    cpu: CpuInfo
    llama_cpp_version: str | None
    system_info: str | None
    build: str | None
    smoke: SmokeResult | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "cpu": asdict(self.cpu), "llama_cpp_version": self.llama_cpp_version,
                "system_info": self.system_info, "build": self.build,
                "smoke": self.smoke.to_dict() if self.smoke else None, "problems": self.problems,
                "warnings": self.warnings}


# The child: load the GGUF, generate greedily, print one JSON line. Kept tiny so that a fault
# can only come from llama.cpp itself.
_CHILD = """
import json, sys, time
import llama_cpp
path, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
started = time.perf_counter()
out = llm.create_completion(prompt, max_tokens=n, temperature=0.0)
seconds = time.perf_counter() - started
print(json.dumps({"text": out["choices"][0]["text"],
                  "tokens": out["usage"]["completion_tokens"], "seconds": seconds}))
"""


def smoke_generate(model_file: Path, *, timeout_s: float = 120.0,
                   python: str = sys.executable) -> SmokeResult:
    """Generate a few tokens from `model_file` in a subprocess and report how it went.

    Never raises for a failing generation: a crash (SIGILL, SIGSEGV), a Python error or a
    time-out is the result's `error`, with the signal's name when one killed the child.
    """
    try:
        done = subprocess.run([python, "-c", _CHILD, str(model_file), SMOKE_PROMPT,
                               str(SMOKE_TOKENS)], capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return SmokeResult(False, str(model_file), error=f"no answer within {timeout_s:g} s")
    if done.returncode != 0:
        name = None
        if done.returncode < 0:
            try:
                name = signal.Signals(-done.returncode).name
            except ValueError:
                name = f"signal {-done.returncode}"
        tail = done.stderr.strip().splitlines()[-3:]
        reason = f"killed by {name}" if name else f"exit code {done.returncode}"
        return SmokeResult(False, str(model_file), returncode=done.returncode, signal=name,
                           error=f"{reason}: {' | '.join(tail)}" if tail else reason)
    try:
        payload = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return SmokeResult(False, str(model_file), returncode=0,
                           error=f"unreadable output: {done.stdout[-200:]!r}")
    tokens, seconds = int(payload["tokens"]), float(payload["seconds"])
    ok = tokens > 0
    return SmokeResult(ok, str(model_file), text=payload["text"], tokens=tokens,
                       seconds=round(seconds, 3),
                       tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
                       returncode=0, error="" if ok else "the model generated no token")


def llama_system_info() -> tuple[str | None, str | None]:
    """(llama-cpp-python's version, llama.cpp's system-info line), or Nones when not installed.

    The import happens in a subprocess too: a build for another CPU can fault at load time.
    """
    child = ("import json, llama_cpp; print(json.dumps([llama_cpp.__version__, "
             "llama_cpp.llama_print_system_info().decode('utf-8', 'replace')]))")
    try:
        done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                              timeout=60)
        version, info = json.loads(done.stdout.strip().splitlines()[-1])
        return str(version), " ".join(str(info).split())
    except (subprocess.TimeoutExpired, IndexError, json.JSONDecodeError, ValueError):
        return None, None


def diagnose(model_file: Path | None, *, smoke: bool = True) -> Report:
    """Collect the CPU, the llama.cpp build and (with `smoke`) a smoke generation's outcome."""
    cpu = cpu_info()
    version, info = llama_system_info()
    report = Report(cpu=cpu, llama_cpp_version=version, system_info=info, build=_build_record(),
                    smoke=None)
    if version is None:
        report.problems.append("llama-cpp-python is not installed or does not import "
                               "(run ./install.sh)")
        return report
    if info and "AMX_INT8 = 1" in info:
        report.warnings.append("llama.cpp was built with its AMX kernels, which fault on some "
                               "CPUs that report AMX; ./install.sh builds it without them")
    if smoke and model_file is not None:
        started = time.perf_counter()
        report.smoke = smoke_generate(model_file)
        if not report.smoke.ok:
            report.problems.append(
                f"the smoke generation failed ({report.smoke.error}) after "
                f"{time.perf_counter() - started:.1f} s on {cpu.line()}; build: "
                f"{report.build or 'unknown'}. Fix: rebuild llama.cpp with ./install.sh "
                f"(it falls back to a portable build), or set HYPERLEX_LLAMA_CMAKE_ARGS")
    return report
