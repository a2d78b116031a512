"""The machine line: flag parsing from /proc/cpuinfo text, the info's fields, the printed text, and
that every benchmark under bench/ prints it after its timed part."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from engine.machine import (
    MachineInfo,
    describe_machine,
    machine_line,
    parse_cpuinfo,
    parse_physical_cores,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"

# Two hyperthreads of one core of a Sapphire Rapids Xeon (flags shortened to the interesting ones).
XEON_AMX = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""

# Two cores of a Genoa EPYC: AVX-512 with BF16, no AMX.
EPYC_BF16 = """\
processor\t: 0
model name\t: AMD EPYC 9654 96-Core Processor
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512vnni

processor\t: 1
model name\t: AMD EPYC 9654 96-Core Processor
physical id\t: 0
core id\t\t: 1
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512vnni
"""


def test_xeon_with_amx_has_every_flag() -> None:
    parsed = parse_cpuinfo(XEON_AMX)
    assert parsed.model == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert parsed.flags == {"AVX2": True, "AVX-512": True, "AVX512-BF16": True,
                            "AMX-TILE": True, "AMX-BF16": True, "AMX-INT8": True}
    assert parse_physical_cores(XEON_AMX) == 1  # two hyperthreads of one core


def test_epyc_has_avx512_bf16_but_no_amx() -> None:
    parsed = parse_cpuinfo(EPYC_BF16)
    assert parsed.model == "AMD EPYC 9654 96-Core Processor"
    assert parsed.flags == {"AVX2": True, "AVX-512": True, "AVX512-BF16": True,
                            "AMX-TILE": False, "AMX-BF16": False, "AMX-INT8": False}
    assert parse_physical_cores(EPYC_BF16) == 2


def test_empty_cpuinfo_is_unknown_not_absent() -> None:
    parsed = parse_cpuinfo("")
    assert parsed.model == "unknown"
    assert parsed.flags is None
    assert parse_physical_cores("") is None


def test_machine_info_has_every_field_with_its_type() -> None:
    info = describe_machine(cpuinfo=EPYC_BF16)
    assert info.cpu_model == "AMD EPYC 9654 96-Core Processor"
    assert info.flags is not None and all(isinstance(v, bool) for v in info.flags.values())
    assert info.physical_cores == 2
    assert isinstance(info.logical_cpus, int) and info.logical_cpus >= 1
    assert isinstance(info.torch_threads, int) and info.torch_threads >= 1
    assert isinstance(info.fp32_gflops, float) and info.fp32_gflops > 0
    assert info.bf16_gflops is None or (isinstance(info.bf16_gflops, float)
                                        and info.bf16_gflops > 0)
    as_dict = info.as_dict()
    assert set(as_dict) == {"cpu_model", "flags", "physical_cores", "logical_cpus",
                            "torch_threads", "fp32_gflops", "bf16_gflops"}


def test_without_the_probe_no_figures_are_made_up() -> None:
    info = describe_machine(probe=False, cpuinfo="")
    assert info.flags is None and info.physical_cores is None
    assert info.fp32_gflops is None and info.bf16_gflops is None


def test_line_names_model_flags_cores_and_both_gflops() -> None:
    info = MachineInfo(cpu_model="AMD EPYC 9654 96-Core Processor",
                       flags=parse_cpuinfo(EPYC_BF16).flags, physical_cores=2, logical_cpus=4,
                       torch_threads=3, fp32_gflops=212.4, bf16_gflops=1914.0)
    line = machine_line(info)
    assert line.startswith("machine: AMD EPYC 9654 96-Core Processor")
    assert "AVX2 AVX-512 AVX512-BF16;" in line and "AMX" not in line
    assert "cores 2 physical / 4 logical" in line and "torch threads 3" in line
    assert "fp32 212 GFLOP/s" in line and "bf16 1914 GFLOP/s" in line
    assert all(row.startswith("machine: ") for row in line.splitlines())


def test_line_says_unknown_and_na_where_nothing_is_known() -> None:
    info = MachineInfo(cpu_model="unknown", flags=None, physical_cores=None, logical_cpus=None,
                       torch_threads=None, fp32_gflops=None, bf16_gflops=None)
    line = machine_line(info)
    assert "flags: unknown" in line and "cores unknown physical / unknown logical" in line
    assert "fp32 n/a GFLOP/s" in line and "bf16 n/a GFLOP/s" in line


MACHINE_CALLS = {"print_machine", "describe_machine"}


def _called_name(node: ast.Call) -> str | None:
    func = node.func
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)


def _timing_functions(tree: ast.Module) -> set[str]:
    """Names of the module's own functions that read a clock (the timed parts)."""
    timed = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
                isinstance(n, ast.Call) and _called_name(n) in {"perf_counter", "monotonic",
                                                                 "time", "process_time"}
                for n in ast.walk(node)):
            timed.add(node.name)
    return timed


@pytest.mark.parametrize("bench", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_bench_prints_the_machine_after_its_timed_part(bench: Path) -> None:
    tree = ast.parse(bench.read_text())
    main = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"),
                None)
    assert main is not None, f"{bench.name} has no main()"
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call)]
    machine = [n.lineno for n in calls if _called_name(n) in MACHINE_CALLS]
    assert machine, f"{bench.name} never prints the machine line (engine.machine.print_machine)"
    # The probe loads every core for a moment: it must not run before or inside a timed part.
    timed = _timing_functions(tree) | {"perf_counter"}
    last_timed = max((n.lineno for n in calls if _called_name(n) in timed), default=0)
    assert min(machine) > last_timed, f"{bench.name} probes the machine before its timed part"


@pytest.mark.parametrize("bench", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_a_bench_with_json_output_carries_the_machine(bench: Path) -> None:
    text = bench.read_text()
    if '"--json"' not in text:
        pytest.skip(f"{bench.name} has no --json output")
    assert '"machine":' in text, f"{bench.name}'s --json output lacks the machine"


def test_no_bench_is_named_like_a_standard_module() -> None:
    """Python puts a script's own directory first on the path: a bench named like a module of
    the standard library (bench/http.py) hides it from every other bench (http.server)."""
    clashes = [p.name for p in BENCH.glob("*.py") if p.stem in sys.stdlib_module_names]
    assert clashes == []
