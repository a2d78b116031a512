"""`hyperlex doctor`'s checks: CPU flags, llama.cpp's system info, a smoke generation that
survives a crashing llama.cpp."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from engine.inference.smoke import cpu_info, smoke_generate

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_info_reads_the_model_and_the_vector_flags(tmp_path: Path) -> None:
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = cpu_info(path)
    assert info.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert {"avx2", "avx512_vnni", "amx_tile", "amx_int8"} <= set(info.flags)
    assert "fpu" not in info.flags  # only the flags that pick kernels
    assert "amx_tile" in info.line()


def test_a_llama_cpp_that_dies_of_sigill_is_reported_not_suffered(tmp_path: Path) -> None:
    # A stand-in interpreter that dies as the AMX kernels do on a CPU that cannot run them.
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\nkill -ILL $$\n")
    crashing.chmod(crashing.stat().st_mode | stat.S_IEXEC)
    result = smoke_generate(tmp_path / "model.gguf", python=str(crashing))
    assert not result.ok
    assert result.signal == "SIGILL" and result.returncode == -4
    assert "SIGILL" in result.error


def test_a_missing_model_is_a_failed_smoke_with_the_reason(tmp_path: Path) -> None:
    result = smoke_generate(tmp_path / "absent.gguf", timeout_s=60)
    assert not result.ok and result.returncode not in (None, 0)
    assert result.error


def test_smoke_generation_passes_on_a_real_gguf(tmp_path: Path) -> None:
    from engine.export.gguf_model import export_gguf
    from engine.testing.tiny import build_tiny_model

    gguf_file = export_gguf(build_tiny_model("llama"), tmp_path / "tiny.gguf").path
    result = smoke_generate(gguf_file)
    assert result.ok, result.error
    assert result.tokens > 0 and result.returncode == 0


@pytest.mark.slow
def test_doctor_on_the_default_profile_reports_system_info_and_a_passing_smoke() -> None:
    done = subprocess.run([sys.executable, "-m", "hyperlex_console.cli", "doctor", "--json"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    report = json.loads(done.stdout)
    print(report["system_info"])
    assert done.returncode == 0, report["problems"]
    assert "AVX" in report["system_info"] and "AMX_INT8 = 1" not in report["system_info"]
    assert report["smoke"]["ok"] and report["smoke"]["tokens"] > 0


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump is not installed")
def test_the_installed_llama_cpp_has_no_amx_instructions_but_keeps_its_vector_kernels() -> None:
    """install.sh builds llama.cpp without AMX (its kernels die with SIGILL on some VMs that
    report AMX) and keeps AVX2/AVX-512/VNNI where the CPU has them."""
    import llama_cpp

    libraries = list((Path(llama_cpp.__file__).parent / "lib").glob("libggml-cpu*.so"))
    assert libraries, "llama-cpp-python ships no libggml-cpu"
    code = subprocess.run(["objdump", "-d", str(libraries[0])], capture_output=True,
                          text=True, timeout=300).stdout
    assert not any(op in code for op in ("tilezero", "tileloadd", "tdpbssd", "ldtilecfg"))
    flags = set(cpu_info().flags)
    if "avx2" in flags:
        assert "vfmadd" in code and "ymm" in code
    if "avx512f" in flags:
        assert "zmm" in code
